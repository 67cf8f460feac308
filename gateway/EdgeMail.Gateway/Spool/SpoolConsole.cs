namespace EdgeMail.Gateway.Spool;

/// <summary>Which alerts to list, newest first.</summary>
/// <param name="Device">Only this device.</param>
/// <param name="Code">Only this code.</param>
/// <param name="Severity">Only this severity (<c>info</c>, <c>warning</c>, <c>critical</c>).</param>
/// <param name="Status">Only this status (<see cref="AlertStatus"/>).</param>
/// <param name="From">Received at or after.</param>
/// <param name="To">Received before.</param>
/// <param name="BeforeRowId">Paging: only rows older than this one.</param>
/// <param name="Limit">Most to return.</param>
public sealed record AlertQuery(string? Device = null, string? Code = null, string? Severity = null, string? Status = null, DateTimeOffset? From = null,
    DateTimeOffset? To = null, long? BeforeRowId = null, int Limit = 100)
{
    /// <summary>
    /// The query as an SQL condition over <c>alerts</c> and its arguments, the clamped limit last; each spool names its
    /// parameters its own way (<paramref name="parameter"/> gets the argument's index) and may adapt text values.
    /// </summary>
    /// <param name="parameter">The placeholder for the argument at an index.</param>
    /// <param name="text">How a text argument is passed.</param>
    /// <returns>The condition (<c>1=1</c> for none) and the arguments.</returns>
    internal (string Where, List<object?> Args) Filter(Func<int, string> parameter, Func<string, object?> text)
    {
        var where = new System.Text.StringBuilder("1=1");
        var args = new List<object?>();
        void Add(string column, string op, object? value)
        {
            where.Append(" AND ").Append(column).Append(' ').Append(op).Append(' ').Append(parameter(args.Count));
            args.Add(value);
        }

        if (Device is { Length: > 0 })
        {
            Add("device", "=", text(Device));
        }

        if (Code is { Length: > 0 })
        {
            Add("code", "=", text(Code));
        }

        if (Severity is { Length: > 0 })
        {
            Add("severity", "=", text(Severity));
        }

        if (Status is { Length: > 0 })
        {
            Add("status", "=", text(Status));
        }

        if (From is { } from)
        {
            Add("received_at", ">=", from.ToUnixTimeMilliseconds());
        }

        if (To is { } to)
        {
            Add("received_at", "<", to.ToUnixTimeMilliseconds());
        }

        if (BeforeRowId is { } before)
        {
            Add("rowid", "<", before);
        }

        args.Add(Math.Clamp(Limit, 1, 1000));
        return (where.ToString(), args);
    }
}

/// <summary>One alert in a list.</summary>
/// <param name="RowId">Spool row (the console's alert number).</param>
/// <param name="Device">Device.</param>
/// <param name="AlertId">The device's alert id.</param>
/// <param name="Code">Code (null when rejected without one).</param>
/// <param name="Severity">Severity (null when rejected).</param>
/// <param name="Status">Status.</param>
/// <param name="ReceivedAt">When received.</param>
/// <param name="Via">Protocol it came with.</param>
/// <param name="Peer">Remote endpoint.</param>
/// <param name="Reason">Why rejected or parked.</param>
public sealed record AlertSummary(long RowId, string Device, string AlertId, string? Code, string? Severity, string Status, DateTimeOffset ReceivedAt, string Via,
    string? Peer, string? Reason);

/// <summary>One recipient of a mail and where it stands.</summary>
/// <param name="Address">Address.</param>
/// <param name="Status"><c>pending</c>, <c>sent</c> or <c>failed</c>.</param>
/// <param name="Reply">The last reply for it.</param>
public sealed record RecipientState(string Address, string Status, string? Reply);

/// <summary>One delivery attempt of a mail.</summary>
/// <param name="Attempt">1 for the first.</param>
/// <param name="At">When its result was recorded.</param>
/// <param name="Results">Each recipient's outcome and the remote reply.</param>
public sealed record AttemptRecord(int Attempt, DateTimeOffset At, IReadOnlyList<RecipientResult> Results);

/// <summary>Which mail to list, newest first.</summary>
/// <param name="State"><c>queued</c> (due, never tried), <c>deferred</c> (tried, waiting to retry), or any <see cref="MessageStatus"/>; null for all.</param>
/// <param name="Device">Only mail about this device.</param>
/// <param name="BeforeRowId">Paging: only rows older than this one.</param>
/// <param name="Limit">Most to return.</param>
public sealed record MessageQuery(string? State = null, string? Device = null, long? BeforeRowId = null, int Limit = 100);

