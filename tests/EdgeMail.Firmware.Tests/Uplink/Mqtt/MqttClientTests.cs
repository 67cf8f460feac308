using System.Buffers;
using EdgeMail.Firmware.Uplink.Mqtt;
using EdgeMail.Simulation.Network;
using MQTTnet.Packets;
using Xunit;

namespace EdgeMail.Firmware.Tests.Uplink.Mqtt;

/// <summary>The device's MQTT client against the in-process MQTTnet broker over real loopback TCP.</summary>
public sealed class MqttClientTests : IAsyncLifetime
{
    private const string AlertTopic = "edgemail/v1/dev-1/alert";
    private const string ReceiptTopic = "edgemail/v1/dev-1/receipt";
    private readonly TcpTransport _transport = new();
    private readonly RecordingHandler _handler = new();
    private MqttTestBroker _broker = null!;

    public async Task InitializeAsync() => _broker = await MqttTestBroker.StartAsync();

    public async Task DisposeAsync()
    {
        _transport.Dispose();
        await _broker.DisposeAsync();
    }

    private MqttClient NewClient(string password = "s3cret", int maxInFlight = 4, int keepAliveSeconds = 60) =>
        new(_transport, new StopwatchClock(), new MqttClientOptions
        {
            ClientId = "dev-1",
            UserName = "dev-1",
            Password = password,
            KeepAliveSeconds = keepAliveSeconds,
            MaxInFlight = maxInFlight,
        }, _handler);

    [Fact]
    public void Connect_WithDeviceCredentials_IsAcceptedWithoutSessionTheFirstTime()
    {
        MqttClient client = NewClient();
        MqttConnectResult result = client.Connect("127.0.0.1", _broker.Port);
        Assert.Equal(MqttConnectReturnCode.Accepted, result.ReturnCode);
        Assert.False(result.SessionPresent);
        Assert.True(client.IsConnected);
        client.Disconnect();
        Assert.False(client.IsConnected);
    }

    [Fact]
    public void Connect_WithWrongPassword_ThrowsRefusalWithTheReturnCode()
    {
        MqttClient client = NewClient(password: "wrong");
        var ex = Assert.Throws<MqttException>(() => client.Connect("127.0.0.1", _broker.Port));
        Assert.Equal(MqttError.ConnectionRefused, ex.Error);
        Assert.Equal(MqttConnectReturnCode.BadUserNameOrPassword, ex.ConnectReturnCode);
        Assert.Contains("bad user name or password", ex.Message, StringComparison.Ordinal);
        Assert.False(client.IsConnected);
    }

    [Fact]
    public void Publish_Qos1_ReportsTheTagWhenTheBrokerAcknowledges()
    {
        MqttClient client = NewClient();
        client.Connect("127.0.0.1", _broker.Port);
        byte[] payload = "{\"v\":1,\"id\":\"ab-42\"}"u8.ToArray();
        Assert.True(client.Publish(AlertTopic, payload, 0, payload.Length, tag: 42, retain: false, dup: false));
        Assert.Equal(1, client.UnacknowledgedCount);

        Loopback.PollUntil(client, () => _handler.Acknowledged.Count == 1, "PUBACK of tag 42");

        Assert.Equal([42L], _handler.Acknowledged);
        Assert.Equal(0, client.UnacknowledgedCount);
        MqttPublishPacket seen = Assert.Single(_broker.PublishesFrom("dev-1"));
        Assert.Equal(AlertTopic, seen.Topic);
        Assert.False(seen.Dup);
        Assert.Equal(payload, seen.Payload.ToArray());
    }

    [Fact]
    public void Publish_PayloadLargerThanSendBuffer_GoesOutFromTheCallersBuffer()
    {
        MqttClient client = NewClient();
        client.Connect("127.0.0.1", _broker.Port);
        var payload = new byte[4096];
        new Random(4096).NextBytes(payload);
        Assert.True(client.Publish(AlertTopic, payload, 0, payload.Length, tag: 1, retain: false, dup: false));
        Loopback.PollUntil(client, () => _handler.Acknowledged.Count == 1, "PUBACK of a 4 KiB alert");
        Assert.Equal(payload, Assert.Single(_broker.PublishesFrom("dev-1")).Payload.ToArray());
    }

