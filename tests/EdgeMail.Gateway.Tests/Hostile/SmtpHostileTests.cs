using System.Text;
using EdgeMail.Gateway.Tests.Smtp;
using MimeKit;
using Xunit;

namespace EdgeMail.Gateway.Tests.Hostile;

/// <summary>One gateway shared by the protocol-abuse cases below (none of them changes per-source state).</summary>
public sealed class SmtpHostileFixture : IAsyncLifetime
{
    public TestGateway Gw { get; private set; } = null!;

    public async Task InitializeAsync() => Gw = await SmtpGateway.StartAsync();

    public async Task DisposeAsync() => await Gw.DisposeAsync();
}

public sealed class SmtpHostileTests(SmtpHostileFixture fixture) : IClassFixture<SmtpHostileFixture>
{
    private TestGateway Gw => fixture.Gw;

    private async Task AfterwardsAsync()
    {
        await HostileKit.AssertStillServesAsync(Gw);
        HostileKit.AssertNoMailForStrangers(Gw);
    }

    [Theory]
    [InlineData("alice%evil.example@gw.test")]            // percent hack
    [InlineData("victim%evil.example@example.com")]
    [InlineData("@gw.test:victim@evil.example")]          // source route
    [InlineData("evil.example!victim@gw.test")]           // bang path
    [InlineData("\"victim@evil.example\"@gw.test")]       // quoted local part
    [InlineData("alice\\@evil.example@gw.test")]          // escaped at
    [InlineData("alice@gw.test@evil.example")]            // user@host@target
    [InlineData("alice@[127.0.0.1]")]                    // IP-literal domains
    [InlineData("postmaster@[IPv6:::1]")]
    [InlineData("alice@example.com%0D%0ABcc:victim@evil.example")] // encoded line breaks
    [InlineData("=?utf-8?q?victim=40evil.example?=@gw.test")]
    [InlineData("alice@example.com.")]
    [InlineData("victim@evil.example")]
    [InlineData("postmaster@evil.example")] // the bare <postmaster> is ours (RFC 5321 §4.5.1, Smtp/PostmasterTests); another domain's is not
    public async Task Rcpt_RelayTrick_IsRefusedAndNothingIsQueued(string rcpt)
    {
        long before = await HostileKit.QueuedAsync(Gw);
        await using (var wire = await Gw.AuthenticatedAsync())
        {
            Assert.StartsWith("250", await wire.CommandAsync("MAIL FROM:<dev-1@devices.test>"));

            string reply = await wire.CommandAsync($"RCPT TO:<{rcpt}>");

            Assert.StartsWith("5", reply);
            Assert.StartsWith("5", await wire.CommandAsync("DATA"));
        }

        Assert.Equal(before, await HostileKit.QueuedAsync(Gw));
        await AfterwardsAsync();
    }

    [Theory]
    [InlineData("@evil.example,@gw.test:alice@example.com")] // RFC 5321: a source route is accepted and ignored
    [InlineData("\"alice\"@gw.test")]                      // a quoted atom is the same local part
    [InlineData("ALICE@EXAMPLE.COM")]
    public async Task Rcpt_HarmlessSpellingOfOurUser_IsAcceptedForThatUserOnly(string rcpt)
    {
        await using (var wire = await Gw.AuthenticatedAsync())
        {
            string reply = await wire.SendMailAsync("dev-1@devices.test", [rcpt], SmtpGateway.PlainMail("spelling", "x"));
            Assert.StartsWith("250 2.0.0 queued", reply);
            string file = await HostileKit.DeliveredAsync(Gw, reply);
            Assert.Equal("X-EdgeMail-Envelope-To: alice@example.com", File.ReadLines(file).First());
        }

        await AfterwardsAsync();
    }

    [Fact]
    public async Task Rcpt_BareCrBetweenTwoCommands_NeverAddsTheSecondRecipient()
    {
        await using (var wire = await Gw.AuthenticatedAsync())
        {
            await wire.CommandAsync("MAIL FROM:<dev-1@devices.test>");
            await wire.SendRawAsync("RCPT TO:<alice@example.com>\rRCPT TO:<victim@evil.example>\r\n");
            string rcpt = await wire.ReadReplyAsync();
            if (rcpt.StartsWith("250", StringComparison.Ordinal))
            {
                Assert.StartsWith("354", await wire.CommandAsync("DATA"));
                await wire.SendRawAsync("Subject: cr\r\n\r\nx\r\n.\r\n");
                string reply = await wire.ReadReplyAsync();
                Assert.Equal("X-EdgeMail-Envelope-To: alice@example.com", File.ReadLines(await HostileKit.DeliveredAsync(Gw, reply)).First());
            }
            else
            {
                Assert.StartsWith("5", rcpt);
            }
        }

        await AfterwardsAsync();
    }

