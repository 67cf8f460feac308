using System.Globalization;
using System.Text.Json;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Testing;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Firmware.Tests.Alerts;

/// <summary>
/// Every valid Contract 1 vector goes through the firmware's real path — Alert, binary record, JSON writer — and the
/// JSON that comes out must describe the same alert. The vectors are the repository's <c>contract/alerts/</c>.
/// </summary>
public class ContractVectorTests(ITestOutputHelper output)
{
    public static TheoryData<string> ValidVectors() => Names("valid");

    public static TheoryData<string> InvalidVectors() => Names("invalid");

    [Theory]
    [MemberData(nameof(ValidVectors))]
    public void Write_ValidVector_ProducesTheSameAlert(string name)
    {
        JsonElement expected = AlertTestKit.Parse(File.ReadAllText(Path.Combine(VectorDirectory(), "valid", name)));

        string json = RoundTrip(expected);
        output.WriteLine(json);

        JsonElement actual = AlertTestKit.Parse(json);
        AssertSameAlert(expected, actual, json);
    }

    [Theory]
    [InlineData("bad-code-lowercase.json", AlertError.CodeInvalidCharacter)]
    [InlineData("text-too-long.json", AlertError.TextTooLong)]
    public void Check_InvalidVectorContent_IsRefusedWithTheReason(string name, AlertError reason)
    {
        JsonElement vector = AlertTestKit.Parse(File.ReadAllText(Path.Combine(VectorDirectory(), "invalid", name)));
        Alert alert = ToAlert(vector);
        Assert.Equal(reason, AlertRecord.Check(alert));
        var ex = Assert.Throws<ArgumentException>(() => AlertRecord.Encode(alert, AlertRecord.UnknownTime, 0, 1, new byte[AlertRecord.MaxSize], 0));
        Assert.Equal(AlertErrors.Describe(reason) + " (Parameter 'alert')", ex.Message);
    }

    [Fact]
    public void VectorCopy_MatchesTheDirectoryListing()
    {
        // The rest of the invalid vectors (missing id, unknown sev/version, wrong type, not JSON) cannot be produced by
        // the typed firmware API at all; the gateway's parser tests cover them.
        Assert.Equal(7, ValidVectors().Count);
        Assert.Equal(7, InvalidVectors().Count);
    }

