using EdgeMail.Gateway.Ingest;

namespace EdgeMail.Gateway.Configuration;

/// <summary>
/// Everything the gateway is told: who the people are, which devices may connect, which alerts go to whom,
/// how mail leaves, and where state lives. Bound from the root of the configuration (JSON file, then
/// <c>EDGEMAIL_</c> environment variables, then <c>--Key=value</c> command-line arguments).
/// </summary>
public sealed class GatewayOptions
{
    /// <summary>Directory for the spool, the local mailbox and generated demo state. Relative paths are resolved against the working directory.</summary>
    public string DataDirectory { get; set; } = "edgemail-data";

    /// <summary>The MQTT listener.</summary>
    public MqttIngestOptions Mqtt { get; set; } = new();

    /// <summary>Who the gateway's mail comes from.</summary>
    public SenderOptions Sender { get; set; } = new();

    /// <summary>People, by user id.</summary>
    public Dictionary<string, UserOptions> Users { get; set; } = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>Groups (roles such as <c>oncall</c>): group id to member user ids.</summary>
    public Dictionary<string, List<string>> Groups { get; set; } = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>Devices allowed to connect, by device id.</summary>
    public Dictionary<string, DeviceOptions> Devices { get; set; } = new(StringComparer.Ordinal);

    /// <summary>Routes, evaluated in order; every matching route adds its recipients.</summary>
    public List<RouteOptions> Routes { get; set; } = [];

    /// <summary>Where mail goes.</summary>
    public RelayOptions Relay { get; set; } = new();

    /// <summary>The durable spool.</summary>
    public SpoolOptions Spool { get; set; } = new();

    /// <summary>Storm control.</summary>
    public StormOptions Storm { get; set; } = new();

    /// <summary>Final receipts kept until the device has them.</summary>
    public ReceiptOptions Receipts { get; set; } = new();

    /// <summary>Silent devices: the alert a dead sensor cannot send.</summary>
    public SilenceOptions Silence { get; set; } = new();

    /// <summary>Directory with user-edited templates (<c>NAME.subject.liquid</c>, <c>NAME.text.liquid</c>, <c>NAME.html.liquid</c>); empty for the built-in ones.</summary>
    public string TemplateDirectory { get; set; } = string.Empty;

    /// <summary>Optional DKIM signing of composed mail (<c>Dkim:KeyFile</c>, <c>Dkim:Domain</c>, <c>Dkim:Selector</c>).</summary>
    public Composition.DkimOptions Dkim { get; set; } = new();

    /// <summary>Resolves <see cref="DataDirectory"/> to an absolute path.</summary>
    /// <returns>The absolute data directory.</returns>
    public string DataPath() => Path.GetFullPath(DataDirectory);

    /// <summary>The SQLite spool's file, absolute: <c>Spool:Path</c>, else <c>spool.db</c> in the data directory.</summary>
    /// <returns>The absolute path of the spool database.</returns>
    public string SpoolPath() => Spool.Path.Length > 0 ? Path.GetFullPath(Spool.Path) : Path.Combine(DataPath(), "spool.db");
}

/// <summary>The gateway's mail identity (configuration section <c>Sender</c>).</summary>
public sealed class SenderOptions
{
    /// <summary>From address of every alert mail.</summary>
    public string Address { get; set; } = "edgemail@gateway.localhost";

    /// <summary>Display name in From.</summary>
    public string DisplayName { get; set; } = "EdgeMail";

    /// <summary>Host name used in Message-IDs, Received headers and EHLO.</summary>
    public string Hostname { get; set; } = "gateway.localhost";

    /// <summary>Who receives failure notices (a user id or an address); empty sends them to the sender address.</summary>
    public string Operator { get; set; } = string.Empty;

    /// <summary>
    /// Notices to the operator about things the gateway did on its own (parked items, a full disk) go out at most
    /// this often; what happens in between is collected into the next one.
    /// </summary>
    public TimeSpan OperatorNoticeInterval { get; set; } = TimeSpan.FromMinutes(15);
}

/// <summary>A person who can be told about alerts.</summary>
public sealed class UserOptions
{
    /// <summary>Display name.</summary>
    public string Name { get; set; } = string.Empty;

    /// <summary>Mail address.</summary>
    public string Email { get; set; } = string.Empty;
}

/// <summary>A device allowed to connect.</summary>
public sealed class DeviceOptions
{
    /// <summary>The hashed secret, <c>pbkdf2-sha256$iterations$salt$hash</c> (see <see cref="SecretHash"/>; <c>edgemail hash-secret</c> makes one).</summary>
    public string Secret { get; set; } = string.Empty;

