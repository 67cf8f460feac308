using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Spool;

/// <summary>
/// The spool contract on PostgreSQL, and what only a shared spool does: two instances (two <see cref="PostgresSpool"/>s
/// on one database, as two gateway processes have) claiming work with leases, fenced commits, storm state that stays
/// right when both see the same (device, code), notifications between them, migrations.
/// </summary>
[RequiresPostgres]
public sealed class PostgresSpoolTests(Xunit.Abstractions.ITestOutputHelper output) : SpoolContractTests
{
    private static readonly TimeSpan Lease = TimeSpan.FromSeconds(30);
    private TestDatabase? _db;

    protected override bool PruneFreesPages => false;

    public override async Task InitializeAsync() => _db = await TestPostgres.CreateDatabaseAsync();

    public override async Task DisposeAsync()
    {
        if (_db is not null)
        {
            await _db.DisposeAsync();
        }
    }

    protected override ISpool Open(TimeProvider? clock = null) => OpenPostgres(clock);

    private PostgresSpool OpenPostgres(TimeProvider? clock = null, TimeSpan? lease = null)
    {
        var spool = PostgresSpool.Open(_db!.ConnectionString, fsync: true, maxBatch: 512, lease ?? Lease, TimeSpan.FromSeconds(5), NullLogger.Instance);
        spool.Clock = clock ?? TimeProvider.System;
        return spool;
    }

    protected override (long Batches, long Items) CommitStats(ISpool spool) => ((PostgresSpool)spool).CommitStats;

    // A spool's stop ends its listen at whatever moment it comes, and leaves the connection fit to close. Npgsql can lose
    // a cancellation that arrives just as a notification wait begins; a plain cancelled WaitAsync then never returns (a
    // hang within these 50,000 cases in every one of five runs). Each case stops at a random moment; the seed is printed
    // but cannot replay a race, only the spread of moments. About 10 s.
    [PostgresFact]
    public async Task WaitingForNotifications_StoppedAtAnyMoment_Ends()
    {
        int seed = Environment.TickCount;
        output.WriteLine($"seed {seed}");
        var random = new Random(seed);
        await using var data = Npgsql.NpgsqlDataSource.Create(_db!.ConnectionString);
        for (int i = 0; i < 50000; i++)
        {
            await using var c = await ListeningAsync(data);
            using var stop = new CancellationTokenSource();
            var waiting = Task.Run(() => PostgresSpool.WaitForNotificationsAsync(c, PostgresSpool.ListenCheck(0), stop.Token));
            Thread.SpinWait(random.Next(0, 3000));
            await stop.CancelAsync();
            await Await.Within(waiting, $"the wait for notifications to end after its stop (case {i}, seed {seed})");
            Assert.Equal(System.Data.ConnectionState.Open, c.FullState);
        }
    }

    // What the wait is for: a notification from another session arrives while it waits, across its timed waits.
    [PostgresFact]
    public async Task WaitingForNotifications_TakesThemUntilStopped()
    {
        await using var data = Npgsql.NpgsqlDataSource.Create(_db!.ConnectionString);
        await using var c = await ListeningAsync(data);
        var payloads = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var second = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        c.Notification += (_, e) =>
        {
            payloads.Enqueue(e.Payload);
            if (payloads.Count == 2)
            {
                second.TrySetResult();
            }
        };
        using var stop = new CancellationTokenSource();
        var waiting = Task.Run(() => PostgresSpool.WaitForNotificationsAsync(c, TimeSpan.FromMilliseconds(50), stop.Token));

        await _db.ScalarAsync("SELECT pg_notify('edgemail_spool', 'a')");
        await _db.ScalarAsync("SELECT pg_notify('edgemail_spool', 'm')");
        await Await.Within(second.Task, "both notifications, sent while the listen waited");
        Assert.False(waiting.IsCompleted, "the wait ended before its stop");

        await stop.CancelAsync();
        await Await.Within(waiting, "the wait to end after its stop");
        Assert.Equal(["a", "m"], payloads);
        Assert.Equal(System.Data.ConnectionState.Open, c.FullState);
    }

    private static async Task<Npgsql.NpgsqlConnection> ListeningAsync(Npgsql.NpgsqlDataSource data)
    {
        var c = await data.OpenConnectionAsync();
        await using var listen = new Npgsql.NpgsqlCommand("LISTEN edgemail_spool", c);
        await listen.ExecuteNonQueryAsync();
        return c;
    }

    // The planner can use the partial silence index for the start-up query (with sequential scans priced out, as a
    // large spool would: on an empty table a scan is cheaper, and an index it cannot use would still be scanned past).
    [PostgresFact]
    public async Task SilenceHistory_CanReadTheSilenceIndex()
    {
        string plan = await PlanAsync(SilenceSql.LastSilences);

        Assert.Contains("alerts_silence", plan, StringComparison.Ordinal);
        Assert.DoesNotContain("Seq Scan on alerts", plan, StringComparison.Ordinal);
    }

    // When each device was last heard from: the planner can step from device to device in alerts_device_received
    // (a GROUP BY over every alert has no "device >" condition on it) and seek each one's latest alerts.
    [PostgresFact]
    public async Task DeviceActivity_CanSeekEachDevice()
    {
        string plan = await PlanAsync(SilenceSql.LastAlerts);

        Assert.Matches(@"using alerts_device_received on alerts .*\n.*Index Cond: \(\(device IS NOT NULL\) AND \(device > d(_\d+)?\.device\)\)", plan);
        Assert.Matches(@"Index Scan Backward using alerts_device_received on alerts a .*\n.*Index Cond: \(device = d\.device\)", plan);
        Assert.DoesNotContain("Seq Scan on alerts", plan, StringComparison.Ordinal);
    }

    // The plan for a query on an empty spool, with sequential scans priced out as a large spool would. ANALYZE (it runs
    // the query, on empty tables) because plain EXPLAIN leaves out a recursive CTE's subplans.
    private async Task<string> PlanAsync(string sql)
    {
        await using (OpenPostgres())
        {
        }

        await using var connection = new Npgsql.NpgsqlConnection(_db!.ConnectionString);
        await connection.OpenAsync();
        await using (var off = new Npgsql.NpgsqlCommand("SET enable_seqscan = off", connection))
        {
            await off.ExecuteNonQueryAsync();
        }

        var plan = new System.Text.StringBuilder();
        await using (var explain = new Npgsql.NpgsqlCommand("EXPLAIN (ANALYZE) " + sql, connection))
        await using (var r = await explain.ExecuteReaderAsync())
        {
            while (await r.ReadAsync())
            {
                plan.AppendLine(r.GetString(0));
            }
        }

        return plan.ToString();
    }

