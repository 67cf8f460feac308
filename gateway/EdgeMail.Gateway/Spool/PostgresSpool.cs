using System.Data;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace EdgeMail.Gateway.Spool;

/// <summary>
/// The PostgreSQL spool (docs/spool.md, docs/scale-out.md): one database that several gateway instances share.
/// <list type="bullet">
/// <item>Alerts and heartbeats go through a writer that batches whatever is queued into one transaction (group commit:
/// one multi-row <c>INSERT ... ON CONFLICT DO NOTHING</c> for all the alerts of a batch), and completes each caller's task
/// only after <c>COMMIT</c> returned — with <c>synchronous_commit=on</c>, after the WAL is flushed.</item>
/// <item>(device, alert id) is unique by a constraint, so a retransmission that reaches another instance is still a
/// duplicate.</item>
/// <item>Routing, digest and delivery work is claimed by the reads that hand it out (<c>FOR UPDATE SKIP LOCKED</c>, then
/// <c>claimed_by</c> and a lease in <c>claim_until</c>). Commits are fenced: a decision or delivery result is recorded only
/// while its row is still claimed by this instance. An instance that dies keeps its claims until the lease ends; then
/// another takes the work over.</item>
/// <item>Storm state is changed only under a transaction-scoped advisory lock on (device, code); a routing decision made
/// on state that changed since it was read is not committed, and its alert is routed again.</item>
/// <item><c>LISTEN/NOTIFY</c> wakes idle instances when alerts are stored or mail is queued anywhere.</item>
/// </list>
/// </summary>
public sealed partial class PostgresSpool : ISpool
{
    private const string Channel = "edgemail_spool";
    private const string UniqueViolation = "23505";
    private const string DiskFull = "53100";

    private readonly NpgsqlDataSource _data;
    private readonly ILogger _logger;
    private readonly int _maxBatch;
    private readonly Channel<PgWork> _queue;
    private readonly Task _writer;
    private readonly Task _listener;
    private readonly Task _heartbeats;
    private readonly int _knownVersion;
    private readonly CancellationTokenSource _stopping = new();
    private readonly string _owner;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, long> _lastHeartbeat = new(StringComparer.Ordinal);
    private const long HeartbeatSpacingMs = 5 * 60 * 1000;
    private static readonly TimeSpan HeartbeatRetention = TimeSpan.FromDays(7);
    private readonly TimeSpan _listenCheck;
    private long _batches;
    private long _items;
    private int _disposed;
    private bool _listening;

