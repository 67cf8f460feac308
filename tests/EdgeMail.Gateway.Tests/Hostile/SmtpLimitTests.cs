using EdgeMail.Gateway.Tests.Smtp;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Hostile;

public sealed class SmtpLimitTests
{
    [Fact]
    public async Task Auth_BruteForceAcrossConnections_EndsIn421ForThatSourceOnly()
    {
        await using var gw = await SmtpGateway.StartAsync(smtp => smtp["AuthFailuresPerSource"] = 4);
        await using (var first = await StartTlsSessionAsync(gw))
        {
            Assert.StartsWith("535", await first.AuthPlainAsync("dev-1", "guess1"));
            Assert.StartsWith("535", await first.AuthPlainAsync("dev-1", "guess2"));
            Assert.StartsWith("535", await first.AuthPlainAsync("dev-1", "guess3"));
            Assert.True(await first.IsClosedAsync()); // three attempts per session
        }

        await using (var second = await StartTlsSessionAsync(gw))
        {
            Assert.StartsWith("535", await second.AuthPlainAsync("dev-2", "guess4"));
            Assert.StartsWith("421 4.7.0", await second.AuthPlainAsync("dev-1", TestGateway.Secret)); // blocked even with the right secret
            Assert.True(await second.IsClosedAsync());
        }

        await HostileKit.AssertStillServesAsync(gw); // another source is not affected
    }

    [Fact]
    public async Task Auth_ADeviceWithAStaleSecretRetrying_LocksOutOnlyItself_NotTheOtherDevicesAtItsAddress()
    {
        await using var gw = await SmtpGateway.StartAsync(smtp => smtp["AuthFailuresPerDevice"] = 2);
        await using (var stale = await StartTlsSessionAsync(gw))
        {
            Assert.StartsWith("535", await stale.AuthPlainAsync("dev-1", "old-secret"));
            Assert.StartsWith("535", await stale.AuthPlainAsync("dev-1", "old-secret"));
            Assert.StartsWith("421 4.7.0", await stale.AuthPlainAsync("dev-1", TestGateway.Secret)); // that device id is locked out
            Assert.True(await stale.IsClosedAsync());
        }

        for (int i = 0; i < 12; i++) // it keeps retrying: refused unverified, not counted against the address
        {
            await using var again = await StartTlsSessionAsync(gw);
            Assert.StartsWith("421 4.7.0", await again.AuthPlainAsync("dev-1", "old-secret"));
        }

        await using var neighbour = await StartTlsSessionAsync(gw); // same address, another device
        Assert.StartsWith("235", await neighbour.AuthPlainAsync("dev-2", TestGateway.Secret));
    }

    [Fact]
    public async Task Connections_OverThePerSourceLimit_Get421UntilOneCloses()
    {
        await using var gw = await SmtpGateway.StartAsync(smtp => smtp["MaxConnectionsPerSource"] = 3);
        var open = new List<SmtpWire>();
        for (int i = 0; i < 3; i++)
        {
            var (w, g) = await SmtpWire.ConnectAsync(gw.Plain());
            Assert.StartsWith("220", g);
            open.Add(w);
        }

        var (over, greeting) = await SmtpWire.ConnectAsync(gw.Plain());
        Assert.StartsWith("421 4.7.0", greeting);
        Assert.True(await over.IsClosedAsync());
        await over.DisposeAsync();

        Assert.StartsWith("221", await open[0].CommandAsync("QUIT"));
        Assert.True(await open[0].IsClosedAsync());
        await open[0].DisposeAsync();
        await Testing.Await.Within(WaitForOpenAsync(gw, 2), "the closed session to give its slot back");
        var (again, greeting2) = await SmtpWire.ConnectAsync(gw.Plain());
        Assert.StartsWith("220", greeting2);
        await again.DisposeAsync();
        foreach (var w in open.Skip(1))
        {
            await w.DisposeAsync();
        }

        await HostileKit.AssertStillServesAsync(gw);
    }

    [Fact]
    public async Task Mail_OverTheDeviceRate_Is450()
    {
        await using var gw = await SmtpGateway.StartAsync(smtp => smtp["MessagesPerMinutePerDevice"] = 2);
        await using var wire = await gw.AuthenticatedAsync("dev-1");
        Assert.StartsWith("250", await wire.SendMailAsync("dev-1@d.test", ["alice@example.com"], SmtpGateway.PlainMail("1", "x")));
        Assert.StartsWith("250", await wire.SendMailAsync("dev-1@d.test", ["alice@example.com"], SmtpGateway.PlainMail("2", "x")));

        Assert.StartsWith("450 4.7.1", await wire.CommandAsync("MAIL FROM:<dev-1@d.test>"));
        await HostileKit.AssertStillServesAsync(gw); // dev-2 has its own budget
    }