    /// <summary>Human name used in mail (defaults to the id).</summary>
    public string Name { get; set; } = string.Empty;

    /// <summary>Site (building, hall) shown in the subject.</summary>
    public string Site { get; set; } = string.Empty;

    /// <summary>User or group ids that own the device; the route recipient <c>owners</c> expands to them.</summary>
    public List<string> Owners { get; set; } = [];

    /// <summary>
    /// How long the device may send neither a heartbeat nor an alert before the gateway raises <c>DEVICE_SILENT</c>
    /// for it; empty for the default (three heartbeat intervals as observed, else <c>Silence:DefaultAfter</c>).
    /// </summary>
    public TimeSpan? SilentAfter { get; set; }
}

/// <summary>One routing rule: which alerts, to whom, with which template.</summary>
public sealed class RouteOptions
{
    /// <summary>Device id pattern (<c>*</c> and <c>?</c> wildcards).</summary>
    public string Devices { get; set; } = "*";

    /// <summary>Alert code pattern (<c>*</c> and <c>?</c> wildcards).</summary>
    public string Codes { get; set; } = "*";

    /// <summary>Lowest severity that matches: <c>info</c>, <c>warning</c> or <c>critical</c>.</summary>
    public string MinSeverity { get; set; } = "info";

    /// <summary>User ids, group ids, the word <c>owners</c>, or literal addresses.</summary>
    public List<string> To { get; set; } = [];

    /// <summary>Template name.</summary>
    public string Template { get; set; } = "default";
}

/// <summary>How mail leaves the gateway (configuration section <c>Relay</c>).</summary>
public sealed class RelayOptions
{
    /// <summary><c>Mailbox</c> (default: files on disk), <c>Smarthost</c> or <c>DirectMx</c>.</summary>
    public string Mode { get; set; } = "Mailbox";

    /// <summary>Local mailbox directory; empty means <c>DataDirectory/mailbox</c>.</summary>
    public string MailboxPath { get; set; } = string.Empty;

    /// <summary>The local mailbox's size limit (MiB): past it, the oldest messages are removed first. 0 for no limit.</summary>
    public long MailboxMaxMegabytes { get; set; } = 1024;

    /// <summary>Smarthost name or address.</summary>
    public string Host { get; set; } = string.Empty;

    /// <summary>Smarthost port (587 STARTTLS, 465 implicit TLS, 25).</summary>
    public int Port { get; set; } = 587;

    /// <summary><c>StartTls</c>, <c>Tls</c> (implicit), <c>StartTlsWhenAvailable</c> or <c>None</c>.</summary>
    public string Security { get; set; } = "StartTls";

    /// <summary>
    /// How the gateway authenticates to the smarthost: <c>Password</c> (AUTH PLAIN/LOGIN with <see cref="User"/> and
    /// <see cref="Password"/>), <c>OAuth2ClientCredentials</c> (Exchange Online app-only), <c>OAuth2RefreshToken</c>
    /// (delegated sign-in, Microsoft 365 or Gmail) or <c>GoogleServiceAccount</c> (Workspace domain-wide delegation).
    /// The OAuth2 modes send XOAUTH2 as <see cref="User"/> with settings under <see cref="OAuth2"/>.
    /// </summary>
    public string Auth { get; set; } = RelayAuthModes.Password;

    /// <summary>Token settings for the OAuth2 modes of <see cref="Auth"/>.</summary>
    public RelayOAuth2Options OAuth2 { get; set; } = new();

    /// <summary>The provider's sending limits, which the gateway keeps to (excess mail waits in the spool).</summary>
    public RelayLimitsOptions Limits { get; set; } = new();

    /// <summary>AUTH user name (the sending mailbox with OAuth2); empty for no AUTH.</summary>
    public string User { get; set; } = string.Empty;

    /// <summary>AUTH password.</summary>
    public string Password { get; set; } = string.Empty;

    /// <summary>AUTH mechanism to use (<c>PLAIN</c> or <c>LOGIN</c>); empty picks the strongest the server offers.</summary>
    public string AuthMechanism { get; set; } = string.Empty;

    /// <summary>Accept any server certificate, the smarthost's and the OAuth2 token endpoints' (tests only).</summary>
    public bool AcceptAnyCertificate { get; set; }

    /// <summary>SMTP port used for direct MX delivery.</summary>
    public int MxPort { get; set; } = 25;

    /// <summary>DNS server for MX lookups as <c>host:port</c>; empty uses the system resolver.</summary>
    public string DnsServer { get; set; } = string.Empty;

