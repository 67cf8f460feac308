using System.Text;
using System.Text.Json;
using EdgeMail.Firmware.Alerts;
using Xunit;

namespace EdgeMail.Firmware.Tests.Alerts;

public class AlertRecordTests
{
    [Fact]
    public void Encode_KnownAlert_WritesTheDocumentedLayoutByteForByte()
    {
        var alert = new Alert("AB", Severity.Critical, "é") { State = AlertState.Cleared };
        alert.AddValue("t", -95, 1);
        var buffer = new byte[AlertRecord.MaxSize];

        int length = AlertRecord.Encode(alert, 0x010203040506, 0x1122, 0xA0B0C0D0, buffer, 0);

        string expected =
            "01" + "01" + "02" + "00" // version, state cleared, severity critical, flags
            + "D0C0B0A0" + "01000000" // boot, count
            + "0605040302010000" + "2211000000000000" // raised Unix ms, raised uptime ms
            + "0605040302010000" + "0605040302010000" // first, last (= raise time)
            + "02" + "01" + "0200" // code length, value count, text length
            + "4142" + "C3A9" // code, text
            + "01" + "74" + "01" + "A1FFFFFFFFFFFFFF"; // name length, name, scale, mantissa -95
        Assert.Equal(expected, Convert.ToHexString(buffer, 0, length));
        Assert.Equal(AlertRecord.Measure(alert), length);
    }

    [Fact]
    public void Encode_WithoutClock_StoresSentinelAndMarksFirstAndLastAsUptime()
    {
        byte[] record = AlertTestKit.Encode(new Alert("A", Severity.Info, string.Empty), AlertRecord.UnknownTime, 777, 3);
        var view = new AlertRecordView();
        Assert.Equal(AlertError.None, view.Attach(record, 0, record.Length));
        Assert.Equal(AlertRecord.UnknownTime, view.RaisedUnixMs);
        Assert.Equal(777, view.RaisedUptimeMs);
        Assert.True(view.FirstIsUptime);
        Assert.True(view.LastIsUptime);
        Assert.Equal(777, view.First);
    }

    [Fact]
    public void View_AttachedToEncodedRecord_ReadsEveryField()
    {
        var alert = new Alert("FREEZER_TEMP_HIGH", Severity.Warning, "Freezer 2 above -15 °C 🔥");
        alert.AddValue("temp_c", -9.5, 1);
        alert.AddValue("limit_c", -15L, 0);
        var buffer = new byte[AlertRecord.MaxSize + 7];
        int length = AlertRecord.Encode(alert, 1795859892000, 42, 17, buffer, 7);

        var view = new AlertRecordView();
        Assert.Equal(AlertError.None, view.Attach(buffer, 7, buffer.Length - 7)); // trailing padding is allowed
        Assert.Equal(length, view.Size);
        Assert.Equal(AlertState.Raised, view.State);
        Assert.Equal(Severity.Warning, view.Severity);
        Assert.Equal(17u, view.Boot);
        Assert.Equal(1u, view.Count);
        Assert.Equal(1795859892000, view.RaisedUnixMs);
        Assert.Equal(42, view.RaisedUptimeMs);
        Assert.Equal("FREEZER_TEMP_HIGH", view.DecodeCode());
        Assert.Equal(alert.Text, view.DecodeText());
        Assert.Equal(2, view.ValueCount);
        Assert.Equal("temp_c", view.DecodeValueName(0));
        Assert.Equal(-95, view.GetValueMantissa(0));
        Assert.Equal(1, view.GetValueScale(0));
        Assert.Equal("limit_c", view.DecodeValueName(1));
        Assert.Equal(-15, view.GetValueMantissa(1));
        Assert.Equal(0, view.GetValueScale(1));
    }

