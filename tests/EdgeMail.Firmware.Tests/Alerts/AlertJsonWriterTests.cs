using System.Globalization;
using System.Text;
using System.Text.Json;
using EdgeMail.Firmware.Alerts;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Xunit;

namespace EdgeMail.Firmware.Tests.Alerts;

// FsCheck prints the seed ("Replay: ...") of any falsified property; pass it to [Property(Replay = "...")] to rerun.
public class AlertJsonWriterTests
{
    private const long Raised = 1795859892000; // 2026-11-28T09:58:12Z

    [Property(MaxTest = 3000)]
    public Property Write_RandomText_ParsesBackToTheSameStringWithSystemTextJson() =>
        Prop.ForAll(AlertTestKit.NastyText().Where(t => Encoding.UTF8.GetByteCount(t) <= Alert.MaxTextBytes).ToArbitrary(), text =>
        {
            var alert = new Alert("ESC.TEST", Severity.Info, text);
            if (AlertRecord.Check(alert) == AlertError.JsonTooLarge)
            {
                return true; // hundreds of control characters: refused by design, covered elsewhere
            }

            string json = AlertTestKit.WriteJson(AlertTestKit.Encode(alert));
            string expected = Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(text)); // lone surrogates → U+FFFD
            return AlertTestKit.Parse(json).GetProperty("text").GetString() == expected;
        });

    [Fact]
    public void Write_ControlCharacters_UsesShortEscapesOrLowerCaseUnicodeEscapes()
    {
        string json = AlertTestKit.WriteJson(AlertTestKit.Encode(new Alert("X", Severity.Info, "\"\\\n\r\t\b\f\u0000\u001f\u007f/é")));
        Assert.Contains("\"text\":\"\\\"\\\\\\n\\r\\t\\b\\f\\u0000\\u001f\u007f/é\"", json, StringComparison.Ordinal);
    }

    [Property(MaxTest = 2000)]
    public bool Write_AnyFixedPointValue_IsTheExactDecimal(long mantissa, byte scaleSeed)
    {
        int scale = scaleSeed % 10;
        var alert = new Alert("V", Severity.Info, string.Empty);
        alert.AddValue("x", mantissa, scale);
        JsonElement value = AlertTestKit.Parse(AlertTestKit.WriteJson(AlertTestKit.Encode(alert))).GetProperty("values").GetProperty("x");
        decimal expected = mantissa / (decimal)Math.Pow(10, scale);
        return value.GetDecimal() == expected;
    }

    [Theory]
    [InlineData(5, 3, "0.005")]
    [InlineData(-95, 1, "-9.5")]
    [InlineData(-180, 1, "-18.0")]
    [InlineData(0, 0, "0")]
    [InlineData(0, 2, "0.00")]
    [InlineData(long.MinValue, 0, "-9223372036854775808")]
    [InlineData(long.MaxValue, 9, "9223372036.854775807")]
    public void Write_FixedPoint_WritesDigitsExactly(long mantissa, int scale, string text)
    {
        var alert = new Alert("V", Severity.Info, string.Empty);
        alert.AddValue("x", mantissa, scale);
        Assert.Contains("\"values\":{\"x\":" + text + "}", AlertTestKit.WriteJson(AlertTestKit.Encode(alert)), StringComparison.Ordinal);
    }

    [Property(MaxTest = 3000)]
    public Property Write_AnyRaiseTime_IsFormattedLikeDateTimeOffset() =>
        Prop.ForAll(Gen.Choose(0, int.MaxValue).Select(r => (long)(r / (double)int.MaxValue * AlertRecord.MaxUnixMs)).ToArbitrary(), unixMs =>
        {
            string json = AlertTestKit.WriteJson(AlertTestKit.Encode(new Alert("T", Severity.Info, string.Empty), unixMs));
            string expected = DateTimeOffset.FromUnixTimeMilliseconds(unixMs).ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture);
            return AlertTestKit.Parse(json).GetProperty("raised").GetString() == expected;
        });

    [Theory]
    [InlineData(0L, "1970-01-01T00:00:00Z")]
    [InlineData(951782400000L, "2000-02-29T00:00:00Z")]
    [InlineData(1795859892999L, "2026-11-28T09:58:12Z")]
    [InlineData(253402300799999L, "9999-12-31T23:59:59Z")]
    public void Write_KnownRaiseTimes_AreIso8601Utc(long unixMs, string iso)
    {
        string json = AlertTestKit.WriteJson(AlertTestKit.Encode(new Alert("T", Severity.Info, string.Empty), unixMs));
        Assert.Contains("\"raised\":\"" + iso + "\"", json, StringComparison.Ordinal);
        Assert.DoesNotContain("age_ms", json, StringComparison.Ordinal);
    }

    [Fact]
    public void Write_UnknownClockSameBoot_WritesAgeFromUptime()
    {
        byte[] record = AlertTestKit.Encode(new Alert("T", Severity.Info, string.Empty), AlertRecord.UnknownTime, raisedUptimeMs: 1_000, boot: 5);
        JsonElement json = AlertTestKit.Parse(AlertTestKit.WriteJson(record, currentBoot: 5, currentUptimeMs: 124_456));
        Assert.Equal(123_456, json.GetProperty("age_ms").GetInt64());
        Assert.False(json.TryGetProperty("raised", out _));
    }

    [Fact]
    public void Write_UnknownClockAtRaiseButClockNowSameBoot_DerivesRaised()
    {
        byte[] record = AlertTestKit.Encode(new Alert("T", Severity.Info, string.Empty), AlertRecord.UnknownTime, raisedUptimeMs: 1_000, boot: 5);
        JsonElement json = AlertTestKit.Parse(AlertTestKit.WriteJson(record, currentBoot: 5, currentUptimeMs: 61_000, currentUnixMs: Raised + 60_000));
        Assert.Equal("2026-11-28T09:58:12Z", json.GetProperty("raised").GetString());
        Assert.False(json.TryGetProperty("age_ms", out _));
    }

    [Fact]
    public void Write_UnknownClockEarlierBoot_WritesNullAgeAndNoRaised()
    {
        byte[] record = AlertTestKit.Encode(new Alert("T", Severity.Info, string.Empty), AlertRecord.UnknownTime, raisedUptimeMs: 1_000, boot: 5);
        JsonElement json = AlertTestKit.Parse(AlertTestKit.WriteJson(record, currentBoot: 6, currentUptimeMs: 61_000, currentUnixMs: Raised));
        Assert.Equal(JsonValueKind.Null, json.GetProperty("age_ms").ValueKind);
        Assert.False(json.TryGetProperty("raised", out _));
        Assert.Equal(5u, json.GetProperty("boot").GetUInt32());
    }

    [Fact]
    public void Write_CoalescedWithoutClockInAnotherBoot_LeavesOutFirstAndLast()
    {
        byte[] record = AlertTestKit.Encode(new Alert("T", Severity.Info, string.Empty), AlertRecord.UnknownTime, raisedUptimeMs: 1_000, boot: 5);
        AlertRecord.AddRepeat(record, 0, AlertRecord.UnknownTime, 2_000, 5);
        JsonElement sameBoot = AlertTestKit.Parse(AlertTestKit.WriteJson(record, currentBoot: 5, currentUptimeMs: 3_000, currentUnixMs: Raised));
        JsonElement laterBoot = AlertTestKit.Parse(AlertTestKit.WriteJson(record, currentBoot: 6, currentUptimeMs: 3_000, currentUnixMs: Raised));

        Assert.Equal(2u, sameBoot.GetProperty("count").GetUInt32());
        Assert.Equal("2026-11-28T09:58:10Z", sameBoot.GetProperty("first").GetString());
        Assert.Equal("2026-11-28T09:58:11Z", sameBoot.GetProperty("last").GetString());
        Assert.False(laterBoot.TryGetProperty("first", out _));
        Assert.False(laterBoot.TryGetProperty("last", out _));
        Assert.Equal(2u, laterBoot.GetProperty("count").GetUInt32());
    }

    [Theory]
    [InlineData(0x0000beefu, 7ul, "0000beef-7")]
    [InlineData(0xFFFFFFFFu, ulong.MaxValue, "ffffffff-18446744073709551615")]
    [InlineData(0u, 0ul, "00000000-0")]
    public void Write_Id_IsEpochAsEightLowerCaseHexDigitsThenSeq(uint epoch, ulong seq, string id)
    {
        JsonElement json = AlertTestKit.Parse(AlertTestKit.WriteJson(AlertTestKit.Encode(new Alert("T", Severity.Info, string.Empty)), seq, epoch: epoch));
        Assert.Equal(id, json.GetProperty("id").GetString());
        Assert.Equal(seq, json.GetProperty("seq").GetUInt64());
    }

    [Fact]
    public void Write_LargestAlert_FitsTheContractLimit()
    {
        var alert = new Alert(new string('Z', Alert.MaxCodeLength), Severity.Critical, new string('€', 341)) { State = AlertState.Cleared };
        for (int i = 0; i < Alert.MaxValues; i++)
        {
            alert.AddValue(new string((char)('a' + i), Alert.MaxValueNameLength), long.MinValue, 9);
        }

        byte[] record = AlertTestKit.Encode(alert, AlertRecord.MaxUnixMs, long.MaxValue, uint.MaxValue);
        for (int i = 0; i < 3; i++)
        {
            AlertRecord.AddRepeat(record, 0, AlertRecord.MaxUnixMs, long.MaxValue, uint.MaxValue);
        }

        string json = AlertTestKit.WriteJson(record, ulong.MaxValue, uint.MaxValue, long.MaxValue, epoch: uint.MaxValue);
        Assert.InRange(Encoding.UTF8.GetByteCount(json), 1, AlertJsonWriter.MaxLength);
        AlertTestKit.Parse(json);
    }

    [Fact]
    public void Write_DestinationTooSmall_ThrowsSayingHowMuchIsNeeded()
    {
        byte[] record = AlertTestKit.Encode(new Alert("T", Severity.Info, "some text"));
        var ex = Assert.Throws<ArgumentException>(() => new AlertJsonWriter().Write(record, 0, record.Length, 1, 1, 17, 0, AlertRecord.UnknownTime, new byte[40], 0));
        Assert.Contains("too small", ex.Message, StringComparison.Ordinal);
        Assert.Contains("4096", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Write_MalformedRecord_ThrowsWithTheReason()
    {
        byte[] record = AlertTestKit.Encode(new Alert("T", Severity.Info, "text"));
        record[0] = 2;
        var ex = Assert.Throws<ArgumentException>(() => new AlertJsonWriter().Write(record, 0, record.Length, 1, 1, 17, 0, AlertRecord.UnknownTime, new byte[4096], 0));
        Assert.StartsWith(AlertErrors.Describe(AlertError.RecordVersionUnknown), ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Write_AtOffset_LeavesTheBytesAroundItAlone()
    {
        byte[] record = AlertTestKit.Encode(new Alert("T", Severity.Info, "x"));
        var destination = new byte[4200];
        Array.Fill(destination, (byte)0xAA);
        int length = new AlertJsonWriter().Write(record, 0, record.Length, 1, 1, 17, 0, AlertRecord.UnknownTime, destination, 100);
        Assert.All(destination[..100], b => Assert.Equal(0xAA, b));
        Assert.All(destination[(100 + length)..], b => Assert.Equal(0xAA, b));
        Assert.Equal((byte)'{', destination[100]);
        Assert.Equal((byte)'}', destination[100 + length - 1]);
    }
}
