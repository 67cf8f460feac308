using System.Text.Json;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using Microsoft.Extensions.Options;
using MQTTnet.Formatter;
using Xunit;

namespace EdgeMail.Gateway.Tests.Ingest;

/// <summary>Mqtt:Mode and Mqtt:External: validation at start, the options handed to MQTTnet, and the topics read back.</summary>
public sealed class ExternalBrokerOptionsTests
{
    private static GatewayOptions External(Action<ExternalBrokerOptions>? tweak = null)
    {
        var o = new GatewayOptions
        {
            Users = new(StringComparer.OrdinalIgnoreCase) { ["alice"] = new UserOptions { Name = "Alice", Email = "alice@example.com" } },
            Devices = new(StringComparer.Ordinal) { ["dev-1"] = new DeviceOptions { Owners = ["alice"] } },
            Routes = [new RouteOptions { To = ["owners"] }],
        };
        o.Mqtt.Mode = "external";
        o.Mqtt.External.Host = "mqtt.example.com";
        tweak?.Invoke(o.Mqtt.External);
        return o;
    }

    [Fact]
    public void SubscribeAndUnsubscribe_WithASharedGroup_UseShareFilters_WithoutOne_ThePlainOnes()
    {
        var shared = new ExternalBrokerOptions { SharedGroup = "edgemail" };

        Assert.Equal(["$share/edgemail/edgemail/v1/+/alert", "$share/edgemail/edgemail/v1/+/status"],
            ExternalBrokerConnection.SubscribeOptions(shared).TopicFilters.Select(f => f.Topic));
        Assert.Equal(["$share/edgemail/edgemail/v1/+/alert", "$share/edgemail/edgemail/v1/+/status"], ExternalBrokerConnection.UnsubscribeOptions(shared).TopicFilters);
        Assert.Equal(["edgemail/v1/+/alert", "edgemail/v1/+/status"],
            ExternalBrokerConnection.SubscribeOptions(new ExternalBrokerOptions()).TopicFilters.Select(f => f.Topic));
    }

    [Fact]
    public void Check_ExternalModeWithHostAndNoDeviceSecrets_IsValid()
    {
        Assert.Empty(GatewayOptionsValidator.Check(External()));
    }

    [Fact]
    public void Check_EmbeddedModeWithoutDeviceSecret_StillNeedsTheSecret()
    {
        var o = External();
        o.Mqtt.Mode = "Embedded";

        Assert.Contains(GatewayOptionsValidator.Check(o), e => e.StartsWith("Devices:dev-1:Secret:", StringComparison.Ordinal));
    }

