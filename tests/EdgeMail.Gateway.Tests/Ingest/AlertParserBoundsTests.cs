using System.Text;
using EdgeMail.Gateway.Ingest;
using Xunit;

namespace EdgeMail.Gateway.Tests.Ingest;

// Every field's range, at and just past each bound (docs/gateway.md, "Alert validation"). The lower bounds also keep
// what real firmware sends with a wrong clock: a clock restarted at 1970, a clock set back between two repeats.
public sealed class AlertParserBoundsTests
{
    // A minimal valid alert plus the fields under test (seq 1 unless they give one).
    private static AlertParseResult Parse(string fields) =>
        AlertParser.Parse(Encoding.UTF8.GetBytes("""{"v":1,"id":"b-1","state":"raised","sev":"info","code":"X" """
            + (fields.Contains("\"seq\"", StringComparison.Ordinal) ? string.Empty : ",\"seq\":1") + fields + "}"));

    [Fact]
    public void Parse_AgeOfThreeThousandYears_IsRejectedNamingTheFieldAndTheRange()
    {
        var result = Parse(""","age_ms":100000000000000""");

        Assert.False(result.IsValid);
        Assert.Equal("age_ms must be from 0 to 315576000000 (10 years); got 100000000000000", result.Reason);
        Assert.Equal("b-1", result.Id);
    }

    [Theory]
    [InlineData(""","seq":0""")]
    [InlineData(""","seq":9007199254740991""")]
    [InlineData(""","seq":-0""")]
    [InlineData(""","age_ms":0""")]
    [InlineData(""","age_ms":315576000000""")]
    [InlineData(""","age_ms":null""")]
    [InlineData(""","boot":0""")]
    [InlineData(""","boot":4294967295""")]
    [InlineData(""","count":1""")]
    [InlineData(""","count":4294967295""")]
    [InlineData(""","raised":"1969-12-31T00:00:00Z" """)]
    [InlineData(""","raised":"1970-01-01T00:00:00+14:00" """)]
    [InlineData(""","raised":"2200-01-01T00:00:00Z" """)]
    [InlineData(""","raised":"2200-01-01T14:00:00+14:00" """)]
    [InlineData(""","raised":"2026-11-28t09:58:12.5z" """)]
    [InlineData(""","raised":"2026-11-28T09:58:12-00:00" """)]
    [InlineData(""","raised":"2016-12-31T23:59:60Z" """)]
    [InlineData(""","first":"1969-12-31T00:00:00Z","last":"2200-01-01T00:00:00Z" """)]
    [InlineData(""","count":2,"first":"2027-01-15T08:00:00Z","last":"2023-11-14T22:13:20Z" """)]
    [InlineData(""","values":{"max":9223372036854775808,"min":-9223372036854775808}""")]
    [InlineData(""","values":{"z":-0,"tiny":5e-324,"under":1e-400,"exp":1.5E+18}""")]
    [InlineData(""","text":null,"values":null,"raised":null,"boot":null,"count":null,"first":null,"last":null""")]
    public void Parse_FieldAtItsBound_IsAccepted(string fields)
    {
        var result = Parse(fields);

        Assert.True(result.IsValid, result.Reason);
    }

