using System.Text;
using EdgeMail.Gateway.Devices;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Spool;

/// <summary>
/// What every <see cref="ISpool"/> promises, run once per provider (<see cref="SqliteSpoolTests"/>,
/// <see cref="PostgresSpoolTests"/>). A provider's own properties (checkpoints, claims between instances) are tested in
/// its subclass.
/// </summary>
public abstract class SpoolContractTests : IAsyncLifetime
{
    protected static readonly DateTimeOffset T0 = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000);
    private static readonly DateTimeOffset Far = DateTimeOffset.MaxValue.AddDays(-1);

    /// <summary>Opens the spool under test (again, on the same storage, after a dispose).</summary>
    protected abstract ISpool Open(TimeProvider? clock = null);

    /// <summary>Group commits and the items in them so far.</summary>
    protected abstract (long Batches, long Items) CommitStats(ISpool spool);

    /// <summary>Whether pruning gives pages back itself (SQLite's incremental vacuum; PostgreSQL's autovacuum does it later).</summary>
    protected abstract bool PruneFreesPages { get; }

    public virtual Task InitializeAsync() => Task.CompletedTask;

    public virtual Task DisposeAsync() => Task.CompletedTask;

    protected static IncomingAlert Alert(string device, string id, string code = "TEMP_HIGH", string sev = "critical") =>
        new(device, id, T0, "127.0.0.1:1", Encoding.UTF8.GetBytes(Alerts.Json(id, code: code, sev: sev)), null, code, Severity: sev);

    protected static NewMessage Mail(string messageId, string kind = "alert", string device = "dev-1", string? alertId = null, params string[] to) =>
        new(kind, device, alertId, messageId, "edgemail@gw.test", to.Length > 0 ? to : ["alice@example.com"], Encoding.ASCII.GetBytes("Subject: x\r\n\r\nbody\r\n"));

    /// <summary>Stores an alert and routes it to one queued mail; returns the alert's and the mail's rows.</summary>
    protected static async Task<(long Alert, long Message)> RoutedAsync(ISpool spool, string device, string id, params string[] to)
    {
        await spool.AcceptAlertAsync(Alert(device, id), default);
        var stored = (await spool.NewAlertsAsync(100, default)).Single(a => a.AlertId == id);
        await spool.CommitRoutingAsync([new RoutingCommit(stored.RowId, AlertStatus.Routed, null, Mail($"{id}@gw.test", device: device, alertId: id, to: to), null, null, Route: "route 1")], default);
        return (stored.RowId, (await spool.GetMessageAsync($"{id}@gw.test", default))!.RowId);
    }

    [ContractFact]
    public async Task AcceptAlert_SameDeviceAndIdTwice_StoresOnce()
    {
        await using var spool = Open();

        var first = await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
        var second = await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
        var otherDevice = await spool.AcceptAlertAsync(Alert("dev-2", "a-1"), default);

        Assert.Equal((AcceptOutcome.Stored, AcceptOutcome.Duplicate, AcceptOutcome.Stored), (first, second, otherDevice));
        Assert.Equal(2, (await spool.NewAlertsAsync(10, default)).Count);
    }

    [ContractFact]
    public async Task AcceptAlert_TheSameAlertManyTimesAtOnce_IsStoredOnceAndEveryOtherCopyIsADuplicate()
    {
        await using var spool = Open();

        var outcomes = await Task.WhenAll(Enumerable.Range(0, 50).Select(_ => spool.AcceptAlertAsync(Alert("dev-1", "same"), default)));

        Assert.Equal(1, outcomes.Count(o => o == AcceptOutcome.Stored));
        Assert.Equal(49, outcomes.Count(o => o == AcceptOutcome.Duplicate));
    }

    [ContractFact]
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

    [ContractFact]
    public async Task AcceptAlert_ManyConcurrentPublishers_AreGroupCommitted()
    {
        await using var spool = Open();

        var tasks = Enumerable.Range(0, 400).Select(i => spool.AcceptAlertAsync(Alert($"dev-{i % 20}", $"a-{i}"), default)).ToArray();
        await Task.WhenAll(tasks);

        var (batches, items) = CommitStats(spool);
        Assert.All(tasks, t => Assert.Equal(AcceptOutcome.Stored, t.Result));
        Assert.Equal(400, (await spool.CountsAsync(default)).Alerts[AlertStatus.New]);
        Assert.True(batches < items, $"{batches} commits for {items} items: no batching happened");
    }

    [ContractFact]
    public async Task AcceptAlert_RaisesAlertsStored_AndTheAlertIsThereToRoute()
    {
        await using var spool = Open();
        var raised = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        spool.AlertsStored += () => raised.TrySetResult(true);

        await spool.AcceptAlertAsync(Alert("dev-1", "good"), default);

        Assert.True(await Await.Within(raised.Task, "AlertsStored after a valid alert was committed"));
        Assert.Equal("good", Assert.Single(await spool.NewAlertsAsync(10, default)).AlertId);
    }

    [ContractFact]
    public async Task RejectedAlert_IsKeptWithItsReasonAndNotRouted()
    {
        await using var spool = Open();

        await spool.AcceptAlertAsync(Alert("dev-1", "bad-1") with { RejectReason = "sev must be critical, warning or info", Code = null }, default);

        Assert.Equal((AlertStatus.Rejected, "sev must be critical, warning or info"), (await spool.GetAlertAsync("dev-1", "bad-1", default))!.Value);
        Assert.Empty(await spool.NewAlertsAsync(10, default));
        Assert.Null(await spool.GetAlertAsync("dev-1", "never-sent", default));
    }

    [ContractFact]
    public async Task RejectedAlert_WithAControlCharacterInItsId_IsStillTakenAndIsADuplicateTheSecondTime()
    {
        await using var spool = Open();
        var odd = Alert("dev-1", "x\0y") with { RejectReason = "id is not printable", Code = null };

        Assert.Equal(AcceptOutcome.Stored, await spool.AcceptAlertAsync(odd, default));
        Assert.Equal(AcceptOutcome.Duplicate, await spool.AcceptAlertAsync(odd, default));
        Assert.Equal(AcceptOutcome.Stored, await spool.AcceptAlertAsync(Alert("dev-1", "fine"), default)); // nothing else broke
        Assert.Equal(1, (await spool.CountsAsync(default)).Alerts[AlertStatus.Rejected]);
    }

    [ContractFact]
    public async Task QueueMail_SameMessageIdTwice_IsADuplicateAndQueuesOnce()
    {
        await using var spool = Open();
        int queued = 0;
        spool.MessagesQueued += () => Interlocked.Increment(ref queued);

        Assert.Equal(AcceptOutcome.Stored, await spool.QueueMailAsync(Mail("relay-1@dev", "relay", to: ["a@x", "A@x", "b@x"]), default));
        Assert.Equal(AcceptOutcome.Duplicate, await spool.QueueMailAsync(Mail("relay-1@dev", "relay"), default));

        Assert.True(Volatile.Read(ref queued) > 0);
        var due = Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));
        Assert.Equal(("relay", 2), (due.Kind, due.PendingRecipients.Count)); // recipients de-duplicated ignoring case
    }

    [ContractFact]
    public async Task RecordStatus_KeepsTheLatestAndAThinnedHistory_AndShowsInDeviceActivity()
    {
        await using var spool = Open();
        byte[] Beat(int n) => Encoding.UTF8.GetBytes($"{{\"boot\":{n}}}");

        await spool.RecordStatusAsync("dev-1", T0, Beat(1), default);
        await spool.RecordStatusAsync("dev-1", T0.AddMinutes(1), Beat(2), default);  // within 5 minutes: latest only
        await spool.RecordStatusAsync("dev-1", T0.AddMinutes(6), Beat(3), default);
        await spool.AcceptAlertAsync(Alert("dev-2", "a-1"), default);

        var (at, payload) = (await spool.GetStatusAsync("dev-1", default))!.Value;
        Assert.Equal((T0.AddMinutes(6), "{\"boot\":3}"), (at, Encoding.UTF8.GetString(payload)));
        Assert.Null(await spool.GetStatusAsync("dev-9", default));
        var history = await spool.HeartbeatsAsync("dev-1", T0.AddHours(-1), default);
        Assert.Equal([T0, T0.AddMinutes(6)], history.Select(h => h.At));
        var activity = await spool.DeviceActivityAsync(default);
        Assert.Equal(["dev-1", "dev-2"], activity.Select(a => a.Device));
        Assert.Equal((null, T0.AddMinutes(6)), (activity[0].LastAlertAt, activity[0].LastStatusAt));
        Assert.Equal((T0, null), (activity[1].LastAlertAt, activity[1].LastStatusAt));
    }

    // The time a device was last heard from by alert: its latest, whatever order they were stored in; the gateway's own
    // alerts about it (LOCAL) do not count, so a device the gateway only reported silent has none.
    [ContractFact]
    public async Task DeviceActivity_IsEachDevicesLatestAlert_NotTheGatewaysOwnAboutIt()
    {
        await using var spool = Open();
        IncomingAlert At(string device, string id, int minute, string via = IngestProtocols.Mqtt) =>
            Alert(device, id) with { ReceivedAt = T0.AddMinutes(minute), Via = via };

        await spool.AcceptAlertAsync(At("dev-b", "b-1", 5), default);
        await spool.AcceptAlertAsync(At("dev-b", "b-2", 9, IngestProtocols.Smtp(secure: true, authenticated: true)), default);
        await spool.AcceptAlertAsync(At("dev-b", "b-3", 7), default); // stored last, received earlier
        await spool.AcceptAlertAsync(At("dev-b", "gw-silent-1", 30, IngestProtocols.Local), default);
        await spool.AcceptAlertAsync(At("dev-a", "a-1", 1), default);
        await spool.AcceptAlertAsync(At("dev-c", "gw-silent-2", 40, IngestProtocols.Local), default);
        await spool.AcceptAlertAsync(At("dev-d", "d-1", 2), default);

        var activity = await spool.DeviceActivityAsync(default);

        Assert.Equal(
            [("dev-a", T0.AddMinutes(1)), ("dev-b", T0.AddMinutes(9)), ("dev-d", T0.AddMinutes(2))],
            activity.Select(a => (a.Device, a.LastAlertAt!.Value)));
    }

    [ContractFact]
    public async Task SilenceHistory_EveryDevicesShortestHeartbeatGap_AndItsSilenceWithNoReturnAfterIt()
    {
        await using var spool = Open();
        byte[] beat = Encoding.UTF8.GetBytes("{}");
        foreach (int minute in new[] { 0, 30, 40, 100 })
        {
            await spool.RecordStatusAsync("dev-1", T0.AddMinutes(minute), beat, default); // gaps 30, 10, 60
        }

        await spool.RecordStatusAsync("dev-2", T0.AddMinutes(-90), beat, default); // before the period read
        await spool.RecordStatusAsync("dev-2", T0, beat, default);
        await spool.AcceptAlertAsync(Alert("dev-2", "gw-silent-1", code: "DEVICE_SILENT"), default);
        await spool.AcceptAlertAsync(Alert("dev-2", "gw-back-1", code: "DEVICE_BACK"), default);
        await spool.AcceptAlertAsync(Alert("dev-2", "gw-silent-2", code: "DEVICE_SILENT"), default); // open: no return after it
        await spool.AcceptAlertAsync(Alert("dev-3", "gw-silent-3", code: "DEVICE_SILENT"), default);
        await spool.AcceptAlertAsync(Alert("dev-3", "gw-back-3", code: "DEVICE_BACK"), default); // closed
        await spool.AcceptAlertAsync(Alert("dev-4", "a-1"), default);
        await spool.AcceptAlertAsync(Alert("dev-5", "gw-silent-5", code: "DEVICE_SILENT"), default);
        await spool.AcceptAlertAsync(Alert("dev-5", "gw-back-5", code: "DEVICE_BACK") with { ReceivedAt = T0.AddMinutes(5), CancelledReason = "not mailed" }, default); // ended unheard

        var history = (await spool.SilenceHistoryAsync(T0.AddMinutes(-60), default)).OrderBy(h => h.Device, StringComparer.Ordinal);

        Assert.Equal(
            [
                new DeviceSilenceHistory("dev-1", TimeSpan.FromMinutes(10), null), new DeviceSilenceHistory("dev-2", null, "gw-silent-2"),
                new DeviceSilenceHistory("dev-5", null, null, T0.AddMinutes(5)),
            ],
            history);
    }

    [ContractFact]
    public async Task CommitRouting_WritesStormStateThatGetStormAndGetStormsRead()
    {
        await using var spool = Open();
        await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
        var stored = Assert.Single(await spool.NewAlertsAsync(10, default));
        var state = new StormState(T0, "<a-1@gw.test>");

        await spool.CommitRoutingAsync([new RoutingCommit(stored.RowId, AlertStatus.Routed, null, Mail("a-1@gw.test", alertId: "a-1"), ("dev-1", "TEMP_HIGH"), state,
            Basis: new StormBasis("dev-1", "TEMP_HIGH", null))], default);

        Assert.Equal(state, await spool.GetStormAsync("dev-1", "TEMP_HIGH", default));
        Assert.Null(await spool.GetStormAsync("dev-1", "OTHER", default));
        var many = await spool.GetStormsAsync([("dev-1", "TEMP_HIGH"), ("dev-2", "TEMP_HIGH")], default);
        Assert.Equal(state, Assert.Single(many).Value);
        Assert.Equal("routed", (await spool.GetAlertAsync("dev-1", "a-1", default))!.Value.Status);
        Assert.Empty(await spool.NewAlertsAsync(10, default));
    }

    [ContractFact]
    public async Task Delivery_PartialFailure_KeepsPerRecipientResults()
    {
        await using var spool = Open();
        await RoutedAsync(spool, "dev-1", "a-1", "a@x", "b@x", "c@x");
        var due = Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));
        Assert.Equal(["a@x", "b@x", "c@x"], due.PendingRecipients);

        await spool.CommitDeliveryAsync(new DeliveryCommit(due.RowId,
            [new("a@x", "sent", "250 ok"), new("b@x", "failed", "550 no"), new("c@x", "deferred", "451 later")], DateTimeOffset.FromUnixTimeSeconds(2_000_000_000), null), default);
        var again = Assert.Single(await spool.DueMessagesAsync(DateTimeOffset.FromUnixTimeSeconds(2_000_000_001), 10, new HashSet<long>(), default));

        Assert.Equal(["c@x"], again.PendingRecipients);
        Assert.Equal(1, again.Attempts);
        Assert.Empty(await spool.DueMessagesAsync(DateTimeOffset.FromUnixTimeSeconds(1_999_999_999), 10, new HashSet<long>(), default));
        Assert.Equal(DateTimeOffset.FromUnixTimeSeconds(2_000_000_000), await spool.NextMessageDueAsync(new HashSet<long>(), default));
        var detail = (await spool.MessageDetailAsync(due.RowId, default))!;
        Assert.Equal(["pending", "failed", "sent"], detail.Recipients.OrderByDescending(r => r.Address, StringComparer.Ordinal).Select(r => r.Status));
        Assert.Equal("451 later", Assert.Single(detail.Attempts).Results.Single(r => r.Address == "c@x").Reply);
    }

    [ContractFact]
    public async Task CommitDelivery_LastRecipientDone_FinishesTheMessage_AndQueuesTheNotice()
    {
        await using var spool = Open();
        await RoutedAsync(spool, "dev-1", "a-1");
        var due = Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));

        await spool.CommitDeliveryAsync(new DeliveryCommit(due.RowId, [new("alice@example.com", "failed", "550 no such user")], null,
            Mail("a-1.n1.notice@gw.test", "notice", to: "ops@example.com")), default);

        var state = (await spool.GetMessageAsync("a-1@gw.test", default))!;
        Assert.Equal((MessageStatus.Failed, 1, "550 no such user"), (state.Status, state.Attempts, state.LastReply));
        var notice = Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));
        Assert.Equal(("notice", "a-1.n1.notice@gw.test"), (notice.Kind, notice.MessageId));
    }

    // Direct MX: one domain's exchanger accepted, the next domain is yet to be tried, and the gateway dies before the
    // attempt's result: the recipients recorded sent are not attempted again, the rest are.
    [ContractFact]
    public async Task RecordSentRecipients_BeforeTheAttemptsResult_AreSentAfterReopen_AndOnlyTheOthersAreAttemptedAgain()
    {
        long row;
        await using (var spool = Open())
        {
            (_, row) = await RoutedAsync(spool, "dev-1", "a-1", "alice@a.example", "bob@b.example");
            Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default)); // taken for an attempt

            Assert.True(await spool.RecordSentRecipientsAsync(row, [new("alice@a.example", "sent", "250 2.0.0 queued as A1")], default));
        }

        await using var reopened = Open();
        var detail = (await reopened.MessageDetailAsync(row, default))!;
        Assert.Equal((MessageStatus.Queued, 0), (detail.Summary.Status, detail.Summary.Attempts));
        Assert.Equal([("alice@a.example", "sent", "250 2.0.0 queued as A1"), ("bob@b.example", "pending", null)],
            detail.Recipients.Select(r => (r.Address, r.Status, r.Reply)).OrderBy(r => r.Address, StringComparer.Ordinal));
        Assert.Empty(detail.Attempts);
        var again = Assert.Single(await reopened.DueMessagesAsync(Far, 10, new HashSet<long>(), default));
        Assert.Equal(["bob@b.example"], again.PendingRecipients);

        await reopened.CommitDeliveryAsync(new DeliveryCommit(row, [new("bob@b.example", "sent", "250 2.0.0 queued as B1")], null, null), default);
        var state = (await reopened.GetMessageAsync("a-1@gw.test", default))!;
        Assert.Equal((MessageStatus.Sent, 1, "250 2.0.0 queued as B1"), (state.Status, state.Attempts, state.LastReply));
    }

    [ContractFact]
    public async Task RecordSentRecipients_ThenTheAttemptsResult_ItsAttemptListsEveryRecipient_AndTheDeferredOneStaysPending()
    {
        await using var spool = Open();
        var (_, row) = await RoutedAsync(spool, "dev-1", "a-1", "alice@a.example", "bob@b.example");
        Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));
        var alice = new RecipientResult("alice@a.example", "sent", "250 2.0.0 queued as A1");

        Assert.True(await spool.RecordSentRecipientsAsync(row, [alice], default));
        await spool.CommitDeliveryAsync(new DeliveryCommit(row, [alice, new("bob@b.example", "deferred", "451 4.7.1 greylisted")], T0.AddMinutes(5), null), default);

        var detail = (await spool.MessageDetailAsync(row, default))!;
        Assert.Equal((MessageStatus.Queued, 1), (detail.Summary.Status, detail.Summary.Attempts));
        Assert.Equal([("alice@a.example", "sent"), ("bob@b.example", "pending")],
            detail.Recipients.Select(r => (r.Address, r.Status)).OrderBy(r => r.Address, StringComparer.Ordinal));
        Assert.Equal(["alice@a.example", "bob@b.example"], Assert.Single(detail.Attempts).Results.Select(r => r.Address).Order(StringComparer.Ordinal));
    }

    [ContractFact]
    public async Task RecordSentRecipients_OfACancelledMail_ChangesNothing_AndOnlySentResultsAreTaken()
    {
        await using var spool = Open();
        var (_, row) = await RoutedAsync(spool, "dev-1", "a-1", "alice@a.example", "bob@b.example");
        Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));

        var deferred = await Assert.ThrowsAsync<ArgumentException>(() =>
            spool.RecordSentRecipientsAsync(row, [new("alice@a.example", "deferred", "451 4.7.1 greylisted")], default));
        Assert.Contains("alice@a.example is 'deferred'", deferred.Message, StringComparison.Ordinal);
        Assert.True((await spool.CancelAsync(ParkedKinds.Message, row, "wrong recipients", 100, default)).Cancelled);

        Assert.False(await spool.RecordSentRecipientsAsync(row, [new("alice@a.example", "sent", "250 ok")], default));
        Assert.All((await spool.MessageDetailAsync(row, default))!.Recipients, r => Assert.Equal("failed", r.Status));
    }

    [ContractFact]
    public async Task DueMessages_SkipsExcludedRowsAndHonoursTheLimit_EarliestFirst()
    {
        await using var spool = Open();
        var rows = new List<long>();
        for (int i = 0; i < 4; i++)
        {
            rows.Add((await RoutedAsync(spool, "dev-1", $"a-{i}")).Message);
        }

        var due = await spool.DueMessagesAsync(Far, 2, new HashSet<long> { rows[0] }, default);

        Assert.Equal([rows[1], rows[2]], due.Select(m => m.RowId));
    }

    // The delivery worker waits for the next due time of mail not under way: the due time of one in flight, passed
    // already, had it wake every 50 ms for as long as the attempt took.
    [ContractFact]
    public async Task NextMessageDue_LeavesOutExcludedRows()
    {
        await using var spool = Open();
        long later = (await RoutedAsync(spool, "dev-1", "a-1", "a@x")).Message;
        long now = (await RoutedAsync(spool, "dev-1", "a-2", "b@x")).Message;
        var then = DateTimeOffset.FromUnixTimeSeconds(4_000_000_000);
        Assert.Equal(2, (await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default)).Count);
        await spool.CommitDeliveryAsync(new DeliveryCommit(later, [new("a@x", "deferred", "451 later")], then, null), default);

        Assert.True(await spool.NextMessageDueAsync(new HashSet<long>(), default) < then);
        Assert.Equal(then, await spool.NextMessageDueAsync(new HashSet<long> { now }, default));
        Assert.Null(await spool.NextMessageDueAsync(new HashSet<long> { now, later }, default));
    }

    [ContractFact]
    public async Task CommitRouting_TwoMailsWithOneMessageId_RoutesTheFirstAndParksTheSecondWithTheReason()
    {
        await using var spool = Open();
        await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
        await spool.AcceptAlertAsync(Alert("dev-2", "a-2"), default);
        var alerts = await spool.NewAlertsAsync(10, default);

        var committed = await spool.CommitRoutingAsync(
        [
            new RoutingCommit(alerts[0].RowId, AlertStatus.Routed, null, Mail("same@gw.test", alertId: "a-1"), ("dev-1", "TEMP_HIGH"), new StormState(DateTimeOffset.UnixEpoch, null)),
            new RoutingCommit(alerts[1].RowId, AlertStatus.Routed, null, Mail("same@gw.test", device: "dev-2", alertId: "a-2"), ("dev-2", "TEMP_HIGH"), new StormState(DateTimeOffset.UnixEpoch, "<x@y>")),
        ], default);

        var p = Assert.Single(committed.Parked);
        Assert.Empty(committed.NotHeld);
        Assert.Equal(alerts[1].RowId, p.AlertRowId);
        Assert.Contains("<same@gw.test>", p.Reason, StringComparison.Ordinal);
        Assert.Equal("routed", (await spool.GetAlertAsync("dev-1", "a-1", default))?.Status);
        Assert.Equal(("parked", p.Reason), await spool.GetAlertAsync("dev-2", "a-2", default));
        Assert.Null(await spool.GetStormAsync("dev-2", "TEMP_HIGH", default)); // the parked decision left nothing behind
        Assert.Equal("alert", (await spool.GetMessageAsync("same@gw.test", default))?.Kind);
    }

    [ContractFact]
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
        Assert.Equal(holdUntil, await spool.NextDigestDueAsync(default));
        Assert.Empty(await spool.DueDigestsAsync(holdUntil.AddSeconds(-1), 100, default));

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
        Assert.Equal(new StormState(holdUntil, null), await spool.GetStormAsync("dev-1", "TEMP_HIGH", default));
        var next = Assert.Single(await spool.DueDigestsAsync(holdUntil, 100, default));
        Assert.Equal("late", Assert.Single(next.Alerts).AlertId);
        var journey = (await spool.AlertJourneyAsync(digest.Alerts[0].RowId, default))!;
        Assert.Equal(("digest-1@gw.test", "digest-1@gw.test"), (journey.DigestMessageId, Assert.Single(journey.Messages).Summary.MessageId));
    }

    [ContractFact]
    public async Task DueDigest_NamesTheSeveritiesOfAllItsRepeats_ListedOrNot()
    {
        await using var spool = Open();
        string[] severities = ["warning", "critical", "warning", "warning"];
        for (int i = 0; i < severities.Length; i++)
        {
            await spool.AcceptAlertAsync(Alert("dev-1", $"r-{i}", sev: severities[i]), default);
        }

        var alerts = await spool.NewAlertsAsync(10, default);
        await spool.CommitRoutingAsync(alerts.Select(a => new RoutingCommit(a.RowId, AlertStatus.Held, T0, null, null, null)).ToList(), default);

        var digest = Assert.Single(await spool.DueDigestsAsync(T0, 2, default));

        Assert.Equal(["r-0", "r-3"], digest.Alerts.Select(a => a.AlertId)); // the critical one is not listed
        Assert.Equal(["critical", "warning"], digest.Severities!.Order(StringComparer.Ordinal));
    }

    [ContractFact]
    public async Task DueDigest_CountsTheClearsOfAllItsRepeats_ListedOrNot_AndStormStateKeepsWhetherClearsAreHeld()
    {
        await using var spool = Open();
        string[] states = ["raised", "cleared", "raised", "cleared", "raised"];
        for (int i = 0; i < states.Length; i++)
        {
            await spool.AcceptAlertAsync(Alert("dev-1", $"f-{i}"), default);
        }

        var alerts = await spool.NewAlertsAsync(10, default);
        var holding = new StormState(T0, "<r-0@gw.test>", HoldClears: true);
        await spool.CommitRoutingAsync(alerts.Select((a, i) => new RoutingCommit(a.RowId, AlertStatus.Held, T0, null,
            i == 0 ? ("dev-1", "TEMP_HIGH") : null, i == 0 ? holding : null, State: states[i])).ToList(), default);

        Assert.Equal(holding, await spool.GetStormAsync("dev-1", "TEMP_HIGH", default));
        var digest = Assert.Single(await spool.DueDigestsAsync(T0, 2, default));
        Assert.Equal((5L, 2, 2L), (digest.Total, digest.Alerts.Count, digest.Clears)); // f-1 is listed, f-3 is not

        var after = new StormState(T0.AddMinutes(10), "<r-0@gw.test>", HoldClears: false);
        await spool.CommitDigestAsync(digest, Mail("digest-f@gw.test", "digest"), after, default);
        Assert.Equal(after, Assert.Single(await spool.GetStormsAsync([("dev-1", "TEMP_HIGH")], default)).Value);
    }

    [ContractFact]
    public async Task ParkDigest_ParksItsHeldRepeatsWithTheReason_AndNothingIsDueAfter()
    {
        await using var spool = Open();
        for (int i = 0; i < 3; i++)
        {
            await spool.AcceptAlertAsync(Alert("dev-1", $"r-{i}"), default);
        }

        var alerts = await spool.NewAlertsAsync(10, default);
        await spool.CommitRoutingAsync(alerts.Select(a => new RoutingCommit(a.RowId, AlertStatus.Held, T0, null, null, null)).ToList(), default);
        var digest = Assert.Single(await spool.DueDigestsAsync(T0, 2, default));
        Assert.Equal(2, digest.Alerts.Count);

        var parked = await spool.ParkDigestAsync(digest, "composing the digest failed: boom", default);

        Assert.Equal(["r-0", "r-1", "r-2"], parked); // every one a receipt is owed for, listed in the digest or not
        Assert.Equal(3, (await spool.ParkedAsync(10, default)).Count(p => p.Kind == ParkedKinds.Alert && p.Reason == "composing the digest failed: boom"));
        Assert.Empty(await spool.DueDigestsAsync(T0, 100, default));
        Assert.Null(await spool.NextDigestDueAsync(default));
    }

    [ContractFact]
    public async Task ParkRepeats_ParksTheGivenHeldRepeatsWithTheirReasons_OnceOnly_AndTheDigestReadAfterCoversOnlyTheRest()
    {
        await using var spool = Open();
        string[] severities = ["warning", "critical", "warning"];
        string[] states = ["raised", "cleared", "raised"];
        for (int i = 0; i < severities.Length; i++)
        {
            await spool.AcceptAlertAsync(Alert("dev-1", $"r-{i}", sev: severities[i]), default);
        }

        var alerts = await spool.NewAlertsAsync(10, default);
        await spool.CommitRoutingAsync(alerts.Select((a, i) => new RoutingCommit(a.RowId, AlertStatus.Held, T0, null, null, null, State: states[i])).ToList(), default);
        var digest = Assert.Single(await spool.DueDigestsAsync(T0, 100, default));
        Assert.Equal((3L, 1L), (digest.Total, digest.Clears));

        var parked = await spool.ParkRepeatsAsync(digest, [new ParkedAlert(alerts[1].RowId, "the alert no longer passes validation: boom")], default);
        var again = await spool.ParkRepeatsAsync(digest, [new ParkedAlert(alerts[1].RowId, "a retry")], default);

        Assert.Equal([alerts[1].RowId], parked);
        Assert.Empty(again); // no longer held: a retry parks nothing twice
        Assert.Equal(("parked", "the alert no longer passes validation: boom"), (await spool.GetAlertAsync("dev-1", "r-1", default))!.Value);
        var rest = Assert.Single(await spool.DueDigestsAsync(T0, 100, default));
        Assert.Equal(["r-0", "r-2"], rest.Alerts.Select(a => a.AlertId));
        Assert.Equal((2L, 0L, "warning"), (rest.Total, rest.Clears, Assert.Single(rest.Severities!)));

        await spool.CommitDigestAsync(rest, Mail("digest-r@gw.test", "digest"), new StormState(T0, null), default);
        Assert.Equal((2L, 1L), ((await spool.CountsAsync(default)).Alerts["digested"], (await spool.CountsAsync(default)).Alerts["parked"]));
    }

    [ContractFact]
    public async Task HeldRepeats_ReadsTheDigestsHeldRepeatsAfterARow_UpToItsLatest_ABatchAtATime()
    {
        await using var spool = Open();
        for (int i = 0; i < 5; i++)
        {
            await spool.AcceptAlertAsync(Alert("dev-1", $"r-{i}"), default);
        }

        await spool.AcceptAlertAsync(Alert("dev-1", "door", code: "DOOR_OPEN"), default);
        var alerts = await spool.NewAlertsAsync(10, default);
        await spool.CommitRoutingAsync(alerts.Select(a => new RoutingCommit(a.RowId, AlertStatus.Held, T0, null, null, null)).ToList(), default);
        var digest = Assert.Single(await spool.DueDigestsAsync(T0, 2, default), d => d.Code == "TEMP_HIGH");
        await spool.ParkRepeatsAsync(digest, [new ParkedAlert(alerts[2].RowId, "the alert no longer passes validation: boom")], default);
        await spool.AcceptAlertAsync(Alert("dev-1", "later"), default); // held after the digest was read: the next digest's
        var later = Assert.Single(await spool.NewAlertsAsync(10, default));
        await spool.CommitRoutingAsync([new RoutingCommit(later.RowId, AlertStatus.Held, T0, null, null, null)], default);

        var first = await spool.HeldRepeatsAsync(digest, 0, 2, default);
        var second = await spool.HeldRepeatsAsync(digest, first[^1].RowId, 2, default);
        var third = await spool.HeldRepeatsAsync(digest, second[^1].RowId, 2, default);

        Assert.Equal(["r-0", "r-1"], first.Select(a => a.AlertId));
        Assert.Equal(["r-3", "r-4"], second.Select(a => a.AlertId)); // r-2 is parked, no longer held
        Assert.Empty(third);
        Assert.Equal(Alert("dev-1", "r-3").Payload, second[0].Payload);
    }

    [ContractFact]
    public async Task Prune_KeepsTheStormStateOfAnOpenIncidentUpToAYear_AndAClosedOnesOnlyToTheHorizon()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
        await spool.AcceptAlertAsync(Alert("dev-1", "open") with { ReceivedAt = T0 }, default);
        await spool.AcceptAlertAsync(Alert("dev-1", "closed", code: "DOOR_OPEN") with { ReceivedAt = T0 }, default);
        var alerts = await spool.NewAlertsAsync(10, default);
        var open = new StormState(T0, "<dev-1.open.alert@gw.test>", IncidentOpen: true);
        await spool.CommitRoutingAsync(
        [
            new RoutingCommit(alerts[0].RowId, AlertStatus.Routed, null, null, ("dev-1", "TEMP_HIGH"), open),
            new RoutingCommit(alerts[1].RowId, AlertStatus.Routed, null, null, ("dev-1", "DOOR_OPEN"), new StormState(T0, "<dev-1.door.alert@gw.test>")),
        ], default);

        clock.Advance(TimeSpan.FromDays(40));
        await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 10_000, default);

        Assert.Equal(open, await spool.GetStormAsync("dev-1", "TEMP_HIGH", default)); // its clear still threads onto the raise
        Assert.Null(await spool.GetStormAsync("dev-1", "DOOR_OPEN", default));

        clock.Advance(StormRetention.OpenIncident - TimeSpan.FromDays(30)); // a year and ten days after its last mail
        await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 10_000, default);

        Assert.Null(await spool.GetStormAsync("dev-1", "TEMP_HIGH", default));
    }

    [ContractFact]
    public async Task UnrouteDigest_LeavesEveryHeldRepeatUnroutedWithTheRoute_AndTheStormStateAsItWas()
    {
        await using var spool = Open();
        var storm = new StormState(T0, "<r-0@gw.test>");
        await spool.AcceptAlertAsync(Alert("dev-1", "r-0"), default);
        var raised = Assert.Single(await spool.NewAlertsAsync(10, default));
        await spool.CommitRoutingAsync([new RoutingCommit(raised.RowId, AlertStatus.Routed, null, Mail("r-0@gw.test"), ("dev-1", "TEMP_HIGH"), storm)], default);
        for (int i = 1; i <= 3; i++)
        {
            await spool.AcceptAlertAsync(Alert("dev-1", $"r-{i}"), default);
        }

        var alerts = await spool.NewAlertsAsync(10, default);
        await spool.CommitRoutingAsync(alerts.Select(a => new RoutingCommit(a.RowId, AlertStatus.Held, T0, null, null, null, Route: "held")).ToList(), default);
        var digest = Assert.Single(await spool.DueDigestsAsync(T0, 2, default));

        await spool.UnrouteDigestAsync(digest, "Routes:0 to owners: nobody new", default);

        Assert.Equal(3, (await spool.CountsAsync(default)).Alerts["unrouted"]); // listed in the digest or not
        Assert.Equal("Routes:0 to owners: nobody new", (await spool.AlertJourneyAsync(alerts[1].RowId, default))!.Route);
        Assert.Equal(storm, await spool.GetStormAsync("dev-1", "TEMP_HIGH", default));
        Assert.Empty(await spool.DueDigestsAsync(T0, 100, default));
        Assert.Null(await spool.NextDigestDueAsync(default));
        Assert.Equal("routed", (await spool.GetAlertAsync("dev-1", "r-0", default))?.Status);
    }

    [ContractFact]
    public async Task ParkedAlert_IsListed_ReleasedIsNewAgain_CancelledStaysForTheRecord()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
        await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
        await spool.AcceptAlertAsync(Alert("dev-1", "a-2"), default);
        var alerts = await spool.NewAlertsAsync(10, default);
        await spool.CommitRoutingAsync([.. alerts.Select(a => new RoutingCommit(a.RowId, AlertStatus.Parked, null, null, null, null, "routing failed: " + a.AlertId))], default);

        var parked = await spool.ParkedAsync(10, default);
        Assert.Equal(["a-1", "a-2"], parked.Select(p => p.Reference).Order(StringComparer.Ordinal));
        Assert.All(parked, p => Assert.Equal(T0, p.ParkedAt));
        Assert.Empty(await spool.NewAlertsAsync(10, default));

        Assert.True(await spool.ReleaseAsync(ParkedKinds.Alert, alerts[0].RowId, default));
        Assert.True((await spool.CancelAsync(ParkedKinds.Alert, alerts[1].RowId, "not wanted", 100, default)).Cancelled);

        Assert.Equal("a-1", Assert.Single(await spool.NewAlertsAsync(10, default)).AlertId);
        Assert.Equal(("cancelled", "not wanted"), await spool.GetAlertAsync("dev-1", "a-2", default));
        Assert.False(await spool.ReleaseAsync(ParkedKinds.Alert, alerts[1].RowId, default));
        Assert.Empty(await spool.ParkedAsync(10, default));
        var wrongKind = await Assert.ThrowsAnyAsync<Exception>(() => spool.ReleaseAsync("thing", 1, default));
        Assert.Contains("kind must be 'alert' or 'message'", wrongKind.Message, StringComparison.Ordinal);
    }

    [ContractFact]
    public async Task RejectedAlert_Retried_IsNewUnderItsOwnId_OnlyWhileStillRejectedWithTheReasonRead_AndNeverWithAnIdItsDeviceHas()
    {
        await using var spool = Open();
        const string Failed = "handling failed: InvalidOperationException: x";
        IncomingAlert Rejected(string id, string payloadId) => Alert("dev-1", payloadId) with { AlertId = id, RejectReason = Failed, Code = null, Severity = null };
        await spool.AcceptAlertAsync(Rejected("rejected-aa", "own-1"), default);
        await spool.AcceptAlertAsync(Rejected("rejected-bb", "taken-1"), default);
        await spool.AcceptAlertAsync(Rejected("still-1", "still-1"), default);
        await spool.AcceptAlertAsync(Alert("dev-1", "taken-1"), default);
        var rows = (await spool.QueryAlertsAsync(new AlertQuery("dev-1"), default)).ToDictionary(a => a.AlertId, a => a.RowId);
        long own = rows["rejected-aa"], taken = rows["rejected-bb"], still = rows["still-1"], holder = rows["taken-1"];

        var retried = await spool.RetryRejectedAsync(new RejectedRetry(own, Failed, "own-1", "TEMP_HIGH", "critical", null), default);
        var again = await spool.RetryRejectedAsync(new RejectedRetry(own, Failed, "own-1", "TEMP_HIGH", "critical", null), default);
        var duplicate = await spool.RetryRejectedAsync(new RejectedRetry(taken, Failed, "taken-1", "TEMP_HIGH", "critical", null), default);
        var invalid = await spool.RetryRejectedAsync(new RejectedRetry(still, Failed, "still-1", null, null, "code must match [A-Z0-9_.-]{1,64}"), default);
        var stale = await spool.RetryRejectedAsync(new RejectedRetry(still, Failed, "still-1", "TEMP_HIGH", "critical", null), default);

        Assert.Equal(new RejectedRetryResult(RejectedRetryOutcome.Retried), retried);
        Assert.Equal(new RejectedRetryResult(RejectedRetryOutcome.Changed), again);
        Assert.Equal(new RejectedRetryResult(RejectedRetryOutcome.Duplicate, holder), duplicate);
        Assert.Equal(new RejectedRetryResult(RejectedRetryOutcome.StillRejected), invalid);
        Assert.Equal(new RejectedRetryResult(RejectedRetryOutcome.Changed), stale);
        var summary = (await spool.AlertJourneyAsync(own, default))!.Alert;
        Assert.Equal(("own-1", "new", null, "TEMP_HIGH", "critical", T0), (summary.AlertId, summary.Status, summary.Reason, summary.Code, summary.Severity, summary.ReceivedAt));
        Assert.Equal(new[] { ("own-1", own), ("taken-1", holder) }, (await spool.NewAlertsAsync(10, default)).Select(a => (a.AlertId, a.RowId)).Order());
        Assert.Null(await spool.GetAlertAsync("dev-1", "rejected-aa", default));
        Assert.Equal((AlertStatus.Rejected, Failed), (await spool.GetAlertAsync("dev-1", "rejected-bb", default))!.Value);
        Assert.Equal((AlertStatus.Rejected, "code must match [A-Z0-9_.-]{1,64}"), (await spool.GetAlertAsync("dev-1", "still-1", default))!.Value);
        Assert.Equal(AcceptOutcome.Duplicate, await spool.AcceptAlertAsync(Alert("dev-1", "own-1"), default));
    }

    [ContractFact]
    public async Task RejectedAlert_RetriedManyTimesAtOnce_IsRetriedOnce()
    {
        await using var spool = Open();
        const string Failed = "handling failed: InvalidOperationException: x";
        await spool.AcceptAlertAsync(Alert("dev-1", "once-1") with { AlertId = "rejected-cc", RejectReason = Failed, Code = null, Severity = null }, default);
        long row = Assert.Single(await spool.QueryAlertsAsync(new AlertQuery("dev-1"), default)).RowId;

        var outcomes = await Task.WhenAll(Enumerable.Range(0, 20).Select(_ =>
            spool.RetryRejectedAsync(new RejectedRetry(row, Failed, "once-1", "TEMP_HIGH", "critical", null), default)));

        Assert.Equal(1, outcomes.Count(o => o.Outcome == RejectedRetryOutcome.Retried));
        Assert.Equal(19, outcomes.Count(o => o.Outcome == RejectedRetryOutcome.Changed));
        Assert.Equal("once-1", Assert.Single(await spool.NewAlertsAsync(10, default)).AlertId);
    }

    // A park says whether the mail is parked by it, which decides whether anyone is told: the same park written again
    // (its first commit's answer lost with the connection) still is; another park of the same mail for the same reason
    // (an instance that took it over) is not, nor is a mail no longer queued (cancelled), which stays as it was.
    [ContractFact]
    public async Task ParkMessage_SaysWhetherTheMailIsParkedByIt_TheSameParkWrittenAgainStillIs()
    {
        await using var spool = Open();
        await spool.QueueMailAsync(Mail("p-1@gw.test", "relay"), default);
        await spool.QueueMailAsync(Mail("p-2@gw.test", "relay"), default);
        var p1 = (await spool.GetMessageAsync("p-1@gw.test", default))!;
        var p2 = (await spool.GetMessageAsync("p-2@gw.test", default))!;
        var at = DateTimeOffset.FromUnixTimeMilliseconds(1_800_000_000_123);

        Assert.True(await spool.ParkMessageAsync(p1.RowId, "recording the delivery failed: X", at, default));
        Assert.True(await spool.ParkMessageAsync(p1.RowId, "recording the delivery failed: X", at, default));
        Assert.False(await spool.ParkMessageAsync(p1.RowId, "recording the delivery failed: X", at.AddSeconds(5), default));
        Assert.False(await spool.ParkMessageAsync(p1.RowId, "recording the delivery failed: Y", at, default));
        Assert.Equal(("parked", "recording the delivery failed: X"), ((await spool.GetMessageAsync("p-1@gw.test", default))!.Status, (await spool.GetMessageAsync("p-1@gw.test", default))!.Reason));

        Assert.True((await spool.CancelAsync(ParkedKinds.Message, p2.RowId, "withdrawn", 100, default)).Cancelled);
        Assert.False(await spool.ParkMessageAsync(p2.RowId, "recording the delivery failed: X", at, default));
        Assert.Equal("cancelled", (await spool.GetMessageAsync("p-2@gw.test", default))!.Status);
    }

    [ContractFact]
    public async Task ParkedMessage_ReleasedIsDueNow_CancelledFailsItsRecipients()
    {
        await using var spool = Open();
        await spool.QueueMailAsync(Mail("m-1@gw.test", "relay"), default);
        await spool.QueueMailAsync(Mail("m-2@gw.test", "relay"), default);
        var m1 = (await spool.GetMessageAsync("m-1@gw.test", default))!;
        var m2 = (await spool.GetMessageAsync("m-2@gw.test", default))!;

        await spool.ParkMessageAsync(m1.RowId, "recording the delivery failed: X", DateTimeOffset.UnixEpoch, default);
        Assert.Equal(("parked", "recording the delivery failed: X"), ((await spool.GetMessageAsync("m-1@gw.test", default))!.Status, (await spool.GetMessageAsync("m-1@gw.test", default))!.Reason));
        var due = await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default);
        Assert.Equal(["m-2@gw.test"], due.Select(m => m.MessageId));

        Assert.True(await spool.ReleaseAsync(ParkedKinds.Message, m1.RowId, default));
        Assert.Equal("queued", (await spool.GetMessageAsync("m-1@gw.test", default))!.Status);

        Assert.True((await spool.CancelAsync(ParkedKinds.Message, m2.RowId, "no longer wanted", 100, default)).Cancelled);
        Assert.Equal("cancelled", (await spool.GetMessageAsync("m-2@gw.test", default))!.Status);
        Assert.Equal("failed", Assert.Single((await spool.MessageDetailAsync(m2.RowId, default))!.Recipients).Status);
        Assert.False(await spool.ReleaseAsync(ParkedKinds.Message, m2.RowId, default));
        Assert.Equal(["m-1@gw.test"], (await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default)).Select(m => m.MessageId));
    }

    // A device's mail as SMTP handed it over, with what its handling needs; NUL and 8-bit bytes kept.
    private static QuarantinedMail Quarantined(string messageId) =>
        new(messageId, "dev-1", "ups@lan.test", ["alarms@gw.test", "postmaster@gw.test"], "127.0.0.1:40112", true, false, "0123456789ab", T0,
            [.. "From: <ups@lan.test>\r\nSubject: x\r\n\r\nbody \0 \u00e9"u8, 0xff]);

    [ContractFact]
    public async Task QuarantinedMail_IsListedParked_KeptWhole_NeverQueuedAsItCame_AndSettledOnceWithItsRelayedMail()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
        var kept = Quarantined("q-1.quarantined@gw.test");

        long row = (await spool.QuarantineAsync(kept, "handling failed: X: y", default))!.Value;

        var parked = Assert.Single(await spool.ParkedAsync(10, default));
        Assert.Equal((ParkedKinds.Message, row, "dev-1", kept.MessageId, T0, "handling failed: X: y"), (parked.Kind, parked.RowId, parked.Device, parked.Reference, parked.ParkedAt, parked.Reason));
        var read = (await spool.QuarantinedAsync(row, default))!;
        Assert.Equal(kept.Raw, read.Raw);
        Assert.Equal(kept.Recipients, read.Recipients);
        Assert.Equal(kept with { Raw = read.Raw, Recipients = read.Recipients }, read);
        Assert.False(await spool.ReleaseAsync(ParkedKinds.Message, row, default)); // only handling it again ends it
        Assert.Empty(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));

        clock.Advance(TimeSpan.FromMinutes(1));
        Assert.True(await spool.QuarantineAgainAsync(row, "handling failed: X: again", default));
        Assert.Equal(("handling failed: X: again", T0.AddMinutes(1)), (Assert.Single(await spool.ParkedAsync(10, default)).Reason, Assert.Single(await spool.ParkedAsync(10, default)).ParkedAt));

        Assert.True(await spool.SettleQuarantinedAsync(row, Mail("r-1.relay@gw.test", "relay"), default));
        Assert.False(await spool.SettleQuarantinedAsync(row, Mail("r-2.relay@gw.test", "relay"), default));
        Assert.False(await spool.QuarantineAgainAsync(row, "too late", default));

        Assert.Null(await spool.QuarantinedAsync(row, default));
        Assert.Empty(await spool.ParkedAsync(10, default));
        Assert.Null(await spool.GetMessageAsync(kept.MessageId, default));
        Assert.Null(await spool.GetMessageAsync("r-2.relay@gw.test", default));
        Assert.Equal(["r-1.relay@gw.test"], (await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default)).Select(m => m.MessageId));
    }

    [ContractFact]
    public async Task QuarantinedMail_SettledWithoutMailOrWithMailAlreadyQueued_EndsTheQuarantineAndQueuesNothingNew()
    {
        await using var spool = Open();
        await spool.QueueMailAsync(Mail("r-1.relay@gw.test", "relay"), default);
        long first = (await spool.QuarantineAsync(Quarantined("q-1.quarantined@gw.test"), "handling failed: X: y", default))!.Value;
        long second = (await spool.QuarantineAsync(Quarantined("q-2.quarantined@gw.test"), "handling failed: X: y", default))!.Value;

        Assert.True(await spool.SettleQuarantinedAsync(first, Mail("r-1.relay@gw.test", "relay"), default)); // the same mail submitted before
        Assert.True(await spool.SettleQuarantinedAsync(second, null, default)); // its alert parts were stored by the alert ingest

        Assert.Empty(await spool.ParkedAsync(10, default));
        Assert.Equal(1, (await spool.CountsAsync(default)).Messages.Values.Sum());
    }

    // The same mail sent again by a device that did not see the 250 has the same key: kept once, with what came first;
    // cancelled meanwhile, it stays cancelled.
    [ContractFact]
    public async Task QuarantinedMail_WhoseKeyIsInTheSpool_IsNotStoredAgain_AndTheFirstStaysAsItWas()
    {
        await using var spool = Open();
        var kept = Quarantined("q-1.quarantined@gw.test");
        long row = (await spool.QuarantineAsync(kept, "handling failed: X: y", default))!.Value;

        var again = await spool.QuarantineAsync(kept with { SessionId = "ba9876543210", Recipients = ["other@gw.test"] }, "handling failed: X: again", default);
        Assert.True((await spool.CancelAsync(ParkedKinds.Message, (await spool.QuarantineAsync(Quarantined("q-2.quarantined@gw.test"), "handling failed: X: y", default))!.Value,
            "a test mail", 100, default)).Cancelled);
        var afterCancel = await spool.QuarantineAsync(Quarantined("q-2.quarantined@gw.test"), "handling failed: X: y", default);

        Assert.Null(again);
        Assert.Null(afterCancel);
        var parked = Assert.Single(await spool.ParkedAsync(10, default));
        Assert.Equal((row, "handling failed: X: y"), (parked.RowId, parked.Reason));
        var read = (await spool.QuarantinedAsync(row, default))!;
        Assert.Equal(kept.SessionId, read.SessionId);
        Assert.Equal(kept.Recipients, read.Recipients);
        Assert.Equal("cancelled", (await spool.GetMessageAsync("q-2.quarantined@gw.test", default))!.Status);
        Assert.Equal(2, (await spool.CountsAsync(default)).Messages.Values.Sum());
    }

    [ContractFact]
    public async Task QuarantinedMail_Cancelled_IsKeptForTheRecordAndCannotBeSettled()
    {
        await using var spool = Open();
        long row = (await spool.QuarantineAsync(Quarantined("q-1.quarantined@gw.test"), "handling failed: X: y", default))!.Value;

        Assert.True((await spool.CancelAsync(ParkedKinds.Message, row, "a test mail", 100, default)).Cancelled);

        Assert.Null(await spool.QuarantinedAsync(row, default));
        Assert.False(await spool.SettleQuarantinedAsync(row, Mail("r-1.relay@gw.test", "relay"), default));
        Assert.Equal(("cancelled", "a test mail"), ((await spool.GetMessageAsync("q-1.quarantined@gw.test", default))!.Status, (await spool.GetMessageAsync("q-1.quarantined@gw.test", default))!.Reason));
        Assert.Null(await spool.GetMessageAsync("r-1.relay@gw.test", default));
        Assert.Empty(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));
    }

    [ContractFact]
    public async Task DeliveryResult_ArrivingAfterACancel_ThatDeliveredNothing_LeavesTheCancel_WithTheAttemptOnRecord()
    {
        await using var spool = Open();
        var (_, row) = await RoutedAsync(spool, "dev-1", "a-1", "alice@example.com", "bob@example.com");
        Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default)); // taken for an attempt
        Assert.True((await spool.CancelAsync(ParkedKinds.Message, row, "wrong recipients", 100, default)).Cancelled);

        var recorded = await spool.CommitDeliveryAsync(new DeliveryCommit(row,
            [new("alice@example.com", "deferred", "451 4.3.0 busy"), new("bob@example.com", "failed", "550 5.1.1 no such user")], T0.AddMinutes(1),
            Mail("a-1.n1.notice@gw.test", "notice"), new KeptReceipt("dev-1", "a-1", "failed", T0, "550 5.1.1 no such user")), default);

        var detail = (await spool.MessageDetailAsync(row, default))!;
        Assert.Equal(("cancelled", "wrong recipients", 1), (detail.Summary.Status, detail.Summary.Reason, detail.Summary.Attempts));
        Assert.All(detail.Recipients, r => Assert.Equal(("failed", "cancelled by the operator: wrong recipients"), (r.Status, r.Reply)));
        Assert.Equal(2, Assert.Single(detail.Attempts).Results.Count); // what the relay answered stays on record
        Assert.Empty(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));
        Assert.Null(await spool.GetMessageAsync("a-1.n1.notice@gw.test", default)); // no notice about a mail given up
        Assert.Equal(DeliveryRecorded.CancelStood, recorded.Recorded);
        var kept = Assert.Single(await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Receipt; // the cancel's, not the attempt's
        Assert.Equal(("failed", "cancelled by the operator: wrong recipients"), (kept.State, kept.Detail));
    }

    [ContractFact]
    public async Task DeliveryResult_ArrivingAfterACancel_ThatDeliveredTheMail_IsRecordedAsSent_TheCancelTooLate()
    {
        await using var spool = Open();
        var (_, row) = await RoutedAsync(spool, "dev-1", "a-1", "alice@example.com", "bob@example.com");
        Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));
        Assert.True((await spool.CancelAsync(ParkedKinds.Message, row, "wrong recipients", 100, default)).Cancelled);

        var recorded = await spool.CommitDeliveryAsync(new DeliveryCommit(row,
            [new("alice@example.com", "sent", "250 2.0.0 queued as 42"), new("bob@example.com", "sent", "250 2.0.0 queued as 42")], null, null,
            new KeptReceipt("dev-1", "a-1", "relayed", T0, "250 2.0.0 queued as 42")), default);

        var detail = (await spool.MessageDetailAsync(row, default))!;
        Assert.Equal(("sent", 1), (detail.Summary.Status, detail.Summary.Attempts));
        Assert.Contains("too late", detail.Summary.Reason, StringComparison.Ordinal);
        Assert.Contains("wrong recipients", detail.Summary.Reason, StringComparison.Ordinal);
        Assert.All(detail.Recipients, r => Assert.Equal(("sent", "250 2.0.0 queued as 42"), (r.Status, r.Reply)));
        Assert.Empty(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));
        Assert.Equal(DeliveryRecorded.CancelTooLate, recorded.Recorded);
        Assert.Equal("relayed", Assert.Single(await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Receipt.State); // the cancel's failed withdrawn
    }

    [ContractFact]
    public async Task DeliveryResult_ArrivingAfterACancel_ThatDeliveredToSome_IsPartial_TheOthersStayCancelled()
    {
        await using var spool = Open();
        var (_, row) = await RoutedAsync(spool, "dev-1", "a-1", "alice@example.com", "bob@example.com");
        Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));
        Assert.True((await spool.CancelAsync(ParkedKinds.Message, row, "wrong recipients", 100, default)).Cancelled);

        var recorded = await spool.CommitDeliveryAsync(new DeliveryCommit(row,
            [new("alice@example.com", "sent", "250 2.0.0 queued as 42"), new("bob@example.com", "deferred", "451 4.2.1 mailbox busy")], T0.AddMinutes(1), null), default);

        var detail = (await spool.MessageDetailAsync(row, default))!;
        Assert.Equal("partial", detail.Summary.Status);
        Assert.Equal(
            [("alice@example.com", "sent", "250 2.0.0 queued as 42"), ("bob@example.com", "failed", "cancelled by the operator: wrong recipients")],
            detail.Recipients.Select(r => (r.Address, r.Status, r.Reply)));
        Assert.Empty(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));
        Assert.Equal(DeliveryRecorded.CancelTooLateForSome, recorded.Recorded);
        var kept = Assert.Single(await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Receipt; // bob never gets it: the alert failed
        Assert.Equal(("failed", "cancelled by the operator: wrong recipients"), (kept.State, kept.Detail));
    }

    // One recipient refused (the device told `failed`), another deferred, deferred again and delivered later: the alert
    // failed, and the later results, the last of which finishes the mail `partial`, give no receipt to contradict it.
    [ContractFact]
    public async Task CommitDelivery_TheRestDeferredAndDeliveredAfterAnEarlierAttemptRefusedOne_IsPartial_AndTheFailedReceiptStandsAlone()
    {
        await using var spool = Open();
        var (_, row) = await RoutedAsync(spool, "dev-1", "a-1", "alice@example.com", "bob@example.com");
        Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));
        await spool.CommitDeliveryAsync(new DeliveryCommit(row,
            [new("alice@example.com", "failed", "550 5.1.1 no such user"), new("bob@example.com", "deferred", "452 4.5.3 too many recipients")], T0, null,
            Receipt("dev-1", "a-1")), default);
        Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));
        var deferred = await spool.CommitDeliveryAsync(new DeliveryCommit(row, [new("bob@example.com", "deferred", "452 4.5.3 too many recipients")], T0, null), default);
        Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));

        var committed = await spool.CommitDeliveryAsync(new DeliveryCommit(row, [new("bob@example.com", "sent", "250 2.0.0 queued as 42")], null, null,
            Receipt("dev-1", "a-1", "relayed", "250 2.0.0 queued as 42")), default);

        Assert.Equal((DeliveryRecorded.RecordedAlreadyFailed, DeliveryRecorded.RecordedAlreadyFailed), (deferred.Recorded, committed.Recorded));
        Assert.Equal(MessageStatus.Partial, (await spool.GetMessageAsync("a-1@gw.test", default))!.Status);
        Assert.Equal(Receipt("dev-1", "a-1"), Assert.Single(await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Receipt);
    }

    [ContractFact]
    public async Task Cancel_OfAParkedAlert_KeepsAFailedReceiptNamingTheCancel_WithTheCancel()
    {
        var clock = new FakeTimeProvider(T0);
        var owed = new KeptReceipt("dev-1", "a-1", "failed", T0, "cancelled by the operator: template retired");
        await using (var spool = Open(clock))
        {
            await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
            var alert = Assert.Single(await spool.NewAlertsAsync(10, default));
            await spool.CommitRoutingAsync([new RoutingCommit(alert.RowId, AlertStatus.Parked, null, null, null, null, "routing failed: X")], default);

            var cancelled = await spool.CancelAsync(ParkedKinds.Alert, alert.RowId, "template retired", 100, default);
            var again = await spool.CancelAsync(ParkedKinds.Alert, alert.RowId, "once more", 100, default);

            Assert.True(cancelled.Cancelled);
            Assert.Equal(owed, Assert.Single(cancelled.Receipts));
            Assert.False(again.Cancelled);
            Assert.Empty(again.Receipts);
        }

        await using var reopened = Open(clock);
        Assert.Equal(owed, Assert.Single(await reopened.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Receipt);
    }

    [ContractFact]
    public async Task Cancel_OfAnAlertsQueuedMail_KeepsItsDeviceAFailedReceipt_ANoticesNone()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
        var (_, row) = await RoutedAsync(spool, "dev-1", "a-1", "alice@example.com", "bob@example.com");
        await spool.QueueMailAsync(Mail("n-1@gw.test", "notice", alertId: "a-9"), default);
        long notice = (await spool.GetMessageAsync("n-1@gw.test", default))!.RowId;

        var cancelled = await spool.CancelAsync(ParkedKinds.Message, row, "wrong recipients", 100, default);
        var noticeCancelled = await spool.CancelAsync(ParkedKinds.Message, notice, "not needed", 100, default);

        var owed = new KeptReceipt("dev-1", "a-1", "failed", T0, "cancelled by the operator: wrong recipients");
        Assert.Equal(owed, Assert.Single(cancelled.Receipts));
        Assert.True(noticeCancelled.Cancelled);
        Assert.Empty(noticeCancelled.Receipts); // the operator's notice about an alert is not the alert
        Assert.Equal(owed, Assert.Single(await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Receipt);
    }

    [ContractFact]
    public async Task Cancel_OfADigest_KeepsAFailedReceiptForEachOfItsAlerts_TheNewestAsManyAsADeviceKeeps()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
        for (int i = 0; i < 4; i++)
        {
            await spool.AcceptAlertAsync(Alert("dev-1", $"r-{i}"), default);
        }

        var alerts = await spool.NewAlertsAsync(10, default);
        await spool.CommitRoutingAsync(alerts.Select(a => new RoutingCommit(a.RowId, AlertStatus.Held, T0, null, null, null)).ToList(), default);
        var digest = Assert.Single(await spool.DueDigestsAsync(T0, 100, default));
        await spool.CommitDigestAsync(digest, Mail("digest-1@gw.test", "digest"), new StormState(T0, null), default);
        long row = (await spool.GetMessageAsync("digest-1@gw.test", default))!.RowId;

        var cancelled = await spool.CancelAsync(ParkedKinds.Message, row, "storm over", 3, default);

        Assert.Equal(["r-1", "r-2", "r-3"], cancelled.Receipts.Select(r => r.AlertId));
        Assert.All(cancelled.Receipts, r => Assert.Equal(("dev-1", "failed", "cancelled by the operator: storm over"), (r.Device, r.State, r.Detail)));
        Assert.Equal(["r-1", "r-2", "r-3"], (await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Select(r => r.Receipt.AlertId));
    }

    [ContractFact]
    public async Task DigestAlertIds_AreTheNewestOfTheDigestsAlerts_OldestFirst_AndNoneForAnotherDevicesOrMail()
    {
        await using var spool = Open();
        await DigestTakenAsync(spool, "dev-1", 4);

        Assert.Equal(["r-1", "r-2", "r-3"], await spool.DigestAlertIdsAsync("dev-1", "digest-1@gw.test", 3, default));
        Assert.Equal(["r-0", "r-1", "r-2", "r-3"], await spool.DigestAlertIdsAsync("dev-1", "digest-1@gw.test", 100, default));
        Assert.Empty(await spool.DigestAlertIdsAsync("dev-2", "digest-1@gw.test", 100, default));
        Assert.Empty(await spool.DigestAlertIdsAsync("dev-1", "other@gw.test", 100, default));
    }

    [ContractFact]
    public async Task CommitDelivery_OfADigest_KeepsItsReceiptForEachOfItsAlerts_TheNewestAsManyAsADeviceKeeps_WithTheResult()
    {
        await using (var spool = Open())
        {
            var due = await DigestTakenAsync(spool, "dev-1", 4);

            var committed = await spool.CommitDeliveryAsync(new DeliveryCommit(due.RowId, [new("alice@example.com", "failed", "554 5.7.1 refused")], null, null,
                ReceiptsPerDevice: 3, DigestReceipt: new DigestReceipt("failed", T0, "554 5.7.1 refused")), default);

            Assert.Equal(DeliveryRecorded.Recorded, committed.Recorded);
            Assert.Equal(["r-1", "r-2", "r-3"], committed.DigestReceipts.Select(r => r.AlertId));
            Assert.All(committed.DigestReceipts, r => Assert.Equal(("dev-1", "failed", T0, "554 5.7.1 refused"), (r.Device, r.State, r.At, r.Detail)));
        }

        await using var reopened = Open();
        Assert.Equal(["r-1", "r-2", "r-3"], (await reopened.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Select(r => r.Receipt.AlertId));
        Assert.Equal(MessageStatus.Failed, (await reopened.GetMessageAsync("digest-1@gw.test", default))!.Status);
    }

    [ContractFact]
    public async Task CommitDelivery_OfADigestDeferred_NamesItsAlertsForTheCourtesyReceipt_AndKeepsNone_WhileAnAlertsMailNamesNone()
    {
        await using var spool = Open();
        await RoutedAsync(spool, "dev-2", "a-1");
        var due = await DigestTakenAsync(spool, "dev-1", 2);
        var single = Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>([due.RowId]), default));

        var deferred = await spool.CommitDeliveryAsync(new DeliveryCommit(due.RowId, [new("alice@example.com", "deferred", "451 4.3.0 busy")], T0.AddMinutes(1), null,
            DigestReceipt: new DigestReceipt("deferred", T0, "451 4.3.0 busy")), default);
        var alone = await spool.CommitDeliveryAsync(new DeliveryCommit(single.RowId, [new("alice@example.com", "sent", "250 ok")], null, null,
            new KeptReceipt("dev-2", "a-1", "relayed", T0, "250 ok")), default);

        Assert.Equal(["r-0", "r-1"], deferred.DigestReceipts.Select(r => r.AlertId));
        Assert.All(deferred.DigestReceipts, r => Assert.Equal(("deferred", "451 4.3.0 busy"), (r.State, r.Detail)));
        Assert.Empty(await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default));
        Assert.Empty(alone.DigestReceipts);
        Assert.Equal("a-1", Assert.Single(await spool.KeptReceiptsAsync("dev-2", 0, null, 10, default)).Receipt.AlertId);
    }

    [ContractFact]
    public async Task DeliveryResult_OfADigest_ArrivingAfterACancel_ThatDeliveredIt_WithdrawsTheCancelsFailedReceipts_AndKeepsEachAlertsRelayed()
    {
        await using var spool = Open();
        var due = await DigestTakenAsync(spool, "dev-1", 3);
        Assert.Equal(3, (await spool.CancelAsync(ParkedKinds.Message, due.RowId, "storm over", 100, default)).Receipts.Count);

        var committed = await spool.CommitDeliveryAsync(new DeliveryCommit(due.RowId, [new("alice@example.com", "sent", "250 2.0.0 queued as 42")], null, null,
            DigestReceipt: new DigestReceipt("relayed", T0, "250 2.0.0 queued as 42")), default);

        Assert.Equal(DeliveryRecorded.CancelTooLate, committed.Recorded);
        Assert.Equal(["r-0", "r-1", "r-2"], committed.DigestReceipts.Select(r => r.AlertId));
        var kept = await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default);
        Assert.Equal([("r-0", "relayed"), ("r-1", "relayed"), ("r-2", "relayed")], kept.Select(r => (r.Receipt.AlertId, r.Receipt.State)).Order());
    }

    // Held alerts r-0.. of the device made into one digest (digest-1@gw.test, to alice), taken for an attempt.
    private static async Task<QueuedMessage> DigestTakenAsync(ISpool spool, string device, int alerts)
    {
        for (int i = 0; i < alerts; i++)
        {
            await spool.AcceptAlertAsync(Alert(device, $"r-{i}"), default);
        }

        var held = (await spool.NewAlertsAsync(100, default)).Where(a => a.Device == device);
        await spool.CommitRoutingAsync(held.Select(a => new RoutingCommit(a.RowId, AlertStatus.Held, T0, null, null, null)).ToList(), default);
        var digest = Assert.Single(await spool.DueDigestsAsync(T0, 100, default));
        await spool.CommitDigestAsync(digest, Mail("digest-1@gw.test", "digest", device), new StormState(T0, null), default);
        return Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default), m => m.Kind == "digest");
    }

    [ContractFact]
    public async Task RetryNow_MakesADeferredMailDueNow_AndQueryMessagesTellsQueuedFromDeferred()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
        var (_, first) = await RoutedAsync(spool, "dev-1", "a-1");
        await RoutedAsync(spool, "dev-2", "a-2");
        _ = await spool.DueMessagesAsync(clock.GetUtcNow(), 10, new HashSet<long>(), default);
        await spool.CommitDeliveryAsync(new DeliveryCommit(first, [new("alice@example.com", "deferred", "451 busy")], T0.AddHours(1), null), default);

        Assert.Equal(["a-1@gw.test"], (await spool.QueryMessagesAsync(new MessageQuery("deferred"), default)).Select(m => m.MessageId));
        Assert.Equal(["a-2@gw.test"], (await spool.QueryMessagesAsync(new MessageQuery("queued"), default)).Select(m => m.MessageId));
        Assert.Equal(["a-2@gw.test"], (await spool.QueryMessagesAsync(new MessageQuery(Device: "dev-2"), default)).Select(m => m.MessageId));
        Assert.Equal(["a-2@gw.test", "a-1@gw.test"], (await spool.QueryMessagesAsync(new MessageQuery(), default)).Select(m => m.MessageId)); // newest first

        clock.Advance(TimeSpan.FromMinutes(1));
        Assert.True(await spool.RetryNowAsync(first, default));
        Assert.Equal(clock.GetUtcNow(), (await spool.GetMessageAsync("a-1@gw.test", default))!.NextAttemptAt);
        Assert.False(await spool.RetryNowAsync(first + 1000, default));
    }

    [ContractFact]
    public async Task QueryAlerts_FiltersAndPagesNewestFirst_AndTheJourneyShowsRouteMailAndPayload()
    {
        await using var spool = Open();
        await spool.AcceptAlertAsync(Alert("dev-1", "a-1", sev: "warning"), default);
        await spool.AcceptAlertAsync(Alert("dev-1", "a-2", code: "DOOR"), default);
        await spool.AcceptAlertAsync(Alert("dev-2", "a-3") with { ReceivedAt = T0.AddHours(2) }, default);
        await spool.AcceptAlertAsync(Alert("dev-2", "bad") with { RejectReason = "broken", Code = null, Severity = null }, default);

        Assert.Equal(["bad", "a-3", "a-2", "a-1"], (await spool.QueryAlertsAsync(new AlertQuery(), default)).Select(a => a.AlertId));
        Assert.Equal(["a-2", "a-1"], (await spool.QueryAlertsAsync(new AlertQuery(Device: "dev-1"), default)).Select(a => a.AlertId));
        Assert.Equal(["a-2"], (await spool.QueryAlertsAsync(new AlertQuery(Code: "DOOR"), default)).Select(a => a.AlertId));
        Assert.Equal(["a-1"], (await spool.QueryAlertsAsync(new AlertQuery(Severity: "warning"), default)).Select(a => a.AlertId));
        Assert.Equal(["bad"], (await spool.QueryAlertsAsync(new AlertQuery(Status: "rejected"), default)).Select(a => a.AlertId));
        Assert.Equal(["a-3"], (await spool.QueryAlertsAsync(new AlertQuery(From: T0.AddHours(1), Status: "new"), default)).Select(a => a.AlertId));
        Assert.Equal(["a-2", "a-1"], (await spool.QueryAlertsAsync(new AlertQuery(To: T0.AddHours(1)), default)).Select(a => a.AlertId).Where(a => a != "bad"));
        var page1 = await spool.QueryAlertsAsync(new AlertQuery(Limit: 2), default);
        var page2 = await spool.QueryAlertsAsync(new AlertQuery(BeforeRowId: page1[^1].RowId, Limit: 2), default);
        Assert.Equal(["a-2", "a-1"], page2.Select(a => a.AlertId));

        var (row, _) = await RoutedAsync(spool, "dev-3", "j-1");
        var journey = (await spool.AlertJourneyAsync(row, default))!;
        Assert.Equal(("j-1", "route 1", "j-1@gw.test"), (journey.Alert.AlertId, journey.Route, Assert.Single(journey.Messages).Summary.MessageId));
        Assert.Contains("\"j-1\"", Encoding.UTF8.GetString(journey.Payload), StringComparison.Ordinal);
        Assert.Null(await spool.AlertJourneyAsync(row + 1000, default));
    }

    [ContractFact]
    public async Task Dashboard_CountsAlertsBySeverityAndMailByState_AndAlertsPerHourBucketsThem()
    {
        await using var spool = Open();
        await spool.AcceptAlertAsync(Alert("dev-1", "a-1"), default);
        await spool.AcceptAlertAsync(Alert("dev-1", "a-2", sev: "info") with { ReceivedAt = T0.AddMinutes(70) }, default);
        await spool.AcceptAlertAsync(Alert("dev-1", "bad") with { RejectReason = "x", Code = null, Severity = null }, default);
        await spool.QueueMailAsync(Mail("m-1@gw.test", "relay"), default);

        var counts = await spool.DashboardAsync(T0.AddDays(-1), default);
        Assert.Equal((1L, 1L, 1L), (counts.AlertsBySeverity["critical"], counts.AlertsBySeverity["info"], counts.AlertsBySeverity["rejected"]));
        Assert.Equal((1L, 0L), (counts.MessagesByState["queued"], counts.MessagesByState["deferred"]));
        Assert.True(counts.SpoolBytes > 0);
        var hours = await spool.AlertsPerHourAsync("dev-1", T0.AddDays(-1), default);
        Assert.Equal([2L, 1L], hours.Select(h => h.Count)); // T0 is 08:00 UTC: a-1 and bad in that hour, a-2 in the next
        Assert.Equal(new DateTimeOffset(2027, 1, 15, 8, 0, 0, TimeSpan.Zero), hours[0].Hour);
    }

    [ContractFact]
    public async Task ManagedDevices_AreSavedReplacedAndListedInIdOrder()
    {
        await using var spool = Open();
        var a = new ManagedDevice("dev-b", "hash-1", "B", "Hall 1", ["alice"], false, TimeSpan.FromMinutes(30), T0);
        await spool.SaveDeviceAsync(a, default);
        await spool.SaveDeviceAsync(new ManagedDevice("dev-a", null, null, null, null, true, null, T0), default);
        await spool.SaveDeviceAsync(a with { SecretHash = "hash-2", Disabled = true }, default);

        var devices = await spool.ManagedDevicesAsync(default);

        Assert.Equal(["dev-a", "dev-b"], devices.Select(d => d.Id));
        Assert.Equal(("hash-2", true, TimeSpan.FromMinutes(30), "alice"), (devices[1].SecretHash, devices[1].Disabled, devices[1].SilentAfter, devices[1].Owners!.Single()));
        Assert.Null(devices[0].Owners);
    }

    [ContractFact]
    public async Task ConsoleAdminPasswordAndApiKeys_AreStoredAndReplaced()
    {
        await using var spool = Open();
        Assert.Null(await spool.AdminPasswordHashAsync(default));
        await spool.SetAdminPasswordHashAsync("pbkdf2$1", default);
        await spool.SetAdminPasswordHashAsync("pbkdf2$2", default);
        Assert.Equal("pbkdf2$2", await spool.AdminPasswordHashAsync(default));

        await spool.SaveApiKeyAsync(new ApiKeyRecord("k1", "ci", "ab", T0, null, ApiKeyScope.Read), default);
        await spool.SaveApiKeyAsync(new ApiKeyRecord("k2", "cli", "cd", T0.AddMinutes(1), null, ApiKeyScope.Admin), default);
        await spool.SaveApiKeyAsync(new ApiKeyRecord("k1", "ci", "ab", T0, T0.AddHours(1), ApiKeyScope.Read), default);

        var keys = await spool.ApiKeysAsync(default);
        Assert.Equal(["k1", "k2"], keys.Select(k => k.Id));
        Assert.Equal(T0.AddHours(1), keys[0].RevokedAt);
        Assert.Equal([ApiKeyScope.Read, ApiKeyScope.Admin], keys.Select(k => k.Scope)); // a revocation keeps the scope
    }

    [ContractFact]
    public async Task Ping_RoundTripsThroughTheWriter()
    {
        await using var spool = Open();
        await spool.PingAsync(default);
        Assert.Empty((await spool.CountsAsync(default)).Alerts);
    }

    [ContractFact]
    public async Task Prune_RemovesOnlyWhatFinishedBeforeTheHorizon()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
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
        Assert.Equal(PruneFreesPages, pruned.FreedPages > 0);
        Assert.Equal("routed", (await spool.GetAlertAsync("dev-1", "pending", default))?.Status);
        Assert.Equal("queued", (await spool.GetMessageAsync("pending@gw.test", default))?.Status);
        Assert.Equal("new", (await spool.GetAlertAsync("dev-1", "recent", default))?.Status);
        Assert.Null(await spool.GetAlertAsync("dev-1", "old-7", default));
        Assert.Equal(0, (await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 10_000, default)).Messages);
    }

    [ContractFact]
    public async Task Prune_KeepsParkedAndHeldAlertsWhateverTheirAge_ForTheOperatorToRelease()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
        await spool.AcceptAlertAsync(Alert("dev-1", "parked") with { ReceivedAt = clock.GetUtcNow() }, default);
        await spool.AcceptAlertAsync(Alert("dev-1", "unrouted") with { ReceivedAt = clock.GetUtcNow() }, default);
        var alerts = await spool.NewAlertsAsync(10, default);
        await spool.CommitRoutingAsync([.. alerts.Select(a => a.AlertId == "parked"
            ? new RoutingCommit(a.RowId, AlertStatus.Parked, null, null, null, null, "template failed")
            : new RoutingCommit(a.RowId, AlertStatus.Unrouted, null, null, null, null))], default);
        clock.Advance(TimeSpan.FromDays(31));

        var pruned = await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 10_000, default);

        Assert.Equal(1, pruned.Alerts); // the unrouted one: finished
        var parked = Assert.Single(await spool.ParkedAsync(10, default));
        Assert.Equal("parked", parked.Reference);
        Assert.True(await spool.ReleaseAsync(ParkedKinds.Alert, parked.RowId, default));
        Assert.Equal("parked", Assert.Single(await spool.NewAlertsAsync(10, default)).AlertId);
    }

    [ContractFact]
    public async Task Prune_KeepsTheAlertsOfADigestStillOnItsWay_ForTheReceiptsItsResultOwesThem()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
        var due = await DigestTakenAsync(spool, "dev-1", 3); // received at T0, the digest retried for longer than retention
        clock.Advance(TimeSpan.FromDays(31));

        var early = await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 10_000, default);
        var committed = await spool.CommitDeliveryAsync(new DeliveryCommit(due.RowId, [new("alice@example.com", "failed", "554 5.7.1 refused")], null, null,
            DigestReceipt: new DigestReceipt("failed", clock.GetUtcNow(), "554 5.7.1 refused")), default);

        Assert.Equal((0, 0), (early.Messages, early.Alerts));
        Assert.Equal(["r-0", "r-1", "r-2"], committed.DigestReceipts.Select(r => r.AlertId));
        Assert.Equal(["r-0", "r-1", "r-2"], (await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Select(r => r.Receipt.AlertId));

        // Once the digest itself is past retention, its alerts go with it.
        clock.Advance(TimeSpan.FromDays(31));
        var late = await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 10_000, default);
        Assert.Equal((1, 3), (late.Messages, late.Alerts));
        Assert.Null(await spool.GetAlertAsync("dev-1", "r-0", default));
    }

    // The housekeeper calls again while a call says there is more: heartbeats counted for that too, or a fleet writing
    // more of them an hour than one call takes grew the table without end.
    [ContractFact]
    public async Task Prune_WithMoreExpiredHeartbeatsThanACallTakes_SaysThereIsMore_UntilNoneIsLeft()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
        for (int i = 0; i < 5; i++)
        {
            await spool.RecordStatusAsync($"dev-{i}", clock.GetUtcNow(), "{\"v\":1}"u8.ToArray(), default);
        }

        clock.Advance(TimeSpan.FromDays(8)); // past the 7 days heartbeats are kept

        var first = await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 3, default);
        var second = await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 3, default);

        Assert.True(first.More);
        Assert.False(second.More);
        for (int i = 0; i < 5; i++)
        {
            Assert.Empty(await spool.HeartbeatsAsync($"dev-{i}", T0 - TimeSpan.FromDays(1), default));
        }
    }

    // A restart asks the spool whether a silence was announced (SilenceHistoryAsync); the time the device was last heard
    // is never pruned, so with its DEVICE_SILENT pruned a restart mailed the same episode again.
    [ContractFact]
    public async Task Prune_KeepsADevicesOpenSilenceAlert_UntilItIsBack()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
        async Task FinishedAsync(string device, string id, string code)
        {
            await spool.AcceptAlertAsync(Alert(device, id, code: code, sev: "warning") with { ReceivedAt = clock.GetUtcNow(), Via = IngestProtocols.Local }, default);
            var stored = (await spool.NewAlertsAsync(10, default)).Single(a => a.AlertId == id);
            await spool.CommitRoutingAsync([new RoutingCommit(stored.RowId, AlertStatus.Unrouted, null, null, null, null)], default);
        }

        await FinishedAsync("dev-1", "gw-silent-1", SilenceWatch.SilentCode);
        await FinishedAsync("dev-2", "gw-silent-2", SilenceWatch.SilentCode);
        await FinishedAsync("dev-2", "gw-back-2", SilenceWatch.BackCode);
        clock.Advance(TimeSpan.FromDays(31));

        var pruned = await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 10_000, default);

        Assert.Equal(2, pruned.Alerts); // dev-2's silence and its return
        Assert.NotNull(await spool.GetAlertAsync("dev-1", "gw-silent-1", default));
        Assert.Equal("gw-silent-1", Assert.Single(await spool.SilenceHistoryAsync(T0, default)).OpenSilenceAlertId);

        await FinishedAsync("dev-1", "gw-back-1", SilenceWatch.BackCode);
        clock.Advance(TimeSpan.FromDays(31));
        Assert.Equal(2, (await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 10_000, default)).Alerts);
        Assert.Empty((await spool.CountsAsync(default)).Alerts);
    }

    // A silence that ended without the device being heard (disabled, or no longer configured) is recorded as its DEVICE_BACK
    // stored cancelled; a device added again measures its next silence from then, which names that silence's alerts. Pruned,
    // the next silence was measured from when the device was last heard again, and took the old incident's id.
    [ContractFact]
    public async Task Prune_KeepsTheRecordThatADevicesSilenceEndedUnheard_UntilItsNextSilence()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
        async Task SilenceAlertAsync(string id, string code, string? cancelled = null)
        {
            await spool.AcceptAlertAsync(Alert("dev-1", id, code: code, sev: "warning") with
            {
                ReceivedAt = clock.GetUtcNow(), Via = IngestProtocols.Local, CancelledReason = cancelled,
            }, default);
            if (cancelled is null)
            {
                var stored = (await spool.NewAlertsAsync(10, default)).Single(a => a.AlertId == id);
                await spool.CommitRoutingAsync([new RoutingCommit(stored.RowId, AlertStatus.Unrouted, null, null, null, null)], default);
            }
        }

        await SilenceAlertAsync("gw-silent-1", SilenceWatch.SilentCode);
        await SilenceAlertAsync("gw-back-1", SilenceWatch.BackCode, "not mailed: the silence ended because it is no longer configured");
        var ended = clock.GetUtcNow();
        clock.Advance(TimeSpan.FromDays(31));

        Assert.Equal(1, (await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 10_000, default)).Alerts); // the silence
        Assert.Equal(AlertStatus.Cancelled, (await spool.GetAlertAsync("dev-1", "gw-back-1", default))?.Status);
        Assert.Equal(new DeviceSilenceHistory("dev-1", null, null, ended), Assert.Single(await spool.SilenceHistoryAsync(T0, default)));

        await SilenceAlertAsync("gw-silent-2", SilenceWatch.SilentCode);
        clock.Advance(TimeSpan.FromDays(31));
        Assert.Equal(1, (await spool.PruneAsync(clock.GetUtcNow() - TimeSpan.FromDays(30), 10_000, default)).Alerts); // the record
        Assert.Equal("gw-silent-2", Assert.Single(await spool.SilenceHistoryAsync(T0, default)).OpenSilenceAlertId);
    }

    // The silence watch's record of which devices are configured: a device put back after a start without it is new then,
    // and its silence limit runs from then, not from when it was last heard before it was taken out.
    [ContractFact]
    public async Task WatchDevices_RecordsNewOnesFromNow_KeepsWhenTheOthersBegan_AndForgetsThoseNotGivenOnlyWhenAsked()
    {
        await using var spool = Open();
        var t1 = T0.AddDays(1);
        var t2 = T0.AddDays(2);

        var first = await spool.WatchDevicesAsync(["dev-1", "dev-2"], T0, forgetOthers: true, default);
        var added = await spool.WatchDevicesAsync(["dev-3"], t1, forgetOthers: false, default); // at run time: the others stay
        var restart = await spool.WatchDevicesAsync(["dev-1", "dev-3"], t2, forgetOthers: true, default); // dev-2 taken out
        var back = await spool.WatchDevicesAsync(["dev-1", "dev-2", "dev-3"], t2.AddHours(1), forgetOthers: true, default);

        Assert.Equal(new Dictionary<string, DateTimeOffset> { ["dev-1"] = T0, ["dev-2"] = T0 }, first);
        Assert.Equal(new Dictionary<string, DateTimeOffset> { ["dev-3"] = t1 }, added);
        Assert.Equal(new Dictionary<string, DateTimeOffset> { ["dev-1"] = T0, ["dev-3"] = t1 }, restart);
        Assert.Equal(new Dictionary<string, DateTimeOffset> { ["dev-1"] = T0, ["dev-2"] = t2.AddHours(1), ["dev-3"] = t1 }, back);
        Assert.Empty(await spool.WatchDevicesAsync([], t2, forgetOthers: false, default));
    }

    // Every instance on the spool has the devices added at run time: a start that does not give one read the spool's
    // devices before another instance added it, and must not forget it (PostgresSpoolTests has the two instances).
    [ContractFact]
    public async Task WatchDevices_ForgettingTheOthers_KeepsADeviceAddedAtRunTime()
    {
        await using var spool = Open();
        var added = T0.AddDays(1);
        await spool.SaveDeviceAsync(new ManagedDevice("dev-9", "hash", "Device 9", "Hall 3", ["alice"], false, null, added), default);
        await spool.WatchDevicesAsync(["dev-9"], added, forgetOthers: false, default);

        await spool.WatchDevicesAsync(["dev-1"], added.AddSeconds(1), forgetOthers: true, default);

        Assert.Equal(added, (await spool.WatchDevicesAsync(["dev-9"], added.AddSeconds(30), forgetOthers: false, default))["dev-9"]);
    }

    private static KeptReceipt Receipt(string device, string alertId, string state = "failed", string detail = "550 5.1.1 no such user") =>
        new(device, alertId, state, T0.AddSeconds(5), detail);

    [ContractFact]
    public async Task CommitDelivery_WithAFinalReceipt_KeepsItWithTheResult_AndAfterReopen()
    {
        await using (var spool = Open())
        {
            await RoutedAsync(spool, "dev-1", "a-1");
            var due = Assert.Single(await spool.DueMessagesAsync(Far, 10, new HashSet<long>(), default));

            await spool.CommitDeliveryAsync(new DeliveryCommit(due.RowId, [new("alice@example.com", "failed", "550 5.1.1 no such user")], null,
                Mail("a-1.n1.notice@gw.test", "notice", to: "ops@example.com"), Receipt("dev-1", "a-1")), default);
        }

        await using var reopened = Open();
        var kept = Assert.Single(await reopened.KeptReceiptsAsync("dev-1", 0, null, 10, default));
        Assert.Equal(Receipt("dev-1", "a-1"), kept.Receipt);
        Assert.Equal(MessageStatus.Failed, (await reopened.GetMessageAsync("a-1@gw.test", default))!.Status);
    }

    [ContractFact]
    public async Task RemoveReceipts_TakesAwayOnlyTheDeliveredOnes()
    {
        await using var spool = Open();
        await spool.KeepReceiptAsync(Receipt("dev-1", "a-1"), 100, default);
        await spool.KeepReceiptAsync(Receipt("dev-1", "a-1", "relayed", "250 ok"), 100, default);
        await spool.KeepReceiptAsync(Receipt("dev-2", "a-1"), 100, default);

        int removed = await spool.RemoveReceiptsAsync([Receipt("dev-1", "a-1").Copy, Receipt("dev-3", "nothing").Copy], default);

        Assert.Equal(1, removed);
        Assert.Equal([("dev-1", "a-1", "relayed"), ("dev-2", "a-1", "failed")], (await spool.KeptReceiptsAsync(null, 0, null, 10, default)).Select(r => r.Receipt.Key));
    }

    [ContractFact]
    public async Task RemoveReceipts_OfACopyALaterReceiptReplaced_LeavesTheLaterOne_UntilItsOwnCopyIsTaken()
    {
        // The device still had the parked item's 'failed' on its way when the operator's cancel replaced it.
        await using var spool = Open();
        var parked = Receipt("dev-1", "a-1", detail: "parked: template failed");
        var cancelled = Receipt("dev-1", "a-1", detail: "cancelled by the operator: template retired") with { At = T0.AddSeconds(9) };
        var sameInstant = cancelled with { Detail = "cancelled by the operator: something else" };
        await spool.KeepReceiptAsync(parked, 100, default);
        await spool.KeepReceiptAsync(cancelled, 100, default);

        int olderTaken = await spool.RemoveReceiptsAsync([parked.Copy, sameInstant.Copy], default);

        Assert.Equal(0, olderTaken);
        Assert.Equal(cancelled, Assert.Single(await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Receipt);
        Assert.Equal(1, await spool.RemoveReceiptsAsync([cancelled.Copy], default));
        Assert.Empty(await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default));
    }

    [ContractFact]
    public async Task RemoveReceipts_ACopyReadBackFromTheSpool_IsTheCopyThatWasKept_ALongDetailWithANulAndACutPairIncluded()
    {
        await using var spool = Open();
        // Past the wire's 512 characters, the cut falls inside a surrogate pair; the outcome's time is finer than the wire's.
        var kept = Receipt("dev-1", "a-1", detail: "550 \0 " + new string('x', 505) + "\U0001F600 and more") with { At = T0.AddTicks(12_345) };
        await spool.KeepReceiptAsync(kept, 100, default);

        var readBack = Assert.Single(await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Receipt;

        Assert.Equal(kept.Copy, readBack.Copy);
        Assert.Equal(1, await spool.RemoveReceiptsAsync([kept.Copy], default));
    }

    [ContractFact]
    public async Task KeepReceipt_SameAlertAndStateAgain_KeepsOneWithTheLatestDetail()
    {
        await using var spool = Open();

        Assert.True(await spool.KeepReceiptAsync(Receipt("dev-1", "a-1", detail: "550 first"), 100, default));
        Assert.True(await spool.KeepReceiptAsync(Receipt("dev-1", "a-1", detail: "550 second") with { At = T0.AddSeconds(9) }, 100, default));

        var kept = Assert.Single(await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default));
        Assert.Equal(("550 second", T0.AddSeconds(9)), (kept.Receipt.Detail, kept.Receipt.At));
    }

    [ContractFact]
    public async Task KeepReceipt_OverTheCap_DropsThatDevicesOldestOnly()
    {
        await using var spool = Open();
        await spool.KeepReceiptAsync(Receipt("dev-2", "other"), 3, default);
        for (int i = 1; i <= 5; i++)
        {
            await spool.KeepReceiptAsync(Receipt("dev-1", $"a-{i}"), 3, default);
        }

        Assert.Equal(["a-3", "a-4", "a-5"], (await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Select(r => r.Receipt.AlertId));
        Assert.Equal("other", Assert.Single(await spool.KeptReceiptsAsync("dev-2", 0, null, 10, default)).Receipt.AlertId);
    }

    [ContractFact]
    public async Task KeepReceipt_OverTheCap_DropsTheOldestRelayedBeforeAnyFailed()
    {
        // A device away while a storm digest is delivered: one relayed per alert it covers must not push out the failed
        // of an older alert, which the device has not learned yet.
        await using var spool = Open();
        await spool.KeepReceiptAsync(Receipt("dev-1", "x-1"), 8, default);
        for (int i = 1; i <= 20; i++)
        {
            await spool.KeepReceiptAsync(Receipt("dev-1", $"d-{i:D2}", "relayed", "250 ok"), 8, default);
        }

        var kept = (await spool.KeptReceiptsAsync("dev-1", 0, null, 100, default)).Select(r => (r.Receipt.AlertId, r.Receipt.State)).ToList();
        Assert.Contains(("x-1", "failed"), kept);
        Assert.InRange(kept.Count, 7, 8);
        Assert.Equal(Enumerable.Range(21 - (kept.Count - 1), kept.Count - 1).Select(n => ($"d-{n:D2}", "relayed")), kept.Where(k => k.State == "relayed"));
    }

    [ContractFact]
    public async Task KeepReceipt_ManyPastALargerCap_NeverMoreThanTheCapAndTheNewestKept()
    {
        // Trimming may go down to seven eighths of the cap at once (SQLite does, to trim once per eighth, not per keep).
        await using var spool = Open();
        for (int i = 1; i <= 100; i++)
        {
            await spool.KeepReceiptAsync(Receipt("dev-1", $"a-{i:D3}"), 16, default);
            var kept = (await spool.KeptReceiptsAsync("dev-1", 0, null, 100, default)).Select(r => r.Receipt.AlertId).ToList();
            Assert.InRange(kept.Count, Math.Min(i, 14), 16);
            Assert.Equal(Enumerable.Range(i - kept.Count + 1, kept.Count).Select(n => $"a-{n:D3}"), kept);
        }
    }

    [ContractFact]
    public async Task KeepReceipt_ForAnAlertThatCameOverSmtpOrFromTheGateway_IsNotKept()
    {
        await using var spool = Open();
        await spool.AcceptAlertAsync(Alert("ups-1", "s-1") with { Via = IngestProtocols.Smtp(secure: true, authenticated: true) }, default);
        await spool.AcceptAlertAsync(Alert("dev-1", "silent-1") with { Via = IngestProtocols.Local }, default);
        await spool.AcceptAlertAsync(Alert("dev-1", "m-1"), default);

        bool smtp = await spool.KeepReceiptAsync(Receipt("ups-1", "s-1"), 100, default);
        bool local = await spool.KeepReceiptAsync(Receipt("dev-1", "silent-1"), 100, default);
        bool mqtt = await spool.KeepReceiptAsync(Receipt("dev-1", "m-1"), 100, default);

        Assert.Equal((false, false, true), (smtp, local, mqtt));
        Assert.Equal("m-1", Assert.Single(await spool.KeptReceiptsAsync(null, 0, null, 10, default)).Receipt.AlertId);
    }

    [ContractFact]
    public async Task KeptReceipts_PageInRowOrder_ByDeviceAndByAge()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
        for (int i = 0; i < 5; i++)
        {
            await spool.KeepReceiptAsync(Receipt(i % 2 == 0 ? "dev-1" : "dev-2", $"a-{i}"), 100, default);
            clock.Advance(TimeSpan.FromMinutes(1));
        }

        var first = await spool.KeptReceiptsAsync(null, 0, null, 2, default);
        var rest = await spool.KeptReceiptsAsync(null, first[^1].RowId, null, 10, default);
        var old = await spool.KeptReceiptsAsync(null, 0, T0.AddMinutes(2), 10, default);

        Assert.Equal(["a-0", "a-1", "a-2", "a-3", "a-4"], first.Concat(rest).Select(r => r.Receipt.AlertId));
        Assert.Equal(["a-0", "a-2", "a-4"], (await spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Select(r => r.Receipt.AlertId));
        Assert.Equal(["a-0", "a-1"], old.Select(r => r.Receipt.AlertId));
        Assert.Equal(T0.AddMinutes(2), rest[0].CreatedAt); // a-2: the first after the page of two
    }

    [ContractFact]
    public async Task PruneReceipts_RemovesThoseStoredBeforeTheHorizon_InChunks()
    {
        var clock = new FakeTimeProvider(T0);
        await using var spool = Open(clock);
        for (int i = 0; i < 3; i++)
        {
            await spool.KeepReceiptAsync(Receipt("dev-1", $"old-{i}"), 100, default);
        }

        clock.Advance(TimeSpan.FromDays(8));
        await spool.KeepReceiptAsync(Receipt("dev-1", "recent"), 100, default);

        int first = await spool.PruneReceiptsAsync(clock.GetUtcNow() - TimeSpan.FromDays(7), 2, default);
        int second = await spool.PruneReceiptsAsync(clock.GetUtcNow() - TimeSpan.FromDays(7), 2, default);

        Assert.Equal((2, 1), (first, second));
        Assert.Equal("recent", Assert.Single(await spool.KeptReceiptsAsync(null, 0, null, 10, default)).Receipt.AlertId);
    }
}
