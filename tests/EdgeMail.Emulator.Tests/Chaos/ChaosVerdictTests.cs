using EdgeMail.Emulator.Chaos;
using EdgeMail.Firmware.Alerts;
using Xunit;

namespace EdgeMail.Emulator.Tests.Chaos;

/// <summary>
/// The chaos verdict on hand-built ground truth: what the devices raised and saw (the ledger), what the sink stored, the
/// faults — one case per outcome the verdict must tell apart.
/// </summary>
public sealed class ChaosVerdictTests : IDisposable
{
    private const string Operator = "ops@example.com";
    private const string Alice = "alice@example.com";
    private const string Refused = "bob@refused.example";
    private static readonly DateTimeOffset T0 = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000);

    private readonly Timeline _timeline = new(null, () => 0, TimeProvider.System);
    private readonly ChaosLedger _ledger;
    private readonly List<SinkMessage> _sink = [];
    private readonly List<FaultEvent> _faults = [];

    public ChaosVerdictTests() => _ledger = new ChaosLedger(_timeline);

    public void Dispose() => _timeline.Dispose();

    private DeviceTruth Device(string id, string protocol = "mqtt", bool refusedToo = false)
    {
        var d = new DeviceTruth(id, protocol, refusedToo ? [Alice, Refused] : [Alice]) { Drained = true };
        _ledger.Add(d);
        return d;
    }

    private static AlertTruth Raise(DeviceTruth d, string alertId, uint seq, long raisedMs, long? ackedMs)
    {
        var a = new AlertTruth(d.Id, alertId, seq, raisedMs, "TEMP_HIGH", Severity.Critical) { LastSeq = seq, AckedMs = ackedMs };
        d.Alerts[alertId] = a;
        return a;
    }

    private void Mail(string device, string alertId, long atMs, params string[] to) =>
        _sink.Add(new SinkMessage(T0.AddMilliseconds(atMs), $"{device}.{alertId}.alert@gw.chaos", device, alertId, to, "TEMP_HIGH", "TEMP_HIGH"));

    private void Notice(string device, string alertId, long atMs) =>
        _sink.Add(new SinkMessage(T0.AddMilliseconds(atMs), $"{device}.{alertId}.alert.n1.notice@gw.chaos", null, null, [Operator], "Undeliverable", null));

    private void Fault(string kind, long atMs, string target, long durationMs = 0) => _faults.Add(new FaultEvent(kind, atMs, T0.AddMilliseconds(atMs), durationMs, target, string.Empty));

    private ChaosVerdict Judge() => ChaosVerdict.Judge(_ledger, _sink, Operator, Refused, _faults, T0, [], []);

    [Fact]
    public void OneMessageIdPerRoutedRecipient_IsDelivered_WithItsLatency()
    {
        var d = Device("dev-1");
        Raise(d, "a-1", 1, raisedMs: 1_000, ackedMs: 1_200);
        Mail("dev-1", "a-1", 3_500, Alice);

        var v = Judge();

        Assert.Empty(v.Violations);
        Assert.Equal((1, 1, 0), (v.Alerts, v.Delivered, v.ResentSameMessageId));
        Assert.Equal([2_500L], v.Latencies);
    }

    [Fact]
    public void SameMessageIdTakenTwice_IsCountedAsAResend_NotAViolation()
    {
        var d = Device("dev-1");
        Raise(d, "a-1", 1, 1_000, 1_200);
        Mail("dev-1", "a-1", 3_000, Alice);
        Mail("dev-1", "a-1", 9_000, Alice); // the gateway was killed between the sink's 250 and its commit: sent again

        var v = Judge();

        Assert.Empty(v.Violations);
        Assert.Equal((1, 1), (v.Delivered, v.ResentSameMessageId));
        Assert.Equal([2_000L], v.Latencies); // from the first arrival
    }

    [Fact]
    public void TwoDifferentMessageIdsForOneAlertAndRecipient_IsADuplicateMailViolation()
    {
        var d = Device("dev-1");
        Raise(d, "a-1", 1, 1_000, 1_200);
        Mail("dev-1", "a-1", 3_000, Alice);
        _sink.Add(new SinkMessage(T0.AddMilliseconds(4_000), "dev-1.a-1.again@gw.chaos", "dev-1", "a-1", [Alice], "TEMP_HIGH", "TEMP_HIGH"));

        var violation = Assert.Single(Judge().Violations);

        Assert.Equal(("dev-1", "a-1"), (violation.Device, violation.AlertId));
        Assert.Contains("2 different Message-IDs", violation.What, StringComparison.Ordinal);
    }

    [Fact]
    public void AcknowledgedAlertThatNeverReachedTheSink_IsAViolationNamingItsDeviceAndTheFaultsAroundIt()
    {
        var d = Device("dev-1");
        Device("dev-2");
        Raise(d, "a-7", 7, raisedMs: 10_000, ackedMs: 12_000);
        Fault(FaultKind.PowerCut, 9_000, "dev-1", 2_000);        // its own device, 1 s before the raise
        Fault(FaultKind.GatewayKill, 20_000, "gateway", 3_000);  // after the acknowledgement, inside 30 s
        Fault(FaultKind.PowerCut, 11_000, "dev-2", 2_000);       // another device's: not around this alert
        Fault(FaultKind.SinkDown, 60_000, "sink", 8_000);         // long after: not around it

        var v = Judge();

        var violation = Assert.Single(v.Violations);
        Assert.Equal(("dev-1", "a-7", 10_000L), (violation.Device, violation.AlertId, violation.RaisedMs));
        Assert.Contains("never reached alice@example.com, though the gateway acknowledged it at 12.0 s", violation.What, StringComparison.Ordinal);
        Assert.Equal([$"{FaultKind.PowerCut} @9.0s", $"{FaultKind.GatewayKill} @20.0s"], violation.NearbyFaults);
        Assert.Equal(0, v.Delivered);
    }

    [Fact]
    public void TheGatewaysOwnSilenceNotices_AreCounted_ForADeviceThatWasOff_AndAViolationForOneThatNeverWas()
    {
        var off = Device("dev-1");
        off.Down.Add((5_000, 400_000)); // powered off longer than SilentAfter
        Device("dev-2");
        Mail("dev-1", "gw-silent-1796437088674", 320_000, Alice);
        Mail("dev-1", "gw-back-1796437088674", 401_000, Alice);
        Mail("dev-2", "gw-silent-1796437095990", 320_000, Alice);

        var v = Judge();

        Assert.Equal(2, v.SilenceNotices);
        var violation = Assert.Single(v.Violations);
        Assert.Equal(("dev-2", "gw-silent-1796437095990"), (violation.Device, violation.AlertId));
        Assert.Contains("never off nor unlinked", violation.What, StringComparison.Ordinal);
    }

    [Fact]
    public void RefusedRecipientWithANoticeAndAFailedReceipt_IsFailedAsPromised()
    {
        var d = Device("dev-5", refusedToo: true);
        Raise(d, "a-1", 1, 1_000, 1_100);
        Mail("dev-5", "a-1", 2_000, Alice);
        Notice("dev-5", "a-1", 2_500);
        d.Receipts["a-1"] = ["accepted", "failed"];

        var v = Judge();

        Assert.Empty(v.Violations);
        Assert.Equal((1, 1), (v.FailedNoticed, v.FailedReceipts));
    }

    [Fact]
    public void RefusedRecipientWithANoticeButNoFailedReceiptOnAnMqttDevice_IsAViolation()
    {
        var d = Device("dev-5", refusedToo: true);
        Raise(d, "a-1", 1, 1_000, 1_100);
        Mail("dev-5", "a-1", 2_000, Alice);
        Notice("dev-5", "a-1", 2_500);
        d.Receipts["a-1"] = ["accepted", "deferred"];

        var v = Judge();

        var violation = Assert.Single(v.Violations);
        Assert.Equal(("dev-5", "a-1"), (violation.Device, violation.AlertId));
        Assert.Contains("no 'failed' receipt (receipts: accepted,deferred)", violation.What, StringComparison.Ordinal);
        Assert.Equal((0, 0), (v.FailedNoticed, v.FailedReceipts));
    }

    [Fact]
    public void RefusedRecipientWithANoticeOnAnSmtpDevice_NeedsNoReceipt()
    {
        var d = Device("ups-5", protocol: "smtp", refusedToo: true);
        Raise(d, "a-1", 1, 1_000, 1_100);
        Mail("ups-5", "a-1", 2_000, Alice);
        Notice("ups-5", "a-1", 2_500);

        var v = Judge();

        Assert.Empty(v.Violations);
        Assert.Equal((1, 0), (v.FailedNoticed, v.FailedReceipts));
    }

    [Fact]
    public void RefusedRecipientWithoutANotice_IsAViolation()
    {
        var d = Device("dev-5", refusedToo: true);
        Raise(d, "a-1", 1, 1_000, 1_100);
        Mail("dev-5", "a-1", 2_000, Alice);
        d.Receipts["a-1"] = ["failed"];

        Assert.Contains("no failure notice reached the operator", Assert.Single(Judge().Violations).What, StringComparison.Ordinal);
    }

    [Fact]
    public void EvictedAlertCoveredByAQueueFullReport_IsEvictedWithTheLossReported()
    {
        var d = Device("dev-1");
        Raise(d, "a-12", 12, 5_000, ackedMs: null);
        _sink.Add(new SinkMessage(T0.AddSeconds(40), "dev-1.q-1.alert@gw.chaos", "dev-1", "q-1", [Alice],
            "[EDGEMAIL.QUEUE_FULL] 6 alerts dropped while the device queue was full (sequence numbers 10 to 15).", "EDGEMAIL.QUEUE_FULL"));

        var v = Judge();

        Assert.Empty(v.Violations);
        Assert.Equal((1, 1, 0), (v.Evicted, v.LossReports, v.Delivered));
    }

    [Fact]
    public void EvictedAlertThatNoQueueFullReportCovers_IsAViolation()
    {
        var d = Device("dev-1");
        Raise(d, "a-12", 12, 5_000, ackedMs: null);
        _sink.Add(new SinkMessage(T0.AddSeconds(40), "dev-1.q-1.alert@gw.chaos", "dev-1", "q-1", [Alice],
            "[EDGEMAIL.QUEUE_FULL] 6 alerts dropped while the device queue was full (sequence numbers 20 to 25).", "EDGEMAIL.QUEUE_FULL"));

        var v = Judge();

        var violation = Assert.Single(v.Violations);
        Assert.Equal(("dev-1", "a-12"), (violation.Device, violation.AlertId));
        Assert.Contains("never reached alice@example.com", violation.What, StringComparison.Ordinal);
        Assert.Equal(0, v.Evicted);
    }
}
