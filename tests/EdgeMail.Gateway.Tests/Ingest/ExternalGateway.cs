using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;

namespace EdgeMail.Gateway.Tests.Ingest;

/// <summary>A gateway host in external-broker mode on a data directory the test keeps across restarts.</summary>
public sealed class ExternalGateway : IAsyncDisposable
{
    private ExternalGateway(IHost host) => Host = host;

    public IHost Host { get; }

    public ISpool Spool => Host.Services.GetRequiredService<ISpool>();

    public ExternalBrokerClient Client => Host.Services.GetRequiredService<ExternalBrokerClient>();

    /// <summary>
    /// The test gateway's configuration (devices dev-1..dev-N), pointed at the broker on <paramref name="port"/>;
    /// <paramref name="external"/> changes the <c>Mqtt:External</c> section (e.g. <c>MaxInFlight</c>).
    /// </summary>
    public static string WriteConfig(string dataDir, int port, int devices = 3, object? tls = null, string protocol = "5", Action<Dictionary<string, object>>? tweak = null,
        Action<Dictionary<string, object>>? external = null)
    {
        return TestGateway.WriteConfig(dataDir, devices, c =>
        {
            tweak?.Invoke(c);
            var section = new Dictionary<string, object>
            {
                ["Host"] = "127.0.0.1",
                ["Port"] = port,
                ["Username"] = ExternalMosquitto.GatewayUser,
                ["Password"] = ExternalMosquitto.GatewayPassword,
                ["ClientId"] = ExternalMosquitto.GatewayUser,
                ["ProtocolVersion"] = protocol,
                ["ReconnectDelay"] = "00:00:00.200",
                ["MaxReconnectDelay"] = "00:00:02",
            };
            if (tls is not null)
            {
                foreach (var p in tls.GetType().GetProperties())
                {
                    section[p.Name] = p.GetValue(tls)!;
                }
            }

            external?.Invoke(section);
            c["Mqtt"] = new Dictionary<string, object> { ["Mode"] = "external", ["External"] = section };
        });
    }

    /// <summary>
    /// Starts the gateway and waits until it is connected and subscribed; <paramref name="services"/> may replace
    /// services (a clock), <paramref name="beforeStart"/> set the client's test hooks.
    /// </summary>
    public static async Task<ExternalGateway> StartAsync(string config, Action<IServiceCollection>? services = null, Action<ExternalBrokerClient>? beforeStart = null)
    {
        var builder = GatewayHost.CreateBuilder(["--config", config]);
        services?.Invoke(builder.Services);
        var host = builder.Build();
        var gateway = new ExternalGateway(host);
        beforeStart?.Invoke(gateway.Client);
        await host.StartAsync();
        await gateway.Client.Connected.WaitAsync(Await.DefaultTimeout);
        return gateway;
    }

    /// <summary>A device connected to the broker (user name = client id = device id).</summary>
    public static async Task<IMqttClient> DeviceAsync(int port, string device, string? receiptsTo = null, Action<string>? onReceipt = null, string? caFile = null)
    {
        var client = new MqttClientFactory().CreateMqttClient();
        if (onReceipt is not null)
        {
            client.ApplicationMessageReceivedAsync += e =>
            {
                onReceipt(e.ApplicationMessage.ConvertPayloadToString());
                return Task.CompletedTask;
            };
        }

        var builder = new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", port).WithClientId(device)
            .WithCredentials(device, ExternalMosquitto.DevicePassword).WithProtocolVersion(MqttProtocolVersion.V500)
            .WithTimeout(TimeSpan.FromSeconds(10));
        if (caFile is not null)
        {
            var trust = new System.Security.Cryptography.X509Certificates.X509Certificate2Collection();
            trust.ImportFromPemFile(caFile);
            builder.WithTlsOptions(t => t.UseTls().WithTrustChain(trust));
        }

        var result = await client.ConnectAsync(builder.Build());
        if (result.ResultCode != MqttClientConnectResultCode.Success)
        {
            throw new InvalidOperationException($"device {device} could not connect to mosquitto: {result.ResultCode}");
        }

        if (receiptsTo is not null)
        {
            await client.SubscribeAsync(receiptsTo, MqttQualityOfServiceLevel.AtLeastOnce);
        }

        return client;
    }

    public static MqttApplicationMessage Alert(string device, string id) =>
        new MqttApplicationMessageBuilder().WithTopic($"edgemail/v1/{device}/alert").WithPayload(Alerts.Json(id))
            .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build();

    /// <summary>Mail composed and queued (any status) in the spool: one per routed alert.</summary>
    public async Task<long> QueuedMailAsync() => (await Spool.CountsAsync(default)).Messages.Values.Sum();

    /// <summary>Waits until the mailbox holds at least <paramref name="count"/> files.</summary>
    public static Task<string[]> MailAsync(string dataDir, int count, TimeSpan? timeout = null) =>
        Mailbox.WaitForAsync(Path.Combine(dataDir, "mailbox", "new"), count, timeout);

    public async ValueTask DisposeAsync()
    {
        await Host.StopAsync();
        Host.Dispose();
    }
}
