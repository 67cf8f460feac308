using System.Globalization;
using System.Threading.Channels;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Spool;

/// <summary>
/// The SQLite spool (see docs/spool.md). One writer thread owns the connection and drains a queue of work:
/// everything queued while a commit is running goes into the next transaction (group commit), each item in
/// its own savepoint so one failing item does not fail the others, and every caller's task completes only
/// after <c>COMMIT</c> returned (with <c>synchronous=FULL</c> that is after fsync).
/// </summary>
public sealed partial class SqliteSpool : ISpool
{
    // Bounded: when the disk cannot keep up, callers wait here (an MQTT PUBACK is delayed, the device holds the alert
    // in its flash) instead of the queue growing in memory.
    private readonly Channel<SpoolWork> _queue;
    private readonly SqliteConnection _connection;
    private readonly Dictionary<string, SqliteCommand> _commands = new(StringComparer.Ordinal);
    private readonly ILogger _logger;
    private readonly int _maxBatch;
    private readonly Thread? _writer;

    // Reads go to a second, read-only connection on the caller's thread: under WAL they see every committed write
    // and never wait behind the writer's batch and its fsync (nor see a batch that might still roll back).
    private readonly SqliteSpool? _reader;
    private readonly Lock _readLock = new();
    private bool _closed;
    private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _batches;
    private long _items;

    // WAL checkpoints run on a connection and thread of their own. Left to SQLite, every thousandth page a commit
    // would copy the WAL into the database and fsync it before returning: a PUBACK (and a mail) stuck behind
    // that now and then, which is what the latency's p99 is made of.
    private readonly SqliteConnection? _checkpointConnection;
    private readonly Thread? _checkpointer;
    private static readonly TimeSpan CheckpointInterval = TimeSpan.FromSeconds(1); // each checkpoint fsyncs the database file
    private readonly ManualResetEventSlim _checkpointDue = new();

    // Those checkpoints copy the WAL while the writer goes on, but SQLite starts the WAL from its beginning again
    // only when a write begins after a checkpoint that copied all of it, and a writer committing back to back (a
    // burst, a backlog of mail) leaves no such moment: on the gateway benchmark the WAL grew by ~40 MB a second, to
    // 650 MB in one run, and its file kept that size afterwards. So once the file is longer than WalLimitBytes the
    // writer itself checkpoints between two batches (KeepWalBounded), and journal_size_limit gives the disk back.
    private string? _walPath;
    // When the WAL's length is looked at next. The length costs a system call (a path lookup and lstat), dear on a
    // virtual machine, and small commits come hundreds a second: it is looked at once per 10 ms at most, in which the
    // WAL grows by well under a megabyte, and later still after a restart that readers held off.
    private long _walLookAt;
    // SQLite runs one checkpoint at a time and answers a second one "busy" at once, without waiting: the writer's
    // and the background checkpoints take turns here instead.
    private readonly Lock _checkpointTurn = new();
    private long _walRestarts;
    // Open except while the writer starts the WAL anew: reads wait at it (Read), and one under way is given this long.
    private readonly ManualResetEventSlim _readsOpen = new(initialState: true);
    private static readonly TimeSpan ReadWaitForWalRestart = TimeSpan.FromMilliseconds(50);
    private readonly CancellationTokenSource _stopping = new();
    private int _disposed;
    private int _corruptReported;

    // The running gateway's hold on its spool (Open with owner: true); released by the kernel when the process ends,
    // SIGKILL included.
    private FileStream? _ownerLock;
    private const long HeartbeatSpacingMs = 5 * 60 * 1000;
    private static readonly TimeSpan HeartbeatRetention = TimeSpan.FromDays(7);
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, long> _lastHeartbeat = new(StringComparer.Ordinal);

    private const int SqliteIoError = 10;
    private const int SqliteCorrupt = 11;
    private const int SqliteFull = 13;
    private const int SqliteNotADatabase = 26;
    private const int SqliteTooBig = 18;
    private const int SqliteConstraint = 19;
    private const int SqliteMismatch = 20;
    private const int SqliteConstraintUnique = 2067;
    private const int FlockWouldBlock = 11; // EWOULDBLOCK on Linux: .NET's IOException carries flock's errno as its HResult

