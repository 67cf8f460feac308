using EdgeMail.Gateway.Cli;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Tests.Cli;
using EdgeMail.Testing;
using Xunit;
using Listener = EdgeMail.Gateway.Configuration.ListenerPortsValidator.Listener;

namespace EdgeMail.Gateway.Tests.Configuration;

/// <summary>Two listeners on one port stop the start naming both keys (exit 2), instead of the second bind failing it.</summary>
public sealed class ListenerPortsValidatorTests : TempDirectory
{
    [Fact]
    public async Task Run_MqttAndConsoleOnOnePort_ExitsTwoNamingBothKeys()
    {
        int port = Loopback.FreePort();
        string config = TestGateway.WriteConfig(Dir, tweak: c =>
        {
            c["Mqtt"] = new { Port = port };
            c["Console"] = new { Port = port };
        });

        var run = await CliRun.RunAsync("run", "--config", config, "--Spool:Fsync=false");

        Assert.Equal(ExitCodes.InvalidConfiguration, run.Code);
        Assert.Contains($"Console:Port: {port} is also Mqtt:Port, and two listeners cannot share a port. Fix: give Console:Port or Mqtt:Port another port (0 lets the OS choose).",
            run.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", run.Error, StringComparison.Ordinal);
    }

    // A port another process holds is only found by binding: the start fails (exit 1, systemd retries: the port may be
    // freed), with one line that names the key.
    [Theory]
    [InlineData("Mqtt", "The MQTT listener cannot listen on 127.0.0.1:{0} (Mqtt:Port): Address already in use. Fix: free the port or change Mqtt:Port")]
    [InlineData("Console", "The console cannot listen on 127.0.0.1:{0} (Console:Port): Failed to bind to address http://127.0.0.1:{0}: address already in use. Fix: free the port or change Console:Port")]
    public async Task Run_OnAPortAnotherProcessHolds_FailsInOneLineNamingTheKey(string section, string message)
    {
        using var holder = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        holder.Start();
        int port = ((System.Net.IPEndPoint)holder.LocalEndpoint).Port;
        string config = TestGateway.WriteConfig(Dir, tweak: c => c[section] = new { Port = port });

        var run = await CliRun.RunAsync("run", "--config", config, "--Spool:Fsync=false");

        Assert.Equal(ExitCodes.Failed, run.Code);
        Assert.Contains("cannot start: " + string.Format(System.Globalization.CultureInfo.InvariantCulture, message, port), run.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", run.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Validate_SmtpEndpointOnMqttTlsPort_NamesBothKeys()
    {
        int port = Loopback.FreePort();
        string config = TestGateway.WriteConfig(Dir, tweak: c =>
        {
            c["Mqtt"] = new { Port = 0, TlsEnabled = true, TlsPort = port };
            c["Smtp"] = new { Endpoints = new object[] { new { Port = 0, Tls = "None" }, new { Port = port, Tls = "None" } } };
        });
        using var host = GatewayHost.CreateBuilder(["--config", config]).Build();

        var problems = await GatewayConfig.ValidateAsync(host.Services, CancellationToken.None);

        Assert.StartsWith($"Smtp:Endpoints:1:Port: {port} is also Mqtt:TlsPort", Assert.Single(problems), StringComparison.Ordinal);
    }

    [Fact]
    public void Check_PortZeroAndDistinctAddresses_NeverCollide_ButAWildcardCollidesWithAnyAddress()
    {
        Assert.Empty(ListenerPortsValidator.Check([new("Mqtt:Port", "127.0.0.1", 0), new("Console:Port", "127.0.0.1", 0), new("Smtp:Endpoints:0:Port", "127.0.0.1", 0)]));
        Assert.Empty(ListenerPortsValidator.Check([new("Mqtt:Port", "127.0.0.1", 2525), new("Smtp:Endpoints:0:Port", "192.168.10.1", 2525)]));
        Assert.Empty(ListenerPortsValidator.Check([new("Mqtt:Port", "127.0.0.1", 1883), new("Mqtt:TlsPort", "127.0.0.1", 1883)])); // its own message

        Assert.StartsWith("Console:Port: 8088 is also Smtp:Endpoints:0:Port",
            Assert.Single(ListenerPortsValidator.Check([new("Smtp:Endpoints:0:Port", "0.0.0.0", 8088), new Listener("Console:Port", "127.0.0.1", 8088)])), StringComparison.Ordinal);
    }
}