    [Theory]
    [InlineData("", AlertError.CodeEmpty)]
    [InlineData("door open", AlertError.CodeInvalidCharacter)]
    [InlineData("door_open", AlertError.CodeInvalidCharacter)]
    [InlineData("TÜR", AlertError.CodeInvalidCharacter)]
    [InlineData("A.B-C_9", AlertError.None)]
    public void Check_Codes_FollowThePattern(string code, AlertError error) =>
        Assert.Equal(error, AlertRecord.Check(new Alert(code, Severity.Info, "t")));

    [Fact]
    public void Check_CodeOf65Characters_IsTooLong()
    {
        Assert.Equal(AlertError.None, AlertRecord.Check(new Alert(new string('A', 64), Severity.Info, "t")));
        Assert.Equal(AlertError.CodeTooLong, AlertRecord.Check(new Alert(new string('A', 65), Severity.Info, "t")));
    }

    [Fact]
    public void Check_TextOver1024BytesOfUtf8_IsTooLong()
    {
        Assert.Equal(AlertError.None, AlertRecord.Check(new Alert("A", Severity.Info, new string('a', 1024))));
        Assert.Equal(AlertError.TextTooLong, AlertRecord.Check(new Alert("A", Severity.Info, new string('a', 1025))));
        Assert.Equal(AlertError.TextTooLong, AlertRecord.Check(new Alert("A", Severity.Info, new string('€', 342)))); // 1026 bytes, 342 chars
    }

