using System.Text;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Uplink;
using Xunit;

namespace EdgeMail.Firmware.Tests.Uplink;

public class ForwarderReceiptTests
{
    [Theory]
    [InlineData("{\"id\":\"a-1\",\"state\":\"accepted\",\"at\":\"2026-11-28T09:58:12.250Z\",\"detail\":null}", "2026-11-28T09:58:12.250Z")]
    [InlineData("{ \"at\" : \"1970-01-01T00:00:00Z\" }", "1970-01-01T00:00:00Z")]
    [InlineData("{\"detail\":\"\\\"at\\\"\",\"at\":\"2000-02-29T23:59:59.9Z\"}", "2000-02-29T23:59:59.900Z")]
    [InlineData("{\"at\":\"2026-11-28T11:58:12+02:00\"}", "2026-11-28T09:58:12Z")]
    public void ReadAt_ValidReceipts_AgreesWithDateTimeOffset(string json, string expected)
    {
        byte[] b = Encoding.UTF8.GetBytes(json);
        long want = DateTimeOffset.Parse(expected, System.Globalization.CultureInfo.InvariantCulture).ToUnixTimeMilliseconds();
        Assert.Equal(want, ForwarderReceipt.ReadAt(b, 0, b.Length));
    }

    [Theory]
    [InlineData("{\"id\":\"a-1\"}")]
    [InlineData("{\"at\":null}")]
    [InlineData("{\"at\":\"yesterday\"}")]
    [InlineData("{\"at\":\"2026-13-28T09:58:12Z\"}")]
    [InlineData("{\"at\":\"2026-11-28T09:58:12\"}")]
    [InlineData("{\"at\":\"2026-11-28T09:58:12.Z\"}")]
    [InlineData("{\"at\":\"2026-11-28T09:58")]
    public void ReadAt_MissingOrMalformed_IsUnknown(string json)
    {
        byte[] b = Encoding.UTF8.GetBytes(json);
        Assert.Equal(AlertRecord.UnknownTime, ForwarderReceipt.ReadAt(b, 0, b.Length));
    }

    [Fact]
    public void ReadAt_EveryDayOf400Years_MatchesTheRuntime()
    {
        var day = new DateTimeOffset(1970, 1, 1, 0, 0, 0, TimeSpan.Zero);
        for (int i = 0; i < 146_097; i += 7)
        {
            DateTimeOffset t = day.AddDays(i).AddMilliseconds(i % 1000);
            byte[] b = Encoding.ASCII.GetBytes($"{{\"at\":\"{t:yyyy-MM-dd'T'HH:mm:ss.fff'Z'}\"}}");
            Assert.Equal(t.ToUnixTimeMilliseconds(), ForwarderReceipt.ReadAt(b, 0, b.Length));
        }
    }

    [Theory]
    [InlineData("{\"id\":\"7f3a9c21-42\",\"state\":\"accepted\"}", 0x7F3A9C21u, 42u)]
    [InlineData("{\"state\":\"relayed\", \"id\" : \"0000000A-4294967295\"}", 10u, 4294967295u)]
    public void TryReadId_TheIdsTheDeviceWrites_GivesEpochAndSequenceNumber(string json, uint epoch, uint seq)
    {
        byte[] b = Encoding.UTF8.GetBytes(json);
        Assert.True(ForwarderReceipt.TryReadId(b, 0, b.Length, out uint e, out uint s));
        Assert.Equal((epoch, seq), (e, s));
    }

    [Theory]
    [InlineData("{\"id\":\"a-1\"}")]
    [InlineData("{\"id\":\"7f3a9c21-\"}")]
    [InlineData("{\"id\":\"7f3a9c2x-1\"}")]
    [InlineData("{\"id\":\"7f3a9c21-1x\"}")]
    [InlineData("{\"id\":\"7f3a9c21-4294967296\"}")]
    [InlineData("{\"id\":7}")]
    [InlineData("{\"at\":\"2026-11-28T09:58:12Z\"}")]
    public void TryReadId_MissingOrNotADeviceId_IsFalse(string json)
    {
        byte[] b = Encoding.UTF8.GetBytes(json);
        Assert.False(ForwarderReceipt.TryReadId(b, 0, b.Length, out _, out _));
    }

    [Fact]
    public void StringEquals_ComparesTheValueOfTheKey()
    {
        byte[] b = "{\"id\":\"x\",\"state\":\"accepted\"}"u8.ToArray();
        Assert.True(ForwarderReceipt.StringEquals(b, 0, b.Length, "state", "accepted"));
        Assert.False(ForwarderReceipt.StringEquals(b, 0, b.Length, "state", "accept"));
        Assert.False(ForwarderReceipt.StringEquals(b, 0, b.Length, "detail", "accepted"));
    }
}