    [Fact]
    public async Task Proxy_HeaderClaimingAnAllowListedSource_DoesNotMakeTheClientThatSource()
    {
        var (wire, _) = await SmtpWire.ConnectAsync(Gw.Plain());
        await using (wire)
        {
            await wire.SendRawAsync("PROXY TCP4 127.0.0.2 127.0.0.1 40000 25\r\n");
            Assert.StartsWith("250", await wire.CommandAsync("EHLO spoof"));

            Assert.StartsWith("530", await wire.CommandAsync("MAIL FROM:<ups@lan.test>"));
        }

        await AfterwardsAsync();
    }

    [Fact]
    public async Task Pipelining_UnauthenticatedBurstWithData_QueuesNothingAndAnswersEveryCommand()
    {
        long before = await HostileKit.QueuedAsync(Gw);
        var (wire, _) = await SmtpWire.ConnectAsync(Gw.Plain());
        await using (wire)
        {
            await wire.SendRawAsync("EHLO x\r\nMAIL FROM:<a@evil.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nSubject: spam\r\n\r\nspam\r\n.\r\nQUIT\r\n");
            Assert.StartsWith("250", await wire.ReadReplyAsync());
            Assert.StartsWith("530", await wire.ReadReplyAsync());
            Assert.StartsWith("5", await wire.ReadReplyAsync()); // RCPT without MAIL
            Assert.StartsWith("5", await wire.ReadReplyAsync()); // DATA without RCPT
        }

        Assert.Equal(before, await HostileKit.QueuedAsync(Gw));
        await AfterwardsAsync();
    }

    [Fact]
    public async Task Pipelining_AuthenticatedBurstWithOneStranger_DeliversOnlyToOurPeople()
    {
        await using (var wire = await Gw.AuthenticatedAsync())
        {
            string message = SmtpGateway.PlainMail("pipelined", "body");
            await wire.SendRawAsync($"MAIL FROM:<dev-1@devices.test>\r\nRCPT TO:<victim@evil.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n{message}\r\n.\r\n");
            Assert.StartsWith("250", await wire.ReadReplyAsync());
            Assert.StartsWith("550", await wire.ReadReplyAsync());
            Assert.StartsWith("250", await wire.ReadReplyAsync());
            Assert.StartsWith("354", await wire.ReadReplyAsync());
            Assert.StartsWith("250 2.0.0 queued", await wire.ReadReplyAsync());
        }

        await AfterwardsAsync();
    }

    [Theory]
    [InlineData("\x00\x01\x02\x03")]
    [InlineData("EHLO \x00evil")]
    [InlineData("HELO\x00")]
    [InlineData("\xff\xfe garbage \x80\x81")]
    [InlineData("MAIL FROM:<<<>>>")]
    [InlineData("MAIL FROM:")]
    [InlineData("RCPT TO:<alice@example.com>")]
    [InlineData("DATA")]
    [InlineData("BDAT 100 LAST")]
    [InlineData("VRFY alice")]
    [InlineData("EXPN oncall")]
    [InlineData("TURN")]
    [InlineData("AUTH PLAIN !!!not-base64!!!")]
    [InlineData("AUTH CRAM-MD5")]
    [InlineData("STARTTLS extra")]
    public async Task Command_Garbage_IsRefusedOrClosedAndTheServiceLivesOn(string garbage)
    {
        var (wire, _) = await SmtpWire.ConnectAsync(Gw.StartTls());
        await using (wire)
        {
            await wire.SendRawAsync(Encoding.Latin1.GetBytes(garbage + "\r\n"));
            string reply = await wire.ReadReplyAsync();

            Assert.True(reply.Length == 0 || reply[0] is '4' or '5', $"'{garbage}' was answered '{reply}'");
        }

        await AfterwardsAsync();
    }

