using System.Diagnostics;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Ingest;

public sealed class EmbeddedBrokerTests : IAsyncLifetime
{
    private IHost? _host;
    private EmbeddedBroker Broker => _host!.Services.GetRequiredService<EmbeddedBroker>();

    public async Task InitializeAsync()
    {
        _host = GatewayHost.CreateBuilder(["--Mqtt:Port=0"]).Build();
        await _host.StartAsync();
    }

    public async Task DisposeAsync()
    {
        await _host!.StopAsync();
        _host.Dispose();
    }

    [Fact]
    public async Task Start_ListensOnLoopbackOnly_ByDefault()
    {
        Assert.NotNull(Broker.Endpoint);
        Assert.True(System.Net.IPAddress.IsLoopback(Broker.Endpoint!.Address));
        Assert.NotEqual(0, Broker.Endpoint.Port);
        await Task.CompletedTask;
    }

    [Fact]
    public async Task Publish_QoS1_FromMqttnetClient_IsAcknowledged()
    {
        using var client = new MqttClientFactory().CreateMqttClient();
        var options = new MqttClientOptionsBuilder()
            .WithTcpServer(Broker.Endpoint!.Address.ToString(), Broker.Endpoint.Port)
            .WithClientId("dev-1")
            .Build();
        using var timeout = new CancellationTokenSource(Await.DefaultTimeout);

        var connect = await client.ConnectAsync(options, timeout.Token);
        var result = await client.PublishAsync(
            new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert").WithPayload("{}")
                .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build(),
            timeout.Token);

        Assert.Equal(MqttClientConnectResultCode.Success, connect.ResultCode);
        Assert.True(result.IsSuccess, result.ReasonString);
    }

    [PeerFact("mosquitto_pub:mosquitto-clients")]
    public async Task Publish_QoS1_FromDebianMosquittoPub_IsAcknowledged()
    {
        string pub = Peers.Require("mosquitto_pub", "mosquitto-clients");
        var psi = new ProcessStartInfo(pub)
        {
            ArgumentList = { "-h", Broker.Endpoint!.Address.ToString(), "-p", Broker.Endpoint.Port.ToString(System.Globalization.CultureInfo.InvariantCulture),
                "-i", "dev-2", "-q", "1", "-t", "edgemail/v1/dev-2/alert", "-m", "{}", "-d" },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var process = Process.Start(psi)!;
        string output = await Await.Within(process.StandardOutput.ReadToEndAsync(), "mosquitto_pub to finish");
        await process.WaitForExitAsync();

        Assert.Equal(0, process.ExitCode);
        Assert.Contains("received PUBACK", output, StringComparison.Ordinal);
    }
}
