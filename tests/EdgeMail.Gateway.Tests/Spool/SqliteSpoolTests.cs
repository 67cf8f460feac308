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
}
