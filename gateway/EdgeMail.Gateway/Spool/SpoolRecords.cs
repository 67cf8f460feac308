namespace EdgeMail.Gateway.Spool;

/// <summary>Where an alert is in its life.</summary>
public static class AlertStatus
{
    /// <summary>Durable, not yet routed.</summary>
    public const string New = "new";

    /// <summary>
    /// Malformed, or handling it failed; kept with its reason, never mailed, unless the operator retries one whose
    /// handling failed (<see cref="ISpool.RetryRejectedAsync"/>: back to <see cref="New"/>).
    /// </summary>
    public const string Rejected = "rejected";

    /// <summary>Routed; its mail is queued.</summary>
    public const string Routed = "routed";

    /// <summary>No route matched; nothing to send.</summary>
    public const string Unrouted = "unrouted";

    /// <summary>A repeat held by storm control until its window closes.</summary>
    public const string Held = "held";

    /// <summary>A repeat that went out in a digest mail.</summary>
    public const string Digested = "digested";

    /// <summary>
    /// Routing, composing or digesting it failed in a way retrying cannot fix; kept with the reason, the device told
    /// <c>failed</c>, the operator notified. Released by the operator (back to <see cref="New"/>) or cancelled.
    /// </summary>
    public const string Parked = "parked";

    /// <summary>Given up by the operator (a parked alert cancelled); nothing more happens to it.</summary>
    public const string Cancelled = "cancelled";
}

/// <summary>Where a queued mail is in its life.</summary>
public static class MessageStatus
{
    /// <summary>Waiting for its next attempt.</summary>
    public const string Queued = "queued";

    /// <summary>Every recipient accepted it.</summary>
    public const string Sent = "sent";

    /// <summary>Every recipient failed (permanently or by expiry).</summary>
    public const string Failed = "failed";

    /// <summary>Some recipients accepted it, the others failed.</summary>
    public const string Partial = "partial";

    /// <summary>Handling it failed in a way retrying cannot fix; kept with the reason until released or cancelled.</summary>
    public const string Parked = "parked";

    /// <summary>Given up by the operator; its pending recipients are marked failed.</summary>
    public const string Cancelled = "cancelled";
}

/// <summary>Reasons the spool itself writes.</summary>
internal static class SpoolReasons
{
    /// <summary>Put before the operator's reason on a mail cancelled while an attempt that then delivered it was under way.</summary>
    internal const string CancelTooLate = "the cancel came too late: the attempt under way had delivered the mail. The cancel's reason: ";

    /// <summary>Put before the operator's reason on the recipients a cancel fails and on the <c>failed</c> receipt it owes.</summary>
    internal const string Cancelled = "cancelled by the operator: ";
}

/// <summary>Checks of arguments both providers make.</summary>
internal static class SpoolArguments
{
    /// <summary>Throws unless every result is <c>sent</c> (<see cref="ISpool.RecordSentRecipientsAsync"/>).</summary>
    internal static void OnlySent(IReadOnlyList<RecipientResult> sent)
    {
        ArgumentNullException.ThrowIfNull(sent);
        foreach (var result in sent)
        {
            if (result.Outcome != "sent")
            {
                throw new ArgumentException(
                    $"Only recipients delivered to are recorded before the attempt's result; {result.Address} is '{result.Outcome}'. Record it with the attempt (CommitDeliveryAsync).",
                    nameof(sent));
            }
        }
    }
}

/// <summary>An alert arriving at the spool.</summary>
/// <param name="Device">Sending device.</param>
/// <param name="AlertId">The alert's id (for a rejected alert without one: a digest of its payload).</param>
/// <param name="ReceivedAt">When the gateway received it.</param>
/// <param name="Peer">Remote endpoint, for the Received trace.</param>
/// <param name="Payload">The payload exactly as sent.</param>
/// <param name="RejectReason">Why it is rejected; null for a valid alert.</param>
/// <param name="Code">The alert code, when valid.</param>
/// <param name="Via">The protocol it came with (<see cref="IngestProtocols"/>), for the Received trace.</param>
/// <param name="Severity">The alert's severity, when valid (the console filters on it).</param>
/// <param name="CancelledReason">
/// Why it is stored <c>cancelled</c>, never routed nor mailed: a record for the history only (the silence watch's end of
/// a silence that no return ended, <see cref="Devices.SilenceWatch"/>); null for any other alert.
/// </param>
public sealed record IncomingAlert(string Device, string AlertId, DateTimeOffset ReceivedAt, string? Peer, ReadOnlyMemory<byte> Payload, string? RejectReason, string? Code,
    string Via = IngestProtocols.Mqtt, string? Severity = null, string? CancelledReason = null)
{
    /// <summary>The status it is stored with.</summary>
    internal string Status => RejectReason is not null ? AlertStatus.Rejected : CancelledReason is not null ? AlertStatus.Cancelled : AlertStatus.New;

    /// <summary>The reason stored with it, if any.</summary>
    internal string? Reason => RejectReason ?? CancelledReason;
}

/// <summary>What the spool did with an incoming alert.</summary>
public enum AcceptOutcome
{
    /// <summary>Stored now (durable).</summary>
    Stored,

    /// <summary>Already stored earlier (a retransmission); nothing changed.</summary>
    Duplicate,
}