    [Fact]
    public async Task Rcpt_OverTheRecipientLimit_Is452()
    {
        await using var gw = await SmtpGateway.StartAsync(smtp => smtp["MaxRecipients"] = 2);
        await using var wire = await gw.AuthenticatedAsync("dev-1");
        await wire.CommandAsync("MAIL FROM:<dev-1@d.test>");
        Assert.StartsWith("250", await wire.CommandAsync("RCPT TO:<alice@example.com>"));
        Assert.StartsWith("250", await wire.CommandAsync("RCPT TO:<bob@example.com>"));

        Assert.StartsWith("452 4.5.3", await wire.CommandAsync("RCPT TO:<oncall@gw.test>"));
    }

    [Fact]
    public async Task Data_OverTheSizeLimitWithoutSizeDeclared_Is552AndNothingIsQueued()
    {
        await using var gw = await SmtpGateway.StartAsync();
        await using var wire = await gw.AuthenticatedAsync("dev-1");

        string reply = await wire.SendMailAsync("dev-1@d.test", ["alice@example.com"], SmtpGateway.PlainMail("big", new string('x', 76) + string.Concat(Enumerable.Repeat("\r\n" + new string('y', 76), 4000))));

        Assert.StartsWith("552", reply);
        Assert.Equal(0, await HostileKit.QueuedAsync(gw));
        await HostileKit.AssertStillServesAsync(gw);
    }

    [Fact]
    public async Task IdleClient_PastTheCommandTimeout_Gets421AndIsClosed_AndOthersAreServed()
    {
        await using var gw = await SmtpGateway.StartAsync(smtp => smtp["CommandTimeout"] = "00:00:01");
        var (idle, greeting) = await SmtpWire.ConnectAsync(gw.Plain());
        await using var _ = idle;
        Assert.StartsWith("220", greeting);

        // It says nothing after the greeting: the server speaks first, once the command timeout has passed.
        string reply = await idle.ReadReplyAsync();

        Assert.StartsWith("421 4.4.2 gw.test timeout", reply);
        Assert.True(await idle.IsClosedAsync());
        await HostileKit.AssertStillServesAsync(gw);
    }

    [Fact]
    public async Task ClientSilentInTheMiddleOfData_Gets421NotA5xx_NothingIsQueued_AndOthersAreServedMeanwhile()
    {
        await using var gw = await SmtpGateway.StartAsync(smtp => smtp["CommandTimeout"] = "00:00:02");
        var stalled = await InDataAsync(gw);
        await using var _ = stalled;
        await stalled.SendRawAsync(SmtpGateway.PlainMail("half", "the first line of a body that never ends\r\n"));

        // While it hangs there, holding its connection, another device's mail is taken.
        await HostileKit.AssertStillServesAsync(gw);

        // A 5xx here would make a device drop its alert for good: a stalled link is a temporary failure.
        Assert.StartsWith("421 4.4.2 gw.test timeout", await stalled.ReadReplyAsync());
        Assert.True(await stalled.IsClosedAsync());
        Assert.Equal(1, await HostileKit.QueuedAsync(gw)); // the well-behaved device's mail only
    }

    [Fact]
    public async Task SlowClientPastTheSessionTimeout_ItsMessageIsTaken_ThenItsNextMail_Gets421()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var gw = await SmtpGateway.StartAsync(smtp =>
        {
            smtp["CommandTimeout"] = "00:00:05";
            smtp["SessionTimeout"] = "00:00:03";
        }, services: s => s.AddSingleton<TimeProvider>(clock));
        var slow = await InDataAsync(gw);
        await using var _ = slow;
        await slow.SendRawAsync(SmtpGateway.PlainMail("slow", "sent over a slow link\r\n"));

        // A slow link: a line every 300 ms (the gateway's clock), until the session is older than Smtp:SessionTimeout.
        for (int i = 0; i < 11; i++)
        {
            clock.Advance(TimeSpan.FromMilliseconds(300));
            await slow.SendRawAsync("still coming\r\n");
        }