    [Theory]
    [InlineData(""","seq":9007199254740992""", "seq must be from 0 to 9007199254740991 (2^53 - 1); got 9007199254740992")]
    [InlineData(""","seq":-1""", "seq must be from 0 to 9007199254740991 (2^53 - 1); got -1")]
    [InlineData(""","seq":9223372036854775808""", "seq must be from 0 to 9007199254740991 (2^53 - 1); got 9223372036854775808")]
    [InlineData(""","seq":1.5""", "seq must be a non-negative integer")]
    [InlineData(""","seq":1e3""", "seq must be a non-negative integer")]
    [InlineData(""","seq":null""", "seq must be a non-negative integer")]
    [InlineData(""","age_ms":315576000001""", "age_ms must be from 0 to 315576000000 (10 years); got 315576000001")]
    [InlineData(""","age_ms":-1""", "age_ms must be from 0 to 315576000000 (10 years); got -1")]
    [InlineData(""","age_ms":1.0""", "age_ms must be a non-negative integer")]
    [InlineData(""","boot":4294967296""", "boot must be from 0 to 4294967295 (2^32 - 1); got 4294967296")]
    [InlineData(""","count":0""", "count must be from 1 to 4294967295 (2^32 - 1); got 0")]
    [InlineData(""","count":4294967296""", "count must be from 1 to 4294967295 (2^32 - 1); got 4294967296")]
    [InlineData(""","count":"7" """, "count must be a positive integer")]
    [InlineData(""","raised":"1969-12-30T23:59:59.9999999Z" """, "raised must be from 1969-12-31T00:00:00Z to 2200-01-01T00:00:00Z; got 1969-12-30T23:59:59.9999999Z")]
    [InlineData(""","raised":"2200-01-01T00:00:00.0000001Z" """, "raised must be from 1969-12-31T00:00:00Z to 2200-01-01T00:00:00Z; got 2200-01-01T00:00:00.0000001Z")]
    [InlineData(""","raised":"2200-01-01T13:59:59-14:00" """, "raised must be from 1969-12-31T00:00:00Z to 2200-01-01T00:00:00Z; got 2200-01-01T13:59:59-14:00")]
    [InlineData(""","raised":"0001-01-01T00:00:00+14:00" """, "raised must be from 1969-12-31T00:00:00Z to 2200-01-01T00:00:00Z; got 0001-01-01T00:00:00+14:00")]
    [InlineData(""","raised":"9999-12-31T23:59:59-14:00" """, "raised must be from 1969-12-31T00:00:00Z to 2200-01-01T00:00:00Z; got 9999-12-31T23:59:59-14:00")]
    [InlineData(""","raised":"0000-01-01T00:00:00Z" """, "raised must be from 1969-12-31T00:00:00Z to 2200-01-01T00:00:00Z; got 0000-01-01T00:00:00Z")]
    [InlineData(""","raised":"2026-11-28T09:58:12+14:01" """, "raised must have a UTC offset from -14:00 to +14:00; got 2026-11-28T09:58:12+14:01")]
    [InlineData(""","raised":"2026-02-29T00:00:00Z" """, "raised must be an ISO-8601 time with offset, e.g. 2026-11-28T09:58:12Z")]
    [InlineData(""","raised":"2026-11-28 09:58:12Z" """, "raised must be an ISO-8601 time with offset, e.g. 2026-11-28T09:58:12Z")]
    [InlineData(""","raised":"2026-11-28T09:58:12.Z" """, "raised must be an ISO-8601 time with offset, e.g. 2026-11-28T09:58:12Z")]
    [InlineData(""","raised":"2026-11-28T09:58:12+0100" """, "raised must be an ISO-8601 time with offset, e.g. 2026-11-28T09:58:12Z")]
    [InlineData(""","raised":"2026-11-28T09:58:12" """, "raised must be an ISO-8601 time with offset, e.g. 2026-11-28T09:58:12Z")]
    [InlineData(""","raised":1764323892""", "raised must be an ISO-8601 time with offset, e.g. 2026-11-28T09:58:12Z")]
    [InlineData(""","first":"3026-11-28T09:58:12Z" """, "first must be from 1969-12-31T00:00:00Z to 2200-01-01T00:00:00Z; got 3026-11-28T09:58:12Z")]
    [InlineData(""","last":"yesterday" """, "last must be an ISO-8601 time with offset, e.g. 2026-11-28T09:58:12Z")]
    [InlineData(""","values":{"big":9223372036854777856}""", "values.big must be from -2^63 to 2^63 (±9223372036854775808); got 9223372036854777856")]
    [InlineData(""","values":{"big":1e308}""", "values.big must be from -2^63 to 2^63 (±9223372036854775808); got 1e308")]
    [InlineData(""","values":{"inf":-1e400}""", "values.inf must be from -2^63 to 2^63 (±9223372036854775808); got -1e400")]
    [InlineData(""","values":"object" """, "values must be an object of numbers")]
    [InlineData(""","values":[1]""", "values must be an object of numbers")]
    [InlineData(""","values":{"a":true}""", "values must be an object of numbers")]
    [InlineData(""","values":{"":1}""", "value names must be 1 to 64 printable characters; got ''")]
    [InlineData(""","values":{"a\u202Eb":1}""", "value names must be 1 to 64 printable characters; got 'a?b'")]
    [InlineData(""","values":{"a\nb":1}""", "value names must be 1 to 64 printable characters; got 'a?b'")]
    [InlineData(""","text":"a\ud800b" """, "a string holds an unpaired surrogate escape (\\uD800 to \\uDFFF)")]
    [InlineData(""","text":7""", "text must be a string")]
    public void Parse_FieldPastItsBound_IsRejectedNamingTheFieldAndTheRange(string fields, string reason)
    {
        var result = Parse(fields);

        Assert.False(result.IsValid);
        Assert.Equal(reason, result.Reason);
    }

    [Fact]
    public void Parse_ValueNames_AllowSixtyFourCharactersAndThirtyTwoNames()
    {
        string names64 = string.Join(',', Enumerable.Range(0, 32).Select(i => $"\"{i:D2}{new string('n', 62)}\":{i}"));
        string names33 = string.Join(',', Enumerable.Range(0, 33).Select(i => $"\"v{i}\":{i}"));

        Assert.True(Parse(",\"values\":{" + names64 + "}").IsValid);
        Assert.Equal("value names must be 1 to 64 printable characters; got '" + new string('n', 64) + "'",
            Parse(",\"values\":{\"" + new string('n', 65) + "\":1}").Reason);
        Assert.Equal("values has 33 names; at most 32 are allowed", Parse(",\"values\":{" + names33 + "}").Reason);
    }