/// <summary>A stored alert waiting to be routed.</summary>
/// <param name="RowId">Spool row.</param>
/// <param name="Device">Device.</param>
/// <param name="AlertId">Alert id.</param>
/// <param name="ReceivedAt">When received.</param>
/// <param name="Peer">Remote endpoint.</param>
/// <param name="Payload">Payload as sent.</param>
/// <param name="Via">The protocol it came with.</param>
public sealed record SpooledAlert(long RowId, string Device, string AlertId, DateTimeOffset ReceivedAt, string? Peer, byte[] Payload, string Via = IngestProtocols.Mqtt);

/// <summary>The protocol names an alert can arrive with, as the Received trace writes them (RFC 3848 for SMTP).</summary>
public static class IngestProtocols
{
    /// <summary>MQTT (embedded broker or external broker).</summary>
    public const string Mqtt = "MQTT";

    /// <summary>Raised by the gateway itself about a device (<c>DEVICE_SILENT</c>, <c>DEVICE_BACK</c>); not a sign of life.</summary>
    public const string Local = "LOCAL";

    /// <summary>The SMTP name for a submission: ESMTP, with S for TLS and A for AUTH (RFC 3848).</summary>
    /// <param name="secure">Over TLS.</param>
    /// <param name="authenticated">After AUTH.</param>
    /// <returns><c>ESMTP</c>, <c>ESMTPS</c>, <c>ESMTPA</c> or <c>ESMTPSA</c>.</returns>
    public static string Smtp(bool secure, bool authenticated) => "ESMTP" + (secure ? "S" : string.Empty) + (authenticated ? "A" : string.Empty);
}

/// <summary>Storm-control memory for one (device, code).</summary>
/// <param name="LastMailAt">When the last mail for this key was composed (a raise, a clear or a digest); the Unix epoch after a clear
/// that ended an incident longer than the window.</param>
/// <param name="LastRaisedMessageId">Message-ID of the last raised mail, for threading a cleared alert.</param>
/// <param name="HoldClears">A cleared alert within the window is held too: repeats of the key are held, or its last digest had a
/// clear in it (it flaps).</param>
/// <param name="IncidentOpen">
/// The pair's last mail told of a raise that no clear has followed yet (a raise, or a digest whose latest repeat is one): its
/// clear is still to come and threads onto <paramref name="LastRaisedMessageId"/>, so pruning keeps the state longer
/// (<see cref="StormRetention"/>).
/// </param>
public sealed record StormState(DateTimeOffset LastMailAt, string? LastRaisedMessageId, bool HoldClears = false, bool IncidentOpen = false);

/// <summary>How long storm state outlives <c>Spool:Retention</c>.</summary>
public static class StormRetention
{
    /// <summary>
    /// An open incident's state (<see cref="StormState.IncidentOpen"/>) is kept this long after the pair's last mail, or for
    /// <c>Spool:Retention</c> when that is longer: a clear months after its raise still threads onto it, and the state of a
    /// pair that raised and was never heard of again (a device taken away) still goes in the end.
    /// </summary>
    public static readonly TimeSpan OpenIncident = TimeSpan.FromDays(365);

    /// <summary>The horizon before which an open incident's state is pruned.</summary>
    /// <param name="horizon">Pruning's horizon for everything else (now minus <c>Spool:Retention</c>).</param>
    /// <param name="now">Now.</param>
    /// <returns>The earlier of the two horizons, in Unix milliseconds.</returns>
    public static long OpenIncidentHorizonMs(DateTimeOffset horizon, DateTimeOffset now) =>
        Math.Min(horizon.ToUnixTimeMilliseconds(), (now - OpenIncident).ToUnixTimeMilliseconds());
}

/// <summary>A composed mail to queue.</summary>
/// <param name="Kind"><c>alert</c>, <c>digest</c> or <c>notice</c>.</param>
/// <param name="Device">Device the mail is about (null for notices about nothing in particular).</param>
/// <param name="AlertId">Alert id the mail is about, for receipts.</param>
/// <param name="MessageId">Message-ID (unique).</param>
/// <param name="EnvelopeFrom">Envelope sender; empty for the null reverse-path.</param>
/// <param name="Recipients">Envelope recipients.</param>
/// <param name="Mime">The message, CRLF wire format.</param>
public sealed record NewMessage(string Kind, string? Device, string? AlertId, string MessageId, string EnvelopeFrom, IReadOnlyList<string> Recipients, byte[] Mime);

/// <summary>The routing decision for one alert, committed atomically.</summary>
/// <param name="AlertRowId">The alert.</param>
/// <param name="Status">New alert status (<see cref="AlertStatus"/>).</param>
/// <param name="HoldUntil">For held alerts: when the digest is due.</param>
/// <param name="Message">Mail to queue, if any.</param>
/// <param name="StormKey">(device, code) whose storm state changes, if any.</param>
/// <param name="Storm">The new storm state.</param>
/// <param name="Reason">Why it is parked (<see cref="AlertStatus.Parked"/>).</param>
/// <param name="Route">Which routes matched and whom they named, for the alert's journey.</param>
/// <param name="Basis">The storm state the decision was made on. A spool shared by several instances commits the decision
/// only while the key's state is still this, and otherwise leaves the alert to be routed again on fresh state.</param>
/// <param name="State">A held alert's state (<c>raised</c>, <c>cleared</c>), kept with it: a digest counts the clears among its
/// repeats without reading them all.</param>
public sealed record RoutingCommit(long AlertRowId, string Status, DateTimeOffset? HoldUntil, NewMessage? Message, (string Device, string Code)? StormKey, StormState? Storm,
    string? Reason = null, string? Route = null, StormBasis? Basis = null, string? State = null);