    // Mail an instance read as due and will not attempt now (it waits for its domain: Relay:DomainConcurrency) is given
    // back: another instance takes it at once instead of after the lease; a claim another instance holds is left alone.
    [PostgresFact]
    public async Task MailReadAsDueAndGivenBack_AnotherInstanceTakesItAtOnce_AClaimOfAnotherIsLeftAlone()
    {
        await using var a = OpenPostgres();
        await using var b = OpenPostgres();
        await a.QueueMailAsync(Mail("given@gw.test", "relay"), default);
        await a.QueueMailAsync(Mail("kept@gw.test", "relay"), default);

        var byA = await a.DueMessagesAsync(DateTimeOffset.UtcNow, 1, new HashSet<long>(), default);
        var byB = await b.DueMessagesAsync(DateTimeOffset.UtcNow, 1, new HashSet<long>(), default);
        Assert.Equal(["given@gw.test", "kept@gw.test"], byA.Concat(byB).Select(m => m.MessageId).Order(StringComparer.Ordinal));
        var given = byA.Concat(byB).Single(m => m.MessageId == "given@gw.test");
        var (holder, other) = byA.Contains(given) ? (a, b) : (b, a);
        var inFlight = new HashSet<long> { byA.Concat(byB).Single(m => m.MessageId == "kept@gw.test").RowId }; // the other's own, under way
        Assert.Empty(await other.DueMessagesAsync(DateTimeOffset.UtcNow, 10, inFlight, default));

        await other.UnclaimMessagesAsync([given.RowId], default); // not its claim: nothing changes
        Assert.Empty(await other.DueMessagesAsync(DateTimeOffset.UtcNow, 10, inFlight, default));
        await holder.UnclaimMessagesAsync([given.RowId], default);
        Assert.Equal("given@gw.test", Assert.Single(await other.DueMessagesAsync(DateTimeOffset.UtcNow, 10, inFlight, default)).MessageId);
    }

    [PostgresFact]
    public async Task TwoInstancesDeliveringAtOnce_SendEveryMessageOnce_AndAThirdThatDiesHoldingClaims_LosesThemToTheOthersAfterItsLease()
    {
        const int Count = 300;
        // Only the dying instance has a short lease: the live ones' claims must not lapse while a loaded machine is slow.
        var shortLease = TimeSpan.FromSeconds(2);
        await using var a = OpenPostgres();
        await using var b = OpenPostgres();
        await Task.WhenAll(Enumerable.Range(0, Count).Select(i => a.QueueMailAsync(Mail($"c-{i}@gw.test", "relay"), default)));

        // The instance that dies: claims work and never records a result nor closes (a SIGKILL: no stop code runs).
        await using var dying = OpenPostgres(lease: shortLease);
        var stranded = await dying.DueMessagesAsync(DateTimeOffset.UtcNow, 25, new HashSet<long>(), default);
        Assert.Equal(25, stranded.Count);

        // Each live instance claims in one loop and sends on several tasks at once, as DeliveryWorker does; "sending"
        // records which instance handed which message to the relay.
        var sends = new System.Collections.Concurrent.ConcurrentQueue<(string Instance, string MessageId)>();
        using var deadline = new CancellationTokenSource(Await.DefaultTimeout * 2);
        async Task DeliverAsync(PostgresSpool spool, string name)
        {
            var inFlight = new System.Collections.Concurrent.ConcurrentDictionary<long, bool>();
            var senders = new List<Task>();
            while (sends.Count < Count && !deadline.IsCancellationRequested)
            {
                var due = await spool.DueMessagesAsync(DateTimeOffset.UtcNow, 8, inFlight.Keys.ToHashSet(), default);
                foreach (var m in due)
                {
                    inFlight[m.RowId] = true;
                    senders.Add(Task.Run(async () =>
                    {
                        sends.Enqueue((name, m.MessageId));
                        await spool.CommitDeliveryAsync(new DeliveryCommit(m.RowId, [new("alice@example.com", "sent", "250 by " + name)], null, null), default);
                        inFlight.TryRemove(m.RowId, out _);
                    }));
                }

                if (due.Count == 0)
                {
                    await Task.Yield(); // the rest is in flight here, at the other instance, or under the dead one's lease
                }
            }

            await Task.WhenAll(senders);
        }

        await Task.WhenAll(Task.Run(() => DeliverAsync(a, "a")), Task.Run(() => DeliverAsync(b, "b")));

        var perMessage = sends.GroupBy(s => s.MessageId).ToDictionary(g => g.Key, g => g.Count());
        Assert.Equal(Count, perMessage.Count);
        Assert.All(perMessage, p => Assert.True(p.Value == 1, $"{p.Key} was sent {p.Value} times"));
        Assert.True(sends.Any(s => s.Instance == "a") && sends.Any(s => s.Instance == "b"), "one instance delivered everything: no concurrency was tested");
        Assert.Equal(Count, (await a.CountsAsync(default)).Messages[MessageStatus.Sent]);
        foreach (var m in stranded)
        {
            Assert.Equal(MessageStatus.Sent, (await a.GetMessageAsync(m.MessageId, default))!.Status);
        }
    }

    [PostgresFact]
    public async Task AnInstanceClosedGracefully_HandsItsClaimsBackAtOnce_AndWakesTheOthers()
    {
        await using var a = OpenPostgres();
        await using var b = OpenPostgres();
        await Await.Within(ListeningAsync(b), "b to listen");
        var stored = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        var queued = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        b.AlertsStored += () => stored.TrySetResult(true);
        b.MessagesQueued += () => queued.TrySetResult(true);
        await a.AcceptAlertAsync(Alert("dev-1", "handed-back"), default);
        await a.QueueMailAsync(Mail("handed-back@gw.test", "relay"), default);
        await Await.Within(stored.Task, "b told of the alert"); // a's notifications are in: the next one is the stop's
        await Await.Within(queued.Task, "b told of the mail");
        var stopping = OpenPostgres();
        Assert.Single(await stopping.NewAlertsAsync(10, default));
        Assert.Single(await stopping.DueMessagesAsync(DateTimeOffset.UtcNow, 10, new HashSet<long>(), default));
        Assert.Empty(await b.NewAlertsAsync(10, default)); // held for the 30 s lease
        var woken = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        b.AlertsStored += () => woken.TrySetResult(true);

        await stopping.DisposeAsync();

        await Await.Within(woken.Task, "b woken by the stopping instance");
        Assert.Single(await b.NewAlertsAsync(10, default));
        Assert.Single(await b.DueMessagesAsync(DateTimeOffset.UtcNow, 10, new HashSet<long>(), default));
    }

