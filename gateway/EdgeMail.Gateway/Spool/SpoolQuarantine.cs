namespace EdgeMail.Gateway.Spool;

/// <summary>
/// A device's mail, submitted over SMTP, whose handling failed for a reason of its own, quarantined: kept as it came,
/// with what handling it needs, so that it can be taken (<c>250</c>) instead of being sent again for ever, and
/// handled again when the operator releases it. The spool keeps it as a parked message of kind <see cref="Kind"/>
/// (docs/spool.md, "Quarantined mail"); it is never delivered as it is.
/// </summary>
/// <param name="MessageId">Its key in the spool (unique; <see cref="Ingest.Smtp.RelayedMailWriter.QuarantineKey"/>).</param>
/// <param name="Device">The device the session submitted as.</param>
/// <param name="EnvelopeFrom">MAIL FROM (empty for <c>&lt;&gt;</c>).</param>
/// <param name="Recipients">The accepted RCPT TO addresses as given (<c>local@domain</c>), not yet expanded to people.</param>
/// <param name="Peer">The client's address and port.</param>
/// <param name="Authenticated">The session had authenticated.</param>
/// <param name="Secure">The session was over TLS.</param>
/// <param name="SessionId">The session's id, for the Received trace.</param>
/// <param name="ReceivedAt">When its data was received.</param>
/// <param name="Raw">The DATA as received (dot-unstuffed), byte for byte.</param>
public sealed record QuarantinedMail(string MessageId, string Device, string EnvelopeFrom, IReadOnlyList<string> Recipients, string Peer, bool Authenticated, bool Secure,
    string SessionId, DateTimeOffset ReceivedAt, byte[] Raw)
{
    /// <summary>The <c>messages.kind</c> of quarantined mail.</summary>
    public const string Kind = "quarantined";
}

/// <summary>Quarantined SMTP submissions (docs/spool.md, "Quarantined mail").</summary>
public partial interface ISpool
{
    /// <summary>
    /// Keeps a submission as a parked message of kind <see cref="QuarantinedMail.Kind"/> with the reason, durably. The
    /// delivery worker never sees it, and <see cref="ReleaseAsync"/> does not queue it: only handling it again
    /// (<see cref="SettleQuarantinedAsync"/>) ends its quarantine.
    /// </summary>
    /// <param name="mail">The submission.</param>
    /// <param name="reason">Why it is quarantined.</param>
    /// <param name="cancellationToken">Cancels waiting (the write may still commit).</param>
    /// <returns>
    /// Its row, after commit; null when its <see cref="QuarantinedMail.MessageId"/> is already in the spool (the same
    /// mail submitted again while it is quarantined, or after it was cancelled): nothing was stored.
    /// </returns>
    Task<long?> QuarantineAsync(QuarantinedMail mail, string reason, CancellationToken cancellationToken);

    /// <summary>Quarantined mail, while it is quarantined (parked, not cancelled).</summary>
    /// <param name="rowId">Its row.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The submission, or null when that row is not quarantined mail.</returns>
    Task<QuarantinedMail?> QuarantinedAsync(long rowId, CancellationToken cancellationToken);

    /// <summary>
    /// Ends the quarantine of mail that was handled now, atomically: queues <paramref name="relay"/> (the mail it made,
    /// if it made one; an existing Message-ID is a duplicate and queues nothing) and removes the quarantined row. Does
    /// nothing when the row is no longer quarantined (released or cancelled meanwhile).
    /// </summary>
    /// <param name="rowId">The quarantined row.</param>
    /// <param name="relay">The rewritten mail to queue, or null (its alerts were stored by the alert ingest).</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>True when it was quarantined and is settled now, after commit.</returns>
    Task<bool> SettleQuarantinedAsync(long rowId, NewMessage? relay, CancellationToken cancellationToken);

    /// <summary>Keeps quarantined mail quarantined with a new reason (handling it failed again).</summary>
    /// <param name="rowId">The quarantined row.</param>
    /// <param name="reason">Why.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>True when it was still quarantined.</returns>
    Task<bool> QuarantineAgainAsync(long rowId, string reason, CancellationToken cancellationToken);
}

/// <summary>
/// The session facts of quarantined mail that have no column of their own, kept as one JSON text
/// (<c>messages.submission</c>); the same for both providers.
/// </summary>
internal static class QuarantineFacts
{
    /// <summary>The facts as stored.</summary>
    /// <param name="mail">The submission.</param>
    /// <returns>JSON.</returns>
    public static string Write(QuarantinedMail mail) =>
        System.Text.Json.JsonSerializer.Serialize(new Facts(mail.Peer, mail.Authenticated, mail.Secure, mail.SessionId));

    /// <summary>Quarantined mail from its row.</summary>
    /// <param name="json">The stored facts.</param>
    /// <param name="messageId">Its key.</param>
    /// <param name="device">Its device.</param>
    /// <param name="envelopeFrom">Its MAIL FROM.</param>
    /// <param name="recipients">Its RCPT TO addresses.</param>
    /// <param name="receivedAt">When it was received.</param>
    /// <param name="raw">Its data.</param>
    /// <returns>The submission.</returns>
    public static QuarantinedMail Read(string json, string messageId, string device, string envelopeFrom, IReadOnlyList<string> recipients, DateTimeOffset receivedAt, byte[] raw)
    {
        var facts = System.Text.Json.JsonSerializer.Deserialize<Facts>(json)
            ?? throw new SpoolException($"Quarantined mail <{messageId}> has no session facts; cancel it.");
        return new QuarantinedMail(messageId, device, envelopeFrom, recipients, facts.Peer, facts.Authenticated, facts.Secure, facts.Session, receivedAt, raw);
    }

    private sealed record Facts(
        [property: System.Text.Json.Serialization.JsonPropertyName("peer")] string Peer,
        [property: System.Text.Json.Serialization.JsonPropertyName("authenticated")] bool Authenticated,
        [property: System.Text.Json.Serialization.JsonPropertyName("secure")] bool Secure,
        [property: System.Text.Json.Serialization.JsonPropertyName("session")] string Session);
}
