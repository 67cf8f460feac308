using System.Net;
using System.Net.Sockets;
using MQTTnet.Protocol;
using MQTTnet.Server;

namespace EdgeMail.Emulator.Fleet;

/// <summary>
/// An MQTTnet broker in the emulator's process (<c>--embedded-broker</c>): persistent sessions, accepts exactly the
/// fleet's credentials (client id = user name = device id, password = its secret), counts the alerts it takes.
/// For running the emulator alone and for the fleet-scale benchmark; it is a broker, not the gateway (no spool, no receipts).
/// </summary>
internal sealed class EmbeddedBroker : IAsyncDisposable
{
    private readonly MqttServer _server;
    private long _alerts;

    private EmbeddedBroker(MqttServer server, int port)
    {
        _server = server;
        Port = port;
    }

    public int Port { get; }

    public long AlertsReceived => Interlocked.Read(ref _alerts);

    public static async Task<EmbeddedBroker> StartAsync(IReadOnlyDictionary<string, string> credentials)
    {
        int port = FreePort();
        var factory = new MqttServerFactory();
        MqttServer server = factory.CreateMqttServer(factory.CreateServerOptionsBuilder()
            .WithDefaultEndpoint().WithDefaultEndpointBoundIPAddress(IPAddress.Loopback)
            .WithDefaultEndpointPort(port).WithPersistentSessions(true).WithConnectionBacklog(4096).Build());
        var broker = new EmbeddedBroker(server, port);
        server.ValidatingConnectionAsync += e =>
        {
            if (e.ClientId != e.UserName || !credentials.TryGetValue(e.ClientId, out string? secret) || secret != e.Password)
            {
                e.ReasonCode = MqttConnectReasonCode.BadUserNameOrPassword;
            }

            return Task.CompletedTask;
        };
        server.InterceptingPublishAsync += e =>
        {
            if (e.ApplicationMessage.Topic.EndsWith("/alert", StringComparison.Ordinal))
            {
                Interlocked.Increment(ref broker._alerts);
            }

            return Task.CompletedTask;
        };
        await server.StartAsync().ConfigureAwait(false);
        return broker;
    }

    public async ValueTask DisposeAsync()
    {
        await _server.StopAsync().ConfigureAwait(false);
        _server.Dispose();
    }

    private static int FreePort()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)listener.LocalEndPoint!).Port;
    }
}