/// <summary>The storm state of (device, code) as a routing decision saw it.</summary>
/// <param name="Device">Device.</param>
/// <param name="Code">Code.</param>
/// <param name="State">Its state then; null when it had none.</param>
public sealed record StormBasis(string Device, string Code, StormState? State);

/// <summary>
/// An alert parked, and why: one the spool parked instead of committing its routing decision (a Message-ID already
/// taken), or a held repeat that no longer passes validation when its digest is due.
/// </summary>
/// <param name="AlertRowId">The alert.</param>
/// <param name="Reason">What went wrong.</param>
public sealed record ParkedAlert(long AlertRowId, string Reason);

/// <summary>What a routing commit left undone besides what it committed.</summary>
/// <param name="Parked">Alerts parked instead of routed: their mail's Message-ID was already in the spool (usually none).</param>
/// <param name="NotHeld">
/// Alerts whose decision was not committed because they are not this instance's any more: on a shared spool the claim
/// ran out and another instance holds the alert now (or decided it already). Nothing of those decisions may be told:
/// the holder's decision is the one that counts. Always empty on a spool of one user.
/// </param>
public sealed record RoutingCommitted(IReadOnlyList<ParkedAlert> Parked, IReadOnlyList<long> NotHeld)
{
    /// <summary>Everything committed as decided.</summary>
    public static readonly RoutingCommitted All = new([], []);
}

/// <summary>
/// A group of held repeats whose digest is due. At most <c>maxRepeats</c> are loaded (a storm can hold millions):
/// all of them when they fit, else the oldest ones and the latest; <see cref="Total"/> counts them all and
/// <see cref="ThroughRowId"/> bounds what the commit marks digested, so repeats held after the read wait for the
/// next digest.
/// </summary>
/// <param name="Device">Device.</param>
/// <param name="Code">Code.</param>
/// <param name="Alerts">The loaded repeats, oldest first; the last one is always the latest held.</param>
/// <param name="Total">How many repeats are held in all (at most <see cref="ThroughRowId"/>).</param>
/// <param name="ThroughRowId">The newest held repeat this digest covers.</param>
/// <param name="Severities">
/// The severities among all the repeats it covers, loaded or not (rows from before severities were stored have none):
/// a critical repeat among warnings must reach whoever the critical ones go to.
/// </param>
/// <param name="Clears">How many of all the repeats it covers are <c>cleared</c> alerts, loaded or not (the rest are raises).</param>
public sealed record DueDigest(string Device, string Code, IReadOnlyList<SpooledAlert> Alerts, long Total, long ThroughRowId, IReadOnlyList<string>? Severities = null,
    long Clears = 0)
{
    /// <summary>Held repeats not loaded (counted in the mail as "and N more").</summary>
    public long Omitted => Total - Alerts.Count;
}

/// <summary>An alert or a mail parked by the gateway, as the operator sees it.</summary>
/// <param name="Kind"><c>alert</c> or <c>message</c>.</param>
/// <param name="RowId">Spool row of the alert or message.</param>
/// <param name="Device">Device it concerns, if any.</param>
/// <param name="Reference">Alert id or Message-ID.</param>
/// <param name="ParkedAt">When it was parked.</param>
/// <param name="Reason">Why.</param>
public sealed record ParkedItem(string Kind, long RowId, string? Device, string? Reference, DateTimeOffset ParkedAt, string Reason);

/// <summary>A queued mail due for an attempt.</summary>
/// <param name="RowId">Spool row.</param>
/// <param name="Kind">Kind.</param>
/// <param name="Device">Device, if any.</param>
/// <param name="AlertId">Alert id, if any.</param>
/// <param name="MessageId">Message-ID.</param>
/// <param name="EnvelopeFrom">Envelope sender.</param>
/// <param name="PendingRecipients">Recipients not yet delivered or failed.</param>
/// <param name="Mime">Wire bytes.</param>
/// <param name="Attempts">Attempts so far.</param>
/// <param name="CreatedAt">When queued.</param>
/// <param name="ExpiresAt">When it is given up.</param>
public sealed record QueuedMessage(long RowId, string Kind, string? Device, string? AlertId, string MessageId, string EnvelopeFrom,
    IReadOnlyList<string> PendingRecipients, byte[] Mime, int Attempts, DateTimeOffset CreatedAt, DateTimeOffset ExpiresAt);

/// <summary>Result for one recipient of one attempt.</summary>
/// <param name="Address">Recipient.</param>
/// <param name="Outcome"><c>sent</c>, <c>deferred</c> or <c>failed</c>.</param>
/// <param name="Reply">The remote reply (or local error), kept as <see cref="Relay.RemoteReply.Clean"/> makes it.</param>
public sealed record RecipientResult(string Address, string Outcome, string Reply)
{
    // Every reply passes here, however it was formed (a transport's, a deferral's, an expiry's `with`): the spool, the
    // logs, the console, receipts and notices all take it from a result, and need never clean it themselves.
    private readonly string _reply = Relay.RemoteReply.Clean(Reply);

    /// <summary>The remote reply (or local error): one line, at most <see cref="Relay.RemoteReply.MaxLength"/> characters.</summary>
    public string Reply
    {
        get => _reply;
        init => _reply = Relay.RemoteReply.Clean(value);
    }

