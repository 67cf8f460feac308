using EdgeMail.Gateway.Cli;
using EdgeMail.Gateway.Configuration;
using Xunit;

namespace EdgeMail.Gateway.Tests.Configuration;

/// <summary>A key the gateway does not read stops the start, instead of leaving the default in its place.</summary>
public sealed class ConfigurationKeysValidatorTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task Start_MisspelledKeys_FailNamingEachKeyWhereItWasGivenAndTheKeyItResembles()
    {
        string config = TestGateway.WriteConfig(_dir, tweak: c =>
        {
            c["_comment"] = "a key beginning with _ is a comment";
            c["Mqtt"] = new { Port = 0, PlainEnabeld = false, TlsEnabled = true, TlsPort = 0 }; // plain MQTT stayed on
            c["Realy"] = new { Mode = "Smarthost", Host = "smtp.example.com" }; // mail stayed in the local mailbox
            c["Devices"] = new Dictionary<string, object> // the device's alerts went to nobody
            {
                ["dev-1"] = new Dictionary<string, object> { ["Secret"] = SecretHash.Create(TestGateway.Secret, 1000), ["Owner"] = new[] { "alice" }, ["_comment"] = "ours" },
            };
        });
        using var host = GatewayHost.CreateBuilder(["--config", config, "--Relay:Hots=smtp.example.com", "--Smtp:Port=2525"]).Build();

        var problems = await GatewayConfig.ValidateAsync(host.Services, CancellationToken.None);

        string ignored = "is not a key the gateway knows, so it would be ignored and the default used";
        Assert.Equal(
        [
            $"Devices:dev-1:Owner: {ignored} (in {config}). Fix: rename it to Devices:dev-1:Owners, or remove it (a key beginning with _ is a comment).",
            $"Mqtt:PlainEnabeld: {ignored} (in {config}). Fix: rename it to Mqtt:PlainEnabled, or remove it (a key beginning with _ is a comment).",
            $"Realy: {ignored} (in {config}). Fix: rename it to Relay, or remove it (a key beginning with _ is a comment).",
            $"Relay:Hots: {ignored} (from the argument --Relay:Hots). Fix: rename it to Relay:Host, or remove it (a key beginning with _ is a comment).",
        ], problems.Where(p => !p.StartsWith("Smtp:", StringComparison.Ordinal)));
        string smtp = Assert.Single(problems, p => p.StartsWith("Smtp:", StringComparison.Ordinal));
        Assert.StartsWith($"Smtp:Port: {ignored} (from the argument --Smtp:Port). Fix: remove it, or use a key of Smtp: Endpoints, CertificatePath,", smtp, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_KeysOfEverySectionAndTheHosts_AreKnown()
    {
        string config = TestGateway.WriteConfig(_dir, tweak: c =>
        {
            c["MqttGuard"] = new { TlsEnabled = false, TlsPort = 8883, AuthFailuresPerSource = 100 }; // the older TLS keys still read
            c["Smtp"] = new { Endpoints = Array.Empty<object>(), Aliases = new Dictionary<string, object> { ["alarms"] = new[] { "oncall" } } };
            c["Relay"] = new { Mode = "Mailbox", OAuth2 = new { RefreshBefore = "00:05:00" }, Limits = new { Preset = "None" } };
            c["Logging"] = new { LogLevel = new { Default = "Warning", EdgeMail = "Information" } };
        });
        using var host = GatewayHost.CreateBuilder(["--config", config, "--environment", "Production", "--Console:TrustedProxies:0=127.0.0.1"]).Build();

        Assert.Empty(await GatewayConfig.ValidateAsync(host.Services, CancellationToken.None));
    }
}
