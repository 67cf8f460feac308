using System.Text;
using System.Text.Json;
using EdgeMail.Firmware.Alerts;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Xunit;

namespace EdgeMail.Firmware.Tests.Alerts;

// FsCheck prints the seed ("Replay: ...") of any falsified property; pass it to [Property(Replay = "...")] to rerun.
public class StatusJsonWriterTests
{
    [Fact]
    public void Write_FullStatus_WritesEveryField()
    {
        var status = new DeviceStatus
        {
            FirmwareVersion = "1.4.2",
            Boot = 17,
            UptimeMs = 3_600_000,
            QueueDepth = 3,
            OldestQueuedAgeMs = 120_000,
            Dropped = 2,
            FlashWearHundredthsPercent = 123,
            BatteryPercent = 87,
            BatteryMillivolts = 3_912,
            RssiDbm = -67,
        };

        string json = Write(status);

        Assert.Equal(
            "{\"v\":1,\"fw\":\"1.4.2\",\"boot\":17,\"uptime_ms\":3600000,\"queue_depth\":3,\"oldest_age_ms\":120000,\"dropped\":2,"
            + "\"flash_wear_pct\":1.23,\"battery_pct\":87,\"battery_mv\":3912,\"rssi_dbm\":-67}",
            json);
    }

    [Fact]
    public void Write_UnknownValues_AreNull()
    {
        JsonElement json = AlertTestKit.Parse(Write(new DeviceStatus { FirmwareVersion = "x", Boot = 1 }));
        foreach (string key in new[] { "oldest_age_ms", "flash_wear_pct", "battery_pct", "battery_mv", "rssi_dbm" })
        {
            Assert.Equal(JsonValueKind.Null, json.GetProperty(key).ValueKind);
        }

        Assert.Equal(0, json.GetProperty("queue_depth").GetInt64());
    }

    [Property(MaxTest = 1000)]
    public Property Write_RandomFirmwareVersion_IsEscapedCorrectly() =>
        Prop.ForAll(AlertTestKit.NastyText().ToArbitrary(), version =>
        {
            string json = Write(new DeviceStatus { FirmwareVersion = version });
            return AlertTestKit.Parse(json).GetProperty("fw").GetString() == Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(version));
        });

    [Fact]
    public void Write_DestinationTooSmall_Throws()
    {
        var ex = Assert.Throws<ArgumentException>(() => new StatusJsonWriter().Write(new DeviceStatus { FirmwareVersion = "1.0" }, new byte[20], 0));
        Assert.Contains("too small", ex.Message, StringComparison.Ordinal);
    }

    private static string Write(DeviceStatus status)
    {
        var buffer = new byte[8192];
        int length = new StatusJsonWriter().Write(status, buffer, 0);
        return Encoding.UTF8.GetString(buffer, 0, length);
    }
}
