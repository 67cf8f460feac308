using EdgeMail.Gateway.Tests.Smtp;
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
