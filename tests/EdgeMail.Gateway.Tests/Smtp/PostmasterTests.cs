using MimeKit;
using Xunit;

namespace EdgeMail.Gateway.Tests.Smtp;

/// <summary>
/// RFC 5321 §4.5.1: <c>RCPT TO:&lt;Postmaster&gt;</c> (no domain) and postmaster at every domain the gateway serves
/// are accepted, case-insensitively, and go to <c>Sender:Operator</c> — from whoever may submit at all (AUTH or an
/// allow-listed source), so postmaster is not a way around authentication or into relaying.
/// </summary>
public sealed class PostmasterTests
{
    private static Task<TestGateway> StartAsync(Action<Dictionary<string, object>>? tweakSmtp = null, object? sender = null) =>
        SmtpGateway.StartAsync(smtp =>
        {
            smtp["Domains"] = new[] { "alerts.example.com" };
            tweakSmtp?.Invoke(smtp);
        }, config =>
        {
            if (sender is not null)
            {
                config["Sender"] = sender;
            }
        });

    /// <summary>The envelope recipients the mailbox file records on its first line.</summary>
    private static string[] EnvelopeTo(string file)
    {
        string first = File.ReadLines(file).First();
        Assert.StartsWith("X-EdgeMail-Envelope-To:", first, StringComparison.Ordinal);
        return first["X-EdgeMail-Envelope-To:".Length..].Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
    }

    [Theory]
    [InlineData("RCPT TO:<postmaster>")]
    [InlineData("RCPT TO:<Postmaster>")]
    [InlineData("rcpt to: <POSTMASTER>")]
    [InlineData("RCPT TO:<postmaster@gw.test>")]
    [InlineData("RCPT TO:<PostMaster@GW.test>")]
    [InlineData("RCPT TO:<postmaster@alerts.example.com>")]
    public async Task Rcpt_PostmasterBareOrAtALocalDomain_IsAcceptedAndTheMailGoesToTheOperator(string rcpt)
    {
        await using var gw = await StartAsync();
        await using var wire = await gw.AuthenticatedAsync("dev-1");
        Assert.StartsWith("250", await wire.CommandAsync("MAIL FROM:<dev-1@devices.test>"));

        string accepted = await wire.CommandAsync(rcpt);
        string data = await wire.CommandAsync("DATA");
        await wire.SendRawAsync(SmtpGateway.PlainMail("Paper jam", "Tray 2 is jammed.", to: "postmaster") + "\r\n.\r\n");
        string queued = await wire.ReadReplyAsync();

        Assert.StartsWith("250", accepted);
        Assert.StartsWith("354", data);
        Assert.StartsWith("250 2.0.0 queued as", queued);
        string file = Assert.Single(await gw.MailAsync(1));
        Assert.Equal(["ops@example.com"], EnvelopeTo(file)); // Sender:Operator
        using var message = await MimeMessage.LoadAsync(file);
        Assert.Equal("Paper jam", message.Subject);
        Assert.Equal("edgemail@gw.test", message.From.Mailboxes.Single().Address);
    }

    [Fact]
    public async Task Rcpt_BarePostmasterFromAnAllowListedSource_IsAcceptedPipelinedAndABodyLineThatLooksLikeItIsLeftAlone()
    {
        await using var gw = await StartAsync();
        var (wire, _) = await SmtpWire.ConnectAsync(gw.Plain(), SmtpGateway.AllowListed);
        await using var _ = wire;
        await wire.CommandAsync("EHLO printer");
        string body = "RCPT TO:<postmaster>\r\nrcpt to:<postmaster> again";

        // One packet, as a pipelining client sends it (RFC 2920).
        await wire.SendRawAsync("MAIL FROM:<printer@lan.test>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n");
        string[] replies = [await wire.ReadReplyAsync(), await wire.ReadReplyAsync(), await wire.ReadReplyAsync(), await wire.ReadReplyAsync()];
        await wire.SendRawAsync(SmtpGateway.PlainMail("Toner low", body, from: "printer@lan.test", to: "postmaster") + "\r\n.\r\n");
        string queued = await wire.ReadReplyAsync();

        Assert.Equal(["250", "250", "250", "354"], replies.Select(r => r[..3]));
        Assert.StartsWith("250 2.0.0 queued as", queued);
        string file = Assert.Single(await gw.MailAsync(1));
        Assert.Equal(["bob@example.com", "ops@example.com"], EnvelopeTo(file).Order(StringComparer.Ordinal));
        string raw = await File.ReadAllTextAsync(file);
        Assert.EndsWith("\r\n\r\n" + body, raw.TrimEnd('\r', '\n')); // the body, byte for byte: only commands are read as commands
    }