    /// <summary>Builds the alert and the send-time situation the vector describes, encodes it and writes its JSON.</summary>
    private static string RoundTrip(JsonElement v)
    {
        Alert alert = ToAlert(v);
        string id = v.GetProperty("id").GetString()!;
        uint epoch = uint.Parse(id.AsSpan(0, id.IndexOf('-', StringComparison.Ordinal)), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        ulong seq = v.GetProperty("seq").GetUInt64();
        uint boot = v.GetProperty("boot").GetUInt32();
        uint count = v.GetProperty("count").GetUInt32();

        long raisedUnix = AlertRecord.UnknownTime;
        const long RaisedUptime = 60_000;
        long nowUptime = RaisedUptime + 1;
        uint nowBoot = boot;
        if (v.TryGetProperty("raised", out JsonElement raised))
        {
            raisedUnix = UnixMs(raised);
        }
        else if (v.TryGetProperty("first", out JsonElement first))
        {
            raisedUnix = UnixMs(first); // a coalesced alert was raised at its first occurrence
        }
        else if (v.TryGetProperty("age_ms", out JsonElement age) && age.ValueKind == JsonValueKind.Number)
        {
            nowUptime = RaisedUptime + age.GetInt64();
        }
        else
        {
            nowBoot = boot + 1; // raised in an earlier boot without a clock: nothing is known
        }

        var record = new byte[AlertRecord.MaxSize];
        int length = AlertRecord.Encode(alert, raisedUnix, RaisedUptime, boot, record, 0);
        for (uint i = 1; i < count; i++)
        {
            long last = i == count - 1 ? UnixMs(v.GetProperty("last")) : raisedUnix + i;
            AlertRecord.AddRepeat(record, 0, last, RaisedUptime + i, boot);
        }

        return AlertTestKit.WriteJson(record[..length], seq, nowBoot, nowUptime, AlertRecord.UnknownTime, epoch);
    }

    private static Alert ToAlert(JsonElement v)
    {
        var alert = new Alert(v.GetProperty("code").GetString()!, ParseSeverity(v.GetProperty("sev").GetString()!), v.GetProperty("text").GetString()!)
        {
            State = v.GetProperty("state").GetString() == "cleared" ? AlertState.Cleared : AlertState.Raised,
        };
        if (v.TryGetProperty("values", out JsonElement values))
        {
            foreach (JsonProperty value in values.EnumerateObject())
            {
                decimal d = decimal.Parse(value.Value.GetRawText(), NumberStyles.Float, CultureInfo.InvariantCulture);
                alert.AddValue(value.Name, (long)(d * Pow10(d.Scale)), d.Scale);
            }
        }

        return alert;
    }

    /// <summary>
    /// Same alert: every field of the vector is present with an equal value (numbers compared as decimals, so 9 and
    /// 9.0 agree). Extra fields the writer may add: <c>"age_ms":null</c>, and a coalesced alert's <c>raised</c>,
    /// which must equal its <c>first</c>. A vector's <c>"age_ms":null</c> beside <c>raised</c> may be left out.
    /// </summary>
    private static void AssertSameAlert(JsonElement expected, JsonElement actual, string json)
    {
        foreach (JsonProperty e in expected.EnumerateObject())
        {
            if (!actual.TryGetProperty(e.Name, out JsonElement a))
            {
                Assert.True(e.Name == "age_ms" && e.Value.ValueKind == JsonValueKind.Null, $"missing \"{e.Name}\" in {json}");
                continue;
            }

            AssertSameValue(e.Value, a, e.Name, json);
        }

        foreach (JsonProperty a in actual.EnumerateObject())
        {
            if (expected.TryGetProperty(a.Name, out _))
            {
                continue;
            }

            bool allowed = (a.Name == "age_ms" && a.Value.ValueKind == JsonValueKind.Null)
                || (a.Name == "raised" && expected.TryGetProperty("first", out JsonElement first) && first.GetString() == a.Value.GetString());
            Assert.True(allowed, $"unexpected \"{a.Name}\" in {json}");
        }
    }

    private static void AssertSameValue(JsonElement e, JsonElement a, string path, string json)
    {
        Assert.True(e.ValueKind == a.ValueKind, $"{path}: {e.ValueKind} expected, {a.ValueKind} written in {json}");
        switch (e.ValueKind)
        {
            case JsonValueKind.Number:
                Assert.True(e.GetDecimal() == a.GetDecimal(), $"{path}: {e.GetRawText()} expected, {a.GetRawText()} written");
                break;
            case JsonValueKind.String:
                Assert.Equal(e.GetString(), a.GetString());
                break;
            case JsonValueKind.Object:
                Assert.Equal(e.EnumerateObject().Count(), a.EnumerateObject().Count());
                foreach (JsonProperty p in e.EnumerateObject())
                {
                    Assert.True(a.TryGetProperty(p.Name, out JsonElement inner), $"{path}.{p.Name} missing in {json}");
                    AssertSameValue(p.Value, inner, path + "." + p.Name, json);
                }

                break;
            default:
                Assert.Equal(e.GetRawText(), a.GetRawText());
                break;
        }
    }

    private static Severity ParseSeverity(string s) => s switch
    {
        "critical" => Severity.Critical,
        "warning" => Severity.Warning,
        "info" => Severity.Info,
        _ => (Severity)99, // lets Check report an out-of-range severity
    };

    private static long UnixMs(JsonElement iso) =>
        DateTimeOffset.Parse(iso.GetString()!, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal).ToUnixTimeMilliseconds();

    private static decimal Pow10(int n)
    {
        decimal p = 1;
        for (int i = 0; i < n; i++)
        {
            p *= 10;
        }

        return p;
    }

    private static TheoryData<string> Names(string kind) => new(ContractVectors.Names(kind));

    // Copied beside the test assembly (source paths are mapped away in CI builds).
    private static string VectorDirectory() => ContractVectors.Directory;
}
