using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using EdgeMail.Firmware.Uplink;
using EdgeMail.Simulation.Network;
using Xunit;

namespace EdgeMail.Firmware.Tests.Uplink;

/// <summary>The .NET TCP transport keeps the <see cref="ITransport"/> contract: 0 on timeout, -1 once closed.</summary>
public sealed class TcpTransportTests : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly TcpTransport _transport = new();

    public TcpTransportTests() => _listener.Start();

    private int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    public void Dispose()
    {
        _transport.Dispose();
        _listener.Stop();
    }

    [Fact]
    public async Task SendAndReceive_OverLoopback_MoveTheBytes()
    {
        _transport.Open("127.0.0.1", Port, 5_000);
        using Socket peer = await _listener.AcceptSocketAsync();
        Assert.Equal(3, _transport.Send([1, 2, 3], 0, 3, 1_000));
        var got = new byte[3];
        Assert.Equal(3, await peer.ReceiveAsync(got));
        Assert.Equal([1, 2, 3], got);

        await peer.SendAsync(new byte[] { 9, 8 });
        var buffer = new byte[8];
        Assert.Equal(2, _transport.Receive(buffer, 1, 7, 5_000));
        Assert.Equal([9, 8], buffer[1..3]);
    }

    [Fact]
    public async Task Receive_NothingArrives_ReturnsZeroAfterTheTimeout()
    {
        _transport.Open("127.0.0.1", Port, 5_000);
        using Socket peer = await _listener.AcceptSocketAsync();
        var watch = Stopwatch.StartNew();
        Assert.Equal(0, _transport.Receive(new byte[8], 0, 8, 200));
        Assert.InRange(watch.ElapsedMilliseconds, 150, 5_000);
    }

    [Fact]
    public async Task Receive_AfterPeerClosed_ReturnsMinusOneAndSendDoesToo()
    {
        _transport.Open("127.0.0.1", Port, 5_000);
        using (Socket peer = await _listener.AcceptSocketAsync())
        {
            peer.Shutdown(SocketShutdown.Both);
        }

        Assert.Equal(-1, _transport.Receive(new byte[8], 0, 8, 5_000));
        Assert.Equal(-1, _transport.Send([1], 0, 1, 1_000));
    }

    [Fact]
    public void Open_NothingListening_ThrowsTransportExceptionNamingThePeer()
    {
        int port = Port;
        _listener.Stop();
        var ex = Assert.Throws<TransportException>(() => _transport.Open("127.0.0.1", port, 5_000));
        Assert.Contains($"127.0.0.1:{port}", ex.Message, StringComparison.Ordinal);
    }
}