    /// <summary>
    /// The relay did not work for the gateway at all in this attempt — it could not be reached, TLS or the sign-in
    /// failed, it refused the gateway's session or sender, no exchanger of the domain could be reached — rather than
    /// answer about this recipient. For the relay's health only; not stored.
    /// </summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool RelayDown { get; init; }

    /// <summary>
    /// Deferred without a word to the relay (direct MX: a domain held as unreachable; the recipients an attempt that
    /// stopped early never came to): no news of the relay's health, which such a result leaves as it was. Not stored.
    /// </summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool NotTried { get; init; }
}

/// <summary>A queued or finished mail's state, for tests, the CLI and the console.</summary>
/// <param name="RowId">Spool row.</param>
/// <param name="Kind">Kind.</param>
/// <param name="Status">A <see cref="MessageStatus"/>.</param>
/// <param name="Attempts">Attempts so far.</param>
/// <param name="NextAttemptAt">When the next attempt is due (meaningful while queued).</param>
/// <param name="LastReply">The last remote (or local) reply.</param>
/// <param name="Reason">Why it is parked or cancelled.</param>
public sealed record MessageState(long RowId, string Kind, string Status, int Attempts, DateTimeOffset NextAttemptAt, string? LastReply, string? Reason);

/// <summary>
/// A device as the operator changed it at run time: added through the console or CLI, or a configured device's
/// changes (a null field keeps the configured value).
/// </summary>
/// <param name="Id">Device id.</param>
/// <param name="SecretHash">PBKDF2 hash of its secret (<see cref="Configuration.SecretHash"/>), or null.</param>
/// <param name="Name">Display name, or null.</param>
/// <param name="Site">Site, or null.</param>
/// <param name="Owners">Owner user or group ids, or null.</param>
/// <param name="Disabled">Refused at connect and at AUTH.</param>
/// <param name="SilentAfter">How long without a heartbeat or alert before it counts as silent, or null.</param>
/// <param name="UpdatedAt">When it last changed.</param>
public sealed record ManagedDevice(string Id, string? SecretHash, string? Name, string? Site, IReadOnlyList<string>? Owners, bool Disabled,
    TimeSpan? SilentAfter, DateTimeOffset UpdatedAt);

/// <summary>What the housekeeping pass removed.</summary>
/// <param name="Messages">Finished mail removed.</param>
/// <param name="Alerts">Finished alerts removed.</param>
/// <param name="FreedPages">Database pages given back to the file system.</param>
/// <param name="More">
/// Some kind (mail, alerts, storm state, heartbeats) had as many rows removed as the call allowed: there may be more.
/// </param>
public sealed record PruneResult(long Messages, long Alerts, long FreedPages, bool More = false);

/// <summary>What happened to a queued message after an attempt.</summary>
/// <param name="RowId">Message row.</param>
/// <param name="Results">Per-recipient results of this attempt.</param>
/// <param name="NextAttemptAt">When to try the deferred recipients again; null when none remain.</param>
/// <param name="Notice">A failure notice to queue in the same transaction, if any.</param>
/// <param name="Receipt">A final receipt to keep in the same transaction (as <see cref="ISpool.KeepReceiptAsync"/>), if any.</param>
/// <param name="ReceiptsPerDevice">Most receipts kept per device.</param>
/// <param name="DigestReceipt">
/// Of a digest: the receipt this result owes each alert the digest covers (<see cref="DeliveryCommitted.DigestReceipts"/>).
/// </param>
public sealed record DeliveryCommit(long RowId, IReadOnlyList<RecipientResult> Results, DateTimeOffset? NextAttemptAt, NewMessage? Notice,
    KeptReceipt? Receipt = null, int ReceiptsPerDevice = 100, DigestReceipt? DigestReceipt = null);

/// <summary>
/// The receipt a digest's delivery result owes each alert the digest covers: the one a single alert's mail would get for
/// the same result. The spool finds those alerts (<c>alerts.digest_message</c>), the newest
/// <see cref="DeliveryCommit.ReceiptsPerDevice"/> of them, as an operator's cancel does.
/// </summary>
/// <param name="State"><c>relayed</c> or <c>failed</c>, kept with the result as <see cref="DeliveryCommit.Receipt"/> is; or
/// <c>deferred</c>, a courtesy, not kept.</param>
/// <param name="At">When the outcome happened.</param>
/// <param name="Detail">The remote reply or reason.</param>
public sealed record DigestReceipt(string State, DateTimeOffset At, string Detail)
{
    /// <summary>Whether it is a final receipt, which the spool keeps until the device has it.</summary>
    public bool IsFinal => State is "relayed" or "failed";

    /// <summary>This receipt for one of the digest's alerts.</summary>
    /// <param name="device">The digest's device.</param>
    /// <param name="alertId">The alert.</param>
    /// <returns>The receipt.</returns>
    public KeptReceipt For(string device, string alertId) => new(device, alertId, State, At, Detail);
}

/// <summary>What recording a delivery attempt's result came to (<see cref="ISpool.CommitDeliveryAsync"/>).</summary>
/// <param name="Recorded">What was recorded.</param>
/// <param name="DigestReceipts">
/// The <see cref="DeliveryCommit.DigestReceipt"/> for each alert the digest covers (the newest
/// <see cref="DeliveryCommit.ReceiptsPerDevice"/>, oldest first), to be published: a final one was kept with the result
/// (where the alert came over MQTT). Empty when none was owed, or when the outcome was not this result's to give (a cancel's
/// receipts stand).
/// </param>
public sealed record DeliveryCommitted(DeliveryRecorded Recorded, IReadOnlyList<KeptReceipt> DigestReceipts)
{
    /// <summary>The answer when no digest receipt is owed.</summary>
    /// <param name="recorded">What was recorded.</param>
    /// <returns>The answer.</returns>
    public static DeliveryCommitted Of(DeliveryRecorded recorded) => new(recorded, []);
}