    // Instance a starts again (its reconcile forgets the devices it does not find configured) moments after b added a
    // device through the console and its silence watch recorded it, but a read the spool's devices before that addition.
    // The reconcile deleted b's row; a recorded the device again when its registry found it, from then: two times for one
    // device, so two silence ids, and its silence mailed twice.
    [PostgresFact]
    public async Task WatchDevices_AStartThatReadItsDevicesBeforeAnotherInstanceAddedOne_KeepsWhenThatOneBegan()
    {
        await using var a = OpenPostgres();
        await using var b = OpenPostgres();
        await a.WatchDevicesAsync(["dev-1"], T0, forgetOthers: true, default);
        string[] configuredAtA = ["dev-1"]; // a's registry, read as it starts again
        var added = T0.AddDays(1);

        await b.SaveDeviceAsync(new ManagedDevice("dev-9", "hash", "Device 9", "Hall 3", ["alice"], false, null, added), default);
        var recordedByB = await b.WatchDevicesAsync(["dev-9"], added, forgetOthers: false, default);
        await a.WatchDevicesAsync(configuredAtA, added.AddSeconds(1), forgetOthers: true, default);
        var recordedByA = await a.WatchDevicesAsync(["dev-9"], added.AddSeconds(30), forgetOthers: false, default); // a's registry has found it

        Assert.Equal(added, recordedByB["dev-9"]);
        Assert.Equal(added, recordedByA["dev-9"]);
        Assert.Equal(added, (await b.WatchDevicesAsync(["dev-1", "dev-9"], added.AddMinutes(1), forgetOthers: true, default))["dev-9"]); // b restarts
    }

    [PostgresFact]
    public async Task TwoInstances_TheSameAlertAtBoth_IsStoredOnce()
    {
        await using var a = OpenPostgres();
        await using var b = OpenPostgres();

        var outcomes = await Task.WhenAll(Enumerable.Range(0, 20).Select(i => (i % 2 == 0 ? a : b).AcceptAlertAsync(Alert("dev-1", "retransmitted"), default)));

        Assert.Equal(1, outcomes.Count(o => o == AcceptOutcome.Stored));
        Assert.Equal(1, (await a.CountsAsync(default)).Alerts[AlertStatus.New]);
    }

    [PostgresFact]
    public async Task NewAlerts_ClaimedByOneInstance_AreNotHandedToAnother_UntilTheLeaseEnds_ThenTheLateCommitIsIgnored()
    {
        var clock = new FakeTimeProvider(T0);
        await using var a = OpenPostgres(clock);
        await using var b = OpenPostgres(clock);
        for (int i = 0; i < 3; i++)
        {
            await a.AcceptAlertAsync(Alert("dev-1", $"a-{i}"), default);
        }

        var claimedByA = await a.NewAlertsAsync(10, default);
        Assert.Equal(3, claimedByA.Count);
        Assert.Empty(await b.NewAlertsAsync(10, default));
        Assert.Equal(3, (await a.NewAlertsAsync(10, default)).Count); // its own claims come back to it (a restarted loop)

        clock.Advance(Lease + TimeSpan.FromSeconds(1)); // a is gone for longer than its lease
        var takenOver = await b.NewAlertsAsync(10, default);
        Assert.Equal(claimedByA.Select(x => x.RowId), takenOver.Select(x => x.RowId));

        // a comes back and commits late: fenced out, no mail from it, and a hears so; b's decision counts.
        var late = await a.CommitRoutingAsync([new RoutingCommit(claimedByA[0].RowId, AlertStatus.Routed, null, Mail("from-a@gw.test", alertId: "a-0"), null, null),
            new RoutingCommit(claimedByA[1].RowId, AlertStatus.Parked, null, null, null, null, "routing failed: X")], default);
        Assert.Equal([claimedByA[0].RowId, claimedByA[1].RowId], late.NotHeld);
        Assert.Empty(late.Parked);
        Assert.Empty((await b.CommitRoutingAsync([new RoutingCommit(takenOver[0].RowId, AlertStatus.Routed, null, Mail("from-b@gw.test", alertId: "a-0"), null, null)], default)).NotHeld);
        Assert.Equal(AlertStatus.New, (await a.GetAlertAsync("dev-1", "a-1", default))!.Value.Status);
        Assert.Null(await a.GetMessageAsync("from-a@gw.test", default));
        Assert.NotNull(await a.GetMessageAsync("from-b@gw.test", default));
        Assert.Equal(AlertStatus.Routed, (await a.GetAlertAsync("dev-1", "a-0", default))!.Value.Status);
    }

    [PostgresFact]
    public async Task ConcurrentClaims_HandEachAlertToExactlyOneInstance()
    {
        await using var a = OpenPostgres();
        await using var b = OpenPostgres();
        await Task.WhenAll(Enumerable.Range(0, 300).Select(i => a.AcceptAlertAsync(Alert($"dev-{i % 7}", $"c-{i}"), default)));

        var claims = await Task.WhenAll(Enumerable.Range(0, 8).Select(async i => (Instance: i % 2, Rows: await (i % 2 == 0 ? a : b).NewAlertsAsync(100, default))));

        var byA = claims.Where(c => c.Instance == 0).SelectMany(c => c.Rows.Select(x => x.RowId)).ToHashSet();
        var byB = claims.Where(c => c.Instance == 1).SelectMany(c => c.Rows.Select(x => x.RowId)).ToHashSet();
        Assert.Empty(byA.Intersect(byB));

        // Each instance gets its own claims back and nothing of the other's: together, every alert exactly once.
        var allA = (await a.NewAlertsAsync(1000, default)).Select(x => x.RowId).ToList();
        var allB = (await b.NewAlertsAsync(1000, default)).Select(x => x.RowId).ToList();
        Assert.Empty(allA.Intersect(allB));
        Assert.Equal(300, allA.Count + allB.Count);
        Assert.True(allA.Count > 0 && allB.Count > 0, $"a claimed {allA.Count}, b {allB.Count}: one instance got everything");
    }

    // An attempt longer than a lease keeps its claim by renewing it: the other instance finds nothing at the first
    // lease's end. A claim that ran out but that nobody took is still the holder's to renew; once taken over, or
    // cancelled, it is not, and the renewal changes nothing.
    [PostgresFact]
    public async Task RenewClaim_ExtendsTheHoldersLease_IsRefusedOnceTakenOverOrCancelled()
    {
        var clock = new FakeTimeProvider(T0);
        await using var a = OpenPostgres(clock);
        await using var b = OpenPostgres(clock);
        await RoutedAsync(a, "dev-1", "m-1");
        await RoutedAsync(a, "dev-1", "m-2");
        var mine = await a.DueMessagesAsync(clock.GetUtcNow(), 10, new HashSet<long>(), default);
        Assert.Equal(2, mine.Count);
        long renewed = mine[0].RowId, lapsed = mine[1].RowId;

        clock.Advance(Lease / 2);
        Assert.True(await a.RenewClaimAsync(renewed, default));
        Assert.False(await b.RenewClaimAsync(renewed, default)); // not b's
        clock.Advance(Lease / 2 + TimeSpan.FromSeconds(1));
        Assert.Equal(lapsed, Assert.Single(await b.DueMessagesAsync(clock.GetUtcNow(), 10, new HashSet<long>(), default)).RowId);

        Assert.False(await a.RenewClaimAsync(lapsed, default)); // taken over
        clock.Advance(Lease);
        Assert.True(await a.RenewClaimAsync(renewed, default)); // ran out, but nobody took it
        Assert.Empty(await b.DueMessagesAsync(clock.GetUtcNow(), 10, new HashSet<long> { lapsed }, default));

        Assert.True((await a.CancelAsync(ParkedKinds.Message, renewed, "wrong recipients", 100, default)).Cancelled);
        Assert.False(await a.RenewClaimAsync(renewed, default));
    }

