using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// Direct MX delivery against a real DNS server on loopback (Debian's dnsmasq on an OS-chosen port) and a real SMTP
/// server standing in for every exchanger (a second one on 127.0.0.2 where a test needs two hosts): MX preference order,
/// implicit MX (A record only), NXDOMAIN, null MX, falling back past a refused session, an unreachable address or a 4xx
/// for every recipient, and to plain text after a failed STARTTLS (a server with a certificate but not its key).
/// </summary>
public sealed class DirectMxTests
{
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_DeliversByMxPreferenceImplicitMxAndFailsNxdomain()
    {
        await using var mx = await SmtpTestServer.StartAsync();
        using var dns = await Dnsmasq.StartAsync(
            "--mx-host=mx.example.test,mx-backup.example.test,20",
            "--mx-host=mx.example.test,mx-primary.example.test,10",
            "--host-record=mx-primary.example.test,127.0.0.1",
            "--host-record=mx-backup.example.test,127.0.0.2",
            "--host-record=implicit.example.test,127.0.0.1", // an A record and no MX: the implicit MX
            "--host-record=ops.example.test,127.0.0.1",
            "--local=/example.test/"); // answered only from the above: anything else is NXDOMAIN

        await using var gw = await TestGateway.StartAsync(c =>
        {
            c["Sender"] = new { Address = "edgemail@gw.test", DisplayName = "EdgeMail", Hostname = "gw.test", Operator = "ops@ops.example.test" };
            c["Users"] = new Dictionary<string, object>
            {
                ["alice"] = new { Name = "Alice", Email = "alice@mx.example.test" },
                ["bob"] = new { Name = "Bob", Email = "bob@implicit.example.test" },
                ["carol"] = new { Name = "Carol", Email = "carol@nowhere.example.test" },
            };
            c["Relay"] = new { Mode = "DirectMx", DnsServer = "127.0.0.1:" + dns.Port.ToString(CultureInfo.InvariantCulture), MxPort = mx.Port, Backoff = new[] { "00:10:00" }, Timeout = "00:00:05" };
            c["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "alice", "bob", "carol" } } };
        });
        using var device = await gw.ConnectAsync("dev-1");
        var failed = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        device.ApplicationMessageReceivedAsync += e =>
        {
            string json = e.ApplicationMessage.ConvertPayloadToString();
            if (json.Contains("\"state\":\"failed\"", StringComparison.Ordinal))
            {
                failed.TrySetResult(json);
            }

            return Task.CompletedTask;
        };
        await device.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);
        await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
            .WithPayload(Alerts.Json("mx-1")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());

        // One transaction per domain: mx.example.test via its preferred exchanger, implicit.example.test via its A
        // record, and the failure notice to the operator; nowhere.example.test does not exist and fails for good.
        var received = new List<ReceivedMail>();
        for (int i = 0; i < 3; i++)
        {
            try
            {
                received.Add(await mx.NextAsync());
            }
            catch (TimeoutException ex)
            {
                throw new TimeoutException($"mail {i + 1} of 3 did not arrive; got {string.Join(", ", received.Select(r => string.Join('+', r.To)))}; dnsmasq: {string.Join(" | ", dns.Log)}", ex);
            }
        }

        string receipt = await Await.Within(failed.Task, "the failed receipt for the NXDOMAIN recipient");

        var alerts = received.Where(r => r.Message.MessageId == "dev-1.mx-1.alert@gw.test").ToList();
        Assert.Equal(["alice@mx.example.test", "bob@implicit.example.test"], alerts.SelectMany(a => a.To).Order());
        var notice = Assert.Single(received, r => r.Message.MessageId != "dev-1.mx-1.alert@gw.test");
        Assert.Equal(["ops@ops.example.test"], notice.To);
        Assert.Contains("carol@nowhere.example.test", notice.Message.TextBody, StringComparison.Ordinal);
        Assert.Contains("does not exist", receipt, StringComparison.Ordinal);

        // The exchanger was reached through the MX preferred by DNS (127.0.0.1), never the backup (127.0.0.2).
        Assert.Contains(dns.Log, l => l.Contains("mx-primary.example.test", StringComparison.Ordinal));
        Assert.DoesNotContain(dns.Log, l => l.Contains("query[A] mx-backup.example.test", StringComparison.Ordinal));
    }

    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_NullMx_FailsTheRecipientAtOnceAndConnectsNowhere()
    {
        await using var mx = await SmtpTestServer.StartAsync();
        using var dns = await Dnsmasq.StartAsync(
            "--mx-host=nomail.example.test,.,0", // the null MX of RFC 7505: preference 0, exchange the root
            "--host-record=nomail.example.test,127.0.0.1", // its address is the test exchanger's: not an implicit MX
            "--local=/example.test/");

        await using var gw = await TestGateway.StartAsync(c =>
        {
            // The operator's domain does not exist either: nothing at all may reach the exchanger.
            c["Sender"] = new { Address = "edgemail@gw.test", DisplayName = "EdgeMail", Hostname = "gw.test", Operator = "ops@nowhere.example.test" };
            c["Users"] = new Dictionary<string, object> { ["alice"] = new { Name = "Alice", Email = "alice@nomail.example.test" } };
            c["Groups"] = new Dictionary<string, object>();
            c["Relay"] = new { Mode = "DirectMx", DnsServer = "127.0.0.1:" + dns.Port.ToString(CultureInfo.InvariantCulture), MxPort = mx.Port, Backoff = new[] { "00:10:00" }, Timeout = "00:00:05" };
            c["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "alice" } } };
        });
        using var device = await gw.ConnectAsync("dev-1");
        await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
            .WithPayload(Alerts.Json("null-1")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());

        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("dev-1.null-1.alert@gw.test", default)) is { } m && m.Status != "queued",
            "the first attempt recorded");
        var state = (await gw.Spool.GetMessageAsync("dev-1.null-1.alert@gw.test", default))!;
        Assert.True(state.Status == "failed", $"{state.Status}: {state.LastReply}; dnsmasq: {string.Join(" | ", dns.Log)}");
        Assert.Equal("556 5.1.10 nomail.example.test accepts no mail (null MX, RFC 7505)", state.LastReply);
        Assert.Equal(0, mx.Connections);
    }

    [PeerFact("dnsmasq:dnsmasq-base")]
    public Task Relay_DirectMx_PrimaryGreets421_TheBackupGetsTheMailInTheSameAttempt() =>
        PrimaryRefusesTheSessionAsync("421 mx-primary.example.test 4.3.2 too busy, try later");

    [PeerFact("dnsmasq:dnsmasq-base")]
    public Task Relay_DirectMx_PrimaryGreets554_TheBackupGetsTheMailInTheSameAttempt() =>
        PrimaryRefusesTheSessionAsync("554 mx-primary.example.test 5.7.1 no SMTP service here");

    [PeerFact("dnsmasq:dnsmasq-base")]
    public Task Relay_DirectMx_PrimaryRefusesEhloAndHelo_TheBackupGetsTheMailInTheSameAttempt() =>
        PrimaryRefusesThenTheBackupTakesItAsync(c => c.Verb is "EHLO" or "HELO" ? new SmtpReply(550, "5.7.1 go away") : null, askedLast: "HELO"); // EHLO refused, then HELO

    // A primary that turns every recipient away for now (MAIL FROM refused with a 4xx: overloaded, or its disk full) has
    // nobody's copy: the backup is the next exchanger to try, as with an unreachable primary (RFC 5321 5.1). Otherwise
    // a primary that keeps refusing so would have the mail bounce at Relay:MaxAge with a backup that takes it.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public Task Relay_DirectMx_PrimaryRefusesEveryRecipientFor4xx_TheBackupGetsTheMailInTheSameAttempt() =>
        PrimaryRefusesThenTheBackupTakesItAsync(c => c.Verb == "MAIL" ? new SmtpReply(452, "4.3.1 insufficient system storage") : null, askedLast: "MAIL");

    // The primary (127.0.0.1) answers a command with a refusal; the backup (127.0.0.2, same port) gets the mail in the
    // same attempt, and the primary was asked the command it refused.
    private static async Task PrimaryRefusesThenTheBackupTakesItAsync(Func<SmtpCommandSeen, SmtpReply?> refusal, string askedLast)
    {
        await using var primary = await SmtpTestServer.StartAsync();
        primary.OnCommand = refusal;
        await using var backup = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2"), Port = primary.Port });
        var state = await SendOneAsync(primary.Port, "mx-1",
            "--mx-host=mx.example.test,mx-primary.example.test,10", "--mx-host=mx.example.test,mx-backup.example.test,20",
            "--host-record=mx-primary.example.test,127.0.0.1", "--host-record=mx-backup.example.test,127.0.0.2");

        Assert.True(state.Status == "sent", $"{state.Status}: {state.LastReply}");
        Assert.Equal(["alice@mx.example.test"], Assert.Single(backup.Received).To);
        Assert.Contains(primary.Commands, c => c.Verb == askedLast);
        Assert.Empty(primary.Messages);
    }

    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_EveryExchangerRefusesEveryRecipientFor4xx_TheMailIsDeferredWithTheLastReply()
    {
        await using var mx = await SmtpTestServer.StartAsync();
        mx.Recipients["alice@mx.example.test"] = new SmtpReply(450, "4.2.0 greylisted, come back later");
        var state = await SendOneAsync(mx.Port, "mx-1", "--mx-host=mx.example.test,mx-primary.example.test,10", "--host-record=mx-primary.example.test,127.0.0.1");

        Assert.True(state.Status == "queued", $"{state.Status}: {state.LastReply}");
        Assert.StartsWith("450 4.2.0 greylisted, come back later", state.LastReply, StringComparison.Ordinal);
    }

    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_EveryExchangerGreets554_TheMailIsDeferredNotBounced()
    {
        await using var mx = await SmtpTestServer.StartAsync(new() { Greeting = () => "554 mx-primary.example.test 5.7.1 client host blocked" });
        var state = await SendOneAsync(mx.Port, "mx-1", "--mx-host=mx.example.test,mx-primary.example.test,10", "--host-record=mx-primary.example.test,127.0.0.1");

        // As Postfix with smtp_skip_5xx_greeting=yes: a refused session is about the sending host (a block list, say),
        // not the recipient; the mail waits and is retried until Relay:MaxAge.
        Assert.True(state.Status == "queued", $"{state.Status}: {state.LastReply}");
        Assert.StartsWith("451 4.4.1 exchanger mx-primary.example.test: ", state.LastReply, StringComparison.Ordinal);
        Assert.Contains("554 mx-primary.example.test 5.7.1 client host blocked", state.LastReply, StringComparison.Ordinal);
        Assert.Equal(1, mx.Connections);
    }

    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_ExchangersFirstAddressRefusesConnections_TheSecondGetsTheMail()
    {
        await using var mx = await SmtpTestServer.StartAsync();
        var state = await SendOneAsync(mx.Port, "mx-1",
            "--mx-host=mx.example.test,mx-primary.example.test,10",
            "--host-record=mx-primary.example.test,127.0.0.3", // first in the answer, and nothing listens there
            "--host-record=mx-primary.example.test,127.0.0.1");

        Assert.True(state.Status == "sent", $"{state.Status}: {state.LastReply}");
        Assert.Equal(["alice@mx.example.test"], Assert.Single(mx.Received).To);
    }

    // What DeliveryWorker records before the attempt ends: each domain's recipients its exchanger accepted, handed over
    // before the next domain is tried; never a failure or deferral (they go with the attempt's result and its notice),
    // never the last domain's (the attempt's result follows at once), so a mail to one domain costs no extra commit.
    // Before each connection but the first the relay asks, with nobody, whether it may go on (a lost claim).
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_HandsOverEachDomainsAcceptedRecipientsBeforeTheNextDomain_NotTheLastDomainsNorFailures()
    {
        await using var mx = await SmtpTestServer.StartAsync();
        await using var mx2 = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2"), Port = mx.Port });
        mx2.Recipients["bad@b.example.test"] = new SmtpReply(550, "5.1.1 no such user");
        using var dns = await Dnsmasq.StartAsync(
            "--mx-host=a.example.test,mx-a.example.test,10", "--host-record=mx-a.example.test,127.0.0.1",
            "--mx-host=b.example.test,mx-b.example.test,10", "--host-record=mx-b.example.test,127.0.0.2",
            "--host-record=c.example.test,127.0.0.1",
            "--local=/example.test/");
        await using var relay = new DirectMxRelay(new EdgeMail.Gateway.Configuration.RelayOptions
        {
            Mode = "DirectMx", DnsServer = "127.0.0.1:" + dns.Port.ToString(CultureInfo.InvariantCulture), MxPort = mx.Port, Timeout = TimeSpan.FromSeconds(5),
        }, "gw.test");
        var handed = new List<(int Received, string Sent)>();
        var asked = new List<int>();
        PartSent partSent = (_, sent, _) =>
        {
            // How many mails had arrived when the part was handed over: the next domain had not been tried yet.
            int received = mx.Received.Count + mx2.Received.Count;
            if (sent.Count > 0)
            {
                handed.Add((received, string.Join(", ", sent.Select(r => r.Address + " " + r.Outcome))));
            }
            else
            {
                asked.Add(received);
            }

            return Task.FromResult<string?>(null);
        };

        // Domains in the order of their first recipient: a, b (one refused), nowhere (NXDOMAIN), c.
        var results = await relay.SendAsync(Mail("split", "alice@a.example.test", "bad@b.example.test", "bob@b.example.test", "carol@nowhere.example.test", "zed@c.example.test"),
            partSent, CancellationToken.None).WaitAsync(Await.DefaultTimeout);
        var single = await relay.SendAsync(Mail("single", "alice@a.example.test"), partSent, CancellationToken.None).WaitAsync(Await.DefaultTimeout);

        Assert.Equal(
            ["alice@a.example.test sent", "bad@b.example.test failed", "bob@b.example.test sent", "carol@nowhere.example.test failed", "zed@c.example.test sent"],
            results.Select(r => r.Address + " " + r.Outcome));
        Assert.Equal(RecipientOutcome.Sent, Assert.Single(single).Outcome);
        Assert.Equal([(1, "alice@a.example.test sent"), (2, "bob@b.example.test sent")], handed);
        Assert.Equal([1, 2], asked); // before b and before c; nowhere has no exchanger to connect to
        Assert.Equal(4, mx.Received.Count + mx2.Received.Count);
    }

    // RFC 5321 4.5.3.1.10, as a smarthost's limit is met: the recipients past the exchanger's limit per transaction follow
    // at once in a further transaction to the same exchanger, on the same connection, not a Relay:Backoff step later.
    // Each transaction's recipients are on record before the next begins (what the spool held when each message's data
    // came), so none gets the mail twice.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_ExchangerTakesTwoRecipientsPerTransaction_The452dRestFollowAtOnceOnTheSameConnection_EachGetsItOnce()
    {
        await using var mx = await SmtpTestServer.StartAsync();
        mx.OnCommand = SmarthostTests.RecipientLimit(2);
        await using var backup = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2"), Port = mx.Port });
        using var dns = await Dnsmasq.StartAsync(TwoExchangers);
        await using var gw = await TestGateway.StartAsync(c => DirectMxEarlyRecordTests.DirectMx(c, dns, mx.Port), s => s.AddSingleton<TimeProvider>(StillClock()));
        var onRecord = new ConcurrentQueue<string[]>();
        mx.OnData = _ =>
        {
            var detail = DirectMxEarlyRecordTests.DetailAsync(gw.Spool, "limit-1@gw.test").GetAwaiter().GetResult();
            onRecord.Enqueue([.. detail.Recipients.Where(r => r.Status == "sent").Select(r => r.Address).Order(StringComparer.Ordinal)]);
            return SmtpReply.Ok;
        };

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("limit-1", Five), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("limit-1@gw.test", default))?.Attempts == 1, "the first attempt recorded");

        Assert.Equal([Five[..2], Five[2..4], Five[4..]], mx.Received.Select(m => m.To).ToList());
        Assert.Equal(1, mx.Connections);
        Assert.Equal(0, backup.Connections);
        Assert.Equal([[], Five[..2], Five[..4]], onRecord);
        var detail = await DirectMxEarlyRecordTests.DetailAsync(gw.Spool, "limit-1@gw.test");
        Assert.Equal(MessageStatus.Sent, detail.Summary.Status);
        Assert.All(detail.Recipients, r => Assert.StartsWith("250 ", r.Reply, StringComparison.Ordinal));
        Assert.Equal(Five.Select(r => (r, "sent")), Assert.Single(detail.Attempts).Results.Select(r => (r.Address, r.Outcome)).Order());
    }

    // A follow-up transaction that delivers to nobody ends that: its recipients are not asked for again and again, nor
    // passed to the next exchanger (this one has the others' copies), and wait for the Relay:Backoff step.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_Exchanger452sEveryRecipientOfTheFollowUp_TheyWaitForTheBackoffStep_NoOtherExchangerIsTried()
    {
        await using var mx = await SmtpTestServer.StartAsync();
        int rcpts = 0;
        mx.OnCommand = c => c.Verb == "RCPT" && Interlocked.Increment(ref rcpts) > 1 ? new SmtpReply(452, "4.5.3 Error: too many recipients") : null;
        await using var backup = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2"), Port = mx.Port });
        using var dns = await Dnsmasq.StartAsync(TwoExchangers);
        var clock = StillClock();
        await using var gw = await TestGateway.StartAsync(c => DirectMxEarlyRecordTests.DirectMx(c, dns, mx.Port), s => s.AddSingleton<TimeProvider>(clock));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("limit-2", Five[..4]), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("limit-2@gw.test", default))?.Attempts == 1, "the first attempt recorded");

        Assert.Equal([Five[..1]], mx.Received.Select(m => m.To).ToList());
        Assert.Equal(2, mx.Commands.Count(c => c.Verb == "MAIL"));
        Assert.Equal(0, backup.Connections);
        var detail = await DirectMxEarlyRecordTests.DetailAsync(gw.Spool, "limit-2@gw.test");
        Assert.Equal((MessageStatus.Queued, clock.GetUtcNow() + TimeSpan.FromMinutes(1)), (detail.Summary.Status, detail.Summary.NextAttemptAt));
        Assert.Equal([(Five[0], "sent"), (Five[1], "deferred"), (Five[2], "deferred"), (Five[3], "deferred")],
            Assert.Single(detail.Attempts).Results.Select(r => (r.Address, r.Outcome)).Order());
        Assert.All(detail.Attempts[0].Results.Where(r => r.Outcome == RecipientOutcome.Deferred), r => Assert.StartsWith("452 4.5.3 Error: too many recipients", r.Reply, StringComparison.Ordinal));
    }

    // RFC 5321 5.1: a primary whose TLS is broken is no reason to wait while the backup takes the mail encrypted.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_PrimarysTlsHandshakeFails_TheBackupGetsTheMailOverTlsInTheSameAttempt()
    {
        await using var primary = await SmtpTestServer.StartAsync(new() { Certificate = KeylessCertificate() });
        await using var backup = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2"), Port = primary.Port, Certificate = SmarthostTlsTests.Certificate.Value });
        using var dns = await Dnsmasq.StartAsync(TwoExchangers);
        await using var gw = await TestGateway.StartAsync(c => DirectMxEarlyRecordTests.DirectMx(c, dns, primary.Port), s => s.AddSingleton<TimeProvider>(StillClock()));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("tls-1", Five[..1]), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("tls-1@gw.test", default))?.Attempts == 1, "the first attempt recorded");

        Assert.Equal(MessageStatus.Sent, (await gw.Spool.GetMessageAsync("tls-1@gw.test", default))!.Status);
        Assert.True(Assert.Single(backup.Received).Secure);
        Assert.Contains(primary.Commands, c => c.Verb == "STARTTLS");
        Assert.Equal(1, primary.Connections);
        Assert.Empty(primary.Messages);
    }

    // As Postfix's smtp client at smtp_tls_security_level=may (smtp_proto.c): an exchanger that offers STARTTLS and then
    // refuses it is talked to in plain text, at once.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_ExchangerRefusesStartTls_TheMailGoesToItInPlainTextInTheSameAttempt()
    {
        await using var mx = await SmtpTestServer.StartAsync(new() { Certificate = SmarthostTlsTests.Certificate.Value });
        mx.OnCommand = c => c.Verb == "STARTTLS" ? new SmtpReply(454, "4.7.0 TLS not available due to local problem") : null;
        using var dns = await Dnsmasq.StartAsync(TwoExchangers[0], TwoExchangers[2], TwoExchangers[4]); // the primary only
        await using var gw = await TestGateway.StartAsync(c => DirectMxEarlyRecordTests.DirectMx(c, dns, mx.Port), s => s.AddSingleton<TimeProvider>(StillClock()));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("tls-2", Five[..1]), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("tls-2@gw.test", default))?.Attempts == 1, "the first attempt recorded");

        var state = (await gw.Spool.GetMessageAsync("tls-2@gw.test", default))!;
        Assert.True(state.Status == MessageStatus.Sent, $"{state.Status}: {state.LastReply}");
        Assert.False(Assert.Single(mx.Received).Secure);
        Assert.Equal(2, mx.Connections);
        var warning = Assert.Single(gw.Logs.Warnings, w => w.Category == typeof(DirectMxRelay).FullName);
        Assert.Contains("mx-primary.example.test", warning.Message, StringComparison.Ordinal);
        Assert.Contains("454 4.7.0 TLS not available due to local problem", warning.Message, StringComparison.Ordinal);
    }

    // As Postfix's smtp client at smtp_tls_security_level=may (smtp_proto.c, PLAINTEXT_FALLBACK_OK_AFTER_STARTTLS_FAILURE):
    // a failed handshake passes a mail on its first attempt to the next exchanger, where it may go encrypted, and
    // defers it when there is none; a mail that has waited (Postfix: minimal_backoff_time) goes to the same exchanger
    // in plain text at once. Otherwise mail to a domain whose only exchanger's TLS is broken would bounce at MaxAge.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_ExchangersTlsHandshakeFails_TheFirstAttemptDefers_TheNextGoesToItInPlainText()
    {
        await using var mx = await SmtpTestServer.StartAsync(new() { Certificate = KeylessCertificate() });
        using var dns = await Dnsmasq.StartAsync(TwoExchangers[0], TwoExchangers[2], TwoExchangers[4]); // the primary only
        var clock = StillClock();
        await using var gw = await TestGateway.StartAsync(c => DirectMxEarlyRecordTests.DirectMx(c, dns, mx.Port), s => s.AddSingleton<TimeProvider>(clock));
        var worker = gw.Host.Services.GetRequiredService<DeliveryWorker>();

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("tls-3", Five[..1]), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("tls-3@gw.test", default))?.Attempts == 1, "the first attempt recorded");

        var first = (await gw.Spool.GetMessageAsync("tls-3@gw.test", default))!;
        Assert.True(first.Status == MessageStatus.Queued, $"{first.Status}: {first.LastReply}");
        Assert.StartsWith("451 4.4.1 exchanger mx-primary.example.test: ", first.LastReply, StringComparison.Ordinal);
        Assert.Equal(1, mx.Connections);
        Assert.DoesNotContain(gw.Logs.Warnings, w => w.Category == typeof(DirectMxRelay).FullName);

        clock.Advance(TimeSpan.FromMinutes(1));
        worker.Wake();
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("tls-3@gw.test", default))?.Attempts == 2, "the second attempt recorded");

        var second = (await gw.Spool.GetMessageAsync("tls-3@gw.test", default))!;
        Assert.True(second.Status == MessageStatus.Sent, $"{second.Status}: {second.LastReply}");
        Assert.False(Assert.Single(mx.Received).Secure);
        Assert.Equal(3, mx.Connections); // STARTTLS on the first attempt; STARTTLS, then plain text on the second
        var warning = Assert.Single(gw.Logs.Warnings, w => w.Category == typeof(DirectMxRelay).FullName);
        Assert.Contains("mx-primary.example.test", warning.Message, StringComparison.Ordinal);
        Assert.Contains("TLS handshake", warning.Message, StringComparison.Ordinal);
    }

    // A server whose TLS is misconfigured: it offers STARTTLS, answers it 220, and cannot complete a handshake (its
    // certificate comes without the private key).
    private static X509Certificate2 KeylessCertificate() => X509CertificateLoader.LoadCertificate(SmarthostTlsTests.Certificate.Value.RawData);

    private static readonly string[] Five = ["r1@mx.example.test", "r2@mx.example.test", "r3@mx.example.test", "r4@mx.example.test", "r5@mx.example.test"];

    // mx.example.test's primary (127.0.0.1) and backup (127.0.0.2) exchangers; nothing else resolves.
    private static readonly string[] TwoExchangers =
    [
        "--mx-host=mx.example.test,mx-primary.example.test,10", "--mx-host=mx.example.test,mx-backup.example.test,20",
        "--host-record=mx-primary.example.test,127.0.0.1", "--host-record=mx-backup.example.test,127.0.0.2", "--local=/example.test/",
    ];

    // A clock that stands still: a deferred mail is not tried again within the test.
    private static FakeTimeProvider StillClock() => new(DateTimeOffset.FromUnixTimeSeconds(1_800_000_000));

    private static QueuedMessage Mail(string id, params string[] to)
    {
        var now = new DateTimeOffset(2026, 12, 5, 10, 0, 0, TimeSpan.Zero);
        byte[] wire = Encoding.ASCII.GetBytes($"From: <ups-1@lan.example.com>\r\nTo: <ops@example.com>\r\nSubject: {id}\r\nMessage-ID: <{id}@lan.example.com>\r\n\r\nMains lost.\r\n");
        return new QueuedMessage(1, "relay", "ups-1", null, id + "@lan.example.com", "alerts@example.com", to, wire, 0, now, now.AddDays(5));
    }

    private static async Task PrimaryRefusesTheSessionAsync(string greeting)
    {
        await using var primary = await SmtpTestServer.StartAsync(new() { Greeting = () => greeting });
        await using var backup = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2"), Port = primary.Port });
        var state = await SendOneAsync(primary.Port, "mx-1",
            "--mx-host=mx.example.test,mx-primary.example.test,10", "--mx-host=mx.example.test,mx-backup.example.test,20",
            "--host-record=mx-primary.example.test,127.0.0.1", "--host-record=mx-backup.example.test,127.0.0.2");

        Assert.True(state.Status == "sent", $"{state.Status}: {state.LastReply}");
        Assert.Equal(["alice@mx.example.test"], Assert.Single(backup.Received).To);
        Assert.Equal(1, primary.Connections);
        Assert.Empty(primary.Messages);
    }

    // One alert to alice@mx.example.test by direct MX on port mxPort, resolved by dnsmasq with records; the mail's state
    // once its first attempt is recorded (a deferral would come back only after ten minutes).
    private static Task<EdgeMail.Gateway.Spool.MessageState> SendOneAsync(int mxPort, string alertId, params string[] records) =>
        SendOneAsync(mxPort, alertId, records, timeout: "00:00:05");

    private static async Task<EdgeMail.Gateway.Spool.MessageState> SendOneAsync(int mxPort, string alertId, string[] records, string timeout)
    {
        using var dns = await Dnsmasq.StartAsync([.. records, "--local=/example.test/"]);
        await using var gw = await TestGateway.StartAsync(c =>
        {
            c["Users"] = new Dictionary<string, object> { ["alice"] = new { Name = "Alice", Email = "alice@mx.example.test" } };
            c["Groups"] = new Dictionary<string, object>();
            c["Relay"] = new { Mode = "DirectMx", DnsServer = "127.0.0.1:" + dns.Port.ToString(CultureInfo.InvariantCulture), MxPort = mxPort, Backoff = new[] { "00:10:00" }, Timeout = timeout };
            c["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "alice" } } };
        });
        using var device = await gw.ConnectAsync("dev-1");
        await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
            .WithPayload(Alerts.Json(alertId)).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());

        string id = $"dev-1.{alertId}.alert@gw.test";
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync(id, default)) is { } m && (m.Attempts >= 1 || m.Status != "queued"),
            "the first attempt recorded");
        return (await gw.Spool.GetMessageAsync(id, default))!;
    }

    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_ExchangerNeverAnswersQuit_TheMailIsSentOnceAndRecordedSent()
    {
        await using var mx = await SmtpTestServer.StartAsync();
        mx.OnCommand = c => c.Verb == "QUIT" ? SmtpReply.Hang : null;

        // The 250 to the end of the data is the delivery; the QUIT after it that times out changes nothing.
        var state = await SendOneAsync(mx.Port, "quit-1", ["--mx-host=mx.example.test,mx-primary.example.test,10", "--host-record=mx-primary.example.test,127.0.0.1"],
            timeout: "00:00:01");

        Assert.True(state.Status == "sent", $"{state.Status}: {state.LastReply}");
        Assert.Single(mx.Received);
    }
}