    [Fact]
    public void Check_TextOfControlCharacters_IsRefusedBecauseItsJsonWouldExceed4KiB()
    {
        var alert = new Alert("A", Severity.Info, new string('\u0001', 1000));
        Assert.Equal(AlertError.JsonTooLarge, AlertRecord.Check(alert));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void CutTextToFit_StoredTextsOfEveryKind_CutAtACharacterWithTheMarker_JsonWithinTheLimit_ValuesKept(int seed)
    {
        // Texts Encode refuses and a record can still hold: up to 1024 bytes of control characters, quotes and 1- to
        // 4-byte characters, beside the longest code and 8 values, so a cut may fall inside a character or an escape.
        var random = new Random(seed);
        string[] pieces = ["\n", "\"", "a", "é", "€", "😀"];
        var writer = new AlertJsonWriter();
        var json = new byte[AlertJsonWriter.MaxLength];
        var view = new AlertRecordView();
        int cuts = 0;
        for (int round = 0; round < 300; round++)
        {
            var builder = new StringBuilder();
            double controls = random.NextDouble(); // about 0.6 and more needs a cut
            while (Encoding.UTF8.GetByteCount(builder.ToString()) < 1021)
            {
                builder.Append(random.NextDouble() < controls ? "\u0001" : pieces[random.Next(pieces.Length)]);
            }

            string text = builder.ToString();
            byte[] utf8 = Encoding.UTF8.GetBytes(text);
            var alert = new Alert(new string('C', 64), Severity.Warning, new string('a', utf8.Length));
            for (int v = 0; v < 8; v++)
            {
                alert.AddValue("value_" + v + new string('n', 25), long.MinValue + v, 9);
            }

            var record = new byte[AlertRecord.MaxSize + 7];
            int length = AlertRecord.Encode(alert, AlertRecord.UnknownTime, 5, 1, record, 7);
            utf8.CopyTo(record, 7 + AlertRecord.HeaderSize + 64);
            Assert.Equal(AlertError.None, view.Attach(record, 7, length));

            bool wasCut = AlertRecord.CutTextToFit(view, out int size);

            string because = $"seed {seed}, round {round}";
            Assert.True(size <= length, because);
            Assert.True(view.Attach(record, 7, size) == AlertError.None, because);
            Assert.Equal(size, view.Size);
            string cut = view.DecodeText();
            int written = writer.Write(record, 7, size, 0x7F3A9C21, uint.MaxValue, 1, long.MaxValue, AlertRecord.UnknownTime, json, 0);
            Assert.InRange(written, 1, AlertJsonWriter.MaxLength);
            JsonElement parsed = JsonDocument.Parse(json.AsMemory(0, written)).RootElement;
            Assert.Equal(cut, parsed.GetProperty("text").GetString());
            Assert.Equal("-9223372036.854775801", parsed.GetProperty("values").GetProperty("value_7" + new string('n', 25)).GetRawText());
            if (!wasCut)
            {
                Assert.Equal(length, size);
                Assert.Equal(text, cut);
                continue;
            }

            cuts++;
            Assert.EndsWith(AlertRecord.CutTextMarker, cut, StringComparison.Ordinal);
            Assert.StartsWith(cut[..^AlertRecord.CutTextMarker.Length], text, StringComparison.Ordinal);
        }

        Assert.InRange(cuts, 1, 299);
    }

    [Fact]
    public void Check_UndefinedSeverity_IsRefused() =>
        Assert.Equal(AlertError.EnumOutOfRange, AlertRecord.Check(new Alert("A", (Severity)7, "t")));

    [Theory]
    [InlineData("")]
    [InlineData("temp c")]
    [InlineData("temp\"c")]
    [InlineData("a_name_that_is_longer_than_32_chr")]
    public void AddValue_InvalidName_ThrowsClearly(string name)
    {
        var ex = Assert.Throws<ArgumentException>(() => new Alert().AddValue(name, 1, 0));
        Assert.Contains("[A-Za-z0-9_.-]{1,32}", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AddValue_DuplicateNameOrNinthValueOrBadScale_Throws()
    {
        var alert = new Alert("A", Severity.Info, "t");
        alert.AddValue("v0", 1, 0);
        Assert.Throws<ArgumentException>(() => alert.AddValue("v0", 2, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => alert.AddValue("s", 2, 10));
        for (int i = 1; i < Alert.MaxValues; i++)
        {
            alert.AddValue("v" + i, i, 0);
        }

        var ex = Assert.Throws<InvalidOperationException>(() => alert.AddValue("v8", 8, 0));
        Assert.Contains("at most 8", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Encode_InvalidAlert_ThrowsWithTheDescribedReasonAndWritesNothing()
    {
        var buffer = new byte[AlertRecord.MaxSize];
        var ex = Assert.Throws<ArgumentException>(() => AlertRecord.Encode(new Alert("bad", Severity.Info, "t"), 0, 0, 1, buffer, 0));
        Assert.Contains("[A-Z0-9_.-]", ex.Message, StringComparison.Ordinal);
        Assert.Equal("alert", ex.ParamName);
        Assert.All(buffer, b => Assert.Equal(0, b));
    }

    [Fact]
    public void Encode_BufferTooSmall_ThrowsNamingMeasure()
    {
        var alert = new Alert("A", Severity.Info, "hello");
        var ex = Assert.Throws<ArgumentException>(() => AlertRecord.Encode(alert, 0, 0, 1, new byte[AlertRecord.Measure(alert) - 1], 0));
        Assert.Equal("destination", ex.ParamName);
        Assert.Contains("Measure", ex.Message, StringComparison.Ordinal);
        Assert.Equal(AlertError.BufferTooSmall, AlertRecord.TryEncode(alert, 0, 0, 1, new byte[60], 10, out int length));
        Assert.Equal(0, length);
    }

    [Theory]
    [InlineData(-1L, 0L)]
    [InlineData(AlertRecord.MaxUnixMs + 1, 0L)]
    [InlineData(0L, -1L)]
    public void TryEncode_TimeOutOfRange_IsRefused(long unixMs, long uptimeMs) =>
        Assert.Equal(AlertError.TimeOutOfRange, AlertRecord.TryEncode(new Alert("A", Severity.Info, "t"), unixMs, uptimeMs, 1, new byte[100], 0, out _));

    [Fact]
    public void AddRepeat_CountsAndMovesLast_KeepingFirstTextAndSize()
    {
        byte[] record = AlertTestKit.Encode(new Alert("PUMP", Severity.Warning, "Pump restarted"), 1000, 10, 4);
        AlertRecord.AddRepeat(record, 0, 5000, 50, 4);
        AlertRecord.AddRepeat(record, 0, AlertRecord.UnknownTime, 60, 4); // clock lost: uptime in the same boot
        var view = new AlertRecordView();
        Assert.Equal(AlertError.None, view.Attach(record, 0, record.Length));
        Assert.Equal(3u, view.Count);
        Assert.Equal(1000, view.First);
        Assert.False(view.FirstIsUptime);
        Assert.Equal(60, view.Last);
        Assert.True(view.LastIsUptime);

        AlertRecord.AddRepeat(record, 0, AlertRecord.UnknownTime, 70, 5); // another boot, no clock: unknown
        Assert.Equal(AlertError.None, view.Attach(record, 0, record.Length));
        Assert.Equal(AlertRecord.UnknownTime, view.Last);
        Assert.False(view.LastIsUptime);
        Assert.Equal(record.Length, view.Size);
    }

    [Fact]
    public void IsRepeatOf_SameCodeStateAndSeverity_IsTrueOtherwiseFalse()
    {
        byte[] record = AlertTestKit.Encode(new Alert("PUMP", Severity.Warning, "a"));
        Assert.True(AlertRecord.IsRepeatOf(record, 0, new Alert("PUMP", Severity.Warning, "other text")));
        Assert.False(AlertRecord.IsRepeatOf(record, 0, new Alert("PUMP", Severity.Critical, "a")));
        Assert.False(AlertRecord.IsRepeatOf(record, 0, new Alert("PUMP", Severity.Warning, "a") { State = AlertState.Cleared }));
        Assert.False(AlertRecord.IsRepeatOf(record, 0, new Alert("PUMPS", Severity.Warning, "a")));
        Assert.False(AlertRecord.IsRepeatOf(record, 0, new Alert("PUMX", Severity.Warning, "a")));
    }

    [Fact]
    public void Attach_DamagedRecords_AreRefusedWithoutThrowing()
    {
        var alert = new Alert("A", Severity.Info, "é");
        alert.AddValue("v", 1, 0);
        byte[] good = AlertTestKit.Encode(alert);
        var view = new AlertRecordView();

        Assert.Equal(AlertError.RecordVersionUnknown, view.Attach(Damaged(good, 0, 2), 0, good.Length));
        Assert.Equal(AlertError.RecordMalformed, view.Attach(good, 0, good.Length - 1)); // truncated
        Assert.Equal(AlertError.RecordMalformed, view.Attach(Damaged(good, 2, 3), 0, good.Length)); // severity byte
        Assert.Equal(AlertError.RecordMalformed, view.Attach(Damaged(good, 3, 4), 0, good.Length)); // reserved flag bit
        Assert.Equal(AlertError.RecordMalformed, view.Attach(Damaged(good, AlertRecord.HeaderSize, (byte)'a'), 0, good.Length)); // code char
        Assert.Equal(AlertError.RecordMalformed, view.Attach(Damaged(good, AlertRecord.HeaderSize + 1, 0xFF), 0, good.Length)); // UTF-8
        Assert.Equal(AlertError.RecordMalformed, view.Attach(Damaged(good, AlertRecord.HeaderSize + 4, (byte)' '), 0, good.Length)); // value name
        Assert.Equal(AlertError.RecordMalformed, view.Attach(good, 0, 0));
        Assert.False(view.IsAttached);
        Assert.Equal(AlertError.None, view.Attach(good, 0, good.Length));
        Assert.True(view.IsAttached);
    }

    private static byte[] Damaged(byte[] record, int index, byte value)
    {
        byte[] copy = (byte[])record.Clone();
        copy[index] = value;
        return copy;
    }
}
