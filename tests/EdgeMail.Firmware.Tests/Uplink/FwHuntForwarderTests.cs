using System.Buffers;
using System.Text;
using System.Text.Json;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Tests.Uplink.Mqtt;
using EdgeMail.Firmware.Uplink;
using Xunit;

namespace EdgeMail.Firmware.Tests.Uplink;

/// <summary>Defects found by the firmware review (branch fwhunt): each test fails on main and names the defect.</summary>
public sealed class FwHuntForwarderTests : IAsyncLifetime
{
    private MqttTestBroker _broker = null!;

    public async Task InitializeAsync() => _broker = await MqttTestBroker.StartAsync();

    public async Task DisposeAsync() => await _broker.DisposeAsync();

    private ForwarderOptions Options() => new()
    {
        DeviceId = "dev-1",
        Secret = "s3cret",
        Host = "127.0.0.1",
        Port = _broker.Port,
        BackoffBaseMs = 10,
        BackoffMaxMs = 50,
        FirmwareVersion = "1.0.0-test",
    };

    /// <summary>
    /// A device without RTC loses power for 6 h right after an alert was PUBACKed; its "relayed" receipt is queued in
    /// the persistent session (the gateway keeps final receipts until the device has them). After the reboot the
    /// wall clock is unknown, so that stale receipt's "at" sets it: every alert raised afterwards is stamped 6 h in
    /// the past until a fresh receipt arrives (Forwarder.OnMessageReceived: `!_wall.IsKnown || at > current`).
    /// </summary>
    [Fact]
    public async Task StaleReceiptQueuedDuringAPowerCut_MustNotSetTheClockOfADeviceWithoutRtc()
    {
        using var rig = new ForwarderRig(() => Options());
        rig.StepUntil(() => rig.Forwarder.State == ForwarderState.Idle, "the first connection (persistent session, receipt subscription)");
        rig.PowerOff();
        await Task.Delay(500);

        DateTimeOffset relayedAt = DateTimeOffset.UtcNow.AddHours(-6);
        await _broker.InjectAsync("edgemail/v1/dev-1/receipt",
            "{\"id\":\"7f3a9c21-1\",\"state\":\"relayed\",\"at\":\"" + relayedAt.ToString("yyyy-MM-ddTHH:mm:ss.fff'Z'") + "\",\"detail\":\"250 queued\"}");

        rig.Boot();
        rig.StepUntil(() => rig.Forwarder.Receipts == 1, "the receipt queued while the device was off");
        uint seq = rig.Raise("FREEZER_TEMP_HIGH", Severity.Critical, "Freezer 2 above -15 C");
        rig.StepUntil(() => rig.Forwarder.AcknowledgedThrough >= seq, "the alert's PUBACK");

        JsonElement alert = _broker.PublishesFrom("dev-1").Where(p => p.Topic == "edgemail/v1/dev-1/alert")
            .Select(p => JsonDocument.Parse(Encoding.UTF8.GetString(p.Payload.ToArray())).RootElement.Clone())
            .First(j => j.GetProperty("id").GetString() == $"7f3a9c21-{seq}");
        if (alert.TryGetProperty("raised", out JsonElement raised))
        {
            DateTimeOffset stamped = DateTimeOffset.Parse(raised.GetString()!);
            DateTimeOffset now = DateTimeOffset.UtcNow;
            Assert.True((now - stamped).Duration() < TimeSpan.FromMinutes(2),
                $"alert raised just now was stamped {stamped:u} (now {now:u}): the clock came from a receipt queued 6 h earlier");
        }
    }
}
