using System.Net;
using System.Net.Sockets;
using System.Runtime.Versioning;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using MQTTnet;
using Xunit;

namespace EdgeMail.Gateway.Tests.Deployment;

/// <summary>The appliance's starting configuration is one the gateway really runs on.</summary>
[SupportedOSPlatform("linux")]
public sealed class TemplateConfigTests : IDisposable
{
    private readonly string _dir = Appliance.NewTempDirectory();

    public void Dispose() => Appliance.DeleteQuietly(_dir);

    [Fact]
    public async Task Template_LoadedByTheGatewayHost_PassesValidationListensAndStopsCleanly()
    {
        int port = Loopback.FreePort();
        using var host = GatewayHost.CreateBuilder(["--config", Appliance.Template, "--DataDirectory=" + _dir, $"--Mqtt:Port={port}"]).Build();
        var options = host.Services.GetRequiredService<IOptions<GatewayOptions>>().Value;
        Assert.Empty(GatewayOptionsValidator.Check(options));
        Assert.Equal("127.0.0.1", options.Mqtt.BindAddress);
        Assert.Equal(["example-sensor"], options.Devices.Keys);
        Assert.Null(host.Services.GetRequiredService<DemoInfo>().ConfigFile);

        await host.StartAsync().WaitAsync(TimeSpan.FromSeconds(30));
        var broker = host.Services.GetRequiredService<EmbeddedBroker>();
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, port), broker.Endpoint);
        using (var probe = new TcpClient())
        {
            await probe.ConnectAsync(IPAddress.Loopback, port);
        }

        // The placeholder device cannot connect: its hash matches no secret (here: the empty one and a guess).
        foreach (string secret in new[] { string.Empty, "example-sensor" })
        {
            using var client = new MqttClientFactory().CreateMqttClient();
            var connect = new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", port).WithClientId("example-sensor")
                .WithCredentials("example-sensor", secret).WithProtocolVersion(MQTTnet.Formatter.MqttProtocolVersion.V500).Build();
            Assert.Equal(MqttClientConnectResultCode.BadUserNameOrPassword, (await client.ConnectAsync(connect)).ResultCode);
        }

        await host.StopAsync().WaitAsync(TimeSpan.FromSeconds(30));
        using var closed = new TcpClient();
        await Assert.ThrowsAsync<SocketException>(() => closed.ConnectAsync(IPAddress.Loopback, port));
    }

    [Fact]
    public void Template_DataDirectory_IsTheUnitsStateDirectory()
    {
        var unit = Appliance.ParseUnit(File.ReadAllText(Appliance.UnitFile));
        using var host = GatewayHost.CreateBuilder(["--config", Appliance.Template]).Build();
        var options = host.Services.GetRequiredService<IOptions<GatewayOptions>>().Value;
        Assert.Equal("/var/lib/" + Assert.Single(unit[("Service", "StateDirectory")]), options.DataDirectory);
        Assert.Equal(options.DataDirectory, Assert.Single(unit[("Service", "WorkingDirectory")]));
        Assert.Equal(string.Empty, options.Spool.Path);
        Assert.Equal(string.Empty, options.Relay.MailboxPath);
    }

    [Fact]
    public async Task StagedInstall_WithMqttBindOnTheLan_WritesAValidConfigBoundThere()
    {
        string root = await Appliance.StageInstallAsync(_dir, "--mqtt-bind", "0.0.0.0");
        string config = Path.Combine(root, "etc", "edgemail", "edgemail.json");
        using var host = GatewayHost.CreateBuilder(["--config", config, "--DataDirectory=" + Path.Combine(_dir, "data")]).Build();
        var options = host.Services.GetRequiredService<IOptions<GatewayOptions>>().Value;
        Assert.Empty(GatewayOptionsValidator.Check(options));
        Assert.Equal("0.0.0.0", options.Mqtt.BindAddress);
    }
}