/// <summary>One mail in a list.</summary>
/// <param name="RowId">Spool row.</param>
/// <param name="Kind">alert, digest, notice or relay.</param>
/// <param name="MessageId">Message-ID.</param>
/// <param name="Device">Device it concerns.</param>
/// <param name="AlertId">Alert it carries.</param>
/// <param name="Status">Status.</param>
/// <param name="Attempts">Attempts so far.</param>
/// <param name="CreatedAt">When queued.</param>
/// <param name="NextAttemptAt">Next attempt (while queued).</param>
/// <param name="LastReply">Last reply.</param>
/// <param name="Reason">Why parked or cancelled.</param>
public sealed record MessageSummary(long RowId, string Kind, string MessageId, string? Device, string? AlertId, string Status, int Attempts,
    DateTimeOffset CreatedAt, DateTimeOffset NextAttemptAt, string? LastReply, string? Reason);

/// <summary>Everything about one mail.</summary>
/// <param name="Summary">Its list entry.</param>
/// <param name="EnvelopeFrom">Envelope sender (empty: null reverse-path).</param>
/// <param name="ExpiresAt">When it is given up.</param>
/// <param name="FinishedAt">When it finished.</param>
/// <param name="Recipients">Its recipients.</param>
/// <param name="Attempts">Every attempt with every reply.</param>
/// <param name="Mime">The message as sent (CRLF wire bytes).</param>
public sealed record MessageDetail(MessageSummary Summary, string EnvelopeFrom, DateTimeOffset ExpiresAt, DateTimeOffset? FinishedAt,
    IReadOnlyList<RecipientState> Recipients, IReadOnlyList<AttemptRecord> Attempts, byte[] Mime);

/// <summary>An alert's whole journey in the gateway.</summary>
/// <param name="Alert">The alert.</param>
/// <param name="Payload">Its payload exactly as sent.</param>
/// <param name="Route">Which routes matched and whom they named (null before routing).</param>
/// <param name="DigestMessageId">The digest it went out in, when it was a held repeat.</param>
/// <param name="Messages">The mail made from it.</param>
public sealed record AlertJourney(AlertSummary Alert, byte[] Payload, string? Route, string? DigestMessageId, IReadOnlyList<MessageDetail> Messages);

/// <summary>
/// What becomes of a rejected alert the operator retries (<see cref="ISpool.RetryRejectedAsync"/>), decided on its
/// payload parsed again.
/// </summary>
/// <param name="RowId">The alert.</param>
/// <param name="ExpectedReason">The reason it is rejected with as the decision read it; a row rejected with another one
/// by now (another retry came first) is left alone.</param>
/// <param name="AlertId">Its id from now on: the payload's own, also when it was kept under its digest.</param>
/// <param name="Code">The alert code, when it is valid now.</param>
/// <param name="Severity">The alert's severity, when it is valid now.</param>
/// <param name="RejectReason">Why it is still rejected; null to make it <c>new</c>.</param>
public sealed record RejectedRetry(long RowId, string ExpectedReason, string AlertId, string? Code, string? Severity, string? RejectReason);

/// <summary>What <see cref="ISpool.RetryRejectedAsync"/> did.</summary>
public enum RejectedRetryOutcome
{
    /// <summary>It is <c>new</c>, under its own id: routed like any alert.</summary>
    Retried,

    /// <summary>It stays rejected, with the new reason.</summary>
    StillRejected,

    /// <summary>Nothing: it is gone, or no longer rejected with the expected reason.</summary>
    Changed,

    /// <summary>Nothing: another alert of its device has its id, and routing this one too would mail the alert twice.</summary>
    Duplicate,
}

/// <summary>What <see cref="ISpool.RetryRejectedAsync"/> did.</summary>
/// <param name="Outcome">The outcome.</param>
/// <param name="HolderRowId">For <see cref="RejectedRetryOutcome.Duplicate"/>: the alert that has the id.</param>
public sealed record RejectedRetryResult(RejectedRetryOutcome Outcome, long? HolderRowId = null);

/// <summary>What the dashboard counts.</summary>
/// <param name="AlertsBySeverity">Alerts received since the given time, by severity (rejected ones under <c>rejected</c>).</param>
/// <param name="MessagesByState">Mail by state: queued, deferred, failed, parked (and sent since the given time).</param>
/// <param name="SpoolBytes">Size of the spool's database.</param>
public sealed record DashboardCounts(IReadOnlyDictionary<string, long> AlertsBySeverity, IReadOnlyDictionary<string, long> MessagesByState, long SpoolBytes);