    /// <summary>Waits between attempts; the last one repeats.</summary>
    public List<TimeSpan> Backoff { get; set; } = [];

    /// <summary>Give up and bounce after this long (RFC 5321 §4.5.4.1: at least 4–5 days).</summary>
    public TimeSpan MaxAge { get; set; } = TimeSpan.FromDays(5);

    /// <summary>Messages delivered in parallel.</summary>
    public int Concurrency { get; set; } = 4;

    /// <summary>
    /// Direct MX: deliveries under way to one domain at most; mail to it over that waits for one to end. Unset, one less
    /// than <see cref="Concurrency"/> (at least 1): a domain whose exchangers answer slowly leaves a slot to the others,
    /// and mail that all goes to one domain loses only that one.
    /// </summary>
    public int? DomainConcurrency { get; set; }

    /// <summary><see cref="DomainConcurrency"/>, or one less than <see cref="Concurrency"/> (at least 1).</summary>
    /// <returns>The limit.</returns>
    public int EffectiveDomainConcurrency() => DomainConcurrency ?? DefaultDomainConcurrency(Concurrency);

    /// <summary>The default <see cref="DomainConcurrency"/> for <paramref name="concurrency"/>.</summary>
    /// <returns>One less than it, at least 1.</returns>
    public static int DefaultDomainConcurrency(int concurrency) => Math.Max(1, concurrency - 1);

    /// <summary>Connection timeout for SMTP.</summary>
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// How long one delivery attempt may take in all: its DNS lookups and every connection and transaction it makes.
    /// Unset, <see cref="EffectiveAttemptTimeout"/>. The recipients not done by then are deferred.
    /// </summary>
    public TimeSpan? AttemptTimeout { get; set; }

    /// <summary>The effective bound on one delivery attempt.</summary>
    /// <returns><see cref="AttemptTimeout"/>, or 10 minutes, or four times <see cref="Timeout"/> when that is longer.</returns>
    public TimeSpan EffectiveAttemptTimeout()
    {
        // Unset, a configuration with a long Timeout (valid up to an hour) must still start and leave an attempt room
        // for several of its commands.
        var fallback = TimeSpan.FromMinutes(10);
        return AttemptTimeout ?? (Timeout * 4 > fallback ? Timeout * 4 : fallback);
    }

    /// <summary>The effective backoff schedule.</summary>
    /// <returns>The configured schedule, or Postfix-like defaults.</returns>
    public IReadOnlyList<TimeSpan> EffectiveBackoff() => Backoff.Count > 0
        ? Backoff
        : [TimeSpan.FromMinutes(1), TimeSpan.FromMinutes(5), TimeSpan.FromMinutes(15), TimeSpan.FromMinutes(30), TimeSpan.FromMinutes(66)];
}

/// <summary>The spool engines <c>Spool:Provider</c> names.</summary>
public static class SpoolProviders
{
    /// <summary>A SQLite file beside the gateway: one instance (default).</summary>
    public const string Sqlite = "Sqlite";

    /// <summary>A PostgreSQL database that several gateway instances share (docs/scale-out.md).</summary>
    public const string Postgres = "Postgres";

    /// <summary>Both.</summary>
    public static readonly IReadOnlyList<string> All = [Sqlite, Postgres];
}

/// <summary>The durable spool (configuration section <c>Spool</c>).</summary>
public sealed class SpoolOptions
{
    /// <summary><c>Sqlite</c> (default: one gateway) or <c>Postgres</c> (several gateway instances share one database).</summary>
    public string Provider { get; set; } = SpoolProviders.Sqlite;

    /// <summary>
    /// For <c>Postgres</c>: the Npgsql connection string, e.g. <c>Host=db1;Database=edgemail;Username=edgemail</c> (the
    /// password best from <c>EDGEMAIL_Spool__ConnectionString</c> or a <c>.pgpass</c> file).
    /// </summary>
    public string ConnectionString { get; set; } = string.Empty;

    /// <summary>
    /// For <c>Postgres</c>: how long an instance's claim on routing, digest or delivery work lasts. An instance that dies
    /// holds its claims this long before another takes the work over; work under way (a delivery attempt, a routing batch,
    /// a round of digests) renews its claim every third of it. At least twice <c>Relay:Timeout</c>.
    /// </summary>
    public TimeSpan ClaimLease { get; set; } = TimeSpan.FromMinutes(2);

    /// <summary>
    /// For <c>Postgres</c>: how often an idle instance looks for work no notification announced (claims whose lease ran
    /// out, digests held by another instance).
    /// </summary>
    public TimeSpan PollInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>SQLite file; empty means <c>DataDirectory/spool.db</c>.</summary>
    public string Path { get; set; } = string.Empty;