    private SqliteSpool(SqliteConnection connection, int maxBatch, ILogger logger, SqliteConnection? readConnection, SqliteConnection? checkpointConnection)
    {
        _connection = connection;
        _maxBatch = maxBatch;
        _logger = logger;
        _queue = Channel.CreateBounded<SpoolWork>(new BoundedChannelOptions(Math.Max(1024, maxBatch * 8))
        {
            SingleReader = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
        if (readConnection is null)
        {
            _stopped.TrySetResult(); // the read-only twin: no writer thread
            return;
        }

        _reader = new SqliteSpool(readConnection, maxBatch, logger, null, null);
        // Linux keeps 15 characters of a thread's name: these two stay apart in profiles and per-thread CPU figures.
        _writer = new Thread(WriterLoop) { IsBackground = true, Name = "spool-writer" };
        _writer.Start();
        _checkpointConnection = checkpointConnection;
        if (checkpointConnection is not null)
        {
            _checkpointer = new Thread(CheckpointLoop) { IsBackground = true, Name = "spool-checkpoint" };
            _checkpointer.Start();
        }
    }

    /// <summary>Raised on the checkpoint thread after each background WAL checkpoint.</summary>
    public event Action? Checkpointed;

    /// <summary>Raised on the writer's thread after every commit (tests wait for spool state with it).</summary>
    public event Action? Committed;

    /// <summary>Called on the writer's thread with each group commit's duration (BEGIN to durable COMMIT), for metrics.</summary>
    public Action<TimeSpan>? CommitTimed { get; set; }

    /// <inheritdoc />
    public TimeSpan? SharedPollInterval => null;

    /// <inheritdoc />
    public event Action? AlertsStored;

    /// <inheritdoc />
    public event Action? MessagesQueued;

    /// <summary>
    /// Raised (once, on the writer's thread) when a commit finds the database corrupt: nothing more can be made
    /// durable, and the host stops with a failure exit code so that the service manager and the operator see it.
    /// </summary>
    public event Action<SpoolException>? Corrupted;

    /// <summary>
    /// How long the WAL file may grow before the writer checkpoints it between two batches so that the next commit
    /// starts it anew (and the file is cut back to this length). Each time costs the writer one checkpoint of what the
    /// background checkpoints have not copied yet (up to a second of commits) and its fsync.
    /// </summary>
    public long WalLimitBytes { get; private init; }

    /// <summary>64 MiB: under a sustained load of ~3,000 alerts a second (~40 MB of WAL) the WAL is started anew every second or two.</summary>
    public const long DefaultWalLimitBytes = 64L << 20;

    /// <summary>How often the writer has started the WAL anew because it had grown past <see cref="WalLimitBytes"/>.</summary>
    public long WalRestarts => Interlocked.Read(ref _walRestarts);

    /// <summary>Commits so far and items in them (average batch size = items / batches).</summary>
    public (long Batches, long Items) CommitStats => (Interlocked.Read(ref _batches), Interlocked.Read(ref _items));

    /// <summary>Opens (creating or migrating) the spool at <paramref name="path"/>.</summary>
    /// <param name="path">Database file.</param>
    /// <param name="fsync">True for <c>synchronous=FULL</c> (durable at commit); false for NORMAL (benchmarks only).</param>
    /// <param name="maxBatch">Most work items per transaction.</param>
    /// <param name="logger">Logger.</param>
    /// <param name="walLimitBytes">See <see cref="WalLimitBytes"/>.</param>
    /// <param name="owner">
    /// True for the gateway that runs on the spool: it holds <c>{path}.lock</c> while the spool is open, and a second
    /// owner is refused. False for a short change beside it (<c>edgemail admin set-password</c>), which SQLite's own
    /// locking keeps apart from the gateway's writes.
    /// </param>
    /// <returns>The open spool.</returns>
    /// <exception cref="SpoolException">The spool cannot be opened, or <paramref name="owner"/> and another gateway runs on it.</exception>
    public static SqliteSpool Open(string path, bool fsync, int maxBatch, ILogger logger, long walLimitBytes = DefaultWalLimitBytes, bool owner = false)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(walLimitBytes, 1L << 16);
        ArgumentNullException.ThrowIfNull(path);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var ownerLock = owner ? TakeOwnership(path) : null;
        var connection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString());
        var readConnection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false, Mode = SqliteOpenMode.ReadOnly }.ToString());
        var checkpointConnection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString());
        string synchronous = fsync ? "PRAGMA synchronous=FULL;" : "PRAGMA synchronous=NORMAL;";
        try
        {
            connection.Open();
            // Before the first table exists this makes a new spool give freed pages back to the file system on
            // PRAGMA incremental_vacuum (the housekeeper's pruning); an older spool is converted once below.
            Execute(connection, "PRAGMA auto_vacuum=INCREMENTAL;");
            Execute(connection, "PRAGMA journal_mode=WAL;");
            Execute(connection, synchronous);
            Execute(connection, "PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000; PRAGMA wal_autocheckpoint=0;");
            // Statement and savepoint journals in memory rather than in temporary files: they only ever undo part of
            // an open transaction, and a crash discards that transaction anyway (the WAL is what makes a commit durable).
            Execute(connection, "PRAGMA temp_store=MEMORY;");
            // The pages every commit touches -- the ends of the tables and the leaves of the per-device indexes -- stay
            // in the writer's cache (SQLite's default of 2 MB is smaller than that set with a few hundred devices).
            Execute(connection, "PRAGMA cache_size=-16384;");
            Execute(connection, $"PRAGMA journal_size_limit={walLimitBytes};");
            SpoolSchema.Migrate(connection);
            if (Scalar(connection, "PRAGMA auto_vacuum") is not 2L)
            {
                LogConvertingVacuum(logger, path);
                Execute(connection, "PRAGMA auto_vacuum=INCREMENTAL; VACUUM;");
            }

            readConnection.Open();
            Execute(readConnection, "PRAGMA busy_timeout=5000;");
            checkpointConnection.Open();
            Execute(checkpointConnection, synchronous); // FULL: the database file is fsync'd before the WAL is reused
            Execute(checkpointConnection, "PRAGMA busy_timeout=5000; PRAGMA wal_autocheckpoint=0;");
        }
        catch (SqliteException ex)
        {
            connection.Dispose();
            readConnection.Dispose();
            checkpointConnection.Dispose();
            ownerLock?.Dispose();
            throw new SpoolException($"Cannot open the spool at '{path}': {ex.Message}. Check the path is writable and not used by another gateway.", ex);
        }

        return new SqliteSpool(connection, maxBatch, logger, readConnection, checkpointConnection) { _walPath = path + "-wal", WalLimitBytes = walLimitBytes, _ownerLock = ownerLock };
    }

    // Two gateways on one SQLite spool would each route the same alerts and send the same mail (nothing in the spool
    // claims work for one process: that is what the PostgreSQL spool's leases are for). The lock is flock(2), which .NET
    // takes for FileShare.None.
    private static FileStream TakeOwnership(string path)
    {
        string lockPath = path + ".lock";
        FileStream stream;
        try
        {
            stream = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException ex) when (ex.HResult == FlockWouldBlock)
        {
            // .NET reads a file with a shared flock, which the owner's excludes: the process id is for the operator's cat.
            throw new SpoolException($"The spool at '{path}' is in use by another gateway (its process id is in '{lockPath}'): two gateways on one SQLite "
                + "spool would both send the same mail. Stop the other one first (systemctl status edgemail-gateway); for several gateways on one spool use "
                + "PostgreSQL (Spool:Provider).", ex);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new SpoolException($"Cannot open the spool at '{path}': {ex.Message}. Check the path is writable.", ex);
        }

        try
        {
            stream.SetLength(0);
            stream.Write(System.Text.Encoding.ASCII.GetBytes(Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "\n"));
            stream.Flush();
        }
        catch (IOException)
        {
            // The lock is what keeps a second gateway out; the id only helps the operator find this one (a full disk).
        }

        return stream;
    }

    private static void Execute(SqliteConnection connection, string sql)
    {
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        command.ExecuteNonQuery();
    }

    private static object? Scalar(SqliteConnection connection, string sql)
    {
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        return command.ExecuteScalar();
    }

    /// <inheritdoc />
    public Task<AcceptOutcome> AcceptAlertAsync(IncomingAlert alert, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(alert);
        return Enqueue((s, ctx) =>
        {
            int inserted = s.Exec(
                "INSERT INTO alerts(device, alert_id, received_at, peer, payload, status, reason, code, via, severity) VALUES($p0,$p1,$p2,$p3,$p4,$p5,$p6,$p7,$p8,$p9) ON CONFLICT(device, alert_id) DO NOTHING",
                alert.Device, alert.AlertId, alert.ReceivedAt.ToUnixTimeMilliseconds(), alert.Peer, alert.Payload.ToArray(),
                alert.Status, alert.Reason, alert.Code, alert.Via, alert.Severity);
            if (inserted == 0)
            {
                return AcceptOutcome.Duplicate;
            }

            if (alert.Status == AlertStatus.New)
            {
                ctx.AlertsStored = true;
            }

            return AcceptOutcome.Stored;
        }, cancellationToken, isolate: false); // one statement: SQLite's statement atomicity already isolates it
    }

    /// <inheritdoc />
    public Task<AcceptOutcome> QueueMailAsync(NewMessage message, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(message);
        return Enqueue((s, ctx) =>
        {
            if (s.Scalar("SELECT 1 FROM messages WHERE message_id=$p0", message.MessageId) is not null)
            {
                return AcceptOutcome.Duplicate;
            }

            s.InsertMessage(message, null, ctx);
            return AcceptOutcome.Stored;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task RecordStatusAsync(string device, DateTimeOffset receivedAt, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        long at = receivedAt.ToUnixTimeMilliseconds();
        byte[] bytes = payload.ToArray();

        // The history keeps at most one heartbeat per device every 5 minutes: enough for a chart, bounded in size.
        bool keep = !_lastHeartbeat.TryGetValue(device, out long last) || at - last >= HeartbeatSpacingMs;
        if (keep)
        {
            _lastHeartbeat[device] = at;
        }

        return Enqueue((s, _) =>
        {
            s.Exec(
                "INSERT INTO device_status(device, received_at, payload) VALUES($p0,$p1,$p2) ON CONFLICT(device) DO UPDATE SET received_at=excluded.received_at, payload=excluded.payload",
                device, at, bytes);
            if (keep)
            {
                s.Exec("INSERT OR REPLACE INTO heartbeats(device, at, payload) VALUES($p0,$p1,$p2)", device, at, bytes);
            }

            return 0;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<(DateTimeOffset At, byte[] Payload)?> GetStatusAsync(string device, CancellationToken cancellationToken) =>
        Read<(DateTimeOffset, byte[])?>((s, _) =>
        {
            using var r = s.Query("SELECT received_at, payload FROM device_status WHERE device=$p0", device);
            return r.Read() ? (FromMs(r.GetInt64(0)), (byte[])r.GetValue(1)) : null;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<SpooledAlert>> NewAlertsAsync(int max, CancellationToken cancellationToken) =>
        Read<IReadOnlyList<SpooledAlert>>((s, _) =>
        {
            using var r = s.Query("SELECT rowid, device, alert_id, received_at, peer, payload, via FROM alerts WHERE status='new' ORDER BY rowid LIMIT $p0", max);
            return ReadAlerts(r);
        }, cancellationToken);

    private static List<SpooledAlert> ReadAlerts(SqliteDataReader r)
    {
        var list = new List<SpooledAlert>();
        while (r.Read())
        {
            list.Add(new SpooledAlert(r.GetInt64(0), r.GetString(1), r.GetString(2), FromMs(r.GetInt64(3)), r.IsDBNull(4) ? null : r.GetString(4), (byte[])r.GetValue(5),
                r.IsDBNull(6) ? IngestProtocols.Mqtt : r.GetString(6)));
        }

        return list;
    }

    /// <inheritdoc />
    public Task<StormState?> GetStormAsync(string device, string code, CancellationToken cancellationToken) =>
        Read((s, _) => s.ReadStorm(device, code), cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyDictionary<(string Device, string Code), StormState>> GetStormsAsync(IReadOnlyCollection<(string Device, string Code)> keys, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(keys);
        return Read<IReadOnlyDictionary<(string Device, string Code), StormState>>((s, _) =>
        {
            var states = new Dictionary<(string Device, string Code), StormState>(keys.Count);
            foreach (var key in keys)
            {
                if (s.ReadStorm(key.Device, key.Code) is { } state)
                {
                    states[key] = state;
                }
            }

            return states;
        }, cancellationToken);
    }

    private StormState? ReadStorm(string device, string code)
    {
        using var r = Query("SELECT last_mail_at, last_raised_message_id, hold_clears, incident_open FROM storm WHERE device=$p0 AND code=$p1", device, code);
        return r.Read() ? new StormState(FromMs(r.GetInt64(0)), r.IsDBNull(1) ? null : r.GetString(1), r.GetInt64(2) != 0, r.GetInt64(3) != 0) : null;
    }

    /// <inheritdoc />
    public Task<RoutingCommitted> CommitRoutingAsync(IReadOnlyList<RoutingCommit> commits, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(commits);
        return Enqueue((s, ctx) =>
        {
            List<ParkedAlert>? parked = null;

            // Only the last state of each (device, code) is written: what the decisions before it wrote would be
            // overwritten in this same transaction anyway (one statement per key instead of one per routed alert).
            Dictionary<(string Device, string Code), StormState>? storms = null;
            foreach (var c in commits)
            {
                if (c.Status == AlertStatus.Parked)
                {
                    s.ParkAlert(c.AlertRowId, AlertStatus.New, c.Reason ?? "parked", ctx);
                    continue;
                }

                // The mail first: a Message-ID conflict fails that one INSERT (SQLite undoes a failed statement alone)
                // before anything else of this decision is written, so the alert is parked with the reason instead of
                // losing its mail, and the rest of the batch goes on -- without a savepoint per decision, each of which
                // copied every page it touched into the statement journal.
                if (c.Message is not null)
                {
                    try
                    {
                        s.InsertMessage(c.Message, c.AlertRowId, ctx);
                    }
                    catch (SpoolConflictException ex)
                    {
                        s.ParkAlert(c.AlertRowId, AlertStatus.New, ex.Message, ctx);
                        (parked ??= []).Add(new ParkedAlert(c.AlertRowId, ex.Message));
                        continue;
                    }
                }

                s.Exec("UPDATE alerts SET status=$p0, hold_until=$p1, route=$p3, state=$p4 WHERE rowid=$p2 AND status='new'",
                    c.Status, c.HoldUntil?.ToUnixTimeMilliseconds(), c.AlertRowId, c.Route, c.State);
                if (c.StormKey is { } key && c.Storm is not null)
                {
                    (storms ??= [])[key] = c.Storm;
                }
            }

            foreach (var ((device, code), storm) in storms ?? [])
            {
                s.WriteStorm(device, code, storm);
            }

            return parked is null ? RoutingCommitted.All : new RoutingCommitted(parked, []);
        }, cancellationToken, background: true);
    }

    private void ParkAlert(long rowId, string fromStatus, string reason, BatchContext ctx) =>
        Exec("UPDATE alerts SET status='parked', reason=$p0, parked_at=$p1 WHERE rowid=$p2 AND status=$p3",
            Truncate(reason), ctx.Now.ToUnixTimeMilliseconds(), rowId, fromStatus);

    private static string Truncate(string reason) => reason.Length > 2000 ? reason[..2000] : reason;

    private void WriteStorm(string device, string code, StormState storm) =>
        Exec("INSERT INTO storm(device, code, last_mail_at, last_raised_message_id, hold_clears, incident_open) VALUES($p0,$p1,$p2,$p3,$p4,$p5) ON CONFLICT(device, code) DO UPDATE SET last_mail_at=excluded.last_mail_at, last_raised_message_id=excluded.last_raised_message_id, hold_clears=excluded.hold_clears, incident_open=excluded.incident_open",
            device, code, storm.LastMailAt.ToUnixTimeMilliseconds(), storm.LastRaisedMessageId, storm.HoldClears, storm.IncidentOpen);

    private void InsertMessage(NewMessage m, long? alertRowId, BatchContext ctx)
    {
        long now = ctx.Now.ToUnixTimeMilliseconds();
        try
        {
            Exec(
                "INSERT INTO messages(kind, device, alert_rowid, alert_id, message_id, envelope_from, mime, created_at, expires_at, next_attempt_at, status) VALUES($p0,$p1,$p2,$p3,$p4,$p5,x'',$p6,$p7,$p6,'queued')",
                m.Kind, m.Device, alertRowId, m.AlertId, m.MessageId, m.EnvelopeFrom, now, now + (long)ctx.MaxAge.TotalMilliseconds);
        }
        catch (SqliteException ex) when (ex.SqliteExtendedErrorCode == SqliteConstraintUnique)
        {
            // Message-IDs are unique by construction (MessageIds); two mails with one id is a bug, and silently keeping
            // only the first would lose the second.
            throw new SpoolConflictException($"Message-ID <{m.MessageId}> ({m.Kind}) is already in the spool; the item is parked instead of losing its mail", ex);
        }

        long rowId = SQLitePCL.raw.sqlite3_last_insert_rowid(_connection.Handle);
        Exec("INSERT INTO message_bodies(message, mime) VALUES($p0,$p1)", rowId, m.Mime);
        foreach (string rcpt in m.Recipients.Distinct(StringComparer.OrdinalIgnoreCase))
        {
            Exec("INSERT INTO recipients(message, address, status) VALUES($p0,$p1,'pending')", rowId, rcpt);
        }

        ctx.MessagesQueued = true;
    }

    /// <summary>How long queued mail lives before it is given up (set from <c>Relay:MaxAge</c>).</summary>
    public TimeSpan MaxAge { get; set; } = TimeSpan.FromDays(5);

    /// <summary>The clock used to stamp queued mail.</summary>
    public TimeProvider Clock { get; set; } = TimeProvider.System;

    /// <inheritdoc />
    public Task<IReadOnlyList<DueDigest>> DueDigestsAsync(DateTimeOffset now, int maxRepeats, CancellationToken cancellationToken) =>
        Read<IReadOnlyList<DueDigest>>((s, _) =>
        {
            var keys = new List<(string, string)>();
            using (var r = s.Query("SELECT DISTINCT device, code FROM alerts WHERE status='held' AND hold_until <= $p0 LIMIT 64", now.ToUnixTimeMilliseconds()))
            {
                while (r.Read())
                {
                    keys.Add((r.GetString(0), r.GetString(1)));
                }
            }

            var result = new List<DueDigest>();
            foreach (var (device, code) in keys)
            {
                long total, through;
                using (var r = s.Query("SELECT COUNT(*), MAX(rowid) FROM alerts WHERE status='held' AND device=$p0 AND code=$p1", device, code))
                {
                    r.Read();
                    (total, through) = (r.GetInt64(0), r.GetInt64(1));
                }

                // A digest that lists every repeat would cost as much as the storm: the oldest ones, then the latest.
                int listed = total <= maxRepeats ? maxRepeats : Math.Max(1, maxRepeats - 1);
                List<SpooledAlert> alerts;
                using (var r = s.Query(
                    "SELECT rowid, device, alert_id, received_at, peer, payload, via FROM alerts WHERE status='held' AND device=$p0 AND code=$p1 ORDER BY rowid LIMIT $p2",
                    device, code, listed))
                {
                    alerts = ReadAlerts(r);
                }

                if (total > alerts.Count)
                {
                    using var r = s.Query("SELECT rowid, device, alert_id, received_at, peer, payload, via FROM alerts WHERE rowid=$p0", through);
                    alerts.AddRange(ReadAlerts(r));
                }

                // One pass over all of them for what the listed ones cannot tell: their severities and how many are clears.
                var severities = new List<string>();
                long clears = 0;
                using (var r = s.Query(
                    "SELECT severity, COUNT(CASE WHEN state='cleared' THEN 1 END) FROM alerts WHERE status='held' AND device=$p0 AND code=$p1 AND rowid <= $p2 GROUP BY severity",
                    device, code, through))
                {
                    while (r.Read())
                    {
                        if (!r.IsDBNull(0))
                        {
                            severities.Add(r.GetString(0));
                        }

                        clears += r.GetInt64(1);
                    }
                }

                result.Add(new DueDigest(device, code, alerts, total, through, severities, clears));
            }

            return result;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<bool> CommitDigestAsync(DueDigest digest, NewMessage message, StormState storm, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(digest);
        ArgumentNullException.ThrowIfNull(message);
        return Enqueue((s, ctx) =>
        {
            s.Exec("UPDATE alerts SET status='digested', digest_message=$p3 WHERE device=$p0 AND code=$p1 AND status='held' AND rowid <= $p2",
                digest.Device, digest.Code, digest.ThroughRowId, message.MessageId);
            s.InsertMessage(message, null, ctx);
            s.WriteStorm(digest.Device, digest.Code, storm);
            return true;
        }, cancellationToken, background: true);
    }

    /// <inheritdoc />
    public Task<bool> UnrouteDigestAsync(DueDigest digest, string route, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(digest);
        ArgumentNullException.ThrowIfNull(route);
        return Enqueue((s, _) =>
        {
            s.Exec("UPDATE alerts SET status='unrouted', route=$p3 WHERE device=$p0 AND code=$p1 AND status='held' AND rowid <= $p2",
                digest.Device, digest.Code, digest.ThroughRowId, route);
            return true;
        }, cancellationToken, background: true);
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<SpooledAlert>> HeldRepeatsAsync(DueDigest digest, long afterRowId, int max, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(digest);
        return Read<IReadOnlyList<SpooledAlert>>((s, _) =>
        {
            using var r = s.Query(
                "SELECT rowid, device, alert_id, received_at, peer, payload, via FROM alerts WHERE status='held' AND device=$p0 AND code=$p1 AND rowid > $p2 AND rowid <= $p3 ORDER BY rowid LIMIT $p4",
                digest.Device, digest.Code, afterRowId, digest.ThroughRowId, max);
            return ReadAlerts(r);
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<long>> ParkRepeatsAsync(DueDigest digest, IReadOnlyList<ParkedAlert> repeats, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(digest);
        ArgumentNullException.ThrowIfNull(repeats);
        return Enqueue<IReadOnlyList<long>>((s, ctx) =>
        {
            var parked = new List<long>();
            foreach (var repeat in repeats)
            {
                if (s.Exec("UPDATE alerts SET status='parked', reason=$p0, parked_at=$p1 WHERE rowid=$p2 AND device=$p3 AND code=$p4 AND status='held'",
                    Truncate(repeat.Reason), ctx.Now.ToUnixTimeMilliseconds(), repeat.AlertRowId, digest.Device, digest.Code) > 0)
                {
                    parked.Add(repeat.AlertRowId);
                }
            }

            return parked;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<string>> ParkDigestAsync(DueDigest digest, string reason, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(digest);
        ArgumentNullException.ThrowIfNull(reason);
        return Enqueue<IReadOnlyList<string>>((s, ctx) =>
        {
            var parked = new List<string>();
            using (var r = s.Query("SELECT alert_id FROM alerts WHERE device=$p0 AND code=$p1 AND status='held' AND rowid <= $p2 ORDER BY rowid",
                digest.Device, digest.Code, digest.ThroughRowId))
            {
                while (r.Read())
                {
                    parked.Add(r.GetString(0));
                }
            }

            s.Exec("UPDATE alerts SET status='parked', reason=$p0, parked_at=$p1 WHERE device=$p2 AND code=$p3 AND status='held' AND rowid <= $p4",
                Truncate(reason), ctx.Now.ToUnixTimeMilliseconds(), digest.Device, digest.Code, digest.ThroughRowId);
            return parked;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<DateTimeOffset?> NextDigestDueAsync(CancellationToken cancellationToken) =>
        Read((s, _) => s.Scalar("SELECT MIN(hold_until) FROM alerts WHERE status='held'") is long ms ? FromMs(ms) : (DateTimeOffset?)null, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<QueuedMessage>> DueMessagesAsync(DateTimeOffset now, int max, IReadOnlySet<long> exclude, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(exclude);
        return Read<IReadOnlyList<QueuedMessage>>((s, _) =>
        {
            // The rows under way are passed over in the index, and only the bodies of the rows taken are read: read with
            // the rest, the body of a large mail in flight was read again at every round of the worker, to be dropped.
            var list = new List<QueuedMessage>();
            using (var r = s.Query(
                "SELECT rowid, kind, device, alert_id, message_id, envelope_from, attempts, created_at, expires_at FROM messages WHERE status='queued' AND next_attempt_at <= $p0 ORDER BY next_attempt_at, rowid LIMIT $p1",
                now.ToUnixTimeMilliseconds(), max + exclude.Count))
            {
                while (r.Read() && list.Count < max)
                {
                    long row = r.GetInt64(0);
                    if (exclude.Contains(row))
                    {
                        continue;
                    }

                    list.Add(new QueuedMessage(row, r.GetString(1), r.IsDBNull(2) ? null : r.GetString(2), r.IsDBNull(3) ? null : r.GetString(3),
                        r.GetString(4), r.GetString(5), [], [], r.GetInt32(6), FromMs(r.GetInt64(7)), FromMs(r.GetInt64(8))));
                }
            }

            for (int i = 0; i < list.Count; i++)
            {
                byte[] mime = (byte[])s.Scalar("SELECT COALESCE((SELECT mime FROM message_bodies WHERE message=$p0), mime) FROM messages WHERE rowid=$p0", list[i].RowId)!;
                var recipients = new List<string>();
                using var r = s.Query("SELECT address FROM recipients WHERE message=$p0 AND status='pending' ORDER BY address", list[i].RowId);
                while (r.Read())
                {
                    recipients.Add(r.GetString(0));
                }

                list[i] = list[i] with { Mime = mime, PendingRecipients = recipients };
            }

            return list;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<DateTimeOffset?> NextMessageDueAsync(IReadOnlySet<long> exclude, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(exclude);
        return Read((s, _) =>
        {
            using var r = s.Query("SELECT rowid, next_attempt_at FROM messages WHERE status='queued' ORDER BY next_attempt_at, rowid LIMIT $p0", exclude.Count + 1);
            while (r.Read())
            {
                if (!exclude.Contains(r.GetInt64(0)))
                {
                    return FromMs(r.GetInt64(1));
                }
            }

            return (DateTimeOffset?)null;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<bool> RenewClaimAsync(long rowId, CancellationToken cancellationToken) => Task.FromResult(true);

    /// <inheritdoc />
    public Task<bool> RenewAlertClaimsAsync(IReadOnlyCollection<long> alertRowIds, CancellationToken cancellationToken) => Task.FromResult(true);

    /// <inheritdoc />
    public Task<bool> RenewDigestClaimsAsync(IReadOnlyCollection<(string Device, string Code)> keys, CancellationToken cancellationToken) => Task.FromResult(true);

    /// <inheritdoc />
    public Task<bool> RecordSentRecipientsAsync(long rowId, IReadOnlyList<RecipientResult> sent, CancellationToken cancellationToken)
    {
        SpoolArguments.OnlySent(sent);
        return Enqueue((s, _) =>
        {
            if (s.Scalar("SELECT status FROM messages WHERE rowid=$p0", rowId) as string != MessageStatus.Queued)
            {
                return false;
            }

            foreach (var result in sent)
            {
                s.Exec("UPDATE recipients SET status='sent', reply=$p0 WHERE message=$p1 AND address=$p2", result.Reply, rowId, result.Address);
            }

            return true;
        }, cancellationToken, background: true);
    }

    /// <inheritdoc />
    public Task<DeliveryCommitted> CommitDeliveryAsync(DeliveryCommit commit, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(commit);
        return Enqueue((s, ctx) =>
        {
            string? current;
            using (var r = s.Query("SELECT status FROM messages WHERE rowid=$p0", commit.RowId))
            {
                current = r.Read() ? r.GetString(0) : null;
            }

            if (current == MessageStatus.Cancelled)
            {
                return s.RecordAfterCancel(commit, ctx);
            }

            if (current != MessageStatus.Queued)
            {
                return DeliveryCommitted.Of(DeliveryRecorded.Ignored);
            }

            string? lastReply = null;
            s.InsertAttempt(commit, ctx);
            foreach (var result in commit.Results)
            {
                lastReply = result.Reply;
                if (result.Outcome is "sent" or "failed")
                {
                    s.Exec("UPDATE recipients SET status=$p0, reply=$p1 WHERE message=$p2 AND address=$p3", result.Outcome, result.Reply, commit.RowId, result.Address);
                }
                else
                {
                    s.Exec("UPDATE recipients SET reply=$p0 WHERE message=$p1 AND address=$p2", result.Reply, commit.RowId, result.Address);
                }
            }

            long pending, failed, sent;
            using (var r = s.Query("SELECT COUNT(*) FILTER (WHERE status='pending'), COUNT(*) FILTER (WHERE status='failed'), COUNT(*) FILTER (WHERE status='sent') FROM recipients WHERE message=$p0", commit.RowId))
            {
                r.Read();
                (pending, failed, sent) = (r.GetInt64(0), r.GetInt64(1), r.GetInt64(2));
            }

            string status = pending > 0 ? MessageStatus.Queued : failed == 0 ? MessageStatus.Sent : sent == 0 ? MessageStatus.Failed : MessageStatus.Partial;
            s.Exec("UPDATE messages SET status=$p0, attempts=attempts+1, last_reply=$p1, next_attempt_at=COALESCE($p2, next_attempt_at), finished_at=$p4 WHERE rowid=$p3 AND status='queued'",
                status, lastReply, commit.NextAttemptAt?.ToUnixTimeMilliseconds(), commit.RowId, pending > 0 ? null : ctx.Now.ToUnixTimeMilliseconds());
            if (commit.Notice is not null)
            {
                s.InsertMessage(commit.Notice, null, ctx);
            }

            if (DeliveryReceipts.FailedBefore(failed, commit))
            {
                return DeliveryCommitted.Of(DeliveryRecorded.RecordedAlreadyFailed);
            }

            if (commit.Receipt is not null)
            {
                s.Keep(commit.Receipt, commit.ReceiptsPerDevice, ctx.Now.ToUnixTimeMilliseconds());
            }

            return new DeliveryCommitted(DeliveryRecorded.Recorded, s.GiveDigestReceipts(commit, ctx));
        }, cancellationToken, background: true);
    }

    // Looked up only for a digest's result: a single alert's mail pays nothing for it.
    private List<KeptReceipt> GiveDigestReceipts(DeliveryCommit commit, BatchContext ctx)
    {
        if (commit.DigestReceipt is not { } owed)
        {
            return [];
        }

        using (var r = Query("SELECT device, message_id FROM messages WHERE rowid=$p0 AND kind='digest' AND device IS NOT NULL", commit.RowId))
        {
            if (r.Read())
            {
                return GiveDigestReceipts(owed, commit.ReceiptsPerDevice, r.GetString(0), r.GetString(1), ctx);
            }
        }

        return [];
    }

    private List<KeptReceipt> GiveDigestReceipts(DigestReceipt owed, int receiptsPerDevice, string device, string messageId, BatchContext ctx)
    {
        var receipts = new List<KeptReceipt>();
        foreach (string alertId in AlertsOf("digest", device, null, messageId, receiptsPerDevice))
        {
            var receipt = owed.For(device, alertId);
            if (owed.IsFinal)
            {
                Keep(receipt, receiptsPerDevice, ctx.Now.ToUnixTimeMilliseconds());
            }

            receipts.Add(receipt);
        }

        return receipts;
    }

    private void InsertAttempt(DeliveryCommit commit, BatchContext ctx) =>
        Exec("INSERT OR REPLACE INTO attempts(message, attempt, at, results) VALUES($p0, (SELECT attempts + 1 FROM messages WHERE rowid=$p0), $p1, $p2)",
            commit.RowId, ctx.Now.ToUnixTimeMilliseconds(), System.Text.Json.JsonSerializer.Serialize(commit.Results));

    // The operator cancelled the message while this attempt was under way. The attempt happened and stays on record;
    // whether the cancel stands depends on whether the attempt had already delivered the mail.
    private DeliveryCommitted RecordAfterCancel(DeliveryCommit commit, BatchContext ctx)
    {
        InsertAttempt(commit, ctx);
        string? lastReply = commit.Results.Count > 0 ? commit.Results[^1].Reply : null;
        var sent = commit.Results.Where(r => r.Outcome == "sent").ToList();
        if (sent.Count == 0)
        {
            // The cancel's failed receipt, kept with it, stands.
            Exec("UPDATE messages SET attempts=attempts+1, last_reply=COALESCE($p0, last_reply) WHERE rowid=$p1", lastReply, commit.RowId);
            return DeliveryCommitted.Of(DeliveryRecorded.CancelStood);
        }

        foreach (var result in sent)
        {
            Exec("UPDATE recipients SET status='sent', reply=$p0 WHERE message=$p1 AND address=$p2", result.Reply, commit.RowId, result.Address);
        }

        Exec(
            """
            UPDATE messages SET attempts=attempts+1, last_reply=$p0, reason=$p1 || COALESCE(reason, ''),
              status=CASE WHEN EXISTS (SELECT 1 FROM recipients WHERE message=$p2 AND status<>'sent') THEN 'partial' ELSE 'sent' END
            WHERE rowid=$p2
            """, lastReply, SpoolReasons.CancelTooLate, commit.RowId);
        string kind, messageId;
        string? device, alertId, status;
        using (var r = Query("SELECT kind, device, alert_id, message_id, status FROM messages WHERE rowid=$p0", commit.RowId))
        {
            r.Read();
            (kind, device, alertId, messageId, status) = (r.GetString(0), r.IsDBNull(1) ? null : r.GetString(1), r.IsDBNull(2) ? null : r.GetString(2), r.GetString(3), r.GetString(4));
        }

        if (status == MessageStatus.Partial)
        {
            return DeliveryCommitted.Of(DeliveryRecorded.CancelTooLateForSome);
        }

        // Everyone has the mail after all: the failed receipts the cancel owed are withdrawn (the device may have one
        // already; the relayed that follows is the last word).
        if (device is not null && CancelReceipts.Concerns(kind))
        {
            foreach (string id in AlertsOf(kind, device, alertId, messageId, commit.ReceiptsPerDevice))
            {
                Exec("DELETE FROM receipts WHERE device=$p0 AND alert_id=$p1 AND state='failed'", device, id);
            }
        }

        if (commit.Receipt is not null)
        {
            Keep(commit.Receipt, commit.ReceiptsPerDevice, ctx.Now.ToUnixTimeMilliseconds());
        }

        return new DeliveryCommitted(DeliveryRecorded.CancelTooLate, kind == "digest" && device is not null && commit.DigestReceipt is { } owed
            ? GiveDigestReceipts(owed, commit.ReceiptsPerDevice, device, messageId, ctx)
            : []);
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<ManagedDevice>> ManagedDevicesAsync(CancellationToken cancellationToken) =>
        Read<IReadOnlyList<ManagedDevice>>((s, _) =>
        {
            var list = new List<ManagedDevice>();
            using var r = s.Query("SELECT id, secret, name, site, owners, disabled, silent_after_ms, updated_at FROM devices ORDER BY id");
            while (r.Read())
            {
                list.Add(new ManagedDevice(r.GetString(0), r.IsDBNull(1) ? null : r.GetString(1), r.IsDBNull(2) ? null : r.GetString(2),
                    r.IsDBNull(3) ? null : r.GetString(3), r.IsDBNull(4) ? null : System.Text.Json.JsonSerializer.Deserialize<List<string>>(r.GetString(4)),
                    r.GetInt64(5) != 0, r.IsDBNull(6) ? null : TimeSpan.FromMilliseconds(r.GetInt64(6)), FromMs(r.GetInt64(7))));
            }

            return list;
        }, cancellationToken);

    /// <inheritdoc />
    public Task SaveDeviceAsync(ManagedDevice device, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(device);
        return Enqueue((s, _) => s.Exec(
            "INSERT OR REPLACE INTO devices(id, secret, name, site, owners, disabled, silent_after_ms, updated_at) VALUES($p0,$p1,$p2,$p3,$p4,$p5,$p6,$p7)",
            device.Id, device.SecretHash, device.Name, device.Site, device.Owners is null ? null : System.Text.Json.JsonSerializer.Serialize(device.Owners),
            device.Disabled ? 1 : 0, device.SilentAfter is { } after ? (long)after.TotalMilliseconds : null, device.UpdatedAt.ToUnixTimeMilliseconds()),
            cancellationToken, isolate: false);
    }

    /// <inheritdoc />
    public Task<MessageState?> GetMessageAsync(string messageId, CancellationToken cancellationToken) =>
        Read((s, _) =>
        {
            using var r = s.Query("SELECT rowid, kind, status, attempts, next_attempt_at, last_reply, reason FROM messages WHERE message_id=$p0", messageId);
            return r.Read()
                ? new MessageState(r.GetInt64(0), r.GetString(1), r.GetString(2), r.GetInt32(3), FromMs(r.GetInt64(4)), r.IsDBNull(5) ? null : r.GetString(5), r.IsDBNull(6) ? null : r.GetString(6))
                : null;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<bool> ParkMessageAsync(long rowId, string reason, DateTimeOffset parkedAt, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(reason);

        // Parked already by this park: written again after its commit failed (which SQLite undid; kept for the contract).
        return Enqueue((s, _) => 1 == s.Exec(
            "UPDATE messages SET status='parked', reason=$p0, parked_at=$p1 WHERE rowid=$p2 AND (status='queued' OR (status='parked' AND reason=$p0 AND parked_at=$p1))",
            Truncate(reason), parkedAt.ToUnixTimeMilliseconds(), rowId), cancellationToken);
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<string>> DigestAlertIdsAsync(string device, string messageId, int max, CancellationToken cancellationToken) =>
        Read<IReadOnlyList<string>>((s, _) => s.AlertsOf("digest", device, null, messageId, max), cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<ParkedItem>> ParkedAsync(int max, CancellationToken cancellationToken) =>
        Read<IReadOnlyList<ParkedItem>>((s, _) =>
        {
            var items = new List<ParkedItem>();
            using var r = s.Query(
                """
                SELECT * FROM (
                  SELECT 'alert', rowid, device, alert_id, parked_at, reason FROM alerts WHERE status='parked'
                  UNION ALL
                  SELECT 'message', rowid, device, message_id, parked_at, reason FROM messages WHERE status='parked')
                ORDER BY 5 DESC LIMIT $p0
                """, max);
            while (r.Read())
            {
                items.Add(new ParkedItem(r.GetString(0), r.GetInt64(1), r.IsDBNull(2) ? null : r.GetString(2), r.IsDBNull(3) ? null : r.GetString(3),
                    FromMs(r.IsDBNull(4) ? 0 : r.GetInt64(4)), r.IsDBNull(5) ? string.Empty : r.GetString(5)));
            }

            return items;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<bool> ReleaseAsync(string kind, long rowId, CancellationToken cancellationToken) =>
        Enqueue((s, ctx) =>
        {
            long now = ctx.Now.ToUnixTimeMilliseconds();
            int changed = kind switch
            {
                ParkedKinds.Alert => s.Exec("UPDATE alerts SET status='new', reason=NULL, parked_at=NULL WHERE rowid=$p0 AND status='parked'", rowId),
                ParkedKinds.Message => s.Exec(
                    $"UPDATE messages SET status='queued', reason=NULL, parked_at=NULL, next_attempt_at=$p1, expires_at=MAX(expires_at, $p2) WHERE rowid=$p0 AND status='parked' AND kind<>'{QuarantinedMail.Kind}'",
                    rowId, now, now + (long)ctx.MaxAge.TotalMilliseconds),
                _ => throw new ArgumentException($"kind must be '{ParkedKinds.Alert}' or '{ParkedKinds.Message}', not '{kind}'", nameof(kind)),
            };
            ctx.AlertsStored |= changed > 0 && kind == ParkedKinds.Alert;
            ctx.MessagesQueued |= changed > 0 && kind == ParkedKinds.Message;
            return changed > 0;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<CancelResult> CancelAsync(string kind, long rowId, string reason, int receiptsPerDevice, CancellationToken cancellationToken)
    {
        if (kind is not (ParkedKinds.Alert or ParkedKinds.Message))
        {
            throw new ArgumentException($"kind must be '{ParkedKinds.Alert}' or '{ParkedKinds.Message}', not '{kind}'", nameof(kind));
        }

        ArgumentNullException.ThrowIfNull(reason);
        return Enqueue((s, ctx) =>
        {
            string why = Truncate(reason);
            long now = ctx.Now.ToUnixTimeMilliseconds();
            if (kind == ParkedKinds.Alert)
            {
                string? device = null, alertId = null;
                using (var r = s.Query("SELECT device, alert_id FROM alerts WHERE rowid=$p0 AND status='parked'", rowId))
                {
                    if (r.Read())
                    {
                        (device, alertId) = (r.GetString(0), r.GetString(1));
                    }
                }

                if (device is null || alertId is null)
                {
                    return CancelResult.NotCancelled;
                }

                s.Exec("UPDATE alerts SET status='cancelled', reason=$p1 WHERE rowid=$p0", rowId, why);
                return new CancelResult(true, s.KeepCancelReceipts(device, [alertId], why, receiptsPerDevice, ctx));
            }

            string? messageKind = null, messageDevice = null, messageAlert = null, messageId = null;
            using (var r = s.Query("SELECT kind, device, alert_id, message_id FROM messages WHERE rowid=$p0 AND status IN ('parked', 'queued')", rowId))
            {
                if (r.Read())
                {
                    (messageKind, messageDevice, messageAlert, messageId) = (r.GetString(0), r.IsDBNull(1) ? null : r.GetString(1), r.IsDBNull(2) ? null : r.GetString(2), r.GetString(3));
                }
            }

            if (messageKind is null || messageId is null)
            {
                return CancelResult.NotCancelled;
            }

            s.Exec("UPDATE messages SET status='cancelled', reason=$p1, finished_at=$p2 WHERE rowid=$p0", rowId, why, now);
            int failed = s.Exec("UPDATE recipients SET status='failed', reply=$p1 WHERE message=$p0 AND status='pending'", rowId, SpoolReasons.Cancelled + why);
            if (failed == 0 || messageDevice is null || !CancelReceipts.Concerns(messageKind))
            {
                return new CancelResult(true, []);
            }

            return new CancelResult(true, s.KeepCancelReceipts(messageDevice, s.AlertsOf(messageKind, messageDevice, messageAlert, messageId, receiptsPerDevice), why, receiptsPerDevice, ctx));
        }, cancellationToken);
    }

    // The alerts a mail is about: an alert mail's own; a digest's held alerts (the newest ones, as many as a device keeps
    // receipts of -- a storm can put millions in one digest, and the cap would drop the rest in the same transaction).
    private List<string> AlertsOf(string kind, string device, string? alertId, string messageId, int max)
    {
        if (kind != "digest")
        {
            return alertId is null ? [] : [alertId];
        }

        var ids = new List<string>();
        using var r = Query("SELECT alert_id FROM alerts WHERE device=$p0 AND digest_message=$p1 ORDER BY rowid DESC LIMIT $p2", device, messageId, Math.Max(1, max));
        while (r.Read())
        {
            ids.Add(r.GetString(0));
        }

        ids.Reverse(); // kept oldest first: should the cap trim the device's oldest rows, the newest alerts keep theirs
        return ids;
    }

    private List<KeptReceipt> KeepCancelReceipts(string device, IReadOnlyList<string> alertIds, string why, int receiptsPerDevice, BatchContext ctx)
    {
        var kept = new List<KeptReceipt>(alertIds.Count);
        foreach (string alertId in alertIds)
        {
            var receipt = CancelReceipts.For(device, alertId, ctx.Now, why);
            if (Keep(receipt, receiptsPerDevice, ctx.Now.ToUnixTimeMilliseconds()))
            {
                kept.Add(receipt);
            }
        }

        return kept;
    }

    /// <inheritdoc />
    public async Task<PruneResult> PruneAsync(DateTimeOffset before, int maxRows, CancellationToken cancellationToken)
    {
        long horizon = before.ToUnixTimeMilliseconds();
        long heartbeatHorizon = Clock.GetUtcNow().ToUnixTimeMilliseconds() - (long)HeartbeatRetention.TotalMilliseconds;
        long openHorizon = StormRetention.OpenIncidentHorizonMs(before, Clock.GetUtcNow());
        var (messages, alerts, more) = await Enqueue((s, _) =>
        {
            s.Exec("DELETE FROM attempts WHERE message IN (SELECT rowid FROM messages WHERE finished_at < $p0 ORDER BY finished_at LIMIT $p1)", horizon, maxRows);
            int m = s.Exec(
                "DELETE FROM recipients WHERE message IN (SELECT rowid FROM messages WHERE finished_at < $p0 ORDER BY finished_at LIMIT $p1)", horizon, maxRows);
            s.Exec("DELETE FROM message_bodies WHERE message IN (SELECT rowid FROM messages WHERE finished_at < $p0 ORDER BY finished_at LIMIT $p1)", horizon, maxRows);
            m = s.Exec("DELETE FROM messages WHERE rowid IN (SELECT rowid FROM messages WHERE finished_at < $p0 ORDER BY finished_at LIMIT $p1)", horizon, maxRows);

            // Alerts that are finished (everything but new, held and parked: a parked alert waits for the operator, who
            // may release it whatever its age) and that no mail refers to any more: neither its own mail nor a storm
            // digest that covers it, which finds its alerts by digest_message to give each its receipt when it is
            // delivered, fails, is parked or cancelled -- and a parked digest waits for the operator whatever its age.
            // Keeping an alert row is what de-duplicates a retransmission; by the horizon the device has long had its PUBACK.
            // A device's open silence stays, and the record that its last silence ended unheard (SilenceSql.NotAKeptSilence).
            int a = s.Exec(
                $"""
                DELETE FROM alerts WHERE rowid IN (
                  SELECT rowid FROM alerts WHERE received_at < $p0 AND status NOT IN ('new', 'held', 'parked')
                    AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.alert_rowid = alerts.rowid)
                    AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.message_id = alerts.digest_message)
                    AND {SilenceSql.NotAKeptSilence}
                  ORDER BY received_at LIMIT $p1)
                """, horizon, maxRows);
            // An open incident's state is what its clear threads onto (the raise's Message-ID): kept longer, but not for ever.
            int st = s.Exec(
                """
                DELETE FROM storm WHERE rowid IN (
                  SELECT rowid FROM storm WHERE last_mail_at < $p0 AND (incident_open = 0 OR last_mail_at < $p2)
                    AND NOT EXISTS (SELECT 1 FROM alerts WHERE alerts.device = storm.device AND alerts.code = storm.code AND alerts.status = 'held')
                  LIMIT $p1)
                """, horizon, maxRows, openHorizon);
            int h = s.Exec("DELETE FROM heartbeats WHERE rowid IN (SELECT rowid FROM heartbeats WHERE at < $p0 LIMIT $p1)", Math.Max(horizon, heartbeatHorizon), maxRows);
            return ((long)m, (long)a, m >= maxRows || a >= maxRows || st >= maxRows || h >= maxRows);
        }, cancellationToken).ConfigureAwait(false);

        long freed = await Enqueue((s, _) =>
        {
            long before = s.Scalar("PRAGMA freelist_count") is long f ? f : 0;
            s.Exec("PRAGMA incremental_vacuum(4096)");
            long after = s.Scalar("PRAGMA freelist_count") is long g ? g : 0;
            return before - after;
        }, cancellationToken).ConfigureAwait(false);
        return new PruneResult(messages, alerts, freed, more);
    }

    /// <inheritdoc />
    public Task PingAsync(CancellationToken cancellationToken) => Enqueue((_, _) => 0, cancellationToken, isolate: false);

    /// <inheritdoc />
    public Task<SpoolCounts> CountsAsync(CancellationToken cancellationToken) =>
        Read((s, _) => new SpoolCounts(s.CountBy("alerts"), s.CountBy("messages")), cancellationToken);

    private Dictionary<string, long> CountBy(string table)
    {
        var counts = new Dictionary<string, long>(StringComparer.Ordinal);
        using var r = Query($"SELECT status, COUNT(*) FROM {table} GROUP BY status");
        while (r.Read())
        {
            counts[r.GetString(0)] = r.GetInt64(1);
        }

        return counts;
    }

    /// <inheritdoc />
    public Task<(string Status, string? Reason)?> GetAlertAsync(string device, string alertId, CancellationToken cancellationToken) =>
        Read<(string, string?)?>((s, _) =>
        {
            using var r = s.Query("SELECT status, reason FROM alerts WHERE device=$p0 AND alert_id=$p1", device, alertId);
            return r.Read() ? (r.GetString(0), r.IsDBNull(1) ? null : r.GetString(1)) : null;
        }, cancellationToken);

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        _queue.Writer.TryComplete();
        _workQueued.Set();
        await _stopped.Task.ConfigureAwait(false);
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }

        if (_checkpointer is not null)
        {
            await _stopping.CancelAsync().ConfigureAwait(false);
            _checkpointer.Join();
            _checkpointConnection!.Dispose();
        }

        _stopping.Dispose();
        _checkpointDue.Dispose();
        _urgentQueued.Dispose();
        _workQueued.Dispose();
        _readsOpen.Dispose();
        if (_reader is not null)
        {
            lock (_readLock)
            {
                _closed = true;
            }

            await _reader.DisposeAsync().ConfigureAwait(false);
        }

        foreach (var command in _commands.Values)
        {
            command.Dispose();
        }

        FinalizeStatements();
        _connection.Dispose();
        _ownerLock?.Dispose();
    }

    private Task<T> Read<T>(Func<SqliteSpool, BatchContext, T> work, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return Task.FromCanceled<T>(cancellationToken);
        }

        try
        {
            _readsOpen.Wait(cancellationToken); // the writer is starting the WAL anew (KeepWalBounded): a few milliseconds
        }
        catch (OperationCanceledException)
        {
            return Task.FromCanceled<T>(cancellationToken);
        }
        catch (ObjectDisposedException)
        {
            return Task.FromException<T>(new SpoolException("The spool is closed; the gateway is stopping."));
        }

        lock (_readLock)
        {
            if (_closed || _reader is null)
            {
                return Task.FromException<T>(new SpoolException("The spool is closed; the gateway is stopping."));
            }

            try
            {
                _reader.Exec("BEGIN"); // one snapshot for the whole read
                try
                {
                    return Task.FromResult(work(_reader, new BatchContext(Clock.GetUtcNow(), MaxAge)));
                }
                finally
                {
                    _reader.Exec("COMMIT");
                }
            }
            catch (SqliteException ex)
            {
                return Task.FromException<T>(new SpoolException($"Reading the spool failed: {ex.Message}. Check the disk and the file's permissions.", ex));
            }
        }
    }

    private Task<T> Enqueue<T>(Func<SqliteSpool, BatchContext, T> work, CancellationToken cancellationToken, bool isolate = true, bool background = false)
    {
        var item = new SpoolWork<T>(work) { Isolate = isolate, Background = background };
        if (_queue.Writer.TryWrite(item))
        {
            WakeWriter(background);

            return cancellationToken.CanBeCanceled ? item.Task.WaitAsync(cancellationToken) : item.Task;
        }

        return EnqueueWhenRoomAsync(item, cancellationToken);
    }

    // The queue is full (the disk is behind) or closed: wait for room, which is the back-pressure devices feel.
    private async Task<T> EnqueueWhenRoomAsync<T>(SpoolWork<T> item, CancellationToken cancellationToken)
    {
        try
        {
            await _queue.Writer.WriteAsync(item, cancellationToken).ConfigureAwait(false);
            WakeWriter(item.Background);
        }
        catch (ChannelClosedException)
        {
            throw new SpoolException("The spool is closed; the gateway is stopping.");
        }

        return await item.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    private void WakeWriter(bool background)
    {
        if (!_workQueued.IsSet)
        {
            _workQueued.Set();
        }

        if (!background)
        {
            _urgentQueued.Set();
        }
    }

    // The writer waits on _workQueued, which the caller queueing work sets, rather than blocking on the channel's
    // WaitToReadAsync: the channel completes that through a thread-pool work item, which then wakes the writer -- two
    // thread hand-offs per wake-up instead of one, and on a small virtual machine each costs several microseconds.
    private bool WaitForWork(ChannelReader<SpoolWork> reader)
    {
        while (true)
        {
            if (reader.TryPeek(out _))
            {
                return true;
            }

            _workQueued.Reset(); // work queued after this sets it again; work queued before it is seen below
            if (reader.TryPeek(out _))
            {
                return true;
            }

            if (reader.Completion.IsCompleted)
            {
                return false;
            }

            _workQueued.Wait();
        }
    }

    private void WriterLoop()
    {
        var batch = new List<SpoolWork>(_maxBatch);
        var reader = _queue.Reader;
        try
        {
            while (WaitForWork(reader))
            {
                batch.Clear();
                while (batch.Count < _maxBatch && reader.TryRead(out var item))
                {
                    batch.Add(item);
                }

                if (BackgroundLinger > TimeSpan.Zero && batch.Count < LingerBelow && batch.TrueForAll(static i => i.Background)
                    && System.Diagnostics.Stopwatch.GetElapsedTime(_lastCommit) < BackgroundLinger)
                {
                    Linger(batch, reader);
                }

                try
                {
                    RunBatch(batch);
                }
#pragma warning disable CA1031 // The writer thread must outlive any one batch: if it died, every caller would wait forever.
                catch (Exception ex)
#pragma warning restore CA1031
                {
                    LogCommitFailed(ex);
                    var failure = new SpoolException($"The spool could not commit ({ex.Message}); nothing in this batch is durable.", ex);
                    foreach (var item in batch)
                    {
                        item.Fail(failure);
                    }
                }

                try
                {
                    KeepWalBounded();
                }
#pragma warning disable CA1031 // as above: the WAL stays as it is and the next commit tries again
                catch (Exception ex)
#pragma warning restore CA1031
                {
                    LogCheckpointFailed(ex);
                }
            }
        }
        finally
        {
            _stopped.TrySetResult();
        }
    }

    /// <summary>
    /// How long a commit of background work only (routing decisions, delivery results: nobody is waiting for an
    /// acknowledgement) waits for more work to share it, while the spool is busy (it committed less than this ago).
    /// A commit has a cost of its own -- the pages every commit rewrites, the fsync -- and under load delivery results
    /// come one by one: without this, a faster writer made smaller batches and more commits, not less work. An idle
    /// spool commits at once; alerts and mail acknowledged to a device never wait. Zero turns it off.
    /// </summary>
    public TimeSpan BackgroundLinger { get; set; } = TimeSpan.FromMilliseconds(5);

    // A batch of background work this large is worth its commit as it is.
    private const int LingerBelow = 64;
    private long _lastCommit;

    // Set when work that someone waits on is queued; a lingering writer sleeps on it, without spinning, and is woken by
    // nothing else (background work arriving meanwhile simply waits in the queue to be gathered at the end).
    private readonly ManualResetEventSlim _urgentQueued = new(false, spinCount: 0);
    private readonly ManualResetEventSlim _workQueued = new(false);

    // Waits until the linger is over or work that someone waits on is queued, then adds what was queued to the batch.
    private void Linger(List<SpoolWork> batch, ChannelReader<SpoolWork> reader)
    {
        _urgentQueued.Reset();
        if (!Gather(batch, reader))
        {
            _urgentQueued.Wait(BackgroundLinger);
            Gather(batch, reader);
        }
    }

    // Adds queued work to the batch (up to its limit); true when some of it is work someone waits on.
    private bool Gather(List<SpoolWork> batch, ChannelReader<SpoolWork> reader)
    {
        bool urgent = false;
        while (batch.Count < _maxBatch && reader.TryRead(out var item))
        {
            batch.Add(item);
            urgent |= !item.Background;
        }

        return urgent || batch.Count >= _maxBatch;
    }

    private void CheckpointLoop()
    {
        var token = _stopping.Token;
        try
        {
            while (true)
            {
                _checkpointDue.Wait(token);
                _checkpointDue.Reset(); // a commit after this is covered by the checkpoint below or sets it again
                try
                {
                    lock (_checkpointTurn)
                    {
                        Execute(_checkpointConnection!, "PRAGMA wal_checkpoint(PASSIVE);");
                    }

                    Checkpointed?.Invoke();
                }
                catch (SqliteException ex)
                {
                    // The WAL keeps every commit; a checkpoint that fails now is retried with the next one.
                    LogCheckpointFailed(ex);
                }

                // At most one checkpoint per interval: each one fsyncs the database file.
                if (token.WaitHandle.WaitOne(CheckpointInterval))
                {
                    return;
                }
            }
        }
        catch (OperationCanceledException)
        {
            // Stopping; SQLite checkpoints the WAL when the last connection closes.
        }
    }

    // Between two batches: every caller of the last one has its answer, and the next waits for this.
    private void KeepWalBounded()
    {
        long now = System.Diagnostics.Stopwatch.GetTimestamp();
        if (_walPath is null || now < _walLookAt)
        {
            return;
        }

        LookAtWalIn(now, TimeSpan.FromMilliseconds(10));
        long length;
        try
        {
            length = new FileInfo(_walPath).Length;
        }
        catch (IOException)
        {
            return;
        }

        if (length <= WalLimitBytes)
        {
            return;
        }

        // RESTART copies what is left of the WAL and waits until no reader is reading it, so that the next commit
        // writes from the start of the file. The gateway's own reads are held off meanwhile (they take turns on one
        // connection, and reads that follow each other closely would otherwise keep some reader on the WAL at every
        // moment SQLite looks) -- but a long one, a console query over a large spool, is not waited for: acknowledgements
        // wait behind this. Another process reading the file is waited for briefly, then tried again later.
        bool restarted = false;
        _readsOpen.Reset(); // reads not yet begun wait (Read); the one under way, if any, is let finish
        try
        {
            if (!_readLock.TryEnter(ReadWaitForWalRestart))
            {
                LookAtWalIn(now, 2 * ReadWaitForWalRestart);
                return;
            }

            try
            {
                Exec("PRAGMA busy_timeout=100");
                lock (_checkpointTurn)
                {
                    using var result = Query("PRAGMA wal_checkpoint(RESTART)");
                    restarted = result.Read() && result.GetInt64(0) == 0;
                }
            }
            catch (SqliteException ex)
            {
                LogCheckpointFailed(ex);
            }
            finally
            {
                _readLock.Exit();
                Exec("PRAGMA busy_timeout=5000");
            }
        }
        finally
        {
            _readsOpen.Set();
        }

        if (restarted)
        {
            Interlocked.Increment(ref _walRestarts);
        }
        else
        {
            // Another process reading the file held on: try again a checkpoint interval later, not after every batch.
            LookAtWalIn(now, CheckpointInterval);
            LogWalRestartBusy(length);
        }
    }

    private void LookAtWalIn(long now, TimeSpan delay) =>
        _walLookAt = now + (long)(delay.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);

    private void RunBatch(List<SpoolWork> batch)
    {
        var ctx = new BatchContext(Clock.GetUtcNow(), MaxAge);
        long started = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            Exec("BEGIN IMMEDIATE");

            // Optimistic first: no savepoints. A savepoint costs two statements and makes SQLite copy every page the
            // item touches into the statement journal, and items almost never fail. If one of several statements
            // does, the whole transaction is rolled back and the batch runs again with a savepoint per item, so that
            // only the failing item fails, exactly as if it had been isolated from the start.
            if (!RunItems(batch, ctx, isolate: false))
            {
                Exec("ROLLBACK");
                foreach (var item in batch)
                {
                    item.Failed = null;
                }

                ctx = new BatchContext(ctx.Now, ctx.MaxAge);
                Exec("BEGIN IMMEDIATE");
                RunItems(batch, ctx, isolate: true);
            }

            Exec("COMMIT");
        }
        catch (Exception ex) when (ex is SqliteException or InvalidOperationException)
        {
            LogCommitFailed(ex);
            try
            {
                Exec("ROLLBACK");
            }
            catch (SqliteException)
            {
                // Already rolled back by SQLite.
            }

            var failure = new SpoolException($"The spool could not commit ({ex.Message}); nothing in this batch is durable. Check disk space and permissions.", ex);
            foreach (var item in batch)
            {
                item.Fail(failure);
            }

            if (ex is SqliteException { SqliteErrorCode: SqliteCorrupt or SqliteNotADatabase } && Interlocked.Exchange(ref _corruptReported, 1) == 0)
            {
                Corrupted?.Invoke(failure);
            }

            return;
        }

        CommitTimed?.Invoke(System.Diagnostics.Stopwatch.GetElapsedTime(started));
        _lastCommit = System.Diagnostics.Stopwatch.GetTimestamp();
        Interlocked.Increment(ref _batches);
        Interlocked.Add(ref _items, batch.Count);
        _checkpointDue.Set();
        Committed?.Invoke();

        foreach (var item in batch)
        {
            item.Complete();
        }

        if (ctx.AlertsStored)
        {
            AlertsStored?.Invoke();
        }

        if (ctx.MessagesQueued)
        {
            MessagesQueued?.Invoke();
        }
    }

    // Runs every item of the batch. Without isolation, returns false at the first multi-statement item that fails
    // (the transaction then holds part of it and must be rolled back); a single statement that fails was undone by
    // SQLite alone, so only its item fails. With isolation, each multi-statement item runs in its own savepoint.
    private bool RunItems(List<SpoolWork> batch, BatchContext ctx, bool isolate)
    {
        foreach (var item in batch)
        {
            bool savepoint = isolate && item.Isolate;
            if (savepoint)
            {
                Exec("SAVEPOINT item");
            }

            try
            {
                item.Run(this, ctx);
                if (savepoint)
                {
                    Exec("RELEASE item");
                }
            }
            catch (Exception ex) when (ItemOnly(ex))
            {
                // A constraint, conflict or logic error in this item only (not I/O, corruption or a full disk).
                if (item.Isolate && !isolate && batch.Count > 1)
                {
                    return false;
                }

                if (savepoint)
                {
                    Exec("ROLLBACK TO item");
                    Exec("RELEASE item");
                }
                else if (item.Isolate)
                {
                    // The batch's only item: undo whatever part of it ran; COMMIT then commits nothing.
                    Exec("ROLLBACK");
                    Exec("BEGIN IMMEDIATE");
                }

                item.Failed = ex switch
                {
                    SpoolException spool => spool,
                    SqliteException { SqliteErrorCode: SqliteConstraint or SqliteTooBig or SqliteMismatch } refused =>
                        new SpoolDataException($"The spool refused the item's data: {refused.Message}", refused),
                    _ => new SpoolException($"Spool operation failed: {ex.Message}", ex),
                };
            }
        }

        return true;
    }

    // What fails one work item only; I/O errors, a full disk and corruption fail the whole batch.
    private static bool ItemOnly(Exception ex) => ex switch
    {
        SqliteException sqlite => sqlite.SqliteErrorCode is not (SqliteIoError or SqliteCorrupt or SqliteFull or SqliteNotADatabase),
        OutOfMemoryException => false,
        _ => true,
    };

    private SqliteCommand Command(string sql, object?[] args)
    {
        if (!_commands.TryGetValue(sql, out var command))
        {
            command = _connection.CreateCommand();
            command.CommandText = sql;
            for (int i = 0; i < args.Length; i++)
            {
                command.Parameters.Add(new SqliteParameter("$p" + i.ToString(System.Globalization.CultureInfo.InvariantCulture), null));
            }

            _commands[sql] = command;
        }

        for (int i = 0; i < args.Length; i++)
        {
            command.Parameters[i].Value = args[i] ?? DBNull.Value;
        }

        return command;
    }

    private SqliteDataReader Query(string sql, params object?[] args) => Command(sql, args).ExecuteReader();

    private static DateTimeOffset FromMs(long ms) => DateTimeOffset.FromUnixTimeMilliseconds(ms);

    [LoggerMessage(Level = LogLevel.Information, Message = "Converting the spool {Path} to incremental vacuum (once; it takes as long as copying the file)")]
    private static partial void LogConvertingVacuum(ILogger logger, string path);

    [LoggerMessage(Level = LogLevel.Error, Message = "Spool commit failed; every caller in the batch is told to retry")]
    private partial void LogCommitFailed(Exception ex);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Spool WAL checkpoint failed; retrying with the next commit")]
    private partial void LogCheckpointFailed(Exception ex);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Spool WAL at {Length} bytes could not be started anew (another process is reading it); retrying in a second")]
    private partial void LogWalRestartBusy(long length);

    private sealed class BatchContext(DateTimeOffset now, TimeSpan maxAge)
    {
        public DateTimeOffset Now { get; } = now;

        public TimeSpan MaxAge { get; } = maxAge;

        public bool AlertsStored { get; set; }

        public bool MessagesQueued { get; set; }
    }

    private abstract class SpoolWork
    {
        public Exception? Failed { get; set; }

        // False for work of one statement (or reads only): no savepoint needed, SQLite undoes a failed statement alone.
        public bool Isolate { get; init; } = true;

        // True for work no device or client waits on (routing, delivery results): it may wait a little for company.
        public bool Background { get; init; }

        public abstract void Run(SqliteSpool spool, BatchContext ctx);

        public abstract void Complete();

        public abstract void Fail(Exception ex);
    }

    private sealed class SpoolWork<T>(Func<SqliteSpool, BatchContext, T> work) : SpoolWork
    {
        private readonly TaskCompletionSource<T> _tcs = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private T? _result;

        public Task<T> Task => _tcs.Task;

        public override void Run(SqliteSpool spool, BatchContext ctx) => _result = work(spool, ctx);

        public override void Complete()
        {
            if (Failed is not null)
            {
                Fail(Failed);
            }
            else
            {
                _tcs.TrySetResult(_result!);
            }
        }

        public override void Fail(Exception ex)
        {
            _tcs.TrySetException(ex);

            // A caller that stopped waiting (its token was cancelled) never sees this failure; the spool has logged
            // it, so it must not come back later as an unobserved task exception.
            _ = _tcs.Task.Exception;
        }
    }
}
