using System.Text;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Ingest;

public sealed class AlertParserTests
{
    public static TheoryData<string> Valid() => new(ContractVectors.Names("valid"));

    public static TheoryData<string> Invalid() => new(ContractVectors.Names("invalid"));

    [Theory]
    [MemberData(nameof(Valid))]
    public void Parse_ValidContractVector_IsAccepted(string name)
    {
        var result = AlertParser.Parse(File.ReadAllBytes(Path.Combine(Alerts.ContractDir, "valid", name)));

        Assert.True(result.IsValid, result.Reason);
    }

    [Theory]
    [MemberData(nameof(Invalid))]
    public void Parse_InvalidContractVector_IsRejectedWithTheDocumentedReason(string name)
    {
        string why = File.ReadAllText(Path.Combine(Alerts.ContractDir, "invalid", Path.ChangeExtension(name, ".why"))).Trim();

        var result = AlertParser.Parse(File.ReadAllBytes(Path.Combine(Alerts.ContractDir, "invalid", name)));

        Assert.False(result.IsValid);
        Assert.Equal(why, result.Reason);
    }

    [Fact]
    public void Parse_FullVector_ReadsEveryField()
    {
        var alert = AlertParser.Parse(File.ReadAllBytes(Path.Combine(Alerts.ContractDir, "valid", "full.json"))).Alert!;

        Assert.Equal(("7f3a9c21-42", 42L, AlertState.Raised, Severity.Critical, "FREEZER_TEMP_HIGH"), (alert.Id, alert.Seq, alert.State, alert.Severity, alert.Code));
        Assert.Equal("Freezer 2 above -15 °C", alert.Text);
        Assert.Equal([new("temp_c", -9.5), new("limit_c", -15)], alert.Values);
        Assert.Equal(new DateTimeOffset(2026, 11, 28, 9, 58, 12, TimeSpan.Zero), alert.Raised);
        Assert.Null(alert.AgeMs);
    }

    [Fact]
    public void RaisedAt_NoClockVector_IsDerivedFromAge()
    {
        var alert = AlertParser.Parse(File.ReadAllBytes(Path.Combine(Alerts.ContractDir, "valid", "no-clock.json"))).Alert!;
        var received = new DateTimeOffset(2026, 11, 28, 12, 0, 0, TimeSpan.Zero);

        Assert.Equal(received - TimeSpan.FromMilliseconds(123456), alert.RaisedAt(received));
    }

    [Theory]
    [InlineData("""{"v":1,"v":1,"id":"a","seq":1,"state":"raised","sev":"info","code":"X"}""", "duplicate key 'v'")]
    [InlineData("""{"v":1,"id":"a","seq":1,"state":"raised","sev":"info","code":"X","x":{"y":{"z":[1]}}}""", "nesting is deeper than 3 levels")]
    [InlineData("""[1,2]""", "payload must be a JSON object")]
    [InlineData("""{"v":1,"id":"a","seq":1,"state":"raised","sev":"info","code":"X"} {}""", "payload is not UTF-8 JSON")]
    [InlineData("""{"v":1,"id":"a","seq":1,"state":"raised","sev":"info","code":"X","values":{"t":"hot"}}""", "values must be an object of numbers")]
    [InlineData("""{"v":1,"id":"a","seq":1,"state":"raised","sev":"info","code":"X","raised":"yesterday"}""", "raised must be an ISO-8601 time with offset, e.g. 2026-11-28T09:58:12Z")]
    [InlineData("""{"v":1,"id":"a","seq":-1,"state":"raised","sev":"info","code":"X"}""", "seq must be from 0 to 9007199254740991 (2^53 - 1); got -1")]
    [InlineData("""{"v":1,"id":"a","seq":1,"state":"open","sev":"info","code":"X"}""", "state must be raised or cleared")]
    [InlineData("""{"v":1,"id":"a","seq":1,"state":"raised","sev":"CRITICAL","code":"X"}""", "sev must be critical, warning or info")]
    [InlineData("""{"v":1,"id":"a\nb","seq":1,"state":"raised","sev":"info","code":"X"}""", "id must be a string of 1 to 128 printable characters")]
    public void Parse_MalformedAlert_NamesTheProblem(string json, string reason)
    {
        Assert.Equal(reason, AlertParser.Parse(Encoding.UTF8.GetBytes(json)).Reason);
    }

    [Fact]
    public void Parse_PayloadOver4KiB_IsRejected()
    {
        string json = Alerts.Json("big", text: "x") + new string(' ', 5000);

        Assert.Equal("payload is larger than 4 KiB", AlertParser.Parse(Encoding.UTF8.GetBytes(json)).Reason);
    }

    [Fact]
    public void Parse_RejectedAlertWithId_KeepsTheIdForTheReceipt()
    {
        var result = AlertParser.Parse(Encoding.UTF8.GetBytes("""{"v":1,"id":"k-9","seq":1,"state":"raised","sev":"panic","code":"X"}"""));

        Assert.Equal("k-9", result.Id);
    }

    [Fact]
    public void Parse_RandomBytes_NeverThrows()
    {
        int seed = Environment.TickCount;
        var random = new Random(seed);
        byte[] valid = File.ReadAllBytes(Path.Combine(Alerts.ContractDir, "valid", "full.json"));
        for (int i = 0; i < 2000; i++)
        {
            byte[] mutated = (byte[])valid.Clone();
            for (int k = 0; k < 1 + random.Next(4); k++)
            {
                mutated[random.Next(mutated.Length)] = (byte)random.Next(256);
            }

            var result = AlertParser.Parse(mutated);
            Assert.True(result.IsValid || result.Reason is not null, $"seed {seed}, case {i}");
        }
    }
}
