using EdgeMail.Firmware.Uplink.Mqtt;
using EdgeMail.Simulation.Network;
using EdgeMail.Testing;
using MQTTnet.Packets;
using Xunit;

namespace EdgeMail.Firmware.Tests.Uplink.Mqtt;

/// <summary>The link breaks at chosen points between device and broker; nothing unacknowledged may be lost.</summary>
public sealed class MqttClientLinkCutTests : IAsyncLifetime
{
    private const string AlertTopic = "edgemail/v1/dev-1/alert";
    private static readonly byte[] Payload = "{\"v\":1,\"id\":\"ab-9\",\"seq\":9}"u8.ToArray();
    private readonly TcpTransport _transport = new();
    private readonly RecordingHandler _handler = new();
    private MqttTestBroker _broker = null!;
    private LinkCutProxy _proxy = null!;

    public async Task InitializeAsync()
    {
        _broker = await MqttTestBroker.StartAsync();
        _proxy = new LinkCutProxy(_broker.Port);
    }

    public async Task DisposeAsync()
    {
        _transport.Dispose();
        _proxy.Dispose();
        await _broker.DisposeAsync();
    }

    private static MqttClientOptions Options(int keepAliveSeconds = 60) => new()
    {
        ClientId = "dev-1",
        UserName = "dev-1",
        Password = "s3cret",
        KeepAliveSeconds = keepAliveSeconds,
        PingTimeoutMs = 500,
    };

    private static int ConnectLength()
    {
        var buffer = new byte[128];
        return MqttCodec.EncodeConnect(buffer, 0, "dev-1", "dev-1", "s3cret", false, 60);
    }

    [Fact]
    public async Task Publish_LinkCutMidPublish_ReportsLinkBrokenAndTheResendIsAcknowledged()
    {
        // Forward CONNECT and the first 10 bytes of the PUBLISH, then cut.
        _proxy.CutUpstreamAfter = ConnectLength() + 10;
        var client = new MqttClient(_transport, new StopwatchClock(), Options(), _handler);
        client.Connect("127.0.0.1", _proxy.Port);
        client.Publish(AlertTopic, Payload, 0, Payload.Length, tag: 9, retain: false, dup: false);

        await Await.Within(_proxy.Cut.Task.ContinueWith(_ => true, TaskScheduler.Default), "the proxy to cut the link");
        MqttException broken = Loopback.PollUntilBroken(client);
        Assert.Equal(MqttError.LinkBroken, broken.Error);
        Assert.Contains("1 publish(es) unacknowledged", broken.Message, StringComparison.Ordinal);
        Assert.Equal(1, client.UnacknowledgedCount);
        Assert.Empty(_handler.Acknowledged);
        Assert.Empty(_broker.PublishesFrom("dev-1"));

        _proxy.CutUpstreamAfter = null;
        Assert.True(client.Connect("127.0.0.1", _proxy.Port).SessionPresent);
        Resend(client);
        Loopback.PollUntil(client, () => _handler.Acknowledged.Count == 1, "PUBACK of the resent tag 9");
        Assert.Equal([9L], _handler.Acknowledged);
        Assert.True(Assert.Single(_broker.PublishesFrom("dev-1")).Dup);
    }

    [Fact]
    public async Task Publish_LinkCutBeforePubAck_ReportsLinkBrokenAndTheResendIsAcknowledged()
    {
        // Forward the 4-byte CONNACK to the device, cut when the PUBACK comes.
        _proxy.CutDownstreamAfter = 4;
        var client = new MqttClient(_transport, new StopwatchClock(), Options(), _handler);
        client.Connect("127.0.0.1", _proxy.Port);
        client.Publish(AlertTopic, Payload, 0, Payload.Length, tag: 9, retain: false, dup: false);

        await Await.Within(_proxy.Cut.Task.ContinueWith(_ => true, TaskScheduler.Default), "the proxy to cut the link at the PUBACK");
        MqttException broken = Loopback.PollUntilBroken(client);
        Assert.Equal(MqttError.LinkBroken, broken.Error);
        Assert.Equal(1, client.UnacknowledgedCount);
        Assert.Empty(_handler.Acknowledged);
        Assert.Single(_broker.PublishesFrom("dev-1"));

        _proxy.CutDownstreamAfter = null;
        client.Connect("127.0.0.1", _proxy.Port);
        Resend(client);
        Loopback.PollUntil(client, () => _handler.Acknowledged.Count == 1, "PUBACK of the resent tag 9");

        // At least once: the broker saw it twice, the second time marked DUP with the same packet id.
        List<MqttPublishPacket> seen = _broker.PublishesFrom("dev-1");
        Assert.Equal(2, seen.Count);
        Assert.True(seen[1].Dup);
        Assert.Equal(seen[0].PacketIdentifier, seen[1].PacketIdentifier);
    }

    [Fact]
    public void Connect_LinkCutDuringConnect_ThrowsLinkBroken()
    {
        _proxy.CutUpstreamAfter = 5;
        var client = new MqttClient(_transport, new StopwatchClock(), Options(), _handler);
        var ex = Assert.Throws<MqttException>(() => client.Connect("127.0.0.1", _proxy.Port));
        Assert.Equal(MqttError.LinkBroken, ex.Error);
        Assert.False(client.IsConnected);
    }

    [Fact]
    public void Poll_NoPingRespWithinTimeout_DeclaresTheLinkDead()
    {
        // The device hears the CONNACK and then nothing: a radio that went deaf without a close.
        _proxy.SwallowDownstreamAfter = 4;
        var client = new MqttClient(_transport, new StopwatchClock(), Options(keepAliveSeconds: 1), _handler);
        client.Connect("127.0.0.1", _proxy.Port);
        MqttException ex = Loopback.PollUntilBroken(client, 10_000);
        Assert.Equal(MqttError.Timeout, ex.Error);
        Assert.Contains("PINGRESP", ex.Message, StringComparison.Ordinal);
        Assert.False(client.IsConnected);
    }

    private static void Resend(MqttClient client)
    {
        var tags = new long[client.MaxInFlight];
        int n = client.CopyUnacknowledgedTags(tags);
        Assert.Equal(1, n);
        Assert.Equal(9, tags[0]);
        // The caller re-reads the payload from flash by its tag and publishes it again with the same tag.
        Assert.True(client.Publish(AlertTopic, Payload, 0, Payload.Length, tags[0], retain: false, dup: true));
    }
}