    [Fact]
    public void Publish_WindowFull_ReturnsFalseUntilAnAckFreesASlot()
    {
        MqttClient client = NewClient(maxInFlight: 2);
        client.Connect("127.0.0.1", _broker.Port);
        byte[] payload = [1, 2, 3];
        Assert.True(client.Publish(AlertTopic, payload, 0, 3, 1, false, false));
        Assert.True(client.Publish(AlertTopic, payload, 0, 3, 2, false, false));
        Assert.False(client.Publish(AlertTopic, payload, 0, 3, 3, false, false));

        Loopback.PollUntil(client, () => _handler.Acknowledged.Count == 2, "PUBACKs of tags 1 and 2");
        Assert.True(client.Publish(AlertTopic, payload, 0, 3, 3, false, false));
        Loopback.PollUntil(client, () => _handler.Acknowledged.Count == 3, "PUBACK of tag 3");
        Assert.Equal([1L, 2L, 3L], _handler.Acknowledged);
        Assert.Equal(3, _broker.PublishesFrom("dev-1").Select(p => p.PacketIdentifier).Distinct().Count());
    }

    // Power fails while the broker is still storing tag 2 (PUBLISH read, PUBACK not sent yet). After the reboot a new
    // client resumes the session and sends tags 2 and 3; MQTTnet then delivers the PUBACK the old connection still
    // answers into that session. Under the packet id tag 2 had, it must acknowledge tag 2, which the broker does hold,
    // and never tag 3, which it has not read yet (a new boot counting ids from 1 gave tag 3 that id).
    [Fact]
    public void LatePubAckFromBeforeAReboot_AcknowledgesTheTagItWasFor_NotTheOneThisBootSentUnderTheSameNumber()
    {
        using var storing = new ManualResetEventSlim();
        using var stored = new ManualResetEventSlim();
        using var newConnectionRead = new ManualResetEventSlim();
        bool rebooted = false;
        _broker.OnPublish = e =>
        {
            string payload = System.Text.Encoding.ASCII.GetString(e.ApplicationMessage.Payload.ToArray());
            if (!Volatile.Read(ref rebooted) && payload == "alert-2")
            {
                storing.Set();
                stored.Wait(TimeSpan.FromSeconds(15));
            }
            else if (Volatile.Read(ref rebooted))
            {
                newConnectionRead.Wait(TimeSpan.FromSeconds(15)); // the new connection's PUBACKs wait: only the late one can come
            }
        };
        var options = new MqttClientOptions { ClientId = "dev-1", UserName = "dev-1", Password = "s3cret", MaxInFlight = 4 };
        byte[] one = "alert-1"u8.ToArray(), two = "alert-2"u8.ToArray(), three = "alert-3"u8.ToArray();

        using (var beforeLink = new TcpTransport())
        {
            var before = new MqttClient(beforeLink, new StopwatchClock(), options, _handler);
            before.Connect("127.0.0.1", _broker.Port);
            before.Publish(AlertTopic, one, 0, one.Length, tag: 1, retain: false, dup: false);
            Loopback.PollUntil(before, () => _handler.Acknowledged.Count == 1, "PUBACK of tag 1");
            before.Publish(AlertTopic, two, 0, two.Length, tag: 2, retain: false, dup: false);
            Assert.True(storing.Wait(TimeSpan.FromSeconds(15)), "the broker to read tag 2");
        } // power off: the socket dies, no DISCONNECT

        Volatile.Write(ref rebooted, true);
        using var afterLink = new TcpTransport();
        var after = new MqttClient(afterLink, new StopwatchClock(), options, _handler);
        Assert.True(after.Connect("127.0.0.1", _broker.Port).SessionPresent);
        after.Publish(AlertTopic, two, 0, two.Length, tag: 2, retain: false, dup: true);
        after.Publish(AlertTopic, three, 0, three.Length, tag: 3, retain: false, dup: false);
        stored.Set();
        Loopback.PollUntil(after, () => _handler.Acknowledged.Count == 2, "the late PUBACK from before the reboot");

        Assert.Equal([1L, 2L], _handler.Acknowledged);
        newConnectionRead.Set();
        Loopback.PollUntil(after, () => _handler.Acknowledged.Count == 3, "PUBACK of tag 3");
        Assert.Equal([1L, 2L, 3L], _handler.Acknowledged);
    }

