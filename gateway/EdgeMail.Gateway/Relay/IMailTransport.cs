using EdgeMail.Gateway.Spool;

namespace EdgeMail.Gateway.Relay;

/// <summary>Recipient outcomes of a delivery attempt.</summary>
public static class RecipientOutcome
{
    /// <summary>Accepted by the next hop.</summary>
    public const string Sent = "sent";

    /// <summary>Transient failure; retry later.</summary>
    public const string Deferred = "deferred";

    /// <summary>Permanent failure.</summary>
    public const string Failed = "failed";
}

/// <summary>One way for mail to leave: the local mailbox, a smarthost, or direct MX.</summary>
public interface IMailTransport : IAsyncDisposable
{
    /// <summary>Tries to deliver a message to its pending recipients. Never throws for delivery problems: they become per-recipient results.</summary>
    /// <param name="message">The message.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>One result per pending recipient.</returns>
    Task<IReadOnlyList<RecipientResult>> SendAsync(QueuedMessage message, CancellationToken cancellationToken);
}
