using System.Text;
using System.Text.RegularExpressions;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using MimeKit;
using Xunit;

namespace EdgeMail.Gateway.Tests.Composition;

public sealed partial class MailComposerTests
{
    private static readonly DateTimeOffset Now = new(2026, 11, 28, 10, 0, 5, TimeSpan.Zero);
    private static readonly DateTimeOffset Received = new(2026, 11, 28, 10, 0, 0, TimeSpan.Zero);

    private static MailComposer Composer() =>
        new(new SenderOptions { Address = "alerts@example.com", DisplayName = "EdgeMail Hall 3", Hostname = "gw1.example.com" }, TemplateSet.Load(string.Empty));

    private static Alert Parse(string json) => AlertParser.Parse(Encoding.UTF8.GetBytes(json)).Alert
        ?? throw new InvalidOperationException(AlertParser.Parse(Encoding.UTF8.GetBytes(json)).Reason);

    private static Alert Vector(string name) => AlertParser.Parse(File.ReadAllBytes(Path.Combine(Alerts.ContractDir, "valid", name))).Alert!;

    private static AlertMail Mail(Alert alert, DeviceInfo? device = null, string? inReplyTo = null) =>
        new(device ?? new DeviceInfo("freezer-2", "Freezer 2", "Hall 3"), alert, Received, "192.0.2.7:50123", 42,
            [new MailboxAddress("Alice Ärger", "alice@example.com"), new MailboxAddress("Bob", "bob@example.com")], "default", inReplyTo);

    private static string Wire(ComposedMail mail) => Encoding.ASCII.GetString(mail.Wire);

    // The mail as a receiver reads it.
    private static MimeMessage Reparsed(ComposedMail mail) => MimeMessage.Load(new MemoryStream(mail.Wire));

    // Boundaries are random; everything else is deterministic.
    private static string Normalise(string wire) => BoundaryRegex().Replace(wire, "=-BOUNDARY");

    [GeneratedRegex("=-[A-Za-z0-9+/]{22}==")]
    private static partial Regex BoundaryRegex();

    [Theory]
    [InlineData("full.json")]
    [InlineData("unicode.json")]
    [InlineData("no-clock.json")]
    [InlineData("escapes.json")]
    [InlineData("coalesced.json")]
    public void ComposeAlert_ContractVector_MatchesTheGoldenFile(string vector)
    {
        string actual = Normalise(Wire(Composer().ComposeAlert(Mail(Vector(vector)), Now)));
        string golden = Path.Combine(AppContext.BaseDirectory, "Composition", "Golden", Path.ChangeExtension(vector, ".eml"));

        if (Environment.GetEnvironmentVariable("EDGEMAIL_UPDATE_GOLDEN") is { Length: > 0 } root)
        {
            File.WriteAllText(Path.Combine(root, "Composition", "Golden", Path.ChangeExtension(vector, ".eml")), actual);
        }

        Assert.Equal(File.ReadAllText(golden), actual);
    }

    [Fact]
    public void ComposeAlert_FullVector_HasTheRequiredHeaders()
    {
        var composed = Composer().ComposeAlert(Mail(Vector("full.json")), Now);
        var message = Reparsed(composed);
        var received = message;

        Assert.Equal("[CRITICAL] freezer-2 @ Hall 3: Freezer 2 above -15 °C", message.Subject);
        Assert.Equal("freezer-2.7f3a9c21-42.alert@gw1.example.com", message.MessageId);
        Assert.Equal(message.MessageId, composed.MessageId);
        Assert.Equal("auto-generated", message.Headers["Auto-Submitted"]);
        Assert.Equal(Now, message.Date);
        Assert.StartsWith("from freezer-2 ([192.0.2.7]) by gw1.example.com (EdgeMail) with MQTT id 42;",
            Regex.Replace(message.Headers[HeaderId.Received] ?? string.Empty, @"\s+", " "), StringComparison.Ordinal); // as folded: "MQTT\r\n\tid"
        Assert.Contains("temp_c = -9.5", received.TextBody, StringComparison.Ordinal);
        Assert.Contains("2026-11-28 09:58:12 UTC", received.HtmlBody, StringComparison.Ordinal);
    }

