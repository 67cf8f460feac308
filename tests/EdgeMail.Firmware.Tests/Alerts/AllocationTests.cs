using EdgeMail.Firmware.Alerts;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Firmware.Tests.Alerts;

/// <summary>The hot path — fill an alert, encode its record, coalesce a repeat, write alert and status JSON — allocates nothing.</summary>
public class AllocationTests(ITestOutputHelper output)
{
    [Fact]
    public void EncodeAndWriteJson_AfterWarmUp_AllocateZeroBytes()
    {
        var alert = new Alert();
        var record = new byte[AlertRecord.MaxSize];
        var json = new byte[AlertJsonWriter.MaxLength];
        var writer = new AlertJsonWriter();
        var view = new AlertRecordView();
        var statusWriter = new StatusJsonWriter();
        var status = new DeviceStatus { FirmwareVersion = "1.4.2-β", Boot = 17, UptimeMs = 123456, QueueDepth = 3, OldestQueuedAgeMs = 999 };
        const string Code = "FREEZER_TEMP_HIGH";
        const string Text = "Freezer 2 above -15 °C \"quoted\"\n 🔥 \u0001";
        int total = 0;

        void HotPath(int i)
        {
            alert.Reset();
            alert.Code = Code;
            alert.Text = Text;
            alert.Severity = Severity.Critical;
            alert.AddValue("temp_c", -9.5 + i, 1);
            alert.AddValue("limit_c", -15L, 0);
            int length = AlertRecord.Encode(alert, i % 2 == 0 ? AlertRecord.UnknownTime : 1795859892000 + i, 1000 + i, 17, record, 0);
            if (AlertRecord.IsRepeatOf(record, 0, alert))
            {
                AlertRecord.AddRepeat(record, 0, AlertRecord.UnknownTime, 2000 + i, 17);
            }

            if (view.Attach(record, 0, length) == AlertError.None)
            {
                total += view.TextLength;
            }

            total += writer.Write(record, 0, length, 0x7f3a9c21, (ulong)i, 17, 5000 + i, i % 3 == 0 ? AlertRecord.UnknownTime : 1795859999000, json, 0);
            total += statusWriter.Write(status, json, 0);
        }

        for (int i = 0; i < 100; i++)
        {
            HotPath(i); // warm-up: JIT, static tables
        }

        var windows = ZeroAllocation.Measure(5, 1000, HotPath);
        output.WriteLine($"5 windows of 1000 × (encode + coalesce + attach + alert JSON + status JSON): {string.Join(", ", windows)} bytes allocated, {total} bytes written");
        ZeroAllocation.AssertNone(windows);
    }
}