    [Theory]
    [InlineData("AUTH PLAIN YWJj=", null)]                             // the right alphabet, not base64
    [InlineData("AUTH PLAIN bm8gbnVscw==", null)]                     // base64 of "no nuls"
    [InlineData("AUTH PLAIN", "YWJj=")]                                // the same as the response to 334
    [InlineData("AUTH PLAIN", "*")]                                    // the client cancels
    [InlineData("AUTH LOGIN", "*")]
    [InlineData("AUTH LOGIN YWJj=", null)]
    [InlineData("AUTH LOGIN", "Zg==\nZg==")]                           // SmtpServer reads to the CRLF: base64 past a bare LF
    [InlineData("AUTH PLAIN", "AGRldi0xAHg=\nZg==")]
    public async Task Auth_MalformedResponse_Is501_AndTheSessionGoesOnToAuthenticate(string command, string? response)
    {
        var (wire, _) = await SmtpWire.ConnectAsync(Gw.StartTls());
        await using (wire)
        {
            await wire.CommandAsync("EHLO device.test");
            await wire.StartTlsAsync();
            await wire.CommandAsync("EHLO device.test");

            string reply = await wire.CommandAsync(command);
            if (response is not null)
            {
                Assert.StartsWith("334", reply);
                reply = await wire.CommandAsync(response);
            }

            // Before: SmtpServer threw on the base64 and closed the connection without a word, or answered 535 twice.
            Assert.StartsWith("501 5.", reply);
            Assert.StartsWith("235", await wire.AuthPlainAsync("dev-1", TestGateway.Secret));
            Assert.StartsWith("250", await wire.CommandAsync("NOOP"));
        }

        await AfterwardsAsync();
    }

    [Fact]
    public async Task Command_RepeatedGarbage_ClosesTheConnection()
    {
        var (wire, _) = await SmtpWire.ConnectAsync(Gw.StartTls());
        await using (wire)
        {
            for (int i = 0; i < 5; i++)
            {
                await wire.SendRawAsync("NONSENSE\r\n");
            }

            Assert.True(await wire.IsClosedAsync());
        }

        await AfterwardsAsync();
    }

    [Theory]
    [InlineData(5000, true)]      // a long line that ends
    [InlineData(100_000, false)]  // a line that never ends
    public async Task Command_OverLongLine_IsAnswered500AndClosed(int length, bool withCrLf)
    {
        var (wire, _) = await SmtpWire.ConnectAsync(Gw.StartTls());
        await using (wire)
        {
            await wire.SendRawAsync("EHLO " + new string('a', length) + (withCrLf ? "\r\n" : string.Empty));

            Assert.StartsWith("500 5.5.2", await wire.ReadReplyAsync());
            Assert.True(await wire.IsClosedAsync());
        }

        await AfterwardsAsync();
    }

    // SmtpServer ends a command line only at CRLF: a client sending bare LFs and never a CRLF is sending one line. Before,
    // the LFs got it past the limit, and the gateway buffered it up to Smtp:MaxMessageBytes (10 MiB) per connection,
    // unauthenticated, before SmtpServer answered 552.
    [Fact]
    public async Task Command_BareLfsWithoutCrLf_AreOneOverLongLine_Answered500AndClosed()
    {
        var (wire, _) = await SmtpWire.ConnectAsync(Gw.StartTls());
        await using (wire)
        {
            await wire.SendRawAsync(string.Concat(Enumerable.Repeat("NOOP\n", 20_000)));

            Assert.StartsWith("500 5.5.2", await wire.ReadReplyAsync());
            Assert.True(await wire.IsClosedAsync());
        }

        await AfterwardsAsync();
    }

    [Fact]
    public async Task Data_BareLfDotBareLf_DoesNotEndTheMessageOrSmuggleASecondOne()
    {
        long before = await HostileKit.QueuedAsync(Gw);
        await using (var wire = await Gw.AuthenticatedAsync())
        {
            await wire.CommandAsync("MAIL FROM:<dev-1@devices.test>");
            await wire.CommandAsync("RCPT TO:<alice@example.com>");
            Assert.StartsWith("354", await wire.CommandAsync("DATA"));
            await wire.SendRawAsync("Subject: smuggle\r\n\r\nfirst\n.\nMAIL FROM:<x@evil.example>\nRCPT TO:<victim@evil.example>\nDATA\nsecond\r\n.\r\n");

            Assert.StartsWith("250", await wire.ReadReplyAsync());
            Assert.StartsWith("250", await wire.CommandAsync("NOOP"));
        }

        Assert.Equal(before + 1, await HostileKit.QueuedAsync(Gw));
        await AfterwardsAsync();
    }