    [Theory]
    [InlineData("a b-7", true)]
    [InlineData("Küche-🔥-1", true)]
    [InlineData("a\u202Eb", false)]
    [InlineData("a\u200Bb", false)]
    [InlineData("a\uFFFEb", false)]
    [InlineData("a\uFDD0b", false)]
    [InlineData("a\u2028b", false)]
    [InlineData("a\u0085b", false)]
    public void Parse_IdWithInvisibleOrNonCharacters_IsRejectedButKeptForTheReceipt(string id, bool valid)
    {
        string json = System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, object> { ["v"] = 1, ["id"] = id, ["seq"] = 1, ["state"] = "raised", ["sev"] = "info", ["code"] = "X" });

        var result = AlertParser.Parse(Encoding.UTF8.GetBytes(json));

        Assert.Equal(valid, result.IsValid);
        Assert.Equal(id, result.Id);
        Assert.Equal(valid ? null : "id must be a string of 1 to 128 printable characters", result.Reason);
    }

    [Fact]
    public void Parse_IdAndText_AtTheirLimits()
    {
        string Alert(string id, string text) => System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["v"] = 1, ["id"] = id, ["seq"] = 1, ["state"] = "raised", ["sev"] = "info", ["code"] = "X", ["text"] = text,
        });

        Assert.True(AlertParser.Parse(Encoding.UTF8.GetBytes(Alert(new string('i', 128), new string('ü', 512)))).IsValid);
        Assert.Equal("id must be a string of 1 to 128 printable characters", AlertParser.Parse(Encoding.UTF8.GetBytes(Alert(new string('i', 129), "t"))).Reason);
        Assert.Equal("text is at most 1 KiB", AlertParser.Parse(Encoding.UTF8.GetBytes(Alert("i", new string('ü', 512) + "x"))).Reason);
    }

    [Fact]
    public void Parse_LeapSecondAndLongFraction_AreReadAsTheNextMinuteAndTruncatedTo100ns()
    {
        var leap = Parse(""","raised":"2016-12-31T23:59:60Z" """).Alert!;
        var fine = Parse(""","raised":"2026-11-28T09:58:12.12345678901234567890123456+01:00" """).Alert!;

        Assert.Equal(new DateTimeOffset(2017, 1, 1, 0, 0, 0, TimeSpan.Zero), leap.Raised);
        Assert.Equal(new DateTimeOffset(2026, 11, 28, 9, 58, 12, TimeSpan.FromHours(1)).AddTicks(1234567), fine.Raised);
        Assert.Equal(TimeSpan.FromHours(1), fine.Raised!.Value.Offset);
    }

    // What the firmware writes for its largest record (AlertJsonWriter, docs/alert-record.md): every counter at its
    // 32-bit maximum, 64-bit mantissas at scales 0 to 7, a clock that restarted at the Unix epoch.
    [Fact]
    public void Parse_FirmwaresLargestAlert_IsAcceptedWithEveryValueExact()
    {
        string json = """
            {"v":1,"id":"ffffffff-4294967295","seq":4294967295,"state":"raised","sev":"critical","code":"A.B-C_<Z*58>","text":"<ü*512>",
            "values":{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa":-9223372036854775808,"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb":922337203685477580.7,
            "cccccccccccccccccccccccccccccccc":-92233720368547758.08,"dddddddddddddddddddddddddddddddd":9223372036854775.807,
            "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee":-922337203685477.5808,"ffffffffffffffffffffffffffffffff":92233720368547.75807,
            "gggggggggggggggggggggggggggggggg":-9223372036854.775808,"hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh":922337203685.4775807},
            "raised":"1970-01-01T00:00:00Z","boot":4294967295,"count":4294967295,"first":"1970-01-01T00:00:00Z","last":"1970-01-01T00:00:00Z"}
            """.Replace("<Z*58>", new string('Z', 58), StringComparison.Ordinal).Replace("<ü*512>", new string('ü', 512), StringComparison.Ordinal);

        var result = AlertParser.Parse(Encoding.UTF8.GetBytes(json));

        Assert.True(result.IsValid, result.Reason);
        var alert = result.Alert!;
        Assert.Equal((4294967295L, 4294967295L, 4294967295L), (alert.Seq, alert.Boot, alert.Count));
        Assert.Equal(-9223372036854775808d, alert.Values[0].Value);
        Assert.Equal(DateTimeOffset.UnixEpoch, alert.Raised);
    }

    [Fact]
    public void RaisedAt_AgeReachingBeforeYearOne_IsUnknownInsteadOfThrowing()
    {
        var alert = Parse(""","age_ms":5""").Alert! with { AgeMs = 100_000_000_000_000 };

        Assert.Null(alert.RaisedAt(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero)));
        Assert.Equal(DateTimeOffset.MinValue, (alert with { AgeMs = 0 }).RaisedAt(DateTimeOffset.MinValue));
    }
}