    // A routing batch longer than a lease keeps its alerts by renewing their claims; taken over, or decided, an alert is
    // not renewed, and a batch none of whose alerts is the holder's any more is told so.
    [PostgresFact]
    public async Task RenewAlertClaims_ExtendsTheHoldersLease_LeavesWhatIsTakenOverOrDecided()
    {
        var clock = new FakeTimeProvider(T0);
        await using var a = OpenPostgres(clock);
        await using var b = OpenPostgres(clock);
        for (int i = 0; i < 3; i++)
        {
            await a.AcceptAlertAsync(Alert("dev-1", $"a-{i}"), default);
        }

        var batch = await a.NewAlertsAsync(10, default);
        long[] rows = [.. batch.Select(x => x.RowId)];
        clock.Advance(Lease / 2);
        Assert.True(await a.RenewAlertClaimsAsync(rows[..2], default));
        Assert.False(await b.RenewAlertClaimsAsync(rows, default)); // not b's
        clock.Advance(Lease / 2 + TimeSpan.FromSeconds(1));
        Assert.Equal("a-2", Assert.Single(await b.NewAlertsAsync(10, default)).AlertId); // the one left unrenewed

        Assert.True(await a.RenewAlertClaimsAsync(rows, default)); // two of the three are still a's
        await a.CommitRoutingAsync([new RoutingCommit(rows[0], AlertStatus.Unrouted, null, null, null, null)], default);
        clock.Advance(Lease + TimeSpan.FromSeconds(1));
        Assert.True(await a.RenewAlertClaimsAsync(rows, default)); // ran out, but nobody took a-1
        Assert.Equal("a-2", Assert.Single(await b.NewAlertsAsync(10, default)).AlertId); // b's own claim again; a-1 stays a's
        Assert.False(await a.RenewAlertClaimsAsync([rows[0], rows[2]], default)); // decided, and taken over
    }

    [PostgresFact]
    public async Task RenewDigestClaims_ExtendsTheHoldersLease_IsRefusedOnceTakenOverOrCommitted()
    {
        var clock = new FakeTimeProvider(T0);
        await using var a = OpenPostgres(clock);
        await using var b = OpenPostgres(clock);
        foreach (string code in new[] { "PUMP_CYCLING", "TEMP_HIGH" })
        {
            await a.AcceptAlertAsync(Alert("dev-1", "r-" + code, code), default);
        }

        var held = await a.NewAlertsAsync(10, default);
        await a.CommitRoutingAsync(held.Select(h => new RoutingCommit(h.RowId, AlertStatus.Held, T0, null, null, null)).ToList(), default);
        var digests = await a.DueDigestsAsync(T0, 100, default);
        Assert.Equal(2, digests.Count);
        var renewed = (digests[0].Device, digests[0].Code);
        var lapsed = (digests[1].Device, digests[1].Code);

        clock.Advance(Lease / 2);
        Assert.True(await a.RenewDigestClaimsAsync([renewed], default));
        Assert.False(await b.RenewDigestClaimsAsync([renewed, lapsed], default)); // not b's
        clock.Advance(Lease / 2 + TimeSpan.FromSeconds(1));
        var theirs = Assert.Single(await b.DueDigestsAsync(clock.GetUtcNow(), 100, default));
        Assert.Equal(lapsed, (theirs.Device, theirs.Code));

        Assert.False(await a.RenewDigestClaimsAsync([lapsed], default)); // taken over
        Assert.True(await a.CommitDigestAsync(digests[0], Mail("digest-a@gw.test", "digest"), new StormState(T0, null), default));
        Assert.False(await a.RenewDigestClaimsAsync([renewed], default)); // committed: the claim ended with it
    }

    // A routing commit of another instance holds its keys' locks and writes their storm rows in the order of its
    // decisions (here the second key first). A renewal that locked the rows in key order while that commit held one
    // would wait on it while it waits on the renewal: PostgreSQL would abort one of them as a deadlock.
    [PostgresFact]
    public async Task RenewDigestClaims_BesideARoutingCommitWritingTheSameKeysInAnotherOrder_WaitsForIt_NoDeadlock()
    {
        var clock = new FakeTimeProvider(T0);
        await using var a = OpenPostgres(clock);
        foreach (string code in new[] { "A_FIRST", "B_SECOND" })
        {
            await a.AcceptAlertAsync(Alert("dev-1", "r-" + code, code), default);
        }

        var held = await a.NewAlertsAsync(10, default);
        await a.CommitRoutingAsync(held.Select(h => new RoutingCommit(h.RowId, AlertStatus.Held, T0, null, null, null)).ToList(), default);
        var digests = await a.DueDigestsAsync(T0, 100, default);
        Assert.Equal(2, digests.Count);

        await using var other = new Npgsql.NpgsqlConnection(_db!.ConnectionString);
        await other.OpenAsync();
        await using var routing = await other.BeginTransactionAsync();
        async Task SqlAsync(string sql)
        {
            await using var command = new Npgsql.NpgsqlCommand(sql, other, routing);
            await command.ExecuteNonQueryAsync();
        }

        await SqlAsync("""
            SELECT pg_advisory_xact_lock(k) FROM (
              SELECT DISTINCT hashtextextended(device || '/' || code, 0) AS k FROM storm WHERE device = 'dev-1' ORDER BY 1) s
            """);
        await SqlAsync("UPDATE storm SET last_mail_at = last_mail_at WHERE device = 'dev-1' AND code = 'B_SECOND'");

        var renewal = a.RenewDigestClaimsAsync([("dev-1", "A_FIRST"), ("dev-1", "B_SECOND")], default);
        await UntilAsync(async () => await _db.ScalarAsync($"""
            SELECT COUNT(*) FROM pg_stat_activity
            WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> {other.ProcessID}
            """) is > 0L, "the renewal to wait for the routing commit");

        await SqlAsync("SET LOCAL lock_timeout = '20s'; UPDATE storm SET last_mail_at = last_mail_at WHERE device = 'dev-1' AND code = 'A_FIRST'");
        await routing.CommitAsync();
        Assert.True(await Await.Within(renewal, "the renewal once the routing commit is done"));
    }