    [Fact]
    public void Check_UnknownMode_NamesTheKeyAndBothModes()
    {
        var o = External();
        o.Mqtt.Mode = "extrenal";

        string error = Assert.Single(GatewayOptionsValidator.Check(o), e => e.StartsWith("Mqtt:", StringComparison.Ordinal));

        Assert.StartsWith("Mqtt:Mode: 'extrenal' is not an MQTT mode. Fix: use embedded", error, StringComparison.Ordinal);
        Assert.Contains("external", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("Host", "Mqtt:External:Host: is empty but Mqtt:Mode is external")]
    [InlineData("HostWithScheme", "Mqtt:External:Host: 'mqtt://broker:1883' is not a host name or address")]
    [InlineData("Port", "Mqtt:External:Port: 0 is not a TCP port")]
    [InlineData("ClientId", "Mqtt:External:ClientId: is empty")]
    [InlineData("ClientIdWildcard", "Mqtt:External:ClientId: 'gw/#' is not a usable client id")]
    [InlineData("PasswordOnly", "Mqtt:External:Username: is empty but Mqtt:External:Password is set")]
    [InlineData("Protocol", "Mqtt:External:ProtocolVersion: '4' is not supported")]
    [InlineData("SessionExpiry", "Mqtt:External:SessionExpiry: 00:00:00 is too short for a persistent session")]
    [InlineData("Backoff", "Mqtt:External:MaxReconnectDelay: 00:00:01 is shorter than Mqtt:External:ReconnectDelay")]
    [InlineData("InFlight", "Mqtt:External:MaxInFlight: 0 is outside 1 to 65535")]
    [InlineData("CaWithoutTls", "Mqtt:External:Tls: is false but TLS settings")]
    [InlineData("MissingCa", "Mqtt:External:CaFile: '/nonexistent/ca.pem' does not exist")]
    [InlineData("CertWithoutKey", "Mqtt:External:ClientKeyFile: is empty but the other half of the client certificate is set")]
    public void Check_BadExternalSetting_NamesTheKeyAndTheFix(string problem, string expected)
    {
        var o = External(x =>
        {
            switch (problem)
            {
                case "Host": x.Host = " "; break;
                case "HostWithScheme": x.Host = "mqtt://broker:1883"; break;
                case "Port": x.Port = 0; break;
                case "ClientId": x.ClientId = string.Empty; break;
                case "ClientIdWildcard": x.ClientId = "gw/#"; break;
                case "PasswordOnly": x.Password = "pw"; break;
                case "Protocol": x.ProtocolVersion = "4"; break;
                case "SessionExpiry": x.SessionExpiry = TimeSpan.Zero; break;
                case "Backoff": x.ReconnectDelay = TimeSpan.FromSeconds(5); x.MaxReconnectDelay = TimeSpan.FromSeconds(1); break;
                case "InFlight": x.MaxInFlight = 0; break;
                case "CaWithoutTls": x.CaFile = "/etc/ssl/certs/ca-certificates.crt"; break;
                case "MissingCa": x.Tls = true; x.CaFile = "/nonexistent/ca.pem"; break;
                case "CertWithoutKey": x.Tls = true; x.ClientCertificateFile = "/etc/edgemail/gw.pem"; break;
            }
        });

        string error = Assert.Single(GatewayOptionsValidator.Check(o));

        Assert.StartsWith(expected, error, StringComparison.Ordinal);
        Assert.Contains(". Fix: ", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Check_CaFileThatIsNotPem_IsRefusedWithTheReason()
    {
        string file = Path.GetTempFileName();
        try
        {
            File.WriteAllText(file, "not a certificate");
            var o = External(x =>
            {
                x.Tls = true;
                x.CaFile = file;
            });

            string error = Assert.Single(GatewayOptionsValidator.Check(o));

            Assert.StartsWith("Mqtt:External:CaFile:", error, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public async Task Start_ExternalModeWithoutHost_IsRefusedBeforeAnythingRuns()
    {
        string dir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        try
        {
            string config = TestGateway.WriteConfig(dir, 1, c => c["Mqtt"] = new { Mode = "external" });
            using var host = GatewayHost.CreateBuilder(["--config", config]).Build();

            var ex = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());

            Assert.Contains(ex.Failures, f => f.StartsWith("Mqtt:External:Host:", StringComparison.Ordinal));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void ClientOptions_Default_PersistentMqtt5SessionWithReceiveMaximum()
    {
        var x = External().Mqtt.External;
        x.Username = "gw";
        x.Password = "pw";

        var options = ExternalBrokerConnection.ClientOptions(x);

        Assert.False(options.CleanSession);
        Assert.Equal(MqttProtocolVersion.V500, options.ProtocolVersion);
        Assert.Equal((uint)TimeSpan.FromDays(7).TotalSeconds, options.SessionExpiryInterval);
        Assert.Equal(256, options.ReceiveMaximum);
        Assert.Equal("edgemail-gateway", options.ClientId);
        Assert.Equal("gw", options.Credentials.GetUserName(options));
        Assert.False(((MQTTnet.MqttClientTcpOptions)options.ChannelOptions).TlsOptions.UseTls);
    }

    [Fact]
    public void ClientOptions_Mqtt311_KeepsTheSessionWithCleanSessionOff()
    {
        var x = External(e => e.ProtocolVersion = "3.1.1").Mqtt.External;

        var options = ExternalBrokerConnection.ClientOptions(x);

        Assert.False(options.CleanSession);
        Assert.Equal(MqttProtocolVersion.V311, options.ProtocolVersion);
    }

    [Fact]
    public void ReconnectDelay_ConsecutiveFailures_DoublesUpToTheMaximumWithAStableJitterOfAtMostAQuarter()
    {
        var x = External(e => (e.ReconnectDelay, e.MaxReconnectDelay) = (TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(30))).Mqtt.External;

        var delays = Enumerable.Range(1, 40).Select(n => ExternalBrokerConnection.ReconnectDelay(x, n)).ToList();

        double[] nominal = [.. Enumerable.Range(1, 40).Select(n => Math.Min(30_000, 1_000 * Math.Pow(2, n - 1)))];
        Assert.All(delays.Zip(nominal), d => Assert.InRange(d.First.TotalMilliseconds, 0.75 * d.Second, d.Second));
        Assert.Equal(delays, Enumerable.Range(1, 40).Select(n => ExternalBrokerConnection.ReconnectDelay(x, n)));
        x.ClientId = "gateway-2";
        Assert.NotEqual(delays, Enumerable.Range(1, 40).Select(n => ExternalBrokerConnection.ReconnectDelay(x, n)));
    }

    [Theory]
    [InlineData("edgemail/v1/dev-1/alert", TopicKind.Alert, "dev-1")]
    [InlineData("edgemail/v1/dev.2_x/status", TopicKind.Status, "dev.2_x")]
    [InlineData("edgemail/v1/dev-1/receipt", TopicKind.None, "")]
    [InlineData("edgemail/v1//alert", TopicKind.None, "")]
    [InlineData("edgemail/v1/dev-1/alert/extra", TopicKind.None, "")]
    [InlineData("edgemail/v2/dev-1/alert", TopicKind.None, "")]
    [InlineData("other/dev-1/alert", TopicKind.None, "")]
    public void Parse_Topic_GivesTheDeviceIdOnlyForContractTopics(string topic, TopicKind kind, string device)
    {
        Assert.Equal(kind, ExternalTopics.Parse(topic, out string id));
        Assert.Equal(device, id);
    }

    [Fact]
    public void ExampleFile_IsStrictJsonAndDocumentsTheExternalMode()
    {
        string example = Path.Combine(AppContext.BaseDirectory, "edgemail.example.json");
        using var json = JsonDocument.Parse(File.ReadAllText(example));

        var mqtt = json.RootElement.GetProperty("Mqtt");
        Assert.Equal("embedded", mqtt.GetProperty("Mode").GetString());
        Assert.True(mqtt.GetProperty("External").TryGetProperty("Host", out _));
    }
}
