using System.Text;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;

namespace EdgeMail.Gateway.Tests.Spool;

public sealed class SqliteSpoolTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));

    private string DbPath => Path.Combine(_dir, "spool.db");

    private SqliteSpool Open() => SqliteSpool.Open(DbPath, fsync: true, maxBatch: 512, NullLogger.Instance);

    private static IncomingAlert Alert(string device, string id) =>
        new(device, id, DateTimeOffset.FromUnixTimeSeconds(1_800_000_000), "127.0.0.1:1", Encoding.UTF8.GetBytes(Alerts.Json(id)), null, "TEMP_HIGH");

    [Fact]
    public async Task AcceptAlert_SameDeviceAndIdTwice_StoresOnce()
    {
        await using var spool = Open();

        var first = await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
        var second = await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
        var otherDevice = await spool.AcceptAlertAsync(Alert("dev-2", "a-1"), default);

        Assert.Equal((AcceptOutcome.Stored, AcceptOutcome.Duplicate, AcceptOutcome.Stored), (first, second, otherDevice));
        Assert.Equal(2, (await spool.NewAlertsAsync(10, default)).Count);
    }

    [Fact]
    public async Task AcceptAlert_AfterReopen_IsStillThere()
    {
        await using (var spool = Open())
        {
            await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
        }

        await using var reopened = Open();
        var alerts = await reopened.NewAlertsAsync(10, default);

        Assert.Equal("a-1", Assert.Single(alerts).AlertId);
        Assert.Equal(AcceptOutcome.Duplicate, await reopened.AcceptAlertAsync(Alert("dev-1", "a-1"), default));
    }

    [Fact]
    public async Task Commit_IsCopiedIntoTheDatabaseFileByTheBackgroundCheckpoint()
    {
        await using var spool = Open();
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

    [Fact]
    public async Task AcceptAlert_ManyConcurrentPublishers_AreGroupCommitted()
    {
        await using var spool = Open();

        var tasks = Enumerable.Range(0, 400).Select(i => spool.AcceptAlertAsync(Alert($"dev-{i % 20}", $"a-{i}"), default)).ToArray();
        await Task.WhenAll(tasks);

        var (batches, items) = spool.CommitStats;
        Assert.All(tasks, t => Assert.Equal(AcceptOutcome.Stored, t.Result));
        Assert.Equal(400, (await spool.CountsAsync(default)).Alerts[AlertStatus.New]);
        Assert.True(batches < items, $"{batches} commits for {items} items: no batching happened");
    }

    [Fact]
    public async Task RejectedAlert_IsKeptWithItsReasonAndNotRouted()
    {
        await using var spool = Open();

        await spool.AcceptAlertAsync(Alert("dev-1", "bad-1") with { RejectReason = "sev must be critical, warning or info", Code = null }, default);

        Assert.Equal((AlertStatus.Rejected, "sev must be critical, warning or info"), (await spool.GetAlertAsync("dev-1", "bad-1", default))!.Value);
        Assert.Empty(await spool.NewAlertsAsync(10, default));
    }

    [Fact]
    public async Task Delivery_PartialFailure_KeepsPerRecipientResults()
    {
        await using var spool = Open();
        await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
        var stored = Assert.Single(await spool.NewAlertsAsync(10, default));
        var message = new NewMessage("alert", "dev-1", "a-1", "m1@gw", "gw@x", ["a@x", "b@x", "c@x"], "Subject: x\r\n\r\nbody\r\n"u8.ToArray());
        await spool.CommitRoutingAsync([new RoutingCommit(stored.RowId, AlertStatus.Routed, null, message, null, null)], default);
        var due = Assert.Single(await spool.DueMessagesAsync(DateTimeOffset.MaxValue.AddDays(-1), 10, new HashSet<long>(), default));
        Assert.Equal(["a@x", "b@x", "c@x"], due.PendingRecipients);

        await spool.CommitDeliveryAsync(new DeliveryCommit(due.RowId,
            [new("a@x", "sent", "250 ok"), new("b@x", "failed", "550 no"), new("c@x", "deferred", "451 later")], DateTimeOffset.FromUnixTimeSeconds(2_000_000_000), null), default);
        var again = Assert.Single(await spool.DueMessagesAsync(DateTimeOffset.FromUnixTimeSeconds(2_000_000_001), 10, new HashSet<long>(), default));

        Assert.Equal(["c@x"], again.PendingRecipients);
        Assert.Equal(1, again.Attempts);
    }

    [Fact]
    public async Task Open_NewerSchemaVersion_IsRefusedWithAMessage()
    {
        await using (var spool = Open())
        {
        }

        using (var c = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={DbPath};Pooling=false"))
        {
            c.Open();
            using var cmd = c.CreateCommand();
            cmd.CommandText = "INSERT INTO schema_version(version) VALUES(99)";
            cmd.ExecuteNonQuery();
        }

        var ex = Assert.Throws<SpoolException>(Open);
        Assert.Contains("schema version 99", ex.Message, StringComparison.Ordinal);
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

    private static NewMessage Mail(string messageId, string kind = "alert", string device = "dev-1", string? alertId = null) =>
        new(kind, device, alertId, messageId, "edgemail@gw.test", ["alice@example.com"], Encoding.ASCII.GetBytes("Subject: x\r\n\r\nbody\r\n"));

    [Fact]
    public async Task CommitRouting_TwoMailsWithOneMessageId_RoutesTheFirstAndParksTheSecondWithTheReason()
    {
        await using var spool = Open();
        await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
        await spool.AcceptAlertAsync(Alert("dev-2", "a-2"), default);
        var alerts = await spool.NewAlertsAsync(10, default);

        var parked = await spool.CommitRoutingAsync(
        [
            new RoutingCommit(alerts[0].RowId, AlertStatus.Routed, null, Mail("same@gw.test", alertId: "a-1"), ("dev-1", "TEMP_HIGH"), new StormState(DateTimeOffset.UnixEpoch, null)),
            new RoutingCommit(alerts[1].RowId, AlertStatus.Routed, null, Mail("same@gw.test", device: "dev-2", alertId: "a-2"), ("dev-2", "TEMP_HIGH"), new StormState(DateTimeOffset.UnixEpoch, "<x@y>")),
        ], default);

        var p = Assert.Single(parked);
        Assert.Equal(alerts[1].RowId, p.AlertRowId);
        Assert.Contains("<same@gw.test>", p.Reason, StringComparison.Ordinal);
        Assert.Equal("routed", (await spool.GetAlertAsync("dev-1", "a-1", default))?.Status);
        Assert.Equal(("parked", p.Reason), await spool.GetAlertAsync("dev-2", "a-2", default));
        Assert.Null(await spool.GetStormAsync("dev-2", "TEMP_HIGH", default)); // the parked decision left nothing behind
        Assert.Equal("alert", (await spool.GetMessageAsync("same@gw.test", default))?.Kind);
    }

    [Fact]
    public async Task DueDigests_ManyHeldRepeats_LoadsTheOldestAndTheLatestAndCountsThemAll()
    {
        await using var spool = Open();
        for (int i = 0; i < 250; i++)
        {
            await spool.AcceptAlertAsync(Alert("dev-1", $"r-{i:000}"), default);
        }

        var alerts = await spool.NewAlertsAsync(1000, default);
        var holdUntil = DateTimeOffset.FromUnixTimeSeconds(1_800_000_100);
        await spool.CommitRoutingAsync(alerts.Select(a => new RoutingCommit(a.RowId, AlertStatus.Held, holdUntil, null, null, null)).ToList(), default);

        var digest = Assert.Single(await spool.DueDigestsAsync(holdUntil, maxRepeats: 100, default));
        Assert.Equal(250, digest.Total);
        Assert.Equal(100, digest.Alerts.Count);
        Assert.Equal(150, digest.Omitted);
        Assert.Equal("r-000", digest.Alerts[0].AlertId);
        Assert.Equal("r-098", digest.Alerts[98].AlertId);
        Assert.Equal("r-249", digest.Alerts[99].AlertId);

        // A repeat held after the read waits for the next digest.
        await spool.AcceptAlertAsync(Alert("dev-1", "late"), default);
        var late = Assert.Single(await spool.NewAlertsAsync(10, default));
        await spool.CommitRoutingAsync([new RoutingCommit(late.RowId, AlertStatus.Held, holdUntil, null, null, null)], default);
        await spool.CommitDigestAsync(digest, Mail("digest-1@gw.test", "digest"), new StormState(holdUntil, null), default);

        Assert.Equal(250, (await spool.CountsAsync(default)).Alerts["digested"]);
        var next = Assert.Single(await spool.DueDigestsAsync(holdUntil, 100, default));
        Assert.Equal("late", Assert.Single(next.Alerts).AlertId);
    }

    [Fact]
    public async Task ParkedMessage_ReleasedIsDueNow_CancelledFailsItsRecipients()
    {
        await using var spool = Open();
        await spool.QueueMailAsync(Mail("m-1@gw.test", "relay"), default);
        await spool.QueueMailAsync(Mail("m-2@gw.test", "relay"), default);
        var m1 = (await spool.GetMessageAsync("m-1@gw.test", default))!;
        var m2 = (await spool.GetMessageAsync("m-2@gw.test", default))!;

        await spool.ParkMessageAsync(m1.RowId, "recording the delivery failed: X", default);
        Assert.Equal(("parked", "recording the delivery failed: X"), ((await spool.GetMessageAsync("m-1@gw.test", default))!.Status, (await spool.GetMessageAsync("m-1@gw.test", default))!.Reason));
        var due = await spool.DueMessagesAsync(DateTimeOffset.MaxValue.AddDays(-1), 10, new HashSet<long>(), default);
        Assert.Equal(["m-2@gw.test"], due.Select(m => m.MessageId));

        Assert.True(await spool.ReleaseAsync(ParkedKinds.Message, m1.RowId, default));
        Assert.Equal("queued", (await spool.GetMessageAsync("m-1@gw.test", default))!.Status);

        Assert.True(await spool.CancelAsync(ParkedKinds.Message, m2.RowId, "no longer wanted", default));
        Assert.Equal("cancelled", (await spool.GetMessageAsync("m-2@gw.test", default))!.Status);
        Assert.False(await spool.ReleaseAsync(ParkedKinds.Message, m2.RowId, default));
        Assert.Equal(["m-1@gw.test"], (await spool.DueMessagesAsync(DateTimeOffset.MaxValue.AddDays(-1), 10, new HashSet<long>(), default)).Select(m => m.MessageId));
    }

    [Fact]
    public async Task Prune_RemovesOnlyWhatFinishedBeforeTheHorizon_AndGivesTheSpaceBack()
    {
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.FromUnixTimeSeconds(1_800_000_000));
        await using var spool = Open();
        spool.Clock = clock;
        byte[] big = new byte[3000];
        for (int i = 0; i < 400; i++)
        {
            await spool.AcceptAlertAsync(Alert("dev-1", $"old-{i}") with { ReceivedAt = clock.GetUtcNow(), Payload = big }, default);
        }

        var old = await spool.NewAlertsAsync(1000, default);
        await spool.CommitRoutingAsync(old.Select((a, i) => new RoutingCommit(a.RowId, AlertStatus.Routed, null,
            i < 200 ? Mail($"old-{i}@gw.test", alertId: a.AlertId) : null, null, null)).ToList(), default);
        foreach (var m in await spool.DueMessagesAsync(clock.GetUtcNow(), 1000, new HashSet<long>(), default))
        {
            await spool.CommitDeliveryAsync(new DeliveryCommit(m.RowId, [new RecipientResult("alice@example.com", "sent", "250 ok")], null, null), default);
        }

        // One message of the old ones is still queued (its alert must stay too), then time passes.
        await spool.AcceptAlertAsync(Alert("dev-1", "pending") with { ReceivedAt = clock.GetUtcNow() }, default);
        var pending = Assert.Single(await spool.NewAlertsAsync(10, default));
        await spool.CommitRoutingAsync([new RoutingCommit(pending.RowId, AlertStatus.Routed, null, Mail("pending@gw.test", alertId: "pending"), null, null)], default);
        clock.Advance(TimeSpan.FromDays(31));
        await spool.AcceptAlertAsync(Alert("dev-1", "recent") with { ReceivedAt = clock.GetUtcNow() }, default);

        var pruned = await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 10_000, default);

        Assert.Equal(200, pruned.Messages);
        Assert.Equal(400, pruned.Alerts);
        Assert.True(pruned.FreedPages > 0, "incremental vacuum gave no pages back");
        Assert.Equal("routed", (await spool.GetAlertAsync("dev-1", "pending", default))?.Status);
        Assert.Equal("queued", (await spool.GetMessageAsync("pending@gw.test", default))?.Status);
        Assert.Equal("new", (await spool.GetAlertAsync("dev-1", "recent", default))?.Status);
        Assert.Null(await spool.GetAlertAsync("dev-1", "old-7", default));
        Assert.Equal(0, (await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 10_000, default)).Messages);
    }
}
