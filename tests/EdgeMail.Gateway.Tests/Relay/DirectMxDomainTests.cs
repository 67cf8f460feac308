using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// Direct MX to a mail whose recipient domains include one that cannot be looked up — a name DNS cannot carry (a label
/// of 64 octets, which DnsClient refuses to encode) or one whose DNS reply cannot be parsed — beside healthy domains: the
/// failure is that domain's alone, and the others get the mail in the same attempt. And an address literal
/// (<c>x@[127.0.0.2]</c>) is delivered to at that address, as RFC 5321 §5.1 asks, never looked up as a name.
/// </summary>
public sealed class DirectMxDomainTests
{
    // 64 octets: one more than a DNS label may have (RFC 1035 §2.3.4).
    private const string Unencodable = "x@abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijkl.example.test";

    // Such an address no longer passes the configuration's validation, but mail queued before it did, or to an address
    // given at run time (the console's test mail), still reaches the relay: it is queued here directly.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_ADomainWithA64OctetLabel_FailsAlone_TheOtherDomainGetsTheMailOnTheFirstAttempt()
    {
        await using var mx = await SmtpTestServer.StartAsync();
        using var dns = await Dnsmasq.StartAsync("--mx-host=b.example.test,mx-b.example.test,10", "--host-record=mx-b.example.test,127.0.0.1", "--local=/example.test/");
        await using var gw = await TestGateway.StartAsync(c => DirectMxEarlyRecordTests.DirectMx(c, dns, mx.Port),
            s => s.AddSingleton<TimeProvider>(new FakeTimeProvider(DateTimeOffset.FromUnixTimeSeconds(1_800_000_000))));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("label-1", Unencodable, "ok@b.example.test"), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("label-1@gw.test", default))?.Attempts == 1, "the first attempt recorded");

        Assert.Equal(["ok@b.example.test"], Assert.Single(mx.Received).To);
        var detail = await DirectMxEarlyRecordTests.DetailAsync(gw.Spool, "label-1@gw.test");
        var ok = detail.Recipients.Single(r => r.Address == "ok@b.example.test");
        Assert.Equal("sent", ok.Status);
        var bad = detail.Recipients.Single(r => r.Address == Unencodable);
        Assert.True(bad.Status == "failed", $"{bad.Status}: {bad.Reply}");
        Assert.Equal("550 5.1.2 label 1 of abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijkl.example.test is 64 characters long, "
            + "more than the 63 a DNS label may have", bad.Reply);
    }

    [Fact]
    public async Task Relay_DirectMx_ADomainsDnsReplyCannotBeParsed_IsDeferredAlone_AnAddressLiteralGetsTheMailAtThatAddress()
    {
        await using var mx = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2") });
        using var dns = UnparsableDns.Start();
        await using var relay = new DirectMxRelay(new RelayOptions
        {
            Mode = "DirectMx", DnsServer = "127.0.0.1:" + dns.Port.ToString(CultureInfo.InvariantCulture), MxPort = mx.Port, Timeout = TimeSpan.FromSeconds(5),
        }, "gw.test");

        var results = await relay.SendAsync(Mail("lit-1", "x@broken.example.test", "ops@[127.0.0.2]"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);

        var broken = results.Single(r => r.Address == "x@broken.example.test");
        Assert.Equal(RecipientOutcome.Deferred, broken.Outcome);
        Assert.StartsWith("451 4.4.3 MX lookup for broken.example.test failed: the DNS server's reply could not be read: Response parser error", broken.Reply, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', broken.Reply);
        var literal = results.Single(r => r.Address == "ops@[127.0.0.2]");
        Assert.True(literal.Outcome == RecipientOutcome.Sent, literal.Reply);
        Assert.Equal(["ops@[127.0.0.2]"], Assert.Single(mx.Received).To);
        Assert.Equal(1, dns.Queries); // the literal's domain was never asked about
    }

    [Theory]
    [InlineData("[192.0.2.1]", "192.0.2.1")]
    [InlineData("[IPv6:2001:db8::1]", "2001:db8::1")]
    [InlineData("[ipv6:::ffff:192.0.2.1]", "::ffff:192.0.2.1")]
    [InlineData("[127.1]", null)] // IPAddress.Parse takes it; RFC 5321 does not
    [InlineData("[0x7f.0.0.1]", null)]
    [InlineData("[2001:db8::1]", null)] // an IPv6 literal carries its tag
    [InlineData("[IPv6:fe80::1%eth0]", null)]
    [InlineData("[IPv6:192.0.2.1]", null)]
    [InlineData("[192.0.2.1.5]", null)]
    [InlineData("192.0.2.1", null)] // a name (of numeric labels), not a literal
    public void AddressLiteral_TakesRfc5321sIPv4AndIPv6FormsOnly(string domain, string? address)
    {
        Assert.Equal(address, DirectMxRelay.AddressLiteral(domain)?.ToString());
    }

    private static QueuedMessage Mail(string id, params string[] to)
    {
        var now = new DateTimeOffset(2026, 12, 5, 10, 0, 0, TimeSpan.Zero);
        byte[] wire = Encoding.ASCII.GetBytes($"From: <ups-1@lan.example.com>\r\nTo: <ops@example.com>\r\nSubject: {id}\r\nMessage-ID: <{id}@lan.example.com>\r\n\r\nMains lost.\r\n");
        return new QueuedMessage(1, "relay", "ups-1", null, id + "@lan.example.com", "alerts@example.com", to, wire, 0, now, now.AddDays(5));
    }
}

/// <summary>
/// A DNS server on a loopback UDP port whose every answer DnsClient cannot parse: the answer's name is a compression
/// pointer to itself (RFC 1035 §4.1.4), which DnsClient follows until "Max recursion reached"; padded past 512 octets so
/// that DnsClient does not take it for a truncated datagram and ask again over TCP.
/// </summary>
internal sealed class UnparsableDns : IDisposable
{
    private readonly Socket _socket = new(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
    private readonly CancellationTokenSource _stop = new();
    private int _queries;

    private UnparsableDns()
    {
        _socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _ = AnswerAsync();
    }

    public int Port => ((IPEndPoint)_socket.LocalEndPoint!).Port;

    /// <summary>Queries answered so far.</summary>
    public int Queries => Volatile.Read(ref _queries);

    public static UnparsableDns Start() => new();

    public void Dispose()
    {
        _stop.Cancel();
        _socket.Dispose();
        _stop.Dispose();
    }

    private async Task AnswerAsync()
    {
        var buffer = new byte[4096];
        try
        {
            while (true)
            {
                var received = await _socket.ReceiveFromAsync(buffer, new IPEndPoint(IPAddress.Any, 0), _stop.Token);
                Interlocked.Increment(ref _queries);
                await _socket.SendToAsync(Reply(buffer.AsSpan(0, received.ReceivedBytes)), received.RemoteEndPoint, _stop.Token);
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
        {
            // Disposed.
        }
    }

    private static byte[] Reply(ReadOnlySpan<byte> query)
    {
        int end = 12;
        while (query[end] != 0)
        {
            end += query[end] + 1;
        }

        end += 1 + 4; // the root label, QTYPE, QCLASS
        var reply = new byte[end + 600];
        query[..end].CopyTo(reply);
        reply[2] = 0x81; // QR, RD
        reply[3] = 0x80; // RA, NOERROR
        reply[6] = 0;
        reply[7] = 1; // ANCOUNT
        reply[8] = reply[9] = reply[10] = reply[11] = 0; // no authority, no additional (the query's OPT record is dropped)
        reply[end] = (byte)(0xC0 | (end >> 8));
        reply[end + 1] = (byte)end; // a pointer to itself
        return reply;
    }
}