        Assert.StartsWith("250", await slow.CommandAsync("."));
        Assert.StartsWith("421 4.4.2 gw.test session time limit", await slow.CommandAsync("MAIL FROM:<ups@lan.test>"));
        Assert.True(await slow.IsClosedAsync());
        Assert.Equal(1, await HostileKit.QueuedAsync(gw));
    }

    [Fact]
    public async Task ClientTricklingOneMessagePastTwiceTheSessionTimeout_Gets421AndIsClosed_NothingIsQueued()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var gw = await SmtpGateway.StartAsync(smtp =>
        {
            smtp["CommandTimeout"] = "00:00:05";
            smtp["SessionTimeout"] = "00:00:01";
        }, services: s => s.AddSingleton<TimeProvider>(clock));
        var trickle = await InDataAsync(gw);
        await using var _ = trickle;

        // A line every 700 ms (the gateway's clock): never idle long enough for the command timeout, never done; the
        // hard limit (2 s) ends it.
        for (int i = 0; i < 3; i++)
        {
            await trickle.SendRawAsync("x\r\n");
            clock.Advance(TimeSpan.FromMilliseconds(700));
        }

        Assert.StartsWith("421 4.4.2 gw.test session time limit", await trickle.ReadReplyAsync());
        Assert.True(await trickle.IsClosedAsync());
        Assert.Equal(0, await HostileKit.QueuedAsync(gw));
    }

    [Fact]
    public async Task ClientThatNeverStartsItsTlsHandshake_IsClosedAfterTheCommandTimeout_AndOthersAreServed()
    {
        await using var gw = await SmtpGateway.StartAsync(smtp => smtp["CommandTimeout"] = "00:00:01");
        using var tcp = new System.Net.Sockets.TcpClient();
        await tcp.ConnectAsync(gw.Implicit());
        var stream = tcp.GetStream();

        // Implicit TLS: the server waits for a ClientHello that never comes, then closes (no cleartext reply).
        int read = await stream.ReadAsync(new byte[64]).AsTask().WaitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(0, read);
        await HostileKit.AssertStillServesAsync(gw);
    }

    [Fact]
    public async Task GatewayStopping_SessionsInTheMiddleOfDataAndBetweenCommands_Get421NotA5xx_AndNothingHalfIsQueued()
    {
        var gw = await SmtpGateway.StartAsync();
        await using var _ = gw;
        var inData = await InDataAsync(gw);
        await using var __ = inData;
        await inData.SendRawAsync(SmtpGateway.PlainMail("restart", "half of it\r\n"));
        var (idle, greeting) = await SmtpWire.ConnectAsync(gw.Plain(), SmtpGateway.AllowListed);
        await using var ___ = idle;
        Assert.StartsWith("220", greeting);
        Assert.StartsWith("250", await idle.CommandAsync("EHLO ups.lan.test"));

        var stopping = gw.Host.StopAsync();

        // A 5xx in DATA would make the device drop its alert because the gateway restarted.
        Assert.StartsWith("421 4.3.2 gw.test shutting down", await inData.ReadReplyAsync());
        Assert.StartsWith("421 4.3.2 gw.test shutting down", await idle.ReadReplyAsync());
        Assert.True(await inData.IsClosedAsync());
        await stopping;
        Assert.Equal(0, await HostileKit.QueuedAsync(gw));
    }

    // An allow-listed source (no AUTH) that has been answered 354.
    private static async Task<SmtpWire> InDataAsync(TestGateway gw)
    {
        var (wire, greeting) = await SmtpWire.ConnectAsync(gw.Plain(), SmtpGateway.AllowListed);
        Assert.StartsWith("220", greeting);
        Assert.StartsWith("250", await wire.CommandAsync("EHLO ups.lan.test"));
        Assert.StartsWith("250", await wire.CommandAsync("MAIL FROM:<ups@lan.test>"));
        Assert.StartsWith("250", await wire.CommandAsync("RCPT TO:<alice@example.com>"));
        Assert.StartsWith("354", await wire.CommandAsync("DATA"));
        return wire;
    }

    private static async Task<SmtpWire> StartTlsSessionAsync(TestGateway gw)
    {
        var (wire, _) = await SmtpWire.ConnectAsync(gw.StartTls());
        await wire.CommandAsync("EHLO x");
        await wire.StartTlsAsync();
        await wire.CommandAsync("EHLO x");
        return wire;
    }

    private static async Task<bool> WaitForOpenAsync(TestGateway gw, int count)
    {
        // The slot is returned when SmtpServer disposes the session's pipe, just after the client saw the close.
        var deadline = DateTime.UtcNow + Testing.Await.DefaultTimeout;
        while (gw.Smtp().OpenConnections > count && DateTime.UtcNow < deadline)
        {
            await Task.Yield();
        }

        return gw.Smtp().OpenConnections <= count;
    }
}