    [Fact]
    public void ComposeAlert_WireFormat_IsCrlfSevenBitAndWithinLineLimits()
    {
        byte[] wire = Composer().ComposeAlert(Mail(Vector("unicode.json")), Now).Wire;
        string text = Encoding.ASCII.GetString(wire);

        Assert.All(wire, b => Assert.True(b < 128));
        Assert.DoesNotContain("\n", text.Replace("\r\n", string.Empty, StringComparison.Ordinal), StringComparison.Ordinal);
        Assert.All(text.Split("\r\n"), line => Assert.True(line.Length <= 78, $"line of {line.Length}: {line}"));
    }

    [Fact]
    public void ComposeAlert_NoClock_SaysTimeUnknown()
    {
        var alert = Parse("""{"v":1,"id":"n-1","seq":1,"state":"raised","sev":"info","code":"X","text":"t"}""");

        var message = Reparsed(Composer().ComposeAlert(Mail(alert), Now));

        Assert.Contains("time unknown", message.TextBody, StringComparison.Ordinal);
    }

    [Fact]
    public void ComposeAlert_Cleared_ThreadsOntoTheRaisedMail()
    {
        var message = Reparsed(Composer().ComposeAlert(Mail(Vector("cleared.json"), inReplyTo: "<freezer-2.7f3a9c21-42.alert@gw1.example.com>"), Now));

        Assert.Equal("freezer-2.7f3a9c21-42.alert@gw1.example.com", message.InReplyTo);
        Assert.Equal(["freezer-2.7f3a9c21-42.alert@gw1.example.com"], message.References);
        Assert.StartsWith("[CLEARED] freezer-2", message.Subject, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("Alert\r\nBcc: victim@evil.example\r\n\r\nInjected body")]
    [InlineData("Alert\nTo: victim@evil.example")]
    [InlineData("=?utf-8?q?=0D=0ABcc=3A_victim=40evil.example?=")]
    [InlineData("<script>alert(1)</script>\r\n--=-BOUNDARY--\r\nContent-Type: text/html")]
    public void ComposeAlert_InjectionInEveryDeviceField_AddsNoHeaderAndKeepsTheStructure(string evil)
    {
        string json = System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["v"] = 1, ["id"] = "inj-1", ["seq"] = 1, ["state"] = "raised", ["sev"] = "critical", ["code"] = "X", ["text"] = evil,
        });

        // The parser refuses control characters in value names; the composer must still cope with an alert built otherwise.
        var alert = Parse(json) with { Values = [new(evil.Length > 60 ? evil[..60] : evil, 1)] };
        var device = new DeviceInfo("dev-1", evil, evil);

        byte[] wire = Composer().ComposeAlert(Mail(alert, device), Now).Wire;
        using var stream = new MemoryStream(wire);
        var reparsed = MimeMessage.Load(stream);

        Assert.Empty(reparsed.Bcc);
        Assert.Equal(["alice@example.com", "bob@example.com"], reparsed.To.Mailboxes.Select(m => m.Address));
        Assert.DoesNotContain(reparsed.Headers, h => h.Field is "Content-Type" or "Bcc" or "Cc" or "Reply-To");
        var body = Assert.IsType<MultipartAlternative>(reparsed.Body);
        Assert.Equal(2, body.Count);
        Assert.DoesNotContain("<script>", reparsed.HtmlBody, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', reparsed.Subject ?? string.Empty);
    }

    [Fact]
    public void ComposeAlert_LongText_IsCutInTheSubjectAndWholeInTheBody()
    {
        string text = string.Concat(Enumerable.Repeat("Überhitzung im Kühlraum ", 38));
        var alert = Parse(System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["v"] = 1, ["id"] = "long-1", ["seq"] = 1, ["state"] = "raised", ["sev"] = "warning", ["code"] = "X", ["text"] = text,
        }));

        var message = Reparsed(Composer().ComposeAlert(Mail(alert), Now));

        Assert.EndsWith("…", message.Subject ?? string.Empty, StringComparison.Ordinal);
        Assert.Contains(text.Trim(), message.TextBody!.Replace("\r\n", "\n", StringComparison.Ordinal), StringComparison.Ordinal);
    }

    [Fact]
    public void ComposeAlert_OddAlertId_GetsAnEscapedMessageIdThatMimeKitReadsBack()
    {
        var alert = Parse("""{"v":1,"id":"a b<c>@d","seq":1,"state":"raised","sev":"info","code":"X"}""");

        byte[] wire = Composer().ComposeAlert(Mail(alert), Now).Wire;
        using var stream = new MemoryStream(wire);
        using var reparsed = MimeMessage.Load(stream);

        Assert.Equal("freezer-2.a_20b_3Cc_3E_40d.alert@gw1.example.com", reparsed.MessageId);
    }
}