/// <summary>What a restarted silence watch takes over about one device.</summary>
/// <param name="Device">Device id.</param>
/// <param name="ShortestHeartbeatGap">The shortest gap between its recorded heartbeats in the period read, if two were.</param>
/// <param name="OpenSilenceAlertId">The alert id of its last silence alert, unless a return alert came after it.</param>
/// <param name="SilenceEndedAt">
/// When its last silence ended without the device being heard (disabled, or no longer configured): the time of that
/// silence's return alert stored cancelled, when it is the last alert of the silence watch for the device.
/// </param>
public sealed record DeviceSilenceHistory(string Device, TimeSpan? ShortestHeartbeatGap, string? OpenSilenceAlertId, DateTimeOffset? SilenceEndedAt = null);

/// <summary>A device's last signs of life, as the spool saw them.</summary>
/// <param name="Device">Device id.</param>
/// <param name="LastAlertAt">Last alert received.</param>
/// <param name="LastStatusAt">Last heartbeat received.</param>
/// <param name="LastStatus">That heartbeat.</param>
public sealed record DeviceActivity(string Device, DateTimeOffset? LastAlertAt, DateTimeOffset? LastStatusAt, byte[]? LastStatus);

/// <summary>An API key, as stored (only the hash).</summary>
/// <param name="Id">Public key id (the part before the dot).</param>
/// <param name="Name">What it is for.</param>
/// <param name="Hash">SHA-256 of the secret part, hex.</param>
/// <param name="CreatedAt">Created.</param>
/// <param name="RevokedAt">Revoked, if it was.</param>
/// <param name="Scope">What it may do.</param>
public sealed record ApiKeyRecord(string Id, string Name, string Hash, DateTimeOffset CreatedAt, DateTimeOffset? RevokedAt, ApiKeyScope Scope);

/// <summary>What an API key may do, chosen when it is made.</summary>
public enum ApiKeyScope
{
    /// <summary>Read: the API's GET requests, <c>/metrics</c> and <c>/events</c> (a scraper, a dashboard screen).</summary>
    Read,

    /// <summary>Everything a console session may do (the local CLI's key; every key made before keys had scopes).</summary>
    Admin,
}

/// <summary>The names of <see cref="ApiKeyScope"/> in the spool and the API.</summary>
public static class ApiKeyScopes
{
    /// <summary><see cref="ApiKeyScope.Read"/>.</summary>
    public const string Read = "read";

    /// <summary><see cref="ApiKeyScope.Admin"/>.</summary>
    public const string Admin = "admin";

    /// <summary>Every name, least power first.</summary>
    public static readonly IReadOnlyList<string> Names = [Read, Admin];

    /// <summary>The name of a scope.</summary>
    /// <param name="scope">The scope.</param>
    /// <returns><c>read</c> or <c>admin</c>.</returns>
    public static string Name(ApiKeyScope scope) => scope == ApiKeyScope.Admin ? Admin : Read;

    /// <summary>The scope a name stands for, exactly as written.</summary>
    /// <param name="name">The name.</param>
    /// <param name="scope">The scope.</param>
    /// <returns>False when it names none.</returns>
    public static bool TryParse(string? name, out ApiKeyScope scope)
    {
        scope = name == Admin ? ApiKeyScope.Admin : ApiKeyScope.Read;
        return name is Read or Admin;
    }

    /// <summary>
    /// The scope a stored key has. The column came with the scopes, its default <c>admin</c> for the keys made before;
    /// a name this gateway does not know (written by a newer one) grants the least.
    /// </summary>
    /// <param name="stored">The column's value.</param>
    /// <returns>The scope.</returns>
    public static ApiKeyScope FromStored(string stored) => stored == Admin ? ApiKeyScope.Admin : ApiKeyScope.Read;
}

/// <summary>What the operator's console and CLI read and do.</summary>
public partial interface ISpool
{
    /// <summary>Alerts matching a query, newest first.</summary>
    /// <param name="query">The query.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The alerts.</returns>
    Task<IReadOnlyList<AlertSummary>> QueryAlertsAsync(AlertQuery query, CancellationToken cancellationToken);

    /// <summary>One alert and everything that became of it.</summary>
    /// <param name="rowId">Its row.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The journey, or null.</returns>
    Task<AlertJourney?> AlertJourneyAsync(long rowId, CancellationToken cancellationToken);

    /// <summary>Mail matching a query, newest first.</summary>
    /// <param name="query">The query.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The mail.</returns>
    Task<IReadOnlyList<MessageSummary>> QueryMessagesAsync(MessageQuery query, CancellationToken cancellationToken);