    [PostgresFact]
    public async Task DueMessages_ClaimedByOneInstance_WaitForTheLease_AndALateDeliveryResultIsNotRecorded()
    {
        var clock = new FakeTimeProvider(T0);
        await using var a = OpenPostgres(clock);
        await using var b = OpenPostgres(clock);
        await RoutedAsync(a, "dev-1", "m-1");

        var mine = Assert.Single(await a.DueMessagesAsync(clock.GetUtcNow(), 10, new HashSet<long>(), default));
        Assert.Empty(await b.DueMessagesAsync(clock.GetUtcNow(), 10, new HashSet<long>(), default));
        Assert.Equal(T0 + Lease, await b.NextMessageDueAsync(new HashSet<long>(), default)); // b waits for a's lease, not in a busy loop
        Assert.Equal(T0, await a.NextMessageDueAsync(new HashSet<long>(), default));

        clock.Advance(Lease + TimeSpan.FromSeconds(1));
        var theirs = Assert.Single(await b.DueMessagesAsync(clock.GetUtcNow(), 10, new HashSet<long>(), default));
        await a.CommitDeliveryAsync(new DeliveryCommit(mine.RowId, [new("alice@example.com", "failed", "550 from a")], null, null), default);
        Assert.Equal((MessageStatus.Queued, 0), ((await a.GetMessageAsync("m-1@gw.test", default))!.Status, (await a.GetMessageAsync("m-1@gw.test", default))!.Attempts));

        await b.CommitDeliveryAsync(new DeliveryCommit(theirs.RowId, [new("alice@example.com", "sent", "250 from b")], null, null), default);
        var state = (await a.GetMessageAsync("m-1@gw.test", default))!;
        Assert.Equal((MessageStatus.Sent, "250 from b"), (state.Status, state.LastReply));
    }

    [PostgresFact]
    public async Task RecordSentRecipients_FromAnInstanceWhoseLeaseRanOut_IsNotRecorded()
    {
        var clock = new FakeTimeProvider(T0);
        await using var a = OpenPostgres(clock);
        await using var b = OpenPostgres(clock);
        var (_, row) = await RoutedAsync(a, "dev-1", "m-1", "alice@a.example", "bob@b.example");
        Assert.Single(await a.DueMessagesAsync(clock.GetUtcNow(), 10, new HashSet<long>(), default));

        clock.Advance(Lease + TimeSpan.FromSeconds(1));
        var theirs = Assert.Single(await b.DueMessagesAsync(clock.GetUtcNow(), 10, new HashSet<long>(), default));
        Assert.False(await a.RecordSentRecipientsAsync(row, [new("alice@a.example", "sent", "250 from a")], default));

        // b holds the message now and sends to every recipient still pending; what it records is the truth.
        Assert.Equal(["alice@a.example", "bob@b.example"], theirs.PendingRecipients);
        Assert.All((await b.MessageDetailAsync(row, default))!.Recipients, r => Assert.Equal("pending", r.Status));
        Assert.True(await b.RecordSentRecipientsAsync(row, [new("alice@a.example", "sent", "250 from b")], default));
        Assert.Equal("250 from b", (await b.MessageDetailAsync(row, default))!.Recipients.Single(r => r.Address == "alice@a.example").Reply);
    }

    [PostgresFact]
    public async Task TwoInstancesRoutingTheSameKeyOnTheSameState_OnlyTheFirstDecisionCounts_TheOtherAlertIsRoutedAgain()
    {
        await using var a = OpenPostgres();
        await using var b = OpenPostgres();
        await a.AcceptAlertAsync(Alert("dev-1", "first"), default);
        var first = Assert.Single(await a.NewAlertsAsync(10, default));
        await b.AcceptAlertAsync(Alert("dev-1", "second"), default);
        var second = Assert.Single(await b.NewAlertsAsync(10, default));

        // Both read "no storm state" for (dev-1, TEMP_HIGH) and decide to mail.
        var raised = (string Id) => new StormState(T0, $"<{Id}@gw.test>");
        await a.CommitRoutingAsync([new RoutingCommit(first.RowId, AlertStatus.Routed, null, Mail("first@gw.test", alertId: "first"), ("dev-1", "TEMP_HIGH"), raised("first"),
            Basis: new StormBasis("dev-1", "TEMP_HIGH", null))], default);
        await b.CommitRoutingAsync([new RoutingCommit(second.RowId, AlertStatus.Routed, null, Mail("second@gw.test", alertId: "second"), ("dev-1", "TEMP_HIGH"), raised("second"),
            Basis: new StormBasis("dev-1", "TEMP_HIGH", null))], default);

        Assert.Null(await a.GetMessageAsync("second@gw.test", default));
        Assert.Equal(raised("first"), await a.GetStormAsync("dev-1", "TEMP_HIGH", default));
        var again = Assert.Single(await a.NewAlertsAsync(10, default)); // free at once, for whichever instance looks first
        Assert.Equal("second", again.AlertId);

        // Decided again on the state as it is now: held by storm control.
        await a.CommitRoutingAsync([new RoutingCommit(again.RowId, AlertStatus.Held, T0.AddMinutes(10), null, null, null,
            Basis: new StormBasis("dev-1", "TEMP_HIGH", raised("first")))], default);
        Assert.Equal(AlertStatus.Held, (await a.GetAlertAsync("dev-1", "second", default))!.Value.Status);
    }

    [PostgresFact]
    public async Task DueDigests_AKeyClaimedByOneInstance_IsNotDigestedByAnother_AndItsDueTimeIsTheLeaseEnd()
    {
        var clock = new FakeTimeProvider(T0);
        await using var a = OpenPostgres(clock);
        await using var b = OpenPostgres(clock);
        for (int i = 0; i < 3; i++)
        {
            await a.AcceptAlertAsync(Alert("dev-1", $"r-{i}"), default);
        }

        var held = await a.NewAlertsAsync(10, default);
        await a.CommitRoutingAsync(held.Select(h => new RoutingCommit(h.RowId, AlertStatus.Held, T0, null, null, null)).ToList(), default);

        var digest = Assert.Single(await a.DueDigestsAsync(T0, 100, default));
        Assert.Empty(await b.DueDigestsAsync(T0, 100, default));
        Assert.Equal(T0 + Lease, await b.NextDigestDueAsync(default));

        Assert.False(await b.CommitDigestAsync(digest, Mail("digest-b@gw.test", "digest"), new StormState(T0, null), default)); // b never claimed it: ignored
        Assert.Null(await a.GetMessageAsync("digest-b@gw.test", default));
        Assert.True(await a.CommitDigestAsync(digest, Mail("digest-a@gw.test", "digest"), new StormState(T0, null), default));
        Assert.Equal(3, (await a.CountsAsync(default)).Alerts["digested"]);
        Assert.Null(await b.NextDigestDueAsync(default));
    }

    [PostgresFact]
    public async Task ParkRepeats_OnlyByTheHolderOfTheKeysClaim_WhichKeepsItForTheDigestOfTheRest()
    {
        var clock = new FakeTimeProvider(T0);
        await using var a = OpenPostgres(clock);
        await using var b = OpenPostgres(clock);
        for (int i = 0; i < 3; i++)
        {
            await a.AcceptAlertAsync(Alert("dev-1", $"r-{i}"), default);
        }

        var held = await a.NewAlertsAsync(10, default);
        await a.CommitRoutingAsync(held.Select(h => new RoutingCommit(h.RowId, AlertStatus.Held, T0, null, null, null)).ToList(), default);
        var digest = Assert.Single(await a.DueDigestsAsync(T0, 100, default));
        var stale = new ParkedAlert(held[1].RowId, "the alert no longer passes validation: boom");

        Assert.Empty(await b.ParkRepeatsAsync(digest, [stale], default)); // b never claimed the key: ignored
        Assert.Equal("held", (await a.GetAlertAsync("dev-1", "r-1", default))?.Status);
        Assert.Equal([held[1].RowId], await a.ParkRepeatsAsync(digest, [stale], default));

        Assert.Empty(await b.DueDigestsAsync(T0, 100, default));
        Assert.Equal(["r-0", "r-2"], Assert.Single(await a.DueDigestsAsync(T0, 100, default)).Alerts.Select(x => x.AlertId));
    }