/// <summary>What recording a delivery attempt's result came to.</summary>
public enum DeliveryRecorded
{
    /// <summary>Recorded: the message is queued for its next attempt or finished.</summary>
    Recorded,

    /// <summary>
    /// Recorded, but the alert had failed already: this attempt failed no recipient, an earlier one failed another (a
    /// refusal), which gave the device <c>failed</c> then. That receipt is the last word: the attempt's own — <c>deferred</c>
    /// while recipients are still to be tried, <c>relayed</c> when the last of them got it and the mail ends
    /// <c>partial</c> — is neither kept (nor a digest's for its alerts) nor to be published.
    /// </summary>
    RecordedAlreadyFailed,

    /// <summary>
    /// The operator cancelled the message while the attempt was under way, and the attempt delivered it to nobody: the
    /// attempt is on record, the message stays cancelled, and neither its notice nor its receipt was kept.
    /// </summary>
    CancelStood,

    /// <summary>
    /// The operator cancelled the message while the attempt was under way, too late: the attempt delivered it to every
    /// recipient still without it. They are recorded sent, the message <c>sent</c> with the cancel noted in its reason,
    /// the attempt's receipt kept (a digest's for each alert it covers), and the <c>failed</c> receipts the cancel had owed
    /// withdrawn: nobody went without the mail.
    /// </summary>
    CancelTooLate,

    /// <summary>
    /// The operator cancelled the message while the attempt was under way, too late for some recipients: the attempt
    /// delivered it to them, and the others stay failed. The message is <c>partial</c> with the cancel noted in its
    /// reason; the <c>failed</c> receipt the cancel owed stands, and the attempt's own receipt is not kept (as the delivery
    /// worker decides for a partial result: some recipient failed, so the alert failed).
    /// </summary>
    CancelTooLateForSome,

    /// <summary>
    /// Nothing recorded: the message is not this attempt's to record any more (on a shared spool another instance took
    /// it over after the lease ran out, and records its own attempt).
    /// </summary>
    Ignored,
}

/// <summary>What an operator's cancel came to (<see cref="ISpool.CancelAsync"/>).</summary>
/// <param name="Cancelled">False when the item was not in a state that can be cancelled; nothing changed.</param>
/// <param name="Receipts">The <c>failed</c> receipts the cancel kept for devices whose alert it gave up.</param>
public sealed record CancelResult(bool Cancelled, IReadOnlyList<KeptReceipt> Receipts)
{
    /// <summary>Nothing was cancelled.</summary>
    public static CancelResult NotCancelled { get; } = new(false, []);
}

/// <summary>Counts by state, for tests, logs and the console.</summary>
/// <param name="Alerts">Alerts by status.</param>
/// <param name="Messages">Messages by status.</param>
public sealed record SpoolCounts(IReadOnlyDictionary<string, long> Alerts, IReadOnlyDictionary<string, long> Messages);

/// <summary>
/// The durable spool. Every method that changes state returns only after the change is committed
/// (fsync'd when configured). Implementations: SQLite (<see cref="SqliteSpool"/>, one gateway) and PostgreSQL
/// (<see cref="PostgresSpool"/>, shared by several gateway instances: routing, digest and delivery work is claimed with a
/// lease by the reads that hand it out, and committed only by the claim's holder).
/// </summary>
public partial interface ISpool : IAsyncDisposable
{
    /// <summary>
    /// Null when this gateway is the spool's only user (SQLite): what it cached stays true and every change wakes it.
    /// For a spool several instances share (PostgreSQL): how often an idle loop looks again for work nothing announced
    /// (the claims of an instance that died, digests held by another instance); caches of spool state are not kept.
    /// </summary>
    TimeSpan? SharedPollInterval { get; }

