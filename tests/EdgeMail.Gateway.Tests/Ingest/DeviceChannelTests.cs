using System.Net;
using System.Net.Sockets;
using System.Text;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Tests.Hostile;
using MQTTnet.Formatter;
using MQTTnet.Packets;
using Xunit;

namespace EdgeMail.Gateway.Tests.Ingest;

/// <summary>A device connection on real loopback sockets, without the broker: what it keeps of a CONNECT, how a send ends when it is torn down.</summary>
public sealed class DeviceChannelTests
{
    [Fact]
    public async Task AfterTheCheck_TheKeptConnectPacket_HoldsNoSecret_AndNamesTheDeviceWithTheRegistrysId()
    {
        var (device, channel) = await ConnectedAsync(new MqttPacketFormatterAdapter(new MqttBufferWriter(128, 4096)));
        using var _ = device;
        using var __ = channel;
        await device.SendAsync(MqttHostileTests.Connect311("dev-1", "dev-1", "s3cret"));

        var connect = Assert.IsType<MqttConnectPacket>(await channel.ReceivePacketAsync(CancellationToken.None));
        Assert.Equal("s3cret", Encoding.UTF8.GetString(connect.Password)); // what the broker's check reads
        string registryId = new('d', 1);
        registryId += "ev-1"; // equal to the id the device sent, another instance: the registry's
        channel.Authenticated(registryId);

        Assert.Null(connect.Password);
        Assert.Same(registryId, connect.ClientId);
        Assert.Same(registryId, connect.Username);
    }

    // MQTTnet tears a connection down (Dispose) while its send loop may still be writing to a device that stopped
    // reading: that send must end as a communication failure MQTTnet handles, not as an ObjectDisposedException from
    // the send lock (which surfaced as an unobserved task exception).
    [Fact]
    public async Task DisposedWhileASendIsBlocked_TheSendEndsAsACommunicationFailure()
    {
        var (device, channel) = await ConnectedAsync(new MqttPacketFormatterAdapter(MqttProtocolVersion.V311, new MqttBufferWriter(128, 4096)));
        using var _ = device; // connected, never reads
        var big = new MqttPublishPacket { Topic = "edgemail/v1/dev-1/receipt", Payload = new System.Buffers.ReadOnlySequence<byte>(new byte[64 * 1024 * 1024]) };

        var send = channel.SendPacketAsync(big, CancellationToken.None);
        Assert.False(send.IsCompleted); // more than the socket buffers hold: waiting for the device to read
        channel.Dispose();

        await Assert.ThrowsAsync<MQTTnet.Exceptions.MqttCommunicationException>(() => send);
    }

    // A device's socket and the gateway's end of it as the listener makes it (plain: non-blocking), with nothing stored.
    private static async Task<(Socket Device, DeviceChannel Channel)> ConnectedAsync(MqttPacketFormatterAdapter formatter)
    {
        using var listener = new Socket(SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        var device = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await device.ConnectAsync(listener.LocalEndPoint!);
        var accepted = await listener.AcceptAsync();
        accepted.Blocking = false;
        return (device, new DeviceChannel(accepted, null, accepted.RemoteEndPoint, null, formatter, new NothingStored()));
    }

    private sealed class NothingStored : IReadAheadSink
    {
        public object? Prestore(string deviceId, string? peer, MqttPublishPacket packet, CancellationToken stop) => null;

        public void Forget(object key)
        {
        }
    }
}
