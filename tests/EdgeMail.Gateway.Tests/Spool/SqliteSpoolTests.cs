using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;

namespace EdgeMail.Gateway.Tests.Spool;

/// <summary>The spool contract on SQLite, and what only SQLite does (its file, its checkpoints).</summary>
public sealed class SqliteSpoolTests : SpoolContractTests, IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));

    private string DbPath => Path.Combine(_dir, "spool.db");

    protected override bool PruneFreesPages => true;

    protected override ISpool Open(TimeProvider? clock = null) => OpenSqlite(clock);

    private SqliteSpool OpenSqlite(TimeProvider? clock = null)
    {
        var spool = SqliteSpool.Open(DbPath, fsync: true, maxBatch: 512, NullLogger.Instance);
        spool.Clock = clock ?? TimeProvider.System;
        return spool;
    }

    protected override (long Batches, long Items) CommitStats(ISpool spool) => ((SqliteSpool)spool).CommitStats;

    // A start must not read every alert to find each device's open silence: the query reads the partial index.
    [Fact]
    public async Task SilenceHistory_ReadsTheSilenceIndex_NotTheAlerts()
    {
        await using (var spool = OpenSqlite())
        {
            await spool.AcceptAlertAsync(Alert("dev-1", "gw-silent-1", code: "DEVICE_SILENT"), default);
        }

        var steps = Plan(SilenceSql.LastSilences);

        Assert.Contains(steps, s => s.Contains("USING INDEX alerts_silence", StringComparison.Ordinal));
        Assert.DoesNotContain(steps, s => s.Contains("SCAN alerts USING INDEX alerts_device_received", StringComparison.Ordinal) || s == "SCAN alerts");
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
    }

    // When each device was last heard from is read at every start and for the console's device list: the query seeks
    // each device in the index and reads no alert it does not return.
    [Fact]
    public async Task DeviceActivity_SeeksEachDevice_AndScansNoAlerts()
    {
        await using (var spool = OpenSqlite())
        {
            await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
        }

        var steps = Plan(SilenceSql.LastAlerts);

        Assert.Contains(steps, s => s.Contains("USING COVERING INDEX alerts_device_received (device>?)", StringComparison.Ordinal));
        Assert.DoesNotContain(steps, s => s.StartsWith("SCAN a", StringComparison.Ordinal)); // "SCAN alerts", "SCAN a": every row
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
    }

    // A row kept before receipts were told apart by their copy holds the detail as it came, a NUL or a 512th character
    // that splits a pair included; its copies went out (and come back acknowledged) as the wire carries it.
    [Fact]
    public async Task RemoveReceipts_OfARowKeptByAnEarlierVersionWithANulAndACutPair_RemovesIt()
    {
        await using var spool = OpenSqlite();
        string legacy = "550 \0 " + new string('x', 505) + "\U0001F600"[..1]; // 512 characters, the last a lone high surrogate
        Assert.Equal(512, legacy.Length);
        using (var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={DbPath};Pooling=False"))
        {
            connection.Open();
            using var insert = connection.CreateCommand();
            insert.CommandText = "INSERT INTO receipts(device, alert_id, state, at, detail, created_at) VALUES('dev-1', 'a-1', 'failed', $at, $detail, $at)";
            insert.Parameters.AddWithValue("$at", T0.ToUnixTimeMilliseconds());
            insert.Parameters.AddWithValue("$detail", legacy);
            insert.ExecuteNonQuery();
        }

        var sent = Assert.Single(await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Receipt.Copy;
        Assert.DoesNotContain('\0', sent.Detail);

        Assert.Equal(1, await spool.RemoveReceiptsAsync([sent], default));
        Assert.Empty(await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default));
    }

    private List<string> Plan(string sql)
    {
        using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={DbPath}");
        connection.Open();
        using var plan = connection.CreateCommand();
        plan.CommandText = "EXPLAIN QUERY PLAN " + sql;
        var steps = new List<string>();
        using var r = plan.ExecuteReader();
        while (r.Read())
        {
            steps.Add(r.GetString(3));
        }

        return steps;
    }

    [Fact]
    public async Task Commit_IsCopiedIntoTheDatabaseFileByTheBackgroundCheckpoint()
    {
        await using var spool = OpenSqlite();
        var checkpointed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        spool.Checkpointed += () => checkpointed.TrySetResult();

        await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
        await EdgeMail.Testing.Await.Within(checkpointed.Task.ContinueWith(_ => true, TaskScheduler.Default), "a WAL checkpoint after the commit");

        // The database file alone (no -wal beside it) has the alert: commits do not checkpoint themselves any more,
        // the background checkpoint did.
        string copy = Path.Combine(_dir, "copy.db");
        File.Copy(DbPath, copy);
        using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={copy};Pooling=False");
        connection.Open();
        using var count = connection.CreateCommand();
        count.CommandText = "SELECT COUNT(*) FROM alerts WHERE alert_id='a-1'";
        Assert.Equal(1L, (long)count.ExecuteScalar()!);
    }

    // A writer that commits back to back (a burst, a backlog) while readers read all along leaves SQLite no moment to
    // start the WAL from its beginning: the background checkpoints copy it, but the file grew without end (650 MB in
    // one benchmark run). The writer bounds it.
    [Fact]
    public async Task Wal_UnderBackToBackCommitsAndReaders_StaysNearItsLimit()
    {
        const long limit = 1 << 20;
        await using var spool = SqliteSpool.Open(DbPath, fsync: true, maxBatch: 512, NullLogger.Instance, walLimitBytes: limit);
        string wal = DbPath + "-wal";
        long longest = 0;
        spool.Committed += () => Interlocked.Exchange(ref longest, Math.Max(Interlocked.Read(ref longest), new FileInfo(wal).Length));

        using var stop = new CancellationTokenSource();
        long reads = 0;
        var reader = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                await spool.NewAlertsAsync(50, default);
                await spool.CountsAsync(default);
                Interlocked.Increment(ref reads);
            }
        });
        var writers = Enumerable.Range(1, 8).Select(d => Task.Run(async () =>
        {
            for (int i = 0; i < 600; i++)
            {
                Assert.Equal(AcceptOutcome.Stored, await spool.AcceptAlertAsync(Alert($"dev-{d}", $"a-{i}"), default));
            }
        })).ToArray();
        await Task.WhenAll(writers);
        await stop.CancelAsync();
        await reader;

        // The files as a power cut would leave them (no more commits come, so the WAL cannot start anew meanwhile):
        // SQLite's recovery from them has every alert that was acknowledged, each once.
        string cut = Path.Combine(_dir, "cut");
        Directory.CreateDirectory(cut);
        File.Copy(DbPath, Path.Combine(cut, "spool.db"));
        File.Copy(wal, Path.Combine(cut, "spool.db-wal"));
        using (var c = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={Path.Combine(cut, "spool.db")};Pooling=False"))
        {
            c.Open();
            using var count = c.CreateCommand();
            count.CommandText = "SELECT COUNT(*), COUNT(DISTINCT device || '/' || alert_id) FROM alerts";
            using var r = count.ExecuteReader();
            Assert.True(r.Read());
            Assert.Equal((4800L, 4800L), (r.GetInt64(0), r.GetInt64(1)));
        }

        var (batches, items) = spool.CommitStats;
        Assert.Equal(4800, items);
        Assert.True(reads > 0);
        Assert.True(spool.WalRestarts > 0, $"the WAL was never started anew ({batches} commits, longest WAL {longest} bytes)");
        // The limit, plus what the commit that crossed it wrote, plus one more should a reader hold a restart off.
        Assert.True(longest <= 3 * limit, $"the WAL grew to {longest} bytes in {batches} commits (limit {limit}, {spool.WalRestarts} restarts)");
    }

    // Another process reading the spool (a backup, the sqlite3 shell) keeps the WAL from being started anew for as long
    // as it holds its snapshot: the spool goes on acknowledging meanwhile, and brings the file back to its limit after.
    [Fact]
    public async Task Wal_HeldByAnotherReader_GrowsMeanwhile_AndComesBackToItsLimitAfter()
    {
        const long limit = 1 << 20;
        string wal = DbPath + "-wal";
        await using var spool = SqliteSpool.Open(DbPath, fsync: true, maxBatch: 512, NullLogger.Instance, walLimitBytes: limit);
        await spool.AcceptAlertAsync(Alert("dev-1", "first"), default);

        var other = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={DbPath};Pooling=False");
        other.Open();
        var snapshot = other.BeginTransaction(deferred: true);
        using (var read = other.CreateCommand())
        {
            read.Transaction = snapshot;
            read.CommandText = "SELECT COUNT(*) FROM alerts";
            Assert.Equal(1L, (long)read.ExecuteScalar()!); // the snapshot is taken here
        }

        int n = 0;
        while (new FileInfo(wal).Length <= 3 * limit)
        {
            Assert.Equal(AcceptOutcome.Stored, await spool.AcceptAlertAsync(Alert("dev-1", $"a-{n++}"), default));
            Assert.True(n < 5000, $"the WAL stayed at {new FileInfo(wal).Length} bytes through {n} commits");
        }

        snapshot.Dispose();
        other.Dispose();

        var back = Task.Run(async () =>
        {
            while (new FileInfo(wal).Length > limit)
            {
                Assert.Equal(AcceptOutcome.Stored, await spool.AcceptAlertAsync(Alert("dev-2", $"b-{n++}"), default));
            }

            return true;
        });
        // Which start anew comes first -- the writer's, or SQLite's own once a background checkpoint has copied the WAL
        // between two of these one-at-a-time commits -- is a race; either way the file is cut back to the limit.
        Assert.True(await EdgeMail.Testing.Await.Within(back, "the WAL cut back to its limit once the other reader let go"));
    }

    // Another process (an operator's sqlite3 shell, a backup tool) holding the write lock longer than the writer's
    // busy_timeout (5 s): the writer keeps trying, and what was waiting is stored once the lock is let go.
    [Fact]
    public async Task WriteLockHeldByAnotherProcess_PastTheBusyTimeout_TheAlertIsStoredOnceItIsLetGo()
    {
        await using var spool = OpenSqlite();
        await spool.AcceptAlertAsync(Alert("dev-1", "before"), default);

        var other = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={DbPath};Pooling=False");
        other.Open();
        var holding = other.BeginTransaction(System.Data.IsolationLevel.Serializable); // BEGIN IMMEDIATE: the write lock
        var locked = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        spool.Locked += () => locked.TrySetResult(true);
        var accept = spool.AcceptAlertAsync(Alert("dev-1", "while-held"), default);
        await EdgeMail.Testing.Await.Within(locked.Task, "the writer finding the database locked past its busy_timeout", TimeSpan.FromSeconds(30));
        holding.Dispose();
        other.Dispose();

        Assert.Equal(AcceptOutcome.Stored, await EdgeMail.Testing.Await.Within(accept, "the alert stored after the lock was let go"));
        Assert.Equal(("new", (string?)null), await spool.GetAlertAsync("dev-1", "while-held", default));
    }

    // A device's heartbeat with an empty payload is stored as an empty value, not as NULL (which its NOT NULL column
    // would refuse).
    [Fact]
    public async Task EmptyStatusPayload_IsStoredAsEmpty()
    {
        await using var spool = OpenSqlite();
        await spool.RecordStatusAsync("dev-1", T0, ReadOnlyMemory<byte>.Empty, default);

        var status = await spool.GetStatusAsync("dev-1", default);
        Assert.NotNull(status);
        Assert.Empty(status.Value.Payload);
    }

    [Fact]
    public async Task WalLimit_ComesFromTheConfiguration()
    {
        await using (var gw = await TestGateway.StartAsync(c => c["Spool"] = new { WalLimitMegabytes = 3 }))
        {
            Assert.Equal(3L << 20, ((SqliteSpool)gw.Spool).WalLimitBytes);
        }

        await using (var gw = await TestGateway.StartAsync())
        {
            Assert.Equal(64L << 20, ((SqliteSpool)gw.Spool).WalLimitBytes);
        }
    }

    [Fact]
    public async Task Open_NewerSchemaVersion_IsRefusedWithAMessage()
    {
        await using (OpenSqlite())
        {
        }

        using (var c = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={DbPath};Pooling=false"))
        {
            c.Open();
            using var cmd = c.CreateCommand();
            cmd.CommandText = "INSERT INTO schema_version(version) VALUES(99)";
            cmd.ExecuteNonQuery();
        }

        var ex = Assert.Throws<SpoolException>(() => OpenSqlite());
        Assert.Contains("schema version 99", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task SharedPollInterval_IsNull_ForTheOneGatewayThatOwnsTheFile()
    {
        await using var spool = OpenSqlite();
        Assert.Null(spool.SharedPollInterval);
    }

    // Nothing in a SQLite spool claims work for one process: two gateways on it would route the same alerts and send
    // the same mail. The second is refused; a change beside the running one (admin set-password) is not.
    [Fact]
    public async Task Open_AsOwner_WhileAnotherOwnerHoldsTheSpool_IsRefusedNamingIt_ButAChangeBesideItIsNot()
    {
        var first = SqliteSpool.Open(DbPath, fsync: true, maxBatch: 16, NullLogger.Instance, owner: true);
        await using (first)
        {
            var ex = Assert.Throws<SpoolException>(() => SqliteSpool.Open(DbPath, fsync: true, maxBatch: 16, NullLogger.Instance, owner: true));
            Assert.Contains("in use by another gateway", ex.Message, StringComparison.Ordinal);
            Assert.Contains(DbPath + ".lock", ex.Message, StringComparison.Ordinal);

            await using (var beside = SqliteSpool.Open(DbPath, fsync: true, maxBatch: 16, NullLogger.Instance))
            {
                await beside.SetAdminPasswordHashAsync("hash-1", default);
            }

            Assert.Equal("hash-1", await first.AdminPasswordHashAsync(default));
        }

        await using var next = SqliteSpool.Open(DbPath, fsync: true, maxBatch: 16, NullLogger.Instance, owner: true);
        Assert.Equal("hash-1", await next.AdminPasswordHashAsync(default));
    }

    [Fact]
    public async Task Start_OfASecondGatewayOnTheSameDataDirectory_FailsNamingTheFirst_AndTheFirstGoesOn()
    {
        await using var first = await TestGateway.StartAsync();

        var ex = await Assert.ThrowsAnyAsync<Exception>(() => TestGateway.StartAsync(null, null, dataDir: first.DataDir));

        Assert.Contains("in use by another gateway", ex.ToString(), StringComparison.Ordinal);
        using var client = await first.ConnectAsync("dev-1");
        await Operations.ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("after-refusal"));
        Assert.Single(await first.MailAsync(1));
    }

    [Fact]
    public async Task Prune_RemovesThePrunedMailsBodiesAndKeepsTheRest()
    {
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(T0);
        await using (var spool = OpenSqlite(clock))
        {
            var (_, done) = await RoutedAsync(spool, "dev-1", "a-1");
            await RoutedAsync(spool, "dev-1", "a-2");
            await spool.CommitDeliveryAsync(new DeliveryCommit(done, [new RecipientResult("alice@example.com", "sent", "250 ok")], null, null), default);
            clock.Advance(TimeSpan.FromDays(31));

            Assert.Equal(1, (await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 100, default)).Messages);
        }

        using var c = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={DbPath};Pooling=false");
        c.Open();
        using var cmd = c.CreateCommand();
        cmd.CommandText = "SELECT COUNT(*) FROM message_bodies WHERE message NOT IN (SELECT rowid FROM messages)";
        Assert.Equal(0L, cmd.ExecuteScalar());
        cmd.CommandText = "SELECT COUNT(*) FROM messages JOIN message_bodies ON message = messages.rowid WHERE status = 'queued' AND length(message_bodies.mime) > 0";
        Assert.Equal(1L, cmd.ExecuteScalar());
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(_dir, true);
        }
        catch (IOException)
        {
        }
    }
}
