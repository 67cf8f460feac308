using System.Buffers;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Tests.Alerts;
using EdgeMail.Firmware.Uplink;
using EdgeMail.Firmware.Uplink.Mqtt;
using EdgeMail.Simulation.Network;
using MQTTnet.Packets;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Firmware.Tests.Uplink.Mqtt;

/// <summary>
/// PUBLISH with a payload that streams itself through the 256-byte send buffer: byte for byte what the one-buffer
/// encoder gives, window and DUP as before, a maximum-size alert through the MQTTnet broker, and a PUBLISH larger
/// than the receive buffer handled by its head.
/// </summary>
public sealed class MqttStreamedPublishTests(ITestOutputHelper output)
{
    private const string AlertTopic = "edgemail/v1/dev-1/alert";

    private static MqttClient Connected(ScriptedTransport transport, RecordingHandler handler, int receiveBuffer = 512)
    {
        var client = new MqttClient(transport, new StopwatchClock(), new MqttClientOptions
        {
            ClientId = "dev-1",
            UserName = "dev-1",
            Password = "s3cret",
            ReceiveBufferSize = receiveBuffer,
        }, handler);
        transport.Incoming.Enqueue([0x20, 0x02, 0x00, 0x00]);
        client.Connect("scripted", 1883);
        transport.Sent.Clear();
        return client;
    }

    [Theory]
    [InlineData(0, 1, false)]
    [InlineData(1, 1, false)]
    [InlineData(200, 1, false)]
    [InlineData(225, 1, false)]
    [InlineData(226, 1, false)] // header 30 + 226 = exactly the 256-byte send buffer
    [InlineData(227, 1, false)]
    [InlineData(1000, 0, true)]
    [InlineData(4096, 1, false)]
    public void Publish_StreamedPayload_SendsTheSameBytesAsTheOneBufferEncoding(int size, int qos, bool retain)
    {
        int seed = (size * 31) + qos;
        output.WriteLine($"seed {seed}");
        var payload = new byte[size];
        new Random(seed).NextBytes(payload);
        var transport = new ScriptedTransport();
        MqttClient client = Connected(transport, new RecordingHandler());

        if (qos == 1)
        {
            Assert.True(client.Publish(AlertTopic, new PiecewiseSource(payload, seed), 7, retain, false));
        }
        else
        {
            client.PublishQos0(AlertTopic, new PiecewiseSource(payload, seed), retain);
        }

        var expected = new byte[5 + 2 + AlertTopic.Length + 2 + size];
        int length = MqttCodec.EncodePublish(expected, 0, AlertTopic, qos, false, retain, 7, payload, 0, size); // tag 7's packet id
        Assert.Equal(expected.AsSpan(0, length).ToArray(), transport.Sent.ToArray());
        Assert.All(transport.SendSizes, n => Assert.InRange(n, 1, 256));

        // The byte[] overload on a second client gives the same bytes.
        var other = new ScriptedTransport();
        MqttClient reference = Connected(other, new RecordingHandler());
        if (qos == 1)
        {
            reference.Publish(AlertTopic, payload, 0, size, 7, retain, false);
        }
        else
        {
            reference.PublishQos0(AlertTopic, payload, 0, size, retain);
        }

        Assert.Equal(other.Sent, transport.Sent);
    }

    [Fact]
    public void Publish_StreamedTagStillInTheWindow_IsResentWithDupAndTheSamePacketId()
    {
        var payload = new byte[700];
        new Random(700).NextBytes(payload);
        var transport = new ScriptedTransport();
        MqttClient client = Connected(transport, new RecordingHandler());
        Assert.True(client.Publish(AlertTopic, new PiecewiseSource(payload, 1), 9, false, false));
        byte[] first = [.. transport.Sent];
        transport.Sent.Clear();

        Assert.True(client.Publish(AlertTopic, new PiecewiseSource(payload, 2), 9, false, false));

        var expected = new byte[first.Length];
        MqttCodec.EncodePublish(expected, 0, AlertTopic, 1, true, false, 9, payload, 0, payload.Length); // tag 9's packet id
        Assert.Equal(expected, transport.Sent.ToArray());
        Assert.Equal((byte)(first[0] | 0x08), transport.Sent[0]);
        Assert.Equal(1, client.UnacknowledgedCount);
    }