    /// <summary>Fsync each commit (SQLite <c>synchronous=FULL</c>, PostgreSQL <c>synchronous_commit=on</c>). Turning it off breaks the durability promise; benchmarks only.</summary>
    public bool Fsync { get; set; } = true;

    /// <summary>Most operations committed in one transaction.</summary>
    public int MaxBatch { get; set; } = 512;

    /// <summary>
    /// A burst: alerts arriving faster than this many a second (it ends below half of it). Zero turns burst
    /// priority off.
    /// </summary>
    public int BurstAbove { get; set; } = 1000;

    /// <summary>
    /// For this long from the start of a burst, routing and delivery wait and the cores go to accepting alerts: the
    /// devices wait for their PUBACK with the alerts in their small flash, the gateway has a disk. Past it they run
    /// alongside ingest again, so under sustained load mail never lags by more than this plus the backlog.
    /// </summary>
    public TimeSpan BurstPriority { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Finished mail (delivered, failed, expired, cancelled) and finished alerts are removed this long after they
    /// finished (were received); the local mailbox keeps messages this long too.
    /// </summary>
    public TimeSpan Retention { get; set; } = TimeSpan.FromDays(30);

    /// <summary>How often the housekeeper prunes; it also runs once at start.</summary>
    public TimeSpan HousekeepingInterval { get; set; } = TimeSpan.FromHours(1);

    /// <summary>
    /// Below this much free space (MiB) on the spool's file system, new alerts and mail are refused with
    /// back-pressure (MQTT: no PUBACK, SMTP: 452 4.3.1) until space is freed. 0 turns the guard off.
    /// </summary>
    public long MinFreeMegabytes { get; set; } = 64;

    /// <summary>
    /// SQLite only: past this many MiB the spool's write-ahead log is copied into the database and started from its
    /// beginning between two commits, and its file cut back to this length; without it a spool that never pauses (a
    /// burst, a backlog) grows the WAL by tens of MB a second.
    /// </summary>
    public long WalLimitMegabytes { get; set; } = Spool.SqliteSpool.DefaultWalLimitBytes >> 20;
}

/// <summary>
/// Final receipts (configuration section <c>Receipts</c>): a device's <c>failed</c> and <c>relayed</c> receipts are kept in
/// the spool until the device acknowledged them (or, with an external broker, the broker took them), so a device away
/// across a gateway restart still gets them when it subscribes again. Bounded per device and by age.
/// </summary>
public sealed class ReceiptOptions
{
    /// <summary>Most receipts kept for one device; past it its oldest are dropped.</summary>
    public int MaxPerDevice { get; set; } = 100;

    /// <summary>A receipt not delivered within this long is dropped by the housekeeper (the alert's state stays in the console).</summary>
    public TimeSpan MaxAge { get; set; } = TimeSpan.FromDays(7);
}

/// <summary>
/// Silent devices (configuration section <c>Silence</c>): a device that has sent neither a heartbeat nor an alert for
/// longer than its limit raises <c>DEVICE_SILENT</c> to its people through the normal routes, and <c>DEVICE_BACK</c>
/// when it is heard again. The limit is the device's <c>SilentAfter</c>; else three of its heartbeat intervals as
/// observed (at least <see cref="MinimumAfter"/>); else <see cref="DefaultAfter"/>.
/// </summary>
public sealed class SilenceOptions
{
    /// <summary>Watch for silent devices. On by default.</summary>
    public bool Enabled { get; set; } = true;

    /// <summary>The limit for a device that sends no heartbeats (only alerts).</summary>
    public TimeSpan DefaultAfter { get; set; } = TimeSpan.FromHours(24);

    /// <summary>The shortest limit derived from heartbeats.</summary>
    public TimeSpan MinimumAfter { get; set; } = TimeSpan.FromMinutes(5);

    /// <summary>How often devices are looked at.</summary>
    public TimeSpan CheckInterval { get; set; } = TimeSpan.FromSeconds(30);
}

/// <summary>Storm control (configuration section <c>Storm</c>).</summary>
public sealed class StormOptions
{
    /// <summary>Repeats of one (device, code) inside this window after a mail, and its clears while it flaps, become one digest; zero disables.</summary>
    public TimeSpan Window { get; set; } = TimeSpan.FromMinutes(10);

    /// <summary>Most repeats a digest lists (the oldest ones and the latest); the rest are counted ("and 4,812 more").</summary>
    public int DigestMaxRepeats { get; set; } = 100;
}