    /// <summary>One mail with its recipients, attempts and content.</summary>
    /// <param name="rowId">Its row.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The mail, or null.</returns>
    Task<MessageDetail?> MessageDetailAsync(long rowId, CancellationToken cancellationToken);

    /// <summary>Makes a queued (deferred) mail due now.</summary>
    /// <param name="rowId">Its row.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>True when it was queued and is due now.</returns>
    Task<bool> RetryNowAsync(long rowId, CancellationToken cancellationToken);

    /// <summary>
    /// Retries a rejected alert, atomically, if it is still rejected with <see cref="RejectedRetry.ExpectedReason"/>: made
    /// <c>new</c> under its own id, code and severity (its device, payload and received time stay), unless another alert
    /// of its device has that id; or kept rejected with the new reason.
    /// </summary>
    /// <param name="retry">The decision.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>What was done, after commit.</returns>
    Task<RejectedRetryResult> RetryRejectedAsync(RejectedRetry retry, CancellationToken cancellationToken);

    /// <summary>The dashboard's counts.</summary>
    /// <param name="since">Alerts (and sent mail) counted from here.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The counts.</returns>
    Task<DashboardCounts> DashboardAsync(DateTimeOffset since, CancellationToken cancellationToken);

    /// <summary>Every device's last alert and heartbeat.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>One entry per device the spool has heard from.</returns>
    Task<IReadOnlyList<DeviceActivity>> DeviceActivityAsync(CancellationToken cancellationToken);

    /// <summary>Alerts of a device per hour since a time.</summary>
    /// <param name="device">Device.</param>
    /// <param name="since">Start.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Hour (start) and count, for hours with alerts.</returns>
    Task<IReadOnlyList<(DateTimeOffset Hour, long Count)>> AlertsPerHourAsync(string device, DateTimeOffset since, CancellationToken cancellationToken);

    /// <summary>
    /// What the silence watch needs after a restart, for every device at once (a query each, not three per device):
    /// the shortest gap between a device's recorded heartbeats since a time, and the last silence alert
    /// (<c>DEVICE_SILENT</c>) raised for it when no return (<c>DEVICE_BACK</c>) was raised after it.
    /// </summary>
    /// <param name="heartbeatsSince">Start of the heartbeat history to read.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>One entry per device with either; in no particular order.</returns>
    Task<IReadOnlyList<DeviceSilenceHistory>> SilenceHistoryAsync(DateTimeOffset heartbeatsSince, CancellationToken cancellationToken);

    /// <summary>
    /// Records the devices the silence watch watches, each with when it began to: one not recorded yet is recorded as
    /// watched from <paramref name="now"/>, one recorded keeps its time; with <paramref name="forgetOthers"/> (at start,
    /// given every configured device) the others are forgotten, so that one configured again later is new then — but
    /// never one the spool keeps a run-time state of (<see cref="ISpool.SaveDeviceAsync"/>: added or changed at run time):
    /// every instance sharing the spool has those, and one not given was added on another instance after the caller read them.
    /// </summary>
    /// <param name="devices">The devices.</param>
    /// <param name="now">When the new ones began to be watched.</param>
    /// <param name="forgetOthers">Whether to forget the devices not given.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>When each given device began to be watched; the Unix epoch for one watched since before the spool recorded it.</returns>
    Task<IReadOnlyDictionary<string, DateTimeOffset>> WatchDevicesAsync(IReadOnlyCollection<string> devices, DateTimeOffset now, bool forgetOthers,
        CancellationToken cancellationToken);

    /// <summary>A device's recorded heartbeats since a time (at most one every 5 minutes is kept).</summary>
    /// <param name="device">Device.</param>
    /// <param name="since">Start.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Time and payload, oldest first.</returns>
    Task<IReadOnlyList<(DateTimeOffset At, byte[] Payload)>> HeartbeatsAsync(string device, DateTimeOffset since, CancellationToken cancellationToken);

    /// <summary>The console's admin password hash, if one was set.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The hash, or null.</returns>
    Task<string?> AdminPasswordHashAsync(CancellationToken cancellationToken);

    /// <summary>Sets the console's admin password hash.</summary>
    /// <param name="hash">PBKDF2 hash.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task completing after commit.</returns>
    Task SetAdminPasswordHashAsync(string hash, CancellationToken cancellationToken);

    /// <summary>Every API key (revoked ones too).</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The keys.</returns>
    Task<IReadOnlyList<ApiKeyRecord>> ApiKeysAsync(CancellationToken cancellationToken);

    /// <summary>Stores an API key (insert or replace).</summary>
    /// <param name="key">The key.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task completing after commit.</returns>
    Task SaveApiKeyAsync(ApiKeyRecord key, CancellationToken cancellationToken);
}