    [Fact]
    public void Publish_SourceWritesFewerBytesThanAnnounced_ClosesTheLinkAndThrows()
    {
        var transport = new ScriptedTransport();
        MqttClient client = Connected(transport, new RecordingHandler());
        var ex = Assert.Throws<InvalidOperationException>(() => client.Publish(AlertTopic, new LyingSource(300, 299), 1, false, false));
        Assert.Contains("announced 300", ex.Message, StringComparison.Ordinal);
        Assert.False(client.IsConnected);
        Assert.True(transport.Closed);
        Assert.Equal(1, client.UnacknowledgedCount); // resent on the next connection
    }

    [Fact]
    public void Publish_SourceWritesMoreBytesThanAnnounced_ClosesTheLinkAndThrows()
    {
        var transport = new ScriptedTransport();
        MqttClient client = Connected(transport, new RecordingHandler());
        Assert.Throws<InvalidOperationException>(() => client.PublishQos0(AlertTopic, new LyingSource(10, 11), false));
        Assert.False(client.IsConnected);
        Assert.True(transport.Closed);
    }

    [Fact]
    public void Poll_PublishLargerThanTheReceiveBuffer_DeliversItsHeadSkipsTheRestAndAcknowledges()
    {
        var transport = new ScriptedTransport();
        var handler = new RecordingHandler();
        MqttClient client = Connected(transport, handler, receiveBuffer: 64);
        const string Receipt = "edgemail/v1/dev-1/receipt";
        byte[] body = System.Text.Encoding.UTF8.GetBytes("{\"id\":\"7f3a9c21-1\",\"at\":\"x\",\"detail\":\"" + new string('d', 600) + "\"}");
        var packet = new byte[1024];
        int length = MqttCodec.EncodePublish(packet, 0, Receipt, 1, false, false, 77, body, 0, body.Length);
        // Split arbitrarily, and followed by a PUBACK that must still be decoded after the skipped rest.
        transport.Incoming.Enqueue(packet[..40]);
        transport.Incoming.Enqueue(packet[40..300]);
        transport.Incoming.Enqueue([.. packet[300..length], 0x40, 0x02, 0x00, 0x05]);

        client.Poll(0);
        client.Poll(0);
        client.Poll(0);

        (string topic, byte[] head, int qos, _) = Assert.Single(handler.Messages);
        Assert.Equal(Receipt, topic);
        Assert.Equal(1, qos);
        Assert.Equal(body.AsSpan(0, 64 - 3 - 2 - Receipt.Length - 2).ToArray(), head);
        Assert.Equal(new byte[] { 0x40, 0x02, 0x00, 77 }, transport.Sent.ToArray());
        Assert.True(client.IsConnected);
    }

    [Fact]
    public void DecodePublishHead_TopicNotYetComplete_NeedsMoreData()
    {
        var packet = new byte[600];
        var body = new byte[500];
        int length = MqttCodec.EncodePublish(packet, 0, AlertTopic, 1, false, false, 3, body, 0, body.Length);
        var decoded = new EdgeMail.Firmware.Uplink.Mqtt.MqttPacket();
        Assert.Equal(MqttDecodeStatus.NeedMoreData, MqttCodec.DecodePublishHead(packet, 0, 10, decoded));
        Assert.Equal(MqttDecodeStatus.Complete, MqttCodec.DecodePublishHead(packet, 0, 40, decoded));
        Assert.True(decoded.Truncated);
        Assert.Equal(length, decoded.Length);
        Assert.Equal(3, decoded.PacketId);
        Assert.Equal(40 - 3 - 2 - AlertTopic.Length - 2, decoded.PayloadLength);
        Assert.Equal(MqttDecodeStatus.Complete, MqttCodec.DecodePublishHead(packet, 0, length, decoded));
        Assert.False(decoded.Truncated);
        Assert.Equal(500, decoded.PayloadLength);
    }