    [Fact]
    public async Task Data_NulBytesAndNon8BitGarbage_AreStoredNotFatal()
    {
        await using (var wire = await Gw.AuthenticatedAsync())
        {
            await wire.CommandAsync("MAIL FROM:<dev-1@devices.test>");
            await wire.CommandAsync("RCPT TO:<alice@example.com>");
            await wire.CommandAsync("DATA");
            await wire.SendRawAsync([.. "Subject: nul\r\n\r\nbefore\0after \xff\xfe\r\n"u8.ToArray(), .. ".\r\n"u8.ToArray()]);

            Assert.StartsWith("250", await wire.ReadReplyAsync());
        }

        await AfterwardsAsync();
    }

    [Fact]
    public async Task Data_RecipientHeadersAndForgedTraceHeaders_DoNotAddRecipientsOrSurvive()
    {
        string message = "From: =?utf-8?q?Evil=0D=0ABcc=3A_victim=40evil.example?= <ups@lan.test>\r\nTo: victim@evil.example\r\nCc: victim2@evil.example\r\n"
            + "Bcc: victim3@evil.example\r\nX-EdgeMail-Device: dev-2\r\nX-EdgeMail-Original-From: ceo@example.com\r\nReturn-Path: <victim@evil.example>\r\n"
            + "Subject: =?utf-8?q?hi=0D=0ABcc=3A_victim4=40evil.example?=\r\n\r\nbody\r\n";
        string reply;
        await using (var wire = await Gw.AuthenticatedAsync("dev-1"))
        {
            reply = await wire.SendMailAsync("dev-1@devices.test", ["bob@example.com"], message);
            Assert.StartsWith("250", reply);
        }

        string file = await HostileKit.DeliveredAsync(Gw, reply);
        await HostileKit.AssertStillServesAsync(Gw);
        HostileKit.AssertNoMailForStrangers(Gw);
        Assert.Equal("X-EdgeMail-Envelope-To: bob@example.com", File.ReadLines(file).First());
        var mine = (File: file, Mime: Load(file));
        Assert.Null(mine.Mime.Headers[HeaderId.Bcc]);
        Assert.Null(mine.Mime.Headers[HeaderId.ReturnPath]);
        Assert.Equal("dev-1", Assert.Single(mine.Mime.Headers, h => h.Field == "X-EdgeMail-Device").Value);
        Assert.Single(mine.Mime.Headers, h => h.Field == "X-EdgeMail-Original-From");
        Assert.Equal("edgemail@gw.test", Assert.Single(mine.Mime.From.Mailboxes).Address);
        Assert.DoesNotContain('\n', Assert.Single(mine.Mime.ReplyTo.Mailboxes).Name ?? string.Empty);
    }

    [Fact]
    public async Task StartTls_PipelinedCommandBeforeHandshake_IsNotExecutedAfterIt()
    {
        long before = await HostileKit.QueuedAsync(Gw);
        var (wire, _) = await SmtpWire.ConnectAsync(Gw.StartTls());
        await using (wire)
        {
            await wire.CommandAsync("EHLO x");
            await wire.SendRawAsync("STARTTLS\r\nRSET\r\nMAIL FROM:<x@evil.example>\r\n");
            string reply = await wire.ReadReplyAsync();
            if (reply.StartsWith("220", StringComparison.Ordinal))
            {
                try
                {
                    await wire.StartTlsAfterReplyAsync();
                    string ehlo = await wire.CommandAsync("EHLO x");
                    Assert.StartsWith("250", ehlo); // the first reply after the handshake answers our EHLO, not the injected commands
                    Assert.StartsWith("250", await wire.CommandAsync("NOOP"));
                }
                catch (IOException)
                {
                    // The injected plaintext broke the handshake: also safe.
                }
            }
        }

        Assert.Equal(before, await HostileKit.QueuedAsync(Gw));
        await AfterwardsAsync();
    }

    private static MimeMessage Load(string file)
    {
        using var stream = File.OpenRead(file);
        return MimeMessage.Load(stream);
    }
}