    [Fact]
    public void Reconnect_AfterBrokerDroppedTheLinkBeforePubAck_ResumesSessionAndResendsWithDupAndSamePacketId()
    {
        int attempts = 0;
        _broker.OnPublish = e =>
        {
            if (Interlocked.Increment(ref attempts) == 1)
            {
                throw new InvalidOperationException("simulated spool failure: no PUBACK, connection dropped");
            }
        };
        MqttClient client = NewClient();
        Assert.False(client.Connect("127.0.0.1", _broker.Port).SessionPresent);
        byte[] payload = "alert-7"u8.ToArray();
        client.Publish(AlertTopic, payload, 0, payload.Length, tag: 7, retain: false, dup: false);

        MqttException broken = Loopback.PollUntilBroken(client);
        Assert.Equal(MqttError.LinkBroken, broken.Error);
        Assert.False(client.IsConnected);
        Assert.Empty(_handler.Acknowledged);
        Assert.Equal(1, client.UnacknowledgedCount);

        Assert.True(client.Connect("127.0.0.1", _broker.Port).SessionPresent);
        var tags = new long[4];
        Assert.Equal(1, client.CopyUnacknowledgedTags(tags));
        Assert.Equal(7, tags[0]);
        Assert.True(client.Publish(AlertTopic, payload, 0, payload.Length, tags[0], retain: false, dup: false));
        Loopback.PollUntil(client, () => _handler.Acknowledged.Count == 1, "PUBACK of the resent tag 7");

        Assert.Equal([7L], _handler.Acknowledged);
        List<MqttPublishPacket> seen = _broker.PublishesFrom("dev-1");
        Assert.Equal(2, seen.Count);
        Assert.False(seen[0].Dup);
        Assert.True(seen[1].Dup);
        Assert.Equal(seen[0].PacketIdentifier, seen[1].PacketIdentifier);
        Assert.Equal(payload, seen[1].Payload.ToArray());
    }

    [Fact]
    public async Task Subscribe_ReceiptTopic_DeliversQos1MessageAndAcknowledgesIt()
    {
        MqttClient client = NewClient();
        client.Connect("127.0.0.1", _broker.Port);
        Assert.Equal(1, client.Subscribe(ReceiptTopic, 1));

        await _broker.InjectAsync(ReceiptTopic, "{\"id\":\"ab-42\",\"state\":\"accepted\"}");
        Loopback.PollUntil(client, () => _handler.Messages.Count == 1, "the receipt");

        (string topic, byte[] body, int qos, _) = Assert.Single(_handler.Messages);
        Assert.Equal(ReceiptTopic, topic);
        Assert.Equal(1, qos);
        Assert.Equal("{\"id\":\"ab-42\",\"state\":\"accepted\"}"u8.ToArray(), body);
        Loopback.PollUntil(client, () => _broker.Inbound.Any(p => p.ClientId == "dev-1" && p.Packet is MqttPubAckPacket), "the device's PUBACK for the receipt");
    }

    [Fact]
    public void Poll_WhenIdlePastKeepAlive_SendsPingReqAndStaysConnected()
    {
        // MQTTnet closes a link silent for 1.5 × keep-alive: 2 s leaves the client's PINGREQ (due at 2 s) a full second
        // of scheduling slack on a loaded 2-core CI machine, where 1 s (half a second of slack) once lost the race.
        MqttClient client = NewClient(keepAliveSeconds: 2);
        client.Connect("127.0.0.1", _broker.Port);
        Loopback.PollUntil(client, () => _broker.Inbound.Any(p => p.ClientId == "dev-1" && p.Packet is MqttPingReqPacket), "a PINGREQ", 10_000);
        client.Poll(200);
        Assert.True(client.IsConnected);
    }

    [Fact]
    public void Publish_WhenNotConnected_ThrowsNotConnected()
    {
        MqttClient client = NewClient();
        var ex = Assert.Throws<MqttException>(() => client.Publish(AlertTopic, [1], 0, 1, 1, false, false));
        Assert.Equal(MqttError.NotConnected, ex.Error);
    }
}