    [Theory]
    [InlineData("RCPT TO:<postmaster@evil.example>")]
    [InlineData("RCPT TO:<postmaster@gw.test.evil.example>")]
    [InlineData("RCPT TO:<postmaster%evil.example@gw.test>")]
    [InlineData("RCPT TO:<postmasterx>")]
    [InlineData("RCPT TO:<@gw.test:postmaster@evil.example>")]
    public async Task Rcpt_PostmasterOfAnotherDomainOrALookalike_IsRefused(string rcpt)
    {
        await using var gw = await StartAsync();
        await using var wire = await gw.AuthenticatedAsync("dev-1");
        Assert.StartsWith("250", await wire.CommandAsync("MAIL FROM:<dev-1@devices.test>"));

        Assert.StartsWith("5", await wire.CommandAsync(rcpt));
        Assert.Equal(0, await Hostile.HostileKit.QueuedAsync(gw));
    }

    [Fact]
    public async Task Postmaster_DoesNotOpenAWayAroundAuthentication()
    {
        await using var gw = await StartAsync();
        var (wire, _) = await SmtpWire.ConnectAsync(gw.Plain()); // 127.0.0.1: not allow-listed, no AUTH on this port
        await using var _ = wire;
        await wire.CommandAsync("EHLO stranger");

        Assert.StartsWith("501 expected", await wire.CommandAsync("RCPT TO:<postmaster>")); // out of sequence: no MAIL yet (SmtpServer's reply)
        Assert.StartsWith("530 5.7.0", await wire.CommandAsync("MAIL FROM:<someone@elsewhere.example>"));
        Assert.StartsWith("501 expected", await wire.CommandAsync("RCPT TO:<postmaster>"));
        Assert.Equal(0, await Hostile.HostileKit.QueuedAsync(gw));
    }

    [Theory]
    [InlineData("", "edgemail@gw.test")] // no operator: the gateway's own address, as for failure notices
    [InlineData("bob", "bob@example.com")] // a user id
    public async Task Postmaster_GoesWhereFailureNoticesGo(string @operator, string expected)
    {
        await using var gw = await StartAsync(sender: new { Address = "edgemail@gw.test", DisplayName = "EdgeMail", Hostname = "gw.test", Operator = @operator });
        await using var wire = await gw.AuthenticatedAsync("dev-1");

        string reply = await wire.SendMailAsync("dev-1@devices.test", ["postmaster"], SmtpGateway.PlainMail("hello", "hi"));

        Assert.StartsWith("250", reply);
        Assert.Equal([expected], EnvelopeTo(Assert.Single(await gw.MailAsync(1))));
    }

    [Fact]
    public async Task Postmaster_ConfiguredAsAnAlias_GoesToTheAlias()
    {
        await using var gw = await StartAsync(smtp => smtp["Aliases"] = new Dictionary<string, object> { ["postmaster"] = new[] { "alice" } });
        await using var wire = await gw.AuthenticatedAsync("dev-1");

        string reply = await wire.SendMailAsync("dev-1@devices.test", ["postmaster"], SmtpGateway.PlainMail("hello", "hi"));

        Assert.StartsWith("250", reply);
        Assert.Equal(["alice@example.com"], EnvelopeTo(Assert.Single(await gw.MailAsync(1))));
    }

    [Theory]
    [InlineData("RCPT TO:<postmaster>\r", "RCPT TO:<postmaster@gw.test>\r\n")]
    [InlineData("rcpt  TO:   <PostMaster>", "RCPT TO:<postmaster@gw.test>\r\n")]
    [InlineData("RCPT TO:<postmaster> NOTIFY=NEVER\r", "RCPT TO:<postmaster@gw.test> NOTIFY=NEVER\r\n")]
    [InlineData("RCPT TO:<postmaster@gw.test>\r", null)]
    [InlineData("RCPT TO:<postmasters>\r", null)]
    [InlineData("RCPT TO:<\"postmaster\">\r", null)]
    [InlineData("RCPTTO:<postmaster>\r", null)]
    [InlineData("MAIL FROM:<postmaster>\r", null)]
    [InlineData("XRCPT TO:<postmaster>\r", null)]
    public void PostmasterPath_OnlyTheBareRcptFormGetsTheDomain(string line, string? expected)
    {
        bool rewritten = Gateway.Ingest.Smtp.PostmasterPath.TryAddDomain(System.Text.Encoding.ASCII.GetBytes(line), "gw.test", out byte[] result);

        Assert.Equal(expected is not null, rewritten);
        Assert.Equal(expected ?? string.Empty, System.Text.Encoding.ASCII.GetString(result));
    }
}
