using System.Net;
using System.Net.Sockets;
using System.Runtime.Versioning;
using System.Security.Cryptography.X509Certificates;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Security;
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
    public async Task Template_LoadedByTheGatewayHost_PassesValidationListensWithTlsOnlyAndStopsCleanly()
    {
        int plainPort = Loopback.FreePort();
        int tlsPort = Loopback.FreePort();
        // The console on an OS-chosen port (the template has no SMTP endpoint): another gateway on the machine may hold the template's.
        using var host = GatewayHost.CreateBuilder([
            "--config", Appliance.Template, "--DataDirectory=" + _dir, $"--Mqtt:Port={plainPort}", $"--Mqtt:TlsPort={tlsPort}", "--Console:Port=0"]).Build();
        var options = host.Services.GetRequiredService<IOptions<GatewayOptions>>().Value;
        Assert.Empty(GatewayOptionsValidator.Check(options));
        Assert.Equal("127.0.0.1", options.Mqtt.BindAddress);
        Assert.Equal(_dir, options.DataDirectory);
        Assert.False(options.Mqtt.PlainEnabled); // a site gets MQTT over TLS only unless it asks for plain text
        Assert.True(options.Mqtt.TlsEnabled);
        Assert.Equal(["example-sensor"], options.Devices.Keys);
        Assert.Null(host.Services.GetRequiredService<DemoInfo>().ConfigFile);

        await host.StartAsync().WaitAsync(TimeSpan.FromSeconds(30));
        var broker = host.Services.GetRequiredService<EmbeddedBroker>();
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, tlsPort), broker.TlsEndpoint);
        Assert.Null(broker.Endpoint);
        using (var plain = new TcpClient())
        {
            var refused = await Assert.ThrowsAsync<SocketException>(() => plain.ConnectAsync(IPAddress.Loopback, plainPort));
            Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
        }

        // The placeholder device cannot connect over TLS either: its hash matches no secret (here: the empty one and a guess).
        using var certificate = X509CertificateLoader.LoadCertificate(
            X509CertificateLoader.LoadPkcs12FromFile(Path.Combine(_dir, TlsCertificates.GeneratedFileName), null).RawData);
        foreach (string secret in new[] { string.Empty, "example-sensor" })
        {
            using var client = new MqttClientFactory().CreateMqttClient();
            var connect = new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", tlsPort).WithClientId("example-sensor")
                .WithCredentials("example-sensor", secret).WithProtocolVersion(MQTTnet.Formatter.MqttProtocolVersion.V500)
                .WithTlsOptions(o => o.UseTls().WithTargetHost("localhost")
                    .WithCertificateValidationHandler(e => Ingest.MqttListenerTests.IsGatewayCertificate(e.Certificate, e.SslPolicyErrors, certificate)))
                .Build();
            Assert.Equal(MqttClientConnectResultCode.BadUserNameOrPassword, (await client.ConnectAsync(connect)).ResultCode);
        }

        await host.StopAsync().WaitAsync(TimeSpan.FromSeconds(30));
        using var closed = new TcpClient();
        await Assert.ThrowsAsync<SocketException>(() => closed.ConnectAsync(IPAddress.Loopback, tlsPort));
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
        Assert.False(options.Mqtt.PlainEnabled);
    }

    [Fact]
    public async Task StagedInstall_WithMqttPlain_WritesAValidConfigWithThePlainListenerToo()
    {
        string root = await Appliance.StageInstallAsync(_dir, "--mqtt-plain");
        string config = Path.Combine(root, "etc", "edgemail", "edgemail.json");
        using var host = GatewayHost.CreateBuilder(["--config", config, "--DataDirectory=" + Path.Combine(_dir, "data")]).Build();
        var options = host.Services.GetRequiredService<IOptions<GatewayOptions>>().Value;
        Assert.Empty(GatewayOptionsValidator.Check(options));
        Assert.True(options.Mqtt.PlainEnabled);
        Assert.True(options.Mqtt.TlsEnabled);
        Assert.Equal("127.0.0.1", options.Mqtt.BindAddress);
    }
}
