using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// <c>Relay:AttemptTimeout</c> against peers that <c>Relay:Timeout</c> never catches: an exchanger (or smarthost) that
/// drips its greeting one byte a second, each read well within <c>Relay:Timeout</c>, and a smarthost that never answers
/// the end of a mail's data (with a <c>Relay:Timeout</c> longer than the test waits). The attempt ends as a deferral
/// for the recipients not done, and the results it had stand. Before, it hung until the test's own timeout.
/// </summary>
public sealed class AttemptTimeoutTests
{
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_AnExchangerDripsItsGreeting_TheAttemptEndsAtAttemptTimeout_TheDomainDoneBeforeKeepsItsResult()
    {
        await using var a = await SmtpTestServer.StartAsync();
        using var drip = DrippingServer.Start(IPAddress.Parse("127.0.0.2"), a.Port);
        using var dns = await Dnsmasq.StartAsync(
            "--mx-host=a.example.test,mx-a.example.test,10", "--host-record=mx-a.example.test,127.0.0.1",
            "--mx-host=b.example.test,mx-b.example.test,10", "--host-record=mx-b.example.test,127.0.0.2",
            "--host-record=c.example.test,127.0.0.1",
            "--local=/example.test/");
        await using var relay = new DirectMxRelay(new RelayOptions
        {
            Mode = "DirectMx", DnsServer = "127.0.0.1:" + dns.Port.ToString(CultureInfo.InvariantCulture), MxPort = a.Port,
            Timeout = TimeSpan.FromMinutes(1), AttemptTimeout = TimeSpan.FromSeconds(5),
        }, "gw.test");

        var results = await relay.SendAsync(Mail("drip-1", "alice@a.example.test", "bob@b.example.test", "carol@c.example.test"), CancellationToken.None)
            .WaitAsync(Await.DefaultTimeout);

        Assert.Equal(["alice@a.example.test sent", "bob@b.example.test deferred", "carol@c.example.test deferred"], results.Select(r => r.Address + " " + r.Outcome));
        Assert.Equal(["alice@a.example.test"], Assert.Single(a.Received).To);
        Assert.Equal(1, drip.Connections);
        string reply = results[1].Reply;
        Assert.Equal("451 4.4.2 the delivery attempt did not end within Relay:AttemptTimeout (00:00:05); it was cut short at exchanger mx-b.example.test (127.0.0.2)", reply);
        Assert.Equal(reply, results[2].Reply); // c.example.test was not tried: the attempt had ended
    }

    [Fact]
    public async Task Relay_Smarthost_TheRelayDripsItsGreeting_TheAttemptEndsAtAttemptTimeoutAsADeferral_AndItsConnectionIsNotKept()
    {
        using var drip = DrippingServer.Start(IPAddress.Loopback, 0);
        await using var relay = new SmtpRelay(new RelayOptions
        {
            Mode = "Smarthost", Host = "127.0.0.1", Port = drip.Port, Security = "None",
            Timeout = TimeSpan.FromMinutes(1), AttemptTimeout = TimeSpan.FromSeconds(2),
        }, "gw.test");

        var results = await relay.SendAsync(Mail("drip-2", "alice@example.com", "bob@example.com"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);
        var again = await relay.SendAsync(Mail("drip-3", "alice@example.com"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);

        Assert.All(results.Concat(again), r => Assert.Equal(RecipientOutcome.Deferred, r.Outcome));
        Assert.All(results.Concat(again), r => Assert.Equal(
            $"451 4.4.2 the delivery attempt did not end within Relay:AttemptTimeout (00:00:02); it was cut short at 127.0.0.1:{drip.Port}", r.Reply));
        Assert.Equal(["alice@example.com", "bob@example.com"], results.Select(r => r.Address));
        Assert.Equal(2, drip.Connections); // the cut connection went nowhere near the pool
    }

    // A mail split by Relay:Limits:RecipientsPerMessage: the first transaction's 250 stands, the second, whose end of data
    // the relay never answers, is deferred when the attempt's time is up.
    [Fact]
    public async Task Relay_Smarthost_TheSecondTransactionOfASplitMailHangs_TheFirstStaysSent_TheSecondIsDeferredAtAttemptTimeout()
    {
        await using var server = await SmtpTestServer.StartAsync();
        int data = 0;
        server.OnData = _ => Interlocked.Increment(ref data) == 1 ? SmtpReply.Ok : SmtpReply.Hang;
        await using var relay = new SmtpRelay(new RelayOptions
        {
            Mode = "Smarthost", Host = "127.0.0.1", Port = server.Port, Security = "None",
            Timeout = TimeSpan.FromMinutes(1), AttemptTimeout = TimeSpan.FromSeconds(3), Limits = new() { RecipientsPerMessage = 1 },
        }, "gw.test");

        var results = await relay.SendAsync(Mail("split-1", "alice@example.com", "bob@example.com"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);

        Assert.Equal(["alice@example.com sent", "bob@example.com deferred"], results.Select(r => r.Address + " " + r.Outcome));
        Assert.StartsWith("250 ", results[0].Reply, StringComparison.Ordinal);
        Assert.StartsWith("451 4.4.2 the delivery attempt did not end within Relay:AttemptTimeout (00:00:03)", results[1].Reply, StringComparison.Ordinal);
        Assert.Equal(2, server.Messages.Count);
    }

    private static QueuedMessage Mail(string id, params string[] to)
    {
        var now = new DateTimeOffset(2026, 12, 5, 10, 0, 0, TimeSpan.Zero);
        byte[] wire = Encoding.ASCII.GetBytes($"From: <ups-1@lan.example.com>\r\nTo: <ops@example.com>\r\nSubject: {id}\r\nMessage-ID: <{id}@lan.example.com>\r\n\r\nMains lost.\r\n");
        return new QueuedMessage(1, "relay", "ups-1", null, id + "@lan.example.com", "alerts@example.com", to, wire, 0, now, now.AddDays(5));
    }

    /// <summary>
    /// A server that greets one byte a second, for ever: "220-" and then one more character of a greeting line that never
    /// ends. Each read of the client's gets a byte well within any <c>Relay:Timeout</c>; nothing but a bound on the whole
    /// attempt ends the session.
    /// </summary>
    private sealed class DrippingServer : IDisposable
    {
        private readonly TcpListener _listener;
        private readonly CancellationTokenSource _stop = new();
        private int _connections;

        private DrippingServer(IPAddress address, int port)
        {
            _listener = new TcpListener(address, port);
            _listener.Start();
            _ = AcceptAsync();
        }

        public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

        public int Connections => Volatile.Read(ref _connections);

        public static DrippingServer Start(IPAddress address, int port) => new(address, port);

        public void Dispose()
        {
            _stop.Cancel();
            _listener.Stop();
            _stop.Dispose();
        }

        private async Task AcceptAsync()
        {
            try
            {
                while (true)
                {
                    var client = await _listener.AcceptTcpClientAsync(_stop.Token);
                    Interlocked.Increment(ref _connections);
                    _ = DripAsync(client);
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                // Stopped.
            }
        }

        private async Task DripAsync(TcpClient client)
        {
            using (client)
            {
                try
                {
                    var stream = client.GetStream();
                    await stream.WriteAsync("220-"u8.ToArray(), _stop.Token);
                    using var second = new PeriodicTimer(TimeSpan.FromSeconds(1));
                    while (await second.WaitForNextTickAsync(_stop.Token))
                    {
                        await stream.WriteAsync("x"u8.ToArray(), _stop.Token);
                    }
                }
                catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or IOException or SocketException)
                {
                    // The client went away, or the test is over.
                }
            }
        }
    }
}
