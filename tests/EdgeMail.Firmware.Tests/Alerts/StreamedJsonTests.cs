using EdgeMail.Firmware.Alerts;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Firmware.Tests.Alerts;

/// <summary>Measured and streamed JSON is byte for byte the JSON written into one buffer, whatever the sink's pieces.</summary>
public class StreamedJsonTests(ITestOutputHelper output)
{
    /// <summary>The largest alert Contract 1 allows, with a text that escapes to six bytes per character.</summary>
    internal static Alert MaxAlert()
    {
        var alert = new Alert(new string('X', Alert.MaxCodeLength), Severity.Critical, new string('\u0001', 546));
        for (int i = 0; i < Alert.MaxValues; i++)
        {
            alert.AddValue(("value_" + i).PadRight(Alert.MaxValueNameLength, 'x'), long.MinValue + i, 9);
        }

        Assert.Equal(AlertError.None, AlertRecord.Check(alert));
        return alert;
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void AlertJson_MeasuredAndStreamed_EqualsTheBufferedJson(int which)
    {
        Alert alert = which switch
        {
            0 => new Alert("FREEZER_TEMP_HIGH", Severity.Warning, "Freezer 2 above -15 °C \"quoted\"\n 🔥"),
            1 => new Alert("X", Severity.Info, string.Empty),
            _ => MaxAlert(),
        };
        byte[] record = AlertTestKit.Encode(alert, raisedUnixMs: AlertRecord.UnknownTime, raisedUptimeMs: 1_000);
        var writer = new AlertJsonWriter();
        var buffer = new byte[AlertJsonWriter.MaxLength];
        int length = writer.Write(record, 0, record.Length, AlertTestKit.Epoch, 42, 17, 5_000, 1_795_859_892_000, buffer, 0);

        Assert.Equal(length, writer.Measure(record, 0, record.Length, AlertTestKit.Epoch, 42, 17, 5_000, 1_795_859_892_000));
        var sink = new CollectingSink();
        Assert.Equal(length, writer.Write(record, 0, record.Length, AlertTestKit.Epoch, 42, 17, 5_000, 1_795_859_892_000, sink));
        Assert.Equal(buffer.AsSpan(0, length).ToArray(), sink.Bytes.ToArray());
        Assert.All(sink.Pieces, n => Assert.InRange(n, 1, 32));
        output.WriteLine($"alert {which}: {length} bytes of JSON in {sink.Pieces.Count} pieces");
    }

    [Fact]
    public void MaxAlert_JsonIsNearTheContractLimit()
    {
        byte[] record = AlertTestKit.Encode(MaxAlert());
        int length = new AlertJsonWriter().Measure(record, 0, record.Length, AlertTestKit.Epoch, uint.MaxValue, 17, long.MaxValue / 2, AlertRecord.UnknownTime);
        output.WriteLine($"maximum alert: record {record.Length} bytes, JSON {length} bytes");
        Assert.InRange(length, 3_800, AlertJsonWriter.MaxLength);
    }

    [Fact]
    public void StatusJson_MeasuredAndStreamed_EqualsTheBufferedJson()
    {
        var status = new DeviceStatus
        {
            FirmwareVersion = new string('β', 64),
            Boot = uint.MaxValue,
            UptimeMs = long.MaxValue,
            QueueDepth = 12,
            FlashWearHundredthsPercent = 123,
            RssiDbm = -71,
        };
        var writer = new StatusJsonWriter();
        var buffer = new byte[512];
        int length = writer.Write(status, buffer, 0);
        Assert.Equal(length, writer.Measure(status));
        var sink = new CollectingSink();
        Assert.Equal(length, writer.Write(status, sink));
        Assert.Equal(buffer.AsSpan(0, length).ToArray(), sink.Bytes.ToArray());

        var copy = new DeviceStatus();
        copy.CopyFrom(status);
        Assert.Equal(length, writer.Measure(copy));
    }

    [Fact]
    public void MeasureAndStream_AfterWarmUp_AllocateZeroBytes()
    {
        byte[] record = AlertTestKit.Encode(MaxAlert());
        var writer = new AlertJsonWriter();
        var statusWriter = new StatusJsonWriter();
        var status = new DeviceStatus { FirmwareVersion = "1.4.2", Boot = 3 };
        var sink = new CountingSink();
        void Run()
        {
            writer.Measure(record, 0, record.Length, AlertTestKit.Epoch, 42, 17, 5_000, AlertRecord.UnknownTime);
            writer.Write(record, 0, record.Length, AlertTestKit.Epoch, 42, 17, 5_000, AlertRecord.UnknownTime, sink);
            statusWriter.Measure(status);
            statusWriter.Write(status, sink);
        }

        Run();
        ZeroAllocation.AssertNone(ZeroAllocation.Measure(5, 100, _ => Run()));
        Assert.True(sink.Count > 0);
    }

    internal sealed class CollectingSink : IByteSink
    {
        public List<byte> Bytes { get; } = [];

        public List<int> Pieces { get; } = [];

        public void Write(byte[] buffer, int offset, int count)
        {
            Pieces.Add(count);
            Bytes.AddRange(buffer.AsSpan(offset, count).ToArray());
        }
    }

    private sealed class CountingSink : IByteSink
    {
        public long Count { get; private set; }

        public void Write(byte[] buffer, int offset, int count) => Count += count;
    }
}