    private PostgresSpool(NpgsqlDataSource data, string owner, int knownVersion, int maxBatch, TimeSpan lease, TimeSpan poll, ILogger logger)
    {
        _data = data;
        _maxBatch = maxBatch;
        _logger = logger;
        Lease = lease;
        SharedPollInterval = poll;
        _owner = owner;
        _knownVersion = knownVersion;
        _listenCheck = ListenCheck(new NpgsqlConnectionStringBuilder(data.ConnectionString).KeepAlive);

        ConfirmedNow(); // registered a moment ago, in Open
        _queue = System.Threading.Channels.Channel.CreateBounded<PgWork>(new BoundedChannelOptions(Math.Max(1024, maxBatch * 8))
        {
            SingleReader = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
        _writer = Task.Run(WriterLoopAsync);
        _listener = Task.Run(() => ListenLoopAsync(_stopping.Token));
        _heartbeats = Task.Run(() => HeartbeatLoopAsync(_stopping.Token));
    }

    /// <inheritdoc />
    public TimeSpan? SharedPollInterval { get; }

    /// <summary>How long a claim on routing, digest or delivery work lasts before another instance may take it over.</summary>
    public TimeSpan Lease { get; }

    /// <summary>This process's name on its claims: host, process id and a random part (a restarted process is another owner).</summary>
    public string Owner => _owner;

    /// <summary>How long queued mail lives before it is given up (set from <c>Relay:MaxAge</c>).</summary>
    public TimeSpan MaxAge { get; set; } = TimeSpan.FromDays(5);

    /// <summary>The clock used to stamp rows and to measure leases.</summary>
    public TimeProvider Clock
    {
        get => _clock;
        set
        {
            _clock = value ?? throw new ArgumentNullException(nameof(value));

            ConfirmedNow(); // the heartbeat's window is on this clock: one set behind the one it was measured on would stretch it
        }
    }

    private TimeProvider _clock = TimeProvider.System;

    /// <summary>Called with each group commit's duration (BEGIN to durable COMMIT), for metrics.</summary>
    public Action<TimeSpan>? CommitTimed { get; set; }

    /// <summary>Raised after every commit of this instance (tests wait for spool state with it).</summary>
    public event Action? Committed;

    /// <summary>Whether notifications from other instances arrive now (the LISTEN connection is up).</summary>
    public bool IsListening => Volatile.Read(ref _listening);

    /// <summary>Raised when another instance's notification arrives (tests).</summary>
    public event Action? Notified;

    /// <inheritdoc />
    public event Action? AlertsStored;

    /// <inheritdoc />
    public event Action? MessagesQueued;

    /// <summary>Group commits so far and the alerts and heartbeats in them.</summary>
    public (long Batches, long Items) CommitStats => (Interlocked.Read(ref _batches), Interlocked.Read(ref _items));

    /// <summary>Opens (creating or migrating) the spool in the database the connection string names.</summary>
    /// <param name="connectionString">Npgsql connection string (<c>Spool:ConnectionString</c>).</param>
    /// <param name="fsync">True for <c>synchronous_commit=on</c> (durable at commit); false for off (benchmarks only).</param>
    /// <param name="maxBatch">Most alerts and heartbeats per group commit.</param>
    /// <param name="lease">Claim lease.</param>
    /// <param name="poll">How often idle loops look for work nothing announced.</param>
    /// <param name="logger">Logger.</param>
    /// <returns>The open spool.</returns>
    public static PostgresSpool Open(string connectionString, bool fsync, int maxBatch, TimeSpan lease, TimeSpan poll, ILogger logger) =>
        Open(connectionString, fsync, maxBatch, lease, poll, logger, PostgresSchema.Migrations);

    /// <summary>Opens the spool as a build that knows <paramref name="migrations"/> (tests: a newer build's).</summary>
    internal static PostgresSpool Open(string connectionString, bool fsync, int maxBatch, TimeSpan lease, TimeSpan poll, ILogger logger,
        IReadOnlyList<PostgresSchema.Migration> migrations)
    {
        ArgumentException.ThrowIfNullOrEmpty(connectionString);
        NpgsqlDataSource data;
        try
        {
            var builder = new NpgsqlConnectionStringBuilder(connectionString);

            // The server's default could be off; the acknowledgement promise needs the WAL flushed at COMMIT.
            builder.Options = ((builder.Options ?? string.Empty) + (fsync ? " -c synchronous_commit=on" : " -c synchronous_commit=off")).Trim();
            if (builder.ApplicationName is null or "")
            {
                builder.ApplicationName = "edgemail-gateway";
            }

            data = new NpgsqlDataSourceBuilder(builder.ConnectionString).Build();
        }
        catch (ArgumentException ex)
        {
            throw new SpoolException($"Spool:ConnectionString is not a valid PostgreSQL connection string: {ex.Message}", ex);
        }

        string owner = $"{Environment.MachineName}/{Environment.ProcessId}/{Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(4))}";
        try
        {
            using var connection = data.OpenConnection();
            int found = PostgresSchema.MigrateAsync(connection, owner, lease, migrations, logger, CancellationToken.None).GetAwaiter().GetResult();
            if (found < migrations.Count)
            {
                LogMigrated(logger, found, migrations.Count);
            }
        }
        catch (Exception ex) when (ex is NpgsqlException or System.Net.Sockets.SocketException or TimeoutException or InvalidOperationException)
        {
            data.Dispose();
            throw new SpoolException($"Cannot open the PostgreSQL spool ({Describe(data.ConnectionString)}): {ex.Message}. Check Spool:ConnectionString, that the server runs and that the user may create tables in that database.", ex);
        }
        catch (SpoolException ex)
        {
            LogNotOpened(logger, ex.Message);
            data.Dispose();
            throw;
        }

        return new PostgresSpool(data, owner, migrations.Count, maxBatch, lease, poll, logger);
    }

    // Host, port and database, never the password.
    private static string Describe(string connectionString)
    {
        var b = new NpgsqlConnectionStringBuilder(connectionString);
        return $"host {b.Host}, port {b.Port}, database {b.Database}, user {b.Username}";
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }

        _queue.Writer.TryComplete();
        await _writer.ConfigureAwait(false);

        // The heartbeat ends before the instance's row is removed, or it could write it again.
        await _stopping.CancelAsync().ConfigureAwait(false);
        await _listener.ConfigureAwait(false);
        await _heartbeats.ConfigureAwait(false);
        await ReleaseClaimsAsync().ConfigureAwait(false);
        _stopping.Dispose();
        _heartbeat.Dispose();
        await _data.DisposeAsync().ConfigureAwait(false);
    }

    // A graceful stop (the loops have finished and recorded what they attempted) hands what this instance still holds
    // back at once, and wakes the others, instead of leaving it until the leases run out, and removes its heartbeat, so
    // that an upgrade after a full stop need not wait a lease. Best effort: if PostgreSQL cannot be reached, the leases
    // free the work and the heartbeat runs out anyway. An instance that found the schema newer than its own writes
    // nothing more, this included.
    private async Task ReleaseClaimsAsync()
    {
        if (Volatile.Read(ref _schemaMoved) is not null)
        {
            return;
        }

        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            var ct = timeout.Token;
            await using var c = await _data.OpenConnectionAsync(ct).ConfigureAwait(false);
            await using var tx = await c.BeginTransactionAsync(ct).ConfigureAwait(false);
            int released = 0;
            foreach (string table in (string[])["alerts", "messages", "storm"])
            {
                released += await ExecAsync(c, tx, ct, $"UPDATE {table} SET claimed_by=NULL, claim_until=NULL WHERE claimed_by=$1", _owner).ConfigureAwait(false);
            }

            if (released > 0)
            {
                await ExecAsync(c, tx, ct, "SELECT pg_notify($1, 'am')", Channel).ConfigureAwait(false);
            }

            await PostgresInstances.LeaveAsync(c, tx, _owner, ct).ConfigureAwait(false);

            await tx.CommitAsync(ct).ConfigureAwait(false);
            LogClaimsReleased(released);
        }
#pragma warning disable CA1031 // Best effort at close: whatever fails, the leases free the work, and the close must go on.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            LogClaimsNotReleased(ex, Lease);
        }
    }

    // ---- helpers ----

    private long NowMs => Clock.GetUtcNow().ToUnixTimeMilliseconds();

    private long LeaseUntilMs => NowMs + (long)Lease.TotalMilliseconds;

    private static DateTimeOffset FromMs(long ms) => DateTimeOffset.FromUnixTimeMilliseconds(ms);

    // PostgreSQL text cannot hold U+0000; a device's string with one is kept readable, and stays the same key every time.
    private static string? Text(string? value) => value is null || !value.Contains('\0', StringComparison.Ordinal) ? value : value.Replace('\0', '\uFFFD');

    private static string Truncate(string reason) => reason.Length > 2000 ? reason[..2000] : reason;

    private static NpgsqlCommand Cmd(NpgsqlConnection c, NpgsqlTransaction? tx, string sql, params object?[] args)
    {
        var command = new NpgsqlCommand(sql, c, tx);
        foreach (object? arg in args)
        {
            command.Parameters.Add(new NpgsqlParameter { Value = arg ?? DBNull.Value });
        }

        return command;
    }

    private static async Task<int> ExecAsync(NpgsqlConnection c, NpgsqlTransaction? tx, CancellationToken ct, string sql, params object?[] args)
    {
        await using var command = Cmd(c, tx, sql, args);
        return await command.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
    }

    private static async Task<object?> ScalarAsync(NpgsqlConnection c, NpgsqlTransaction? tx, CancellationToken ct, string sql, params object?[] args)
    {
        await using var command = Cmd(c, tx, sql, args);
        var value = await command.ExecuteScalarAsync(ct).ConfigureAwait(false);
        return value is DBNull ? null : value;
    }

    private static async Task<List<T>> ListAsync<T>(NpgsqlConnection c, NpgsqlTransaction? tx, CancellationToken ct, Func<NpgsqlDataReader, T> row, string sql, params object?[] args)
    {
        await using var command = Cmd(c, tx, sql, args);
        await using var reader = await command.ExecuteReaderAsync(ct).ConfigureAwait(false);
        var list = new List<T>();
        while (await reader.ReadAsync(ct).ConfigureAwait(false))
        {
            list.Add(row(reader));
        }

        return list;
    }

    private static string? Str(NpgsqlDataReader r, int i) => r.IsDBNull(i) ? null : r.GetString(i);

    private static SpoolException Wrap(Exception ex) => ex switch
    {
        SpoolException s => s,
        PostgresException { SqlState: DiskFull } pg => new SpoolException($"The PostgreSQL server's disk is full ({pg.MessageText}); nothing new is stored until space is freed there.", pg),

        // Classes 22 (data exception), 23 (integrity constraint) and 54 (program limit exceeded): the statement's values.
        // Not a full NOTIFY queue (54000 at COMMIT): that passes once the listener holding it catches up.
        PostgresException pg when (pg.SqlState.StartsWith("22", StringComparison.Ordinal) || pg.SqlState.StartsWith("23", StringComparison.Ordinal)
            || pg.SqlState.StartsWith("54", StringComparison.Ordinal)) && pg.Routine != "PreCommit_Notify" =>
            new SpoolDataException($"The PostgreSQL spool refused the item's data: {pg.SqlState} {pg.MessageText}", pg),
        PostgresException pg => new SpoolException($"The PostgreSQL spool refused the operation: {pg.SqlState} {pg.MessageText}", pg),
        _ => new SpoolException($"The PostgreSQL spool is unreachable or failed: {ex.Message}. Check the server and Spool:ConnectionString; nothing was acknowledged.", ex),
    };

    private static bool IsSpoolFailure(Exception ex) => ex is NpgsqlException or System.Net.Sockets.SocketException or IOException or TimeoutException
        || (ex is InvalidOperationException && ex.Source == "Npgsql");

    /// <summary>One transaction on a pooled connection, committed before the task completes; events after the commit.</summary>
    private async Task<T> WriteAsync<T>(Func<NpgsqlConnection, NpgsqlTransaction, WriteContext, Task<T>> work, CancellationToken ct, bool durable = true)
    {
        await EnsureSchemaKnownAsync(ct).ConfigureAwait(false);
        var ctx = new WriteContext(Clock.GetUtcNow(), MaxAge);
        T result;
        try
        {
            await using var c = await _data.OpenConnectionAsync(ct).ConfigureAwait(false);
            await using var tx = await c.BeginTransactionAsync(ct).ConfigureAwait(false);
            if (!durable)
            {
                // Claims only: losing one in a server crash just makes the work claimable again (commits are fenced).
                await ExecAsync(c, tx, ct, "SET LOCAL synchronous_commit = off").ConfigureAwait(false);
            }

            result = await work(c, tx, ctx).ConfigureAwait(false);
            await NotifyAsync(c, tx, ctx, ct).ConfigureAwait(false);
            await tx.CommitAsync(ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (IsSpoolFailure(ex))
        {
            throw Wrap(ex);
        }

        AfterCommit(ctx);
        return result;
    }

    private async Task<T> ReadAsync<T>(Func<NpgsqlConnection, NpgsqlTransaction, Task<T>> work, CancellationToken ct)
    {
        try
        {
            await using var c = await _data.OpenConnectionAsync(ct).ConfigureAwait(false);

            // One snapshot for the whole read.
            await using var tx = await c.BeginTransactionAsync(IsolationLevel.RepeatableRead, ct).ConfigureAwait(false);
            var result = await work(c, tx).ConfigureAwait(false);
            await tx.CommitAsync(ct).ConfigureAwait(false);
            return result;
        }
        catch (Exception ex) when (IsSpoolFailure(ex))
        {
            throw Wrap(ex);
        }
        catch (ObjectDisposedException ex)
        {
            throw new SpoolException("The spool is closed; the gateway is stopping.", ex);
        }
    }

    private static async Task NotifyAsync(NpgsqlConnection c, NpgsqlTransaction tx, WriteContext ctx, CancellationToken ct)
    {
        string what = (ctx.AlertsStored ? "a" : string.Empty) + (ctx.MessagesQueued ? "m" : string.Empty);
        if (what.Length > 0)
        {
            // Delivered to every listener when (and only if) this transaction commits.
            await ExecAsync(c, tx, ct, "SELECT pg_notify($1, $2)", Channel, what).ConfigureAwait(false);
        }
    }

    private void AfterCommit(WriteContext ctx)
    {
        Committed?.Invoke();
        if (ctx.AlertsStored)
        {
            AlertsStored?.Invoke();
        }

        if (ctx.MessagesQueued)
        {
            MessagesQueued?.Invoke();
        }
    }

    // ---- LISTEN/NOTIFY ----

    private async Task ListenLoopAsync(CancellationToken stop)
    {
        bool reported = false;
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await using var c = await _data.OpenConnectionAsync(stop).ConfigureAwait(false);
                c.Notification += OnNotification;
                await ExecAsync(c, null, stop, PostgresInstances.Listen).ConfigureAwait(false);
                Volatile.Write(ref _listening, true);
                if (reported)
                {
                    LogListening();
                    reported = false;
                }

                // Whatever was announced while nobody listened: look now.
                AlertsStored?.Invoke();
                MessagesQueued?.Invoke();
                await WaitForNotificationsAsync(c, _listenCheck, stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex) when (IsSpoolFailure(ex))
            {
                Volatile.Write(ref _listening, false);
                if (!reported)
                {
                    // The loops still poll (SharedPollInterval); notifications only make them quicker.
                    LogListenFailed(ex);
                    reported = true;
                }

                try
                {
                    await Task.Delay(TimeSpan.FromSeconds(1), Clock, stop).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    /// <summary>
    /// Takes notifications on <paramref name="connection"/> (its events run) until <paramref name="stop"/>, in waits of
    /// <paramref name="check"/> each. Npgsql 10 can lose a cancellation that arrives as a wait begins (it checks the
    /// caller's token, then starts its read with a fresh token source), and a wait without a timeout then never ends: the
    /// spool's stop hung on it (measured: a plain cancelled <c>WaitAsync</c> hung within 50,000 stops every time). A
    /// timed wait that lost its cancellation ends at its timeout, the connection as it was.
    /// </summary>
    internal static async Task WaitForNotificationsAsync(NpgsqlConnection connection, TimeSpan check, CancellationToken stop)
    {
        try
        {
            while (!stop.IsCancellationRequested)
            {
                await connection.WaitAsync(check, stop).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    // How long one wait for notifications lasts: what a stop that Npgsql lost waits at most. Npgsql sends its keepalive
    // (Keepalive=N in Spool:ConnectionString) only inside a wait longer than N, and each wait's end starts its timer again,
    // so with a keepalive a wait outlasts it.
    internal static TimeSpan ListenCheck(int keepAliveSeconds) => TimeSpan.FromSeconds(keepAliveSeconds > 0 ? keepAliveSeconds + 1 : 1);

    private void OnNotification(object sender, NpgsqlNotificationEventArgs e)
    {
        Notified?.Invoke();
        if (e.Payload.Contains('a', StringComparison.Ordinal))
        {
            AlertsStored?.Invoke();
        }

        if (e.Payload.Contains('m', StringComparison.Ordinal))
        {
            MessagesQueued?.Invoke();
        }
    }

    // ---- group commit of alerts and heartbeats ----

    /// <inheritdoc />
    public Task<AcceptOutcome> AcceptAlertAsync(IncomingAlert alert, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(alert);
        return EnqueueAsync(new AcceptWork(alert), cancellationToken);
    }

    /// <inheritdoc />
    public Task RecordStatusAsync(string device, DateTimeOffset receivedAt, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        long at = receivedAt.ToUnixTimeMilliseconds();

        // At most one kept heartbeat per device every 5 minutes (per instance): enough for a chart, bounded in size.
        bool keep = !_lastHeartbeat.TryGetValue(device, out long last) || at - last >= HeartbeatSpacingMs;
        if (keep)
        {
            _lastHeartbeat[device] = at;
        }

        return EnqueueAsync(new StatusWork(device, at, payload.ToArray(), keep), cancellationToken);
    }

    /// <inheritdoc />
    public Task PingAsync(CancellationToken cancellationToken) => EnqueueAsync(new PingWork(), cancellationToken);

    private async Task<T> EnqueueAsync<T>(PgWork<T> item, CancellationToken cancellationToken)
    {
        if (!_queue.Writer.TryWrite(item))
        {
            try
            {
                // The queue is full (the server is behind): callers wait for room, the back-pressure devices feel.
                await _queue.Writer.WriteAsync(item, cancellationToken).ConfigureAwait(false);
            }
            catch (ChannelClosedException)
            {
                throw new SpoolException("The spool is closed; the gateway is stopping.");
            }
        }

        return await item.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    private async Task WriterLoopAsync()
    {
        var batch = new List<PgWork>(_maxBatch);
        var reader = _queue.Reader;
        while (await reader.WaitToReadAsync().ConfigureAwait(false))
        {
            batch.Clear();
            while (batch.Count < _maxBatch && reader.TryRead(out var item))
            {
                batch.Add(item);
            }

            try
            {
                await RunBatchAsync(batch).ConfigureAwait(false);
            }
#pragma warning disable CA1031 // The writer must outlive any one batch: if it died, every caller would wait forever.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                LogCommitFailed(ex);
                var failure = ex is SpoolException s ? s : new SpoolException($"The spool could not commit ({ex.Message}); nothing in this batch is durable.", ex);
                foreach (var item in batch)
                {
                    item.Fail(failure);
                }
            }
        }
    }

    private async Task RunBatchAsync(List<PgWork> batch)
    {
        try
        {
            await EnsureSchemaKnownAsync(CancellationToken.None).ConfigureAwait(false);
        }
        catch (SpoolException ex)
        {
            if (Volatile.Read(ref _schemaMoved) is null)
            {
                LogCommitFailed(ex);
            }

            foreach (var item in batch)
            {
                item.Fail(ex);
            }

            return;
        }

        var ctx = new WriteContext(Clock.GetUtcNow(), MaxAge);
        long started = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            await using var c = await _data.OpenConnectionAsync().ConfigureAwait(false);
            await using var tx = await c.BeginTransactionAsync().ConfigureAwait(false);
            var accepts = batch.OfType<AcceptWork>().ToList();
            if (accepts.Count > 0)
            {
                await AcceptAllAsync(c, tx, accepts, ctx).ConfigureAwait(false);
            }

            var statuses = batch.OfType<StatusWork>().ToList();
            if (statuses.Count > 0)
            {
                await StatusAllAsync(c, tx, statuses).ConfigureAwait(false);
            }

            await NotifyAsync(c, tx, ctx, CancellationToken.None).ConfigureAwait(false);
            await tx.CommitAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (IsSpoolFailure(ex))
        {
            LogCommitFailed(ex);
            var failure = new SpoolException($"The spool could not commit ({ex.Message}); nothing in this batch is durable. Check the PostgreSQL server.", ex);
            foreach (var item in batch)
            {
                item.Fail(failure);
            }

            return;
        }

        CommitTimed?.Invoke(System.Diagnostics.Stopwatch.GetElapsedTime(started));
        Interlocked.Increment(ref _batches);
        Interlocked.Add(ref _items, batch.Count);
        AfterCommit(ctx);
        foreach (var item in batch)
        {
            item.Complete();
        }
    }

    // One statement for every alert of the batch. A retransmission inside the batch is answered as a duplicate of the
    // first copy; a statement the server refuses is retried one alert at a time, so only the bad one fails.
    private static async Task AcceptAllAsync(NpgsqlConnection c, NpgsqlTransaction tx, List<AcceptWork> accepts, WriteContext ctx)
    {
        var first = new Dictionary<(string, string), AcceptWork>();
        var unique = new List<AcceptWork>(accepts.Count);
        foreach (var work in accepts)
        {
            var key = (Text(work.Alert.Device)!, Text(work.Alert.AlertId)!);
            if (first.TryAdd(key, work))
            {
                unique.Add(work);
            }
            else
            {
                work.Result = AcceptOutcome.Duplicate;
            }
        }

        const string Insert = """
            INSERT INTO alerts(device, alert_id, received_at, peer, payload, status, reason, code, via, severity)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bytea[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
            ON CONFLICT (device, alert_id) DO NOTHING
            RETURNING device, alert_id
            """;
        await tx.SaveAsync("bulk").ConfigureAwait(false);
        try
        {
            var stored = (await ListAsync(c, tx, CancellationToken.None, r => (r.GetString(0), r.GetString(1)), Insert, Columns(unique)).ConfigureAwait(false)).ToHashSet();
            await tx.ReleaseAsync("bulk").ConfigureAwait(false);
            foreach (var work in unique)
            {
                bool isNew = stored.Contains((Text(work.Alert.Device)!, Text(work.Alert.AlertId)!));
                work.Result = isNew ? AcceptOutcome.Stored : AcceptOutcome.Duplicate;
                ctx.AlertsStored |= isNew && work.Alert.Status == AlertStatus.New;
            }
        }
        catch (PostgresException)
        {
            await tx.RollbackAsync("bulk").ConfigureAwait(false);
            foreach (var work in unique)
            {
                await tx.SaveAsync("one").ConfigureAwait(false);
                try
                {
                    bool isNew = (await ListAsync(c, tx, CancellationToken.None, r => r.GetString(0), Insert, Columns([work])).ConfigureAwait(false)).Count > 0;
                    await tx.ReleaseAsync("one").ConfigureAwait(false);
                    work.Result = isNew ? AcceptOutcome.Stored : AcceptOutcome.Duplicate;
                    ctx.AlertsStored |= isNew && work.Alert.Status == AlertStatus.New;
                }
                catch (PostgresException ex)
                {
                    await tx.RollbackAsync("one").ConfigureAwait(false);
                    work.Failed = new SpoolException($"The spool refused alert '{work.Alert.AlertId}' of {work.Alert.Device}: {ex.MessageText}", ex);
                }
            }
        }

        static object[] Columns(List<AcceptWork> works)
        {
            var alerts = works.Select(w => w.Alert).ToList();
            return
            [
                alerts.Select(a => Text(a.Device)).ToArray(),
                alerts.Select(a => Text(a.AlertId)).ToArray(),
                alerts.Select(a => a.ReceivedAt.ToUnixTimeMilliseconds()).ToArray(),
                alerts.Select(a => Text(a.Peer)).ToArray(),
                alerts.Select(a => a.Payload.ToArray()).ToArray(),
                alerts.Select(a => a.Status).ToArray(),
                alerts.Select(a => Text(a.Reason)).ToArray(),
                alerts.Select(a => Text(a.Code)).ToArray(),
                alerts.Select(a => Text(a.Via)).ToArray(),
                alerts.Select(a => Text(a.Severity)).ToArray(),
            ];
        }
    }

    private static async Task StatusAllAsync(NpgsqlConnection c, NpgsqlTransaction tx, List<StatusWork> statuses)
    {
        // One row per device (the latest); ON CONFLICT DO UPDATE may not touch a row twice in one statement.
        var latest = statuses.GroupBy(s => s.Device, StringComparer.Ordinal).Select(g => g.MaxBy(s => s.At)!).ToList();
        await ExecAsync(c, tx, CancellationToken.None,
            """
            INSERT INTO device_status(device, received_at, payload) SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])
            ON CONFLICT (device) DO UPDATE SET received_at = excluded.received_at, payload = excluded.payload
            WHERE device_status.received_at <= excluded.received_at
            """,
            latest.Select(s => Text(s.Device)).ToArray(), latest.Select(s => s.At).ToArray(), latest.Select(s => s.Payload).ToArray()).ConfigureAwait(false);
        var kept = statuses.Where(s => s.Keep).GroupBy(s => (s.Device, s.At)).Select(g => g.Last()).ToList();
        if (kept.Count > 0)
        {
            await ExecAsync(c, tx, CancellationToken.None,
                """
                INSERT INTO heartbeats(device, at, payload) SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])
                ON CONFLICT (device, at) DO UPDATE SET payload = excluded.payload
                """,
                kept.Select(s => Text(s.Device)).ToArray(), kept.Select(s => s.At).ToArray(), kept.Select(s => s.Payload).ToArray()).ConfigureAwait(false);
        }

        foreach (var s in statuses)
        {
            s.Result = 0;
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "PostgreSQL spool migrated from schema version {From} to {To}")]
    private static partial void LogMigrated(ILogger logger, int from, int to);

    [LoggerMessage(Level = LogLevel.Error, Message = "Cannot open the PostgreSQL spool: {Reason}")]
    private static partial void LogNotOpened(ILogger logger, string reason);

    [LoggerMessage(Level = LogLevel.Error, Message = "Spool commit failed; every caller in the batch is told to retry")]
    private partial void LogCommitFailed(Exception ex);

    [LoggerMessage(Level = LogLevel.Information, Message = "Handed {Count} claimed items back to the other gateway instances")]
    private partial void LogClaimsReleased(int count);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not hand this instance's claims back at stop; other instances take them over when their lease ({Lease}) ends")]
    private partial void LogClaimsNotReleased(Exception ex, TimeSpan lease);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Cannot LISTEN for other gateway instances' work on the PostgreSQL spool; polling until it is back")]
    private partial void LogListenFailed(Exception ex);

    [LoggerMessage(Level = LogLevel.Information, Message = "Listening for other gateway instances' work on the PostgreSQL spool again")]
    private partial void LogListening();

    private sealed class WriteContext(DateTimeOffset now, TimeSpan maxAge)
    {
        public DateTimeOffset Now { get; } = now;

        public long NowMs { get; } = now.ToUnixTimeMilliseconds();

        public TimeSpan MaxAge { get; } = maxAge;

        public bool AlertsStored { get; set; }

        public bool MessagesQueued { get; set; }
    }

    private abstract class PgWork
    {
        public Exception? Failed { get; set; }

        public abstract void Complete();

        public abstract void Fail(Exception ex);
    }

    private abstract class PgWork<T> : PgWork
    {
        private readonly TaskCompletionSource<T> _tcs = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task<T> Task => _tcs.Task;

        public T? Result { get; set; }

        public override void Complete()
        {
            if (Failed is not null)
            {
                Fail(Failed);
            }
            else
            {
                _tcs.TrySetResult(Result!);
            }
        }

        public override void Fail(Exception ex)
        {
            _tcs.TrySetException(ex);
            _ = _tcs.Task.Exception; // a caller that stopped waiting must not see it as an unobserved exception
        }
    }

    private sealed class AcceptWork(IncomingAlert alert) : PgWork<AcceptOutcome>
    {
        public IncomingAlert Alert { get; } = alert;
    }

    private sealed class StatusWork(string device, long at, byte[] payload, bool keep) : PgWork<int>
    {
        public string Device { get; } = device;

        public long At { get; } = at;

        public byte[] Payload { get; } = payload;

        public bool Keep { get; } = keep;
    }

    private sealed class PingWork : PgWork<int>;
}
