using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using EdgeMail.Firmware.Uplink.Mqtt;
using MQTTnet.Packets;
using BrokerPacket = MQTTnet.Packets.MqttPacket;
using DevicePacket = EdgeMail.Firmware.Uplink.Mqtt.MqttPacket;
using MQTTnet.Protocol;
using MQTTnet.Server;

namespace EdgeMail.Firmware.Tests.Uplink.Mqtt;

/// <summary>Real time for tests that talk to real sockets.</summary>
internal sealed class StopwatchClock : IClock
{
    private readonly Stopwatch _watch = Stopwatch.StartNew();

    public long UptimeMs => _watch.ElapsedMilliseconds;
}

/// <summary>Records what the client reports.</summary>
internal sealed class RecordingHandler : IMqttClientHandler
{
    public List<long> Acknowledged { get; } = [];

    public List<(string Topic, byte[] Payload, int Qos, bool Dup)> Messages { get; } = [];

    public void OnPublishAcknowledged(long tag) => Acknowledged.Add(tag);

    public void OnMessageReceived(DevicePacket message) =>
        Messages.Add((message.GetTopic(), message.Buffer![message.PayloadOffset..(message.PayloadOffset + message.PayloadLength)], message.Qos, message.Dup));
}

internal static class Loopback
{
    /// <summary>Reserves a free loopback port (MQTTnet does not report the port it bound for port 0).</summary>
    public static int FreePort() => EdgeMail.Testing.Loopback.FreePort();

    /// <summary>Drives a synchronous client until <paramref name="condition"/> holds, failing after a deadline.</summary>
    public static void PollUntil(MqttClient client, Func<bool> condition, string what, int timeoutMs = 15_000)
    {
        var watch = Stopwatch.StartNew();
        while (!condition())
        {
            if (watch.ElapsedMilliseconds > timeoutMs)
            {
                throw new TimeoutException($"Timed out after {timeoutMs} ms waiting for {what}.");
            }

            client.Poll(100);
        }
    }

    /// <summary>Polls until the client reports a failure, and returns it.</summary>
    public static MqttException PollUntilBroken(MqttClient client, int timeoutMs = 15_000)
    {
        var watch = Stopwatch.StartNew();
        try
        {
            while (watch.ElapsedMilliseconds < timeoutMs)
            {
                client.Poll(100);
            }
        }
        catch (MqttException ex)
        {
            return ex;
        }

        throw new TimeoutException($"The client still reported a live link after {timeoutMs} ms.");
    }
}

/// <summary>The in-process MQTTnet broker with persistent sessions, device credentials and packet recording.</summary>
internal sealed class MqttTestBroker : IAsyncDisposable
{
    private readonly MqttServer _server;

    private MqttTestBroker(MqttServer server, int port)
    {
        _server = server;
        Port = port;
    }

    public int Port { get; }

    /// <summary>user name → password accepted by the broker.</summary>
    public Dictionary<string, string> Users { get; } = new() { ["dev-1"] = "s3cret", ["dev-2"] = "other" };

    /// <summary>Every packet the broker received, with the sending client's id.</summary>
    public ConcurrentQueue<(string ClientId, BrokerPacket Packet)> Inbound { get; } = new();

    /// <summary>Application messages that reached the publish interceptor.</summary>
    public ConcurrentQueue<(string ClientId, MqttPublishPacket Packet, MQTTnet.MqttApplicationMessage Message)> Published { get; } = new();

    private readonly ConcurrentDictionary<string, TaskCompletionSource<bool>> _disconnected = new();

    /// <summary>Called for each PUBLISH before it is acknowledged; throwing drops the connection without PUBACK.</summary>
    public Action<InterceptingPublishEventArgs>? OnPublish { get; set; }

    /// <summary>Called for each topic filter of a SUBSCRIBE; a reason code other than granted refuses it (SUBACK 0x80 in MQTT 3.1.1).</summary>
    public Action<InterceptingSubscriptionEventArgs>? OnSubscribe { get; set; }

    public static async Task<MqttTestBroker> StartAsync()
    {
        int port = Loopback.FreePort();
        var factory = new MqttServerFactory();
        MqttServer server = factory.CreateMqttServer(factory.CreateServerOptionsBuilder()
            .WithDefaultEndpoint().WithDefaultEndpointBoundIPAddress(IPAddress.Loopback)
            .WithDefaultEndpointPort(port).WithPersistentSessions(true).Build());
        var broker = new MqttTestBroker(server, port);
        server.ValidatingConnectionAsync += e =>
        {
            if (!broker.Users.TryGetValue(e.UserName ?? string.Empty, out string? password) || password != e.Password)
            {
                e.ReasonCode = MqttConnectReasonCode.BadUserNameOrPassword;
            }

            return Task.CompletedTask;
        };
        server.InterceptingInboundPacketAsync += e =>
        {
            broker.Inbound.Enqueue((e.ClientId, e.Packet));
            return Task.CompletedTask;
        };
        server.InterceptingSubscriptionAsync += e =>
        {
            broker.OnSubscribe?.Invoke(e);
            return Task.CompletedTask;
        };
        server.ClientDisconnectedAsync += e =>
        {
            broker.Disconnected(e.ClientId).TrySetResult(true);
            return Task.CompletedTask;
        };
        server.InterceptingPublishAsync += e =>
        {
            broker.OnPublish?.Invoke(e);
            return Task.CompletedTask;
        };
        await server.StartAsync();
        return broker;
    }

    /// <summary>Records every PUBLISH the broker accepted from a client (as the inbound packet).</summary>
    public List<MqttPublishPacket> PublishesFrom(string clientId) =>
        Inbound.Where(p => p.ClientId == clientId && p.Packet is MqttPublishPacket).Select(p => (MqttPublishPacket)p.Packet).ToList();

    /// <summary>Completes once a connection of <paramref name="clientId"/> has ended (the broker noticed the client go).</summary>
    public Task<bool> DisconnectedAsync(string clientId) => EdgeMail.Testing.Await.Within(Disconnected(clientId).Task, $"the broker to see {clientId} disconnect");

    private TaskCompletionSource<bool> Disconnected(string clientId) =>
        _disconnected.GetOrAdd(clientId, _ => new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously));

    /// <summary>Sends a QoS 1 message to a topic as the broker itself.</summary>
    public Task InjectAsync(string topic, string payload) =>
        _server.InjectApplicationMessage(new InjectedMqttApplicationMessage(new MQTTnet.MqttApplicationMessageBuilder()
            .WithTopic(topic).WithPayload(payload).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build()) { SenderClientId = "gateway" });

    public async ValueTask DisposeAsync()
    {
        await _server.StopAsync();
        _server.Dispose();
    }
}