    [PostgresFact]
    public async Task AnAlertStoredByOneInstance_WakesTheOtherThroughNotify()
    {
        await using var a = OpenPostgres();
        await using var b = OpenPostgres();
        var woken = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var mailWoken = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await Await.Within(ListeningAsync(b), "b to listen");
        b.AlertsStored += () => woken.TrySetResult();
        b.MessagesQueued += () => mailWoken.TrySetResult();

        await a.AcceptAlertAsync(Alert("dev-1", "n-1"), default);
        await Await.Within(woken.Task.ContinueWith(_ => true, TaskScheduler.Default), "b's AlertsStored after a stored an alert");
        await a.QueueMailAsync(Mail("n-1@gw.test", "relay"), default);
        await Await.Within(mailWoken.Task.ContinueWith(_ => true, TaskScheduler.Default), "b's MessagesQueued after a queued mail");
    }

    // The listener raises both events once it listens (to catch up on what it missed); after that, wake-ups are real.
    private static async Task<bool> ListeningAsync(PostgresSpool spool)
    {
        var ready = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        spool.MessagesQueued += () => ready.TrySetResult(true);
        if (spool.IsListening)
        {
            return true;
        }

        return await ready.Task;
    }

    [PostgresFact]
    public async Task Open_TwoInstancesAtOnceOnAnEmptyDatabase_MigrateOnce_AndANewerSchemaIsRefused()
    {
        var opened = await Task.WhenAll(Task.Run(() => OpenPostgres()), Task.Run(() => OpenPostgres()));
        foreach (var spool in opened)
        {
            await spool.DisposeAsync();
        }

        // One row per migration: neither instance ran one the other had run.
        Assert.Equal((long)PostgresSchema.CurrentVersion, await _db!.ScalarAsync("SELECT COUNT(*) FROM schema_version"));
        await _db.ScalarAsync("INSERT INTO schema_version(version) VALUES(99)");
        var ex = Assert.Throws<SpoolException>(() => OpenPostgres());
        Assert.Contains("schema version 99", ex.Message, StringComparison.Ordinal);
    }

    [PostgresFact]
    public async Task Open_VersionThreeDatabaseWithAnApiKey_KeepsItAsAnAdminKey()
    {
        await _db!.ScalarAsync("CREATE TABLE schema_version(version INTEGER NOT NULL);" + string.Join(";", PostgresSchema.Migrations.Take(3).Select(m => m.Sql))
            + ";INSERT INTO schema_version VALUES(1),(2),(3);INSERT INTO api_keys(id, name, hash, created_at, revoked_at) VALUES('k1', 'old script', 'ab', 0, NULL);");

        await using var spool = OpenPostgres();

        var key = Assert.Single(await spool.ApiKeysAsync(default));
        Assert.Equal(("k1", "ab", ApiKeyScope.Admin), (key.Id, key.Hash, key.Scope)); // keys made before scopes could do everything
    }

    [PostgresFact]
    public async Task Open_VersionNineDatabase_CountsEveryDeviceItHeardFromAsWatchedFromBefore()
    {
        await CreateSchemaAsync(9);
        await _db!.ScalarAsync("INSERT INTO alerts(device, alert_id, received_at, payload, status) VALUES('dev-1', 'a-1', 1000, '\\x7b7d', 'routed'),"
            + " ('dev-1', 'a-2', 2000, '\\x7b7d', 'routed'), ('dev-3', 'gw-silent-1', 1000, '\\x7b7d', 'routed');"
            + "INSERT INTO device_status(device, received_at, payload) VALUES('dev-2', 1000, '\\x7b7d'), ('dev-3', 1000, '\\x7b7d');");

        await using var spool = OpenPostgres();

        Assert.Equal(new Dictionary<string, DateTimeOffset> { ["dev-1"] = DateTimeOffset.UnixEpoch, ["dev-2"] = DateTimeOffset.UnixEpoch, ["dev-3"] = DateTimeOffset.UnixEpoch, ["dev-4"] = T0 },
            await spool.WatchDevicesAsync(["dev-1", "dev-2", "dev-3", "dev-4"], T0, forgetOthers: true, default));
    }

    [PostgresFact]
    public async Task Open_VersionEightDatabase_CountsAPairWhoseLastMailWasARaiseAsAnOpenIncident_AndOneResetByAClearAsClosed()
    {
        await CreateSchemaAsync(8);
        await _db!.ScalarAsync("INSERT INTO storm(device, code, last_mail_at, last_raised_message_id) VALUES"
            + "('dev-1', 'TEMP_HIGH', 1000, '<r-1@gw.test>'), ('dev-1', 'DOOR_OPEN', 0, '<r-2@gw.test>'), ('dev-1', 'DEVICE_SILENT', 1000, NULL);");

        await using var spool = OpenPostgres();

        var raised = await spool.GetStormAsync("dev-1", "TEMP_HIGH", default);
        var reset = await spool.GetStormAsync("dev-1", "DOOR_OPEN", default);
        var neverRaised = await spool.GetStormAsync("dev-1", "DEVICE_SILENT", default);
        Assert.Equal((true, false, false), (raised!.IncidentOpen, reset!.IncidentOpen, neverRaised!.IncidentOpen));
    }

