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

    /// <summary>
    /// As <see cref="SendAsync(QueuedMessage, CancellationToken)"/>, for a transport that sends one message in several
    /// transactions (direct MX: one per recipient domain; a smarthost: one per <c>Relay:Limits:RecipientsPerMessage</c>
    /// recipients, and one more for those a transaction turned away with "452 too many recipients"): after each
    /// transaction but the last, the recipients it delivered to are handed to <paramref name="partSent"/>, awaited
    /// before the next begins; and before each connection (or transaction) but the first it is asked with none, whether
    /// the attempt may go on. When it answers with a reply
    /// instead of null (they could not be recorded, or the attempt must stop: its claim on a shared spool is lost), the
    /// attempt ends there: every recipient not yet tried gets that reply as <see cref="RecipientOutcome.Deferred"/>. A
    /// transaction under way is never cut short for it. A transport that sends in one transaction has nothing to hand
    /// over before its result.
    /// </summary>
    /// <param name="message">The message.</param>
    /// <param name="partSent">Records recipients already delivered to, or null.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>One result per pending recipient, those handed to <paramref name="partSent"/> included.</returns>
    Task<IReadOnlyList<RecipientResult>> SendAsync(QueuedMessage message, PartSent? partSent, CancellationToken cancellationToken) =>
        SendAsync(message, cancellationToken);
}

/// <summary>
/// Records the recipients one transaction of an attempt delivered to while the rest of the attempt is still to come, and
/// says whether the attempt may begin its next transaction.
/// </summary>
/// <param name="message">The message being sent.</param>
/// <param name="sent">The transaction's recipients with outcome <see cref="RecipientOutcome.Sent"/>; empty when the transport only asks whether it may go on.</param>
/// <param name="cancellationToken">Cancellation.</param>
/// <returns>
/// Null when they are on record and the attempt may go on; otherwise the reply (4xx) with which the recipients not yet
/// tried are deferred, the attempt ending there (the recipients could not be recorded, or the attempt must stop).
/// </returns>
public delegate Task<string?> PartSent(QueuedMessage message, IReadOnlyList<RecipientResult> sent, CancellationToken cancellationToken);