    /// <summary>
    /// Gives back this instance's claims of queued messages it read as due and will not attempt now (on a shared spool,
    /// another instance may take them at once instead of after the lease); a message another instance holds is left alone.
    /// Nothing to give back on a spool of one user.
    /// </summary>
    /// <param name="rowIds">The messages.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task that ends when they are given back.</returns>
    Task UnclaimMessagesAsync(IReadOnlyCollection<long> rowIds, CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>
    /// How long an idle loop may sleep when it wants <paramref name="wanted"/>: on a shared spool no longer than
    /// <see cref="SharedPollInterval"/>, because work can become claimable with nothing announcing it (another
    /// instance's lease running out after it died).
    /// </summary>
    /// <param name="wanted">The wait the loop's own state asks for; <see cref="Timeout.InfiniteTimeSpan"/> for none.</param>
    /// <returns>The wait to use.</returns>
    TimeSpan IdleWait(TimeSpan wanted) =>
        SharedPollInterval is { } poll && (wanted == Timeout.InfiniteTimeSpan || wanted > poll) ? poll : wanted;

    /// <summary>Raised (on the writer's thread, after commit) when new alerts are stored.</summary>
    event Action? AlertsStored;

    /// <summary>Raised (after commit) when mail is queued.</summary>
    event Action? MessagesQueued;

    /// <summary>Stores an alert durably; a second copy of (device, alert id) is a duplicate.</summary>
    /// <param name="alert">The alert.</param>
    /// <param name="cancellationToken">Cancels waiting (the write may still commit).</param>
    /// <returns>Whether it was stored now or already present.</returns>
    Task<AcceptOutcome> AcceptAlertAsync(IncomingAlert alert, CancellationToken cancellationToken);

    /// <summary>
    /// Queues a mail that did not come from routing (a device's own mail submitted over SMTP, kind <c>relay</c>),
    /// durably; a second mail with the same message id is a duplicate and changes nothing.
    /// </summary>
    /// <param name="message">The mail and its envelope.</param>
    /// <param name="cancellationToken">Cancels waiting (the write may still commit).</param>
    /// <returns>Whether it was queued now or already present.</returns>
    Task<AcceptOutcome> QueueMailAsync(NewMessage message, CancellationToken cancellationToken);

    /// <summary>Records a device's latest status heartbeat.</summary>
    /// <param name="device">Device.</param>
    /// <param name="receivedAt">When received.</param>
    /// <param name="payload">Status payload.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task completing after commit.</returns>
    Task RecordStatusAsync(string device, DateTimeOffset receivedAt, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken);

    /// <summary>The latest status of a device, if any.</summary>
    /// <param name="device">Device.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Received time and payload.</returns>
    Task<(DateTimeOffset At, byte[] Payload)?> GetStatusAsync(string device, CancellationToken cancellationToken);

    /// <summary>Alerts waiting to be routed, oldest first.</summary>
    /// <param name="max">Most to return.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The alerts.</returns>
    Task<IReadOnlyList<SpooledAlert>> NewAlertsAsync(int max, CancellationToken cancellationToken);

    /// <summary>Storm state of (device, code), if any.</summary>
    /// <param name="device">Device.</param>
    /// <param name="code">Code.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The state.</returns>
    Task<StormState?> GetStormAsync(string device, string code, CancellationToken cancellationToken);

    /// <summary>The storm state of several (device, code) pairs in one read; pairs without state are left out.</summary>
    /// <param name="keys">The pairs.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>State per pair that has one.</returns>
    Task<IReadOnlyDictionary<(string Device, string Code), StormState>> GetStormsAsync(IReadOnlyCollection<(string Device, string Code)> keys, CancellationToken cancellationToken);

    /// <summary>
    /// Commits routing decisions (each atomically; all in one transaction). A decision whose mail would take a
    /// Message-ID already in the spool is not committed: its alert is parked instead and returned. On a shared spool a
    /// decision on an alert this instance no longer holds (its claim ran out and another instance took it) is not
    /// committed either, and returned as not held.
    /// </summary>
    /// <param name="commits">Decisions.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The alerts parked instead of routed, and those not held any more (usually none of either).</returns>
    Task<RoutingCommitted> CommitRoutingAsync(IReadOnlyList<RoutingCommit> commits, CancellationToken cancellationToken);

    /// <summary>Held repeats whose window has closed, for at most 64 (device, code) keys.</summary>
    /// <param name="now">Current time.</param>
    /// <param name="maxRepeats">Most repeats loaded per digest (the latest is always loaded too).</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Digests due.</returns>
    Task<IReadOnlyList<DueDigest>> DueDigestsAsync(DateTimeOffset now, int maxRepeats, CancellationToken cancellationToken);

    /// <summary>
    /// Marks the digest's held alerts digested and queues the digest mail, atomically; on a shared spool only while this
    /// instance holds the key's claim.
    /// </summary>
    /// <param name="digest">The digest.</param>
    /// <param name="message">Its mail.</param>
    /// <param name="storm">New storm state for the key.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>After commit, whether it was committed: false, and nothing changed, when another instance holds the key now.</returns>
    /// <exception cref="SpoolConflictException">The mail's Message-ID is already taken; nothing was changed.</exception>
    Task<bool> CommitDigestAsync(DueDigest digest, NewMessage message, StormState storm, CancellationToken cancellationToken);

    /// <summary>
    /// Marks the digest's held alerts unrouted, with the route that names nobody, as a single alert without recipients
    /// is; the storm state stays as it was (no mail went out).
    /// </summary>
    /// <param name="digest">The digest.</param>
    /// <param name="route">Which routes matched and that they named nobody, for each alert's journey.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>After commit, whether it was committed: false, and nothing changed, when another instance holds the key now.</returns>
    Task<bool> UnrouteDigestAsync(DueDigest digest, string route, CancellationToken cancellationToken);

    /// <summary>
    /// A due digest's held repeats after <paramref name="afterRowId"/>, up to its <see cref="DueDigest.ThroughRowId"/>, oldest
    /// first, at most <paramref name="max"/>: every repeat a digest covers is parsed again before it goes out, the ones
    /// it does not list too, a batch at a time (a storm can hold millions).
    /// </summary>
    /// <param name="digest">The digest.</param>
    /// <param name="afterRowId">The last row already read (0 for the first batch).</param>
    /// <param name="max">Most rows to return.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The repeats still held, by row.</returns>
    Task<IReadOnlyList<SpooledAlert>> HeldRepeatsAsync(DueDigest digest, long afterRowId, int max, CancellationToken cancellationToken);

    /// <summary>
    /// Parks some of a digest's held repeats, each with its own reason, as a single alert that no longer passes validation
    /// is parked; the rest stay held, and the digest read next covers only them (its counts, severities and clears too).
    /// Only rows still held are parked, so doing it again changes nothing; on a shared spool only by the holder of the
    /// key's claim, which it keeps, for the digest of the rest.
    /// </summary>
    /// <param name="digest">The digest the repeats were read with.</param>
    /// <param name="repeats">The repeats to park (held rows of the digest's device and code, listed in it or not) and why.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The rows it parked (each device is owed a receipt), after commit.</returns>
    Task<IReadOnlyList<long>> ParkRepeatsAsync(DueDigest digest, IReadOnlyList<ParkedAlert> repeats, CancellationToken cancellationToken);

    /// <summary>Parks the digest's held alerts with the reason (it cannot be composed, or none of its loaded repeats passes validation any more).</summary>
    /// <param name="digest">The digest.</param>
    /// <param name="reason">Why.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>
    /// The ids of every alert it parked, listed in the digest or not (each device is owed a receipt), after commit; none
    /// when another instance holds the key now.
    /// </returns>
    Task<IReadOnlyList<string>> ParkDigestAsync(DueDigest digest, string reason, CancellationToken cancellationToken);

    /// <summary>When the next held digest falls due, if any.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The earliest hold time.</returns>
    Task<DateTimeOffset?> NextDigestDueAsync(CancellationToken cancellationToken);

    /// <summary>Queued mail due at <paramref name="now"/>, earliest first, excluding rows in <paramref name="exclude"/>.</summary>
    /// <param name="now">Current time.</param>
    /// <param name="max">Most to return.</param>
    /// <param name="exclude">Rows already being attempted.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The messages.</returns>
    Task<IReadOnlyList<QueuedMessage>> DueMessagesAsync(DateTimeOffset now, int max, IReadOnlySet<long> exclude, CancellationToken cancellationToken);

    /// <summary>When the next queued message falls due, if any, leaving out rows in <paramref name="exclude"/>.</summary>
    /// <param name="exclude">Rows already being attempted: their due time, in the past, is not what the caller waits for.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The earliest due time.</returns>
    Task<DateTimeOffset?> NextMessageDueAsync(IReadOnlySet<long> exclude, CancellationToken cancellationToken);

    /// <summary>
    /// Records the result of a delivery attempt. A message the operator cancelled meanwhile is never queued again: the
    /// attempt is recorded, and the cancel stands unless the attempt delivered the mail (<see cref="DeliveryRecorded"/>).
    /// A digest's receipt (<see cref="DeliveryCommit.DigestReceipt"/>) goes to each alert it covers, found only then: mail
    /// of a single alert costs no look-up.
    /// </summary>
    /// <param name="commit">Results.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>What was recorded, and the digest receipts to publish, after commit.</returns>
    Task<DeliveryCommitted> CommitDeliveryAsync(DeliveryCommit commit, CancellationToken cancellationToken);

    /// <summary>
    /// Records, durably, recipients an attempt still under way has delivered to (direct MX: one domain's exchanger
    /// accepted it, the next domain is yet to come): each becomes <c>sent</c> with its reply, and a crash before the
    /// attempt's result is committed does not send it to them again. The message stays as it is (queued, in flight);
    /// <see cref="CommitDeliveryAsync"/> records the whole attempt after. Nothing is written unless the message is
    /// still queued (and, on a shared spool, claimed by this instance): a cancelled message is never attempted again,
    /// and the attempt's result says what it delivered.
    /// </summary>
    /// <param name="rowId">Message row.</param>
    /// <param name="sent">The recipients delivered to; every outcome must be <c>sent</c>.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Whether they were recorded, after commit.</returns>
    Task<bool> RecordSentRecipientsAsync(long rowId, IReadOnlyList<RecipientResult> sent, CancellationToken cancellationToken);

    /// <summary>
    /// Extends this instance's claim on a queued message to the lease from now, while an attempt on it is under way (the
    /// delivery worker renews every third of the lease on a shared spool): an attempt may last longer than one lease.
    /// Fenced like a commit: false, and nothing changed, when the message is not this instance's any more (another
    /// instance took it over after the claim ran out, or it was cancelled, parked or finished). A claim that ran out but
    /// that nobody took is renewed. A spool with one user (SQLite) has no claims: true.
    /// </summary>
    /// <param name="rowId">Message row.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Whether this instance still holds the message, after commit.</returns>
    Task<bool> RenewClaimAsync(long rowId, CancellationToken cancellationToken);

    /// <summary>
    /// Extends this instance's claims on new alerts to the lease from now, while their routing is under way (the router
    /// renews every third of the lease on a shared spool): a batch may take longer than one lease. Fenced like
    /// <see cref="RenewClaimAsync"/>: alerts another instance took over, or that are decided already, are left alone.
    /// A spool with one user (SQLite) has no claims: true.
    /// </summary>
    /// <param name="alertRowIds">The batch's alerts.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Whether this instance still holds any of them, after commit.</returns>
    Task<bool> RenewAlertClaimsAsync(IReadOnlyCollection<long> alertRowIds, CancellationToken cancellationToken);

    /// <summary>
    /// Extends this instance's claims on (device, code) keys whose digests it is composing (<see cref="DueDigestsAsync"/>)
    /// to the lease from now; fenced like <see cref="RenewAlertClaimsAsync"/>. A spool with one user (SQLite): true.
    /// </summary>
    /// <param name="keys">The keys.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Whether this instance still holds any of them, after commit.</returns>
    Task<bool> RenewDigestClaimsAsync(IReadOnlyCollection<(string Device, string Code)> keys, CancellationToken cancellationToken);

    /// <summary>Every device changed at run time.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The devices.</returns>
    Task<IReadOnlyList<ManagedDevice>> ManagedDevicesAsync(CancellationToken cancellationToken);

    /// <summary>Stores a device's run-time state (insert or replace), durably.</summary>
    /// <param name="device">The device.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task completing after commit.</returns>
    Task SaveDeviceAsync(ManagedDevice device, CancellationToken cancellationToken);

    /// <summary>The state of the mail with this Message-ID, if the spool holds it.</summary>
    /// <param name="messageId">Message-ID without angle brackets.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Its state, or null.</returns>
    Task<MessageState?> GetMessageAsync(string messageId, CancellationToken cancellationToken);

    /// <summary>Parks a queued message with the reason (handling it failed in a way retrying cannot fix).</summary>
    /// <param name="rowId">The message.</param>
    /// <param name="reason">Why.</param>
    /// <param name="parkedAt">When it was parked: the same for every try of one park, which tells this park written again
    /// from another's (an instance that took the mail over and parked it for the same reason).</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>
    /// After commit: whether it is parked by this park (also when it was already: the same park written again, its first
    /// commit's answer lost). Not when it is no longer queued (its result recorded, cancelled, parked by another park) or
    /// another instance of a shared spool holds its claim: it stands as that says, and no one is to be told it was parked.
    /// </returns>
    Task<bool> ParkMessageAsync(long rowId, string reason, DateTimeOffset parkedAt, CancellationToken cancellationToken);

    /// <summary>
    /// The alerts a storm digest covers, the newest <paramref name="max"/> of them, oldest first: the ones a receipt about
    /// the digest's mail goes to (a storm can put millions in one digest; a device keeps at most so many receipts).
    /// </summary>
    /// <param name="device">The digest's device.</param>
    /// <param name="messageId">The digest's Message-ID.</param>
    /// <param name="max">How many at most.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Their alert ids.</returns>
    Task<IReadOnlyList<string>> DigestAlertIdsAsync(string device, string messageId, int max, CancellationToken cancellationToken);

    /// <summary>Parked alerts and messages, most recently parked first.</summary>
    /// <param name="max">Most to return.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The parked items.</returns>
    Task<IReadOnlyList<ParkedItem>> ParkedAsync(int max, CancellationToken cancellationToken);

    /// <summary>
    /// Releases a parked item: an alert goes back to <c>new</c> (routed again), a message back to <c>queued</c>,
    /// due now, with its expiry extended by <c>Relay:MaxAge</c> from now.
    /// </summary>
    /// <param name="kind"><c>alert</c> or <c>message</c>.</param>
    /// <param name="rowId">Its row.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>True when it was parked and is released now.</returns>
    Task<bool> ReleaseAsync(string kind, long rowId, CancellationToken cancellationToken);

    /// <summary>
    /// Gives up a parked item (or a queued message): it is kept for the record until pruned, and never sent. Where that ends
    /// an alert's last hope of delivery, its device is owed a <c>failed</c> receipt (detail <c>cancelled by the operator:
    /// &lt;reason&gt;</c>), kept in the same transaction as <see cref="KeepReceiptAsync"/> keeps one: a parked alert; the
    /// mail of an alert, or a digest (each of its alerts, the newest <paramref name="receiptsPerDevice"/>), when the cancel
    /// fails at least one of its recipients. An attempt under way that delivers the mail after all settles it
    /// (<see cref="DeliveryRecorded"/>).
    /// </summary>
    /// <param name="kind"><c>alert</c> or <c>message</c>.</param>
    /// <param name="rowId">Its row.</param>
    /// <param name="reason">Why, for the record and the receipt.</param>
    /// <param name="receiptsPerDevice">Most receipts kept per device.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Whether it was cancelled now, and the receipts kept for it (to be published), after commit.</returns>
    Task<CancelResult> CancelAsync(string kind, long rowId, string reason, int receiptsPerDevice, CancellationToken cancellationToken);

    /// <summary>
    /// Removes finished mail (sent, failed, partial, cancelled) finished before <paramref name="before"/>, the
    /// alerts received before it that are finished and no longer referenced by mail (their own, or a storm digest
    /// covering them: its result owes them receipts), storm state older than it and heartbeats older than it or than
    /// their own retention, at most <paramref name="maxRows"/> of each in one transaction; then gives free pages back to
    /// the file system.
    /// </summary>
    /// <param name="before">The retention horizon.</param>
    /// <param name="maxRows">Most rows of each kind removed by this call (call again while <see cref="PruneResult.More"/>).</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>What was removed.</returns>
    Task<PruneResult> PruneAsync(DateTimeOffset before, int maxRows, CancellationToken cancellationToken);

    /// <summary>A round trip through the spool's writer (an empty transaction): proves it turns.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task completing when the writer ran it.</returns>
    Task PingAsync(CancellationToken cancellationToken);

    /// <summary>Counts of alerts and messages by status.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The counts.</returns>
    Task<SpoolCounts> CountsAsync(CancellationToken cancellationToken);

    /// <summary>The stored alert row for (device, alert id), for tests, the API and the receipt of a retransmission.</summary>
    /// <param name="device">Device.</param>
    /// <param name="alertId">Alert id.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Status and reason, or null.</returns>
    Task<(string Status, string? Reason)?> GetAlertAsync(string device, string alertId, CancellationToken cancellationToken);
}