    [PostgresFact]
    public void Open_UnreachableServer_SaysWhichAndWhatToCheck_WithoutThePassword()
    {
        int port = Loopback.FreePort();
        var ex = Assert.Throws<SpoolException>(() => PostgresSpool.Open($"Host=127.0.0.1;Port={port};Username=u;Password=hunter2;Timeout=3", true, 16, Lease, Lease, NullLogger.Instance));
        Assert.Contains($"port {port}", ex.Message, StringComparison.Ordinal);
        Assert.Contains("Spool:ConnectionString", ex.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("hunter2", ex.Message, StringComparison.Ordinal);
    }

    // ---- upgrades of a shared spool (docs/spool.md, "Upgrading a shared spool") ----
    // These run one after another (one test class): a version 7 gateway's LISTEN session in one of them would stop an
    // upgrade in another, since such sessions cannot be told apart by schema.

    [PostgresFact]
    public async Task Open_NewerBuildWhileAnInstanceRuns_RefusesToMigrate_NamingTheInstanceAndTheFullStop()
    {
        var running = OpenPostgres();
        try
        {
            var ex = Assert.Throws<SpoolException>(() => OpenNewerBuild());

            Assert.Contains(running.Owner, ex.Message, StringComparison.Ordinal);
            Assert.Contains("stop every gateway instance", ex.Message, StringComparison.Ordinal);
            Assert.Equal(PostgresSchema.CurrentVersion, await _db!.ScalarAsync("SELECT MAX(version) FROM schema_version"));
            Assert.True((bool?)await _db.ScalarAsync("SELECT to_regclass('upgrade_probe') IS NULL"));
        }
        finally
        {
            await running.DisposeAsync();
        }

        // Stopped, the instance is no obstacle any more: the upgrade goes ahead at once.
        await using var newer = OpenNewerBuild();
        Assert.Equal(PostgresSchema.CurrentVersion + 1, await _db!.ScalarAsync("SELECT MAX(version) FROM schema_version"));
    }

    // An instance that died (SIGKILL, power) leaves its heartbeat row behind; it counts until its lease has run out.
    [PostgresFact]
    public async Task Open_NewerBuild_WaitsOutADeadInstancesHeartbeat_AndMigratesOnceItsLeaseRanOut()
    {
        await using (OpenPostgres())
        {
        }

        const string Dead = "gone-host/4242/0badf00d";
        await _db!.ScalarAsync($"""
            INSERT INTO instances(owner, version, started_at, seen_at, alive_until)
            VALUES('{Dead}', {PostgresSchema.CurrentVersion}, 0, (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
                   (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 60000)
            """);
        var ex = Assert.Throws<SpoolException>(() => OpenNewerBuild());
        Assert.Contains(Dead, ex.Message, StringComparison.Ordinal);

        await _db.ScalarAsync($"UPDATE instances SET alive_until = (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1 WHERE owner = '{Dead}'");
        await using var newer = OpenNewerBuild();
        Assert.Equal(PostgresSchema.CurrentVersion + 1, await _db.ScalarAsync("SELECT MAX(version) FROM schema_version"));
    }

    // Gateways of schema version 7 and before register nowhere. What shows that one runs is the session it keeps in
    // LISTEN for the whole of its life, and the work it holds claimed.
    [PostgresFact]
    public async Task Open_OnAVersion7SpoolWhileAGatewayOfThatVersionRuns_RefusesToMigrate_NamingItsSessionOrItsClaims()
    {
        await CreateSchemaAsync(7);
        await using (var old = new Npgsql.NpgsqlConnection(_db!.ConnectionString))
        {
            await old.OpenAsync();
            await using (var listen = new Npgsql.NpgsqlCommand("LISTEN edgemail_spool", old)) // what a version 7 gateway sends
            {
                await listen.ExecuteNonQueryAsync();
            }

            var ex = Assert.Throws<SpoolException>(() => OpenPostgres());

            Assert.Contains($"pid {old.ProcessID}", ex.Message, StringComparison.Ordinal);
            Assert.Contains("stop every gateway instance", ex.Message, StringComparison.Ordinal);
            Assert.Equal(7, await _db.ScalarAsync("SELECT MAX(version) FROM schema_version"));
        }

        // Its LISTEN session lost (say, it runs as another database user), a busy old gateway still shows by its claims.
        await _db.ScalarAsync("""
            INSERT INTO alerts(device, alert_id, received_at, payload, status, claimed_by, claim_until)
            VALUES('dev-1', 'a-1', 0, '\x7b7d', 'new', 'old-host/77/0000abcd', (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 60000)
            """);
        var claimed = Assert.Throws<SpoolException>(() => OpenPostgres());
        Assert.Contains("old-host/77/0000abcd", claimed.Message, StringComparison.Ordinal);

        // A gateway of this version listening on another spool of the same database (another schema) is none of these.
        await _db.ScalarAsync("UPDATE alerts SET claim_until = 1");
        await using var elsewhere = await TestPostgres.CreateDatabaseAsync();
        await using var other = PostgresSpool.Open(elsewhere.ConnectionString, fsync: true, maxBatch: 16, Lease, TimeSpan.FromSeconds(5), NullLogger.Instance);
        await UntilAsync(() => Task.FromResult(other.IsListening), "the other spool's gateway to listen");
        await using var spool = OpenPostgres();
        Assert.Equal(PostgresSchema.CurrentVersion, await _db.ScalarAsync("SELECT MAX(version) FROM schema_version"));
    }

    // An instance still running when the schema moved past it (a peer it could not see, or an upgrade forced by hand)
    // takes no more work: what the new version's rows mean is unknown to its code.
    [PostgresFact]
    public async Task RunningInstance_AfterTheSchemaMovedPastItsVersion_ClaimsNothingAndTakesNoNewWork()
    {
        await using var spool = OpenPostgres();
        await spool.QueueMailAsync(Mail("moved@gw.test", "relay"), default);
        await spool.AcceptAlertAsync(Alert("dev-1", "before"), default);

        await _db!.ScalarAsync($"INSERT INTO schema_version(version) VALUES({PostgresSchema.CurrentVersion + 1})");

        var refused = await Assert.ThrowsAsync<SpoolException>(() => spool.DueMessagesAsync(DateTimeOffset.UtcNow, 10, new HashSet<long>(), default));
        Assert.Contains($"schema version {PostgresSchema.CurrentVersion + 1}", refused.Message, StringComparison.Ordinal);
        await Assert.ThrowsAsync<SpoolException>(() => spool.NewAlertsAsync(10, default));
        await Assert.ThrowsAsync<SpoolException>(() => spool.AcceptAlertAsync(Alert("dev-1", "after"), default));
        await Assert.ThrowsAsync<SpoolException>(() => spool.QueueMailAsync(Mail("after@gw.test", "relay"), default));
        Assert.Equal(0L, await _db.ScalarAsync("SELECT (SELECT COUNT(*) FROM messages WHERE claimed_by IS NOT NULL) + (SELECT COUNT(*) FROM alerts WHERE claimed_by IS NOT NULL)"));
        Assert.Equal(1L, await _db.ScalarAsync("SELECT COUNT(*) FROM alerts"));
    }

    [PostgresFact]
    public async Task Open_VersionSixSpoolWithRows_MigratesToCurrent_WithAValidDigestIndexOverThem()
    {
        await CreateSchemaAsync(6);
        await InsertDigestedAlertsAsync("<digest-1@gw.test>", 50);

        await using var spool = OpenPostgres();

        Assert.Equal(PostgresSchema.CurrentVersion, await _db!.ScalarAsync("SELECT MAX(version) FROM schema_version"));
        Assert.True(await DigestIndexValidAsync());
        Assert.Equal(50, (await spool.DigestAlertIdsAsync("dev-1", "<digest-1@gw.test>", 100, default)).Count);
    }

    // Version 7's index is built beside the writes, not in front of them: a plain CREATE INDEX would queue behind a
    // transaction writing alerts, and every insert after it behind the CREATE INDEX, for as long as the build lasts.
    [PostgresFact]
    public async Task Open_MigratingAVersionSixSpool_LetsAlertsBeStoredWhileTheDigestIndexIsBuilt()
    {
        await CreateSchemaAsync(6);
        await InsertDigestedAlertsAsync("<digest-1@gw.test>", 50);
        await using var writer = new Npgsql.NpgsqlConnection(_db!.ConnectionString);
        await writer.OpenAsync();
        await using var writing = await writer.BeginTransactionAsync();
        await using (var insert = new Npgsql.NpgsqlCommand("INSERT INTO alerts(device, alert_id, received_at, payload, status) VALUES('dev-2', 'w-1', 0, '\\x7b7d', 'new')", writer, writing))
        {
            await insert.ExecuteNonQueryAsync();
        }

        var migrating = Task.Run(() => OpenPostgres());
        await UntilAsync(async () => await _db.ScalarAsync($"""
            SELECT COUNT(*) FROM pg_stat_activity
            WHERE datname = current_database() AND query LIKE '%INDEX%alerts_digest%' AND wait_event_type = 'Lock' AND pid <> {writer.ProcessID}
            """) is > 0L, "the index build to wait for the writing transaction");

        await _db.ScalarAsync("SET lock_timeout = '10s'; INSERT INTO alerts(device, alert_id, received_at, payload, status) VALUES('dev-3', 'x-1', 0, '\\x7b7d', 'new')");

        await writing.CommitAsync();
        await using var spool = await Await.Within(migrating, "the migration to finish once the writer committed");
        Assert.Equal(PostgresSchema.CurrentVersion, await _db.ScalarAsync("SELECT MAX(version) FROM schema_version"));
        Assert.True(await DigestIndexValidAsync());
    }

    [PostgresFact]
    public async Task Open_AfterAnInterruptedBuildOfTheDigestIndex_DropsTheInvalidIndexAndBuildsItAgain()
    {
        await CreateSchemaAsync(6);
        await InsertDigestedAlertsAsync("<digest-1@gw.test>", 2);

        // A concurrent build that fails leaves its index behind, INVALID, as one cut short by a crash or a cancel does.
        await Assert.ThrowsAsync<Npgsql.PostgresException>(() => _db!.ScalarAsync("CREATE UNIQUE INDEX CONCURRENTLY alerts_digest ON alerts(digest_message) WHERE digest_message IS NOT NULL"));
        Assert.False(await DigestIndexValidAsync());

        await using var spool = OpenPostgres();

        Assert.Equal(PostgresSchema.CurrentVersion, await _db!.ScalarAsync("SELECT MAX(version) FROM schema_version"));
        Assert.True(await DigestIndexValidAsync());
        string definition = (string)(await _db.ScalarAsync("SELECT pg_get_indexdef(to_regclass('alerts_digest'))"))!;
        Assert.StartsWith("CREATE INDEX alerts_digest ON ", definition, StringComparison.Ordinal);
        Assert.EndsWith("USING btree (digest_message, rowid) WHERE (digest_message IS NOT NULL)", definition, StringComparison.Ordinal);
    }

    // A crash after the index was built and before its version was recorded: the next start finds the index, keeps it.
    [PostgresFact]
    public async Task Open_AfterACrashBetweenTheDigestIndexAndItsVersionRow_RecordsTheVersion()
    {
        await CreateSchemaAsync(6);
        await _db!.ScalarAsync(PostgresSchema.Migrations[6].Sql);

        await using var spool = OpenPostgres();

        Assert.Equal(PostgresSchema.CurrentVersion, await _db.ScalarAsync("SELECT MAX(version) FROM schema_version"));
        Assert.True(await DigestIndexValidAsync());
    }

    // A start behind another instance's migration waits, and says for whom: an operator with a gateway that does not
    // come up finds the session in pg_stat_activity.
    [PostgresFact]
    public async Task Open_WhileAnotherSessionHoldsTheMigrationLock_WaitsForIt_AndNamesTheHolder()
    {
        await using var holder = new Npgsql.NpgsqlConnection(new Npgsql.NpgsqlConnectionStringBuilder(_db!.ConnectionString) { ApplicationName = "stuck-migration" }.ConnectionString);
        await holder.OpenAsync();
        await using (var take = new Npgsql.NpgsqlCommand($"SELECT pg_advisory_lock({PostgresSchema.MigrationLock})", holder))
        {
            await take.ExecuteNonQueryAsync();
        }

        var log = new LineLog<PostgresSpool>();
        var opening = Task.Run(() => PostgresSpool.Open(_db.ConnectionString, fsync: true, maxBatch: 512, Lease, TimeSpan.FromSeconds(5), log));
        string said = await Await.Within(log.NextAsync(), "the waiting start's word on the lock");

        Assert.Contains($"session pid {holder.ProcessID} (stuck-migration, from ", said, StringComparison.Ordinal);
        Assert.False(opening.IsCompleted);
        Assert.Equal(0L, await _db.ScalarAsync("SELECT COUNT(*) FROM pg_tables WHERE tablename = 'schema_version'"));

        await using (var release = new Npgsql.NpgsqlCommand("SELECT pg_advisory_unlock_all()", holder))
        {
            await release.ExecuteNonQueryAsync();
        }

        await using var spool = await Await.Within(opening, "the start once the lock was let go");
        Assert.Equal(PostgresSchema.CurrentVersion, await _db.ScalarAsync("SELECT MAX(version) FROM schema_version"));
    }

    // The same build with one more migration: what the next version of the gateway is to this one.
    private PostgresSpool OpenNewerBuild() => PostgresSpool.Open(_db!.ConnectionString, fsync: true, maxBatch: 512, Lease, TimeSpan.FromSeconds(5), NullLogger.Instance,
        [.. PostgresSchema.Migrations, new PostgresSchema.Migration("CREATE TABLE upgrade_probe(x INTEGER)")]);

    // The spool as a gateway of that schema version left it.
    private Task CreateSchemaAsync(int version) => _db!.ScalarAsync("CREATE TABLE schema_version(version INTEGER NOT NULL);"
        + string.Join(";", PostgresSchema.Migrations.Take(version).Select(m => m.Sql)) + $";INSERT INTO schema_version SELECT generate_series(1, {version})");

    private Task InsertDigestedAlertsAsync(string digest, int count) => _db!.ScalarAsync($"""
        INSERT INTO alerts(device, alert_id, received_at, payload, status, code, digest_message)
        SELECT 'dev-1', 'a-' || i, i, '\x7b7d', 'digested', 'TEMP_HIGH', '{digest}' FROM generate_series(1, {count}) i
        """);

    // Null when there is no such index.
    private async Task<bool?> DigestIndexValidAsync() =>
        await _db!.ScalarAsync("SELECT indisvalid AND indisready FROM pg_index WHERE indexrelid = to_regclass('alerts_digest')") as bool?;

    // What the server shows of other sessions changes on its own schedule: looked at a few times a second, until it holds.
    private static async Task UntilAsync(Func<Task<bool>> condition, string what)
    {
        var deadline = TimeProvider.System.GetUtcNow() + Await.DefaultTimeout;
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(50));
        do
        {
            if (await condition())
            {
                return;
            }
        }
        while (TimeProvider.System.GetUtcNow() < deadline && await tick.WaitForNextTickAsync());

        throw new TimeoutException($"Timed out waiting for {what}.");
    }
}
