using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MQTTnet.Server;

namespace EdgeMail.Gateway.Ingest;

/// <summary>The in-process MQTTnet broker that devices connect to when no external broker is configured.</summary>
public sealed partial class EmbeddedBroker : IHostedService, IDisposable
{
    private readonly MqttIngestOptions _options;
    private readonly ILogger<EmbeddedBroker> _logger;
    private MqttServer? _server;

    /// <summary>Creates the broker; it listens once the host starts it.</summary>
    /// <param name="options">Listener settings.</param>
    /// <param name="logger">Where the broker reports what it does.</param>
    public EmbeddedBroker(IOptions<MqttIngestOptions> options, ILogger<EmbeddedBroker> logger)
    {
        _options = options.Value;
        _logger = logger;
    }

    /// <summary>The endpoint the broker listens on, known once started (the real port when 0 was asked for).</summary>
    public IPEndPoint? Endpoint { get; private set; }

    /// <inheritdoc />
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var address = IPAddress.Parse(_options.BindAddress);
        int port = _options.Port == 0 ? ReserveFreePort(address) : _options.Port;
        var factory = new MqttServerFactory();
        var serverOptions = factory.CreateServerOptionsBuilder()
            .WithDefaultEndpoint()
            .WithDefaultEndpointBoundIPAddress(address)
            .WithDefaultEndpointBoundIPV6Address(IPAddress.None)
            .WithDefaultEndpointPort(port)
            .Build();
        _server = factory.CreateMqttServer(serverOptions);
        await _server.StartAsync().ConfigureAwait(false);
        Endpoint = new IPEndPoint(address, port);
        LogListening(Endpoint);
    }

    /// <inheritdoc />
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_server is not null)
        {
            await _server.StopAsync().ConfigureAwait(false);
        }
    }

    /// <inheritdoc />
    public void Dispose() => _server?.Dispose();

    // MQTTnet does not report the port it bound, so port 0 is resolved by asking the OS first.
    private static int ReserveFreePort(IPAddress address)
    {
        using var probe = new TcpListener(address, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "MQTT broker listening on {Endpoint}")]
    private partial void LogListening(IPEndPoint endpoint);
}