    [Fact]
    public async Task Publish_MaximumSizeAlertStreamed_ArrivesWholeAtTheMqttnetBroker()
    {
        await using MqttTestBroker broker = await MqttTestBroker.StartAsync();
        using var transport = new TcpTransport();
        var handler = new RecordingHandler();
        var client = new MqttClient(transport, new StopwatchClock(), new MqttClientOptions { ClientId = "dev-1", UserName = "dev-1", Password = "s3cret" }, handler);
        client.Connect("127.0.0.1", broker.Port);
        OutgoingAlert alert = LoadMaxAlert();
        var expected = new byte[AlertJsonWriter.MaxLength];
        int length = alert.WriteTo(expected, 0);
        output.WriteLine($"maximum alert: {length} bytes of JSON");

        Assert.True(client.Publish(AlertTopic, alert, alert.Seq, false, false));
        Loopback.PollUntil(client, () => handler.Acknowledged.Count == 1, "PUBACK of the maximum-size alert");

        MqttPublishPacket seen = Assert.Single(broker.PublishesFrom("dev-1"));
        Assert.Equal(expected.AsSpan(0, length).ToArray(), seen.Payload.ToArray());
        client.Disconnect();
    }

    /// <summary>A maximum-size alert raised on simulated flash and loaded as the store hands it to the forwarder.</summary>
    internal static OutgoingAlert LoadMaxAlert()
    {
        var clock = new StopwatchClock();
        var flash = new EdgeMail.Simulation.Flash.NorFlashSimulator(ForwarderRig.Geometry, seed: 1);
        var queue = new EdgeMail.Firmware.Storage.FlashQueue(flash);
        queue.Mount(0x7F3A9C21);
        var store = new AlertStore(queue, clock, new WallClock(clock), 1);
        store.Raise(StreamedJsonTests.MaxAlert());
        var alert = new OutgoingAlert();
        Assert.True(store.TryNext(alert));
        Assert.InRange(alert.Length, 3_800, AlertJsonWriter.MaxLength);
        return alert;
    }

    /// <summary>Writes a byte array in seeded random pieces of 1 to 97 bytes.</summary>
    private sealed class PiecewiseSource(byte[] payload, int seed) : IByteSource
    {
        public int Length => payload.Length;

        public void WriteTo(IByteSink sink)
        {
            var random = new Random(seed);
            int at = 0;
            while (at < payload.Length)
            {
                int n = Math.Min(random.Next(1, 98), payload.Length - at);
                sink.Write(payload, at, n);
                at += n;
            }
        }
    }

    private sealed class LyingSource(int announced, int writes) : IByteSource
    {
        public int Length => announced;

        public void WriteTo(IByteSink sink) => sink.Write(new byte[writes], 0, writes);
    }

    /// <summary>An in-memory link: records what the client sends, answers from a script of incoming chunks.</summary>
    private sealed class ScriptedTransport : ITransport
    {
        private int _taken;

        public List<byte> Sent { get; } = [];

        public List<int> SendSizes { get; } = [];

        public Queue<byte[]> Incoming { get; } = new();

        public bool Closed { get; private set; }

        public void Open(string host, int port, int timeoutMs) => Closed = false;

        public int Send(byte[] buffer, int offset, int count, int timeoutMs)
        {
            if (Closed)
            {
                return -1;
            }

            SendSizes.Add(count);
            Sent.AddRange(buffer.AsSpan(offset, count).ToArray());
            return count;
        }

        public int Receive(byte[] buffer, int offset, int count, int timeoutMs)
        {
            if (Closed)
            {
                return -1;
            }

            if (Incoming.Count == 0)
            {
                return 0;
            }

            byte[] next = Incoming.Peek();
            int n = Math.Min(count, next.Length - _taken);
            Array.Copy(next, _taken, buffer, offset, n);
            _taken += n;
            if (_taken == next.Length)
            {
                Incoming.Dequeue();
                _taken = 0;
            }

            return n;
        }

        public void Close() => Closed = true;
    }
}
