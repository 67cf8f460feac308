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

    // .NET reads a bare number as days: a Backoff step of 30 waited a month between attempts, a SilentAfter of 1 a day,
    // and a Timeout of 5 was refused only as "5.00:00:00 is outside 1 second to 1 hour". Zero is zero in any unit; a
    // value a later source overrides is not the one in force; and the key is named once, not again for what it was read as.
    [Fact]
    public async Task Start_TimeSpanKeysGivenAsBareNumbers_FailNamingEachKeyAndTheAcceptedForm()
    {
        string config = TestGateway.WriteConfig(_dir, tweak: c =>
        {
            c["Relay"] = new { Timeout = 5, Backoff = new object[] { "00:01:00", 30 } };
            c["Smtp"] = new { Endpoints = Array.Empty<object>(), CommandTimeout = "120" };
            c["Storm"] = new { Window = "10" };
            c["Receipts"] = new { MaxPerDevice = "" }; // empty: the binder keeps the default, as it always did
            c["Devices"] = new Dictionary<string, object> { ["dev-1"] = new { Secret = SecretHash.Create(TestGateway.Secret, 1000), Owners = new[] { "alice" }, SilentAfter = 1 } };
        });
        using var host = GatewayHost.CreateBuilder(["--config", config, "--Spool:Retention=30", "--Storm:Window=0", "--Silence:CheckInterval=00:00:30"]).Build();

        var problems = await GatewayConfig.ValidateAsync(host.Services, CancellationToken.None);

        string Bare(string key, int n, string where) =>
            $"{key}: {n} is a bare number, which would be read as {n} day{(n == 1 ? string.Empty : "s")} ({where}). Fix: write a time as [d.]hh:mm:ss, e.g. "
            + $"{TimeSpan.FromSeconds(n):c} for {n} second{(n == 1 ? string.Empty : "s")}, {TimeSpan.FromMinutes(n):c} for {n} minute{(n == 1 ? string.Empty : "s")} "
            + $"or {TimeSpan.FromDays(n):c} for {n} day{(n == 1 ? string.Empty : "s")}.";
        Assert.Contains(Bare("Relay:Timeout", 5, "in " + config), problems);
        Assert.Contains(Bare("Relay:Backoff:1", 30, "in " + config), problems);
        Assert.Contains(Bare("Smtp:CommandTimeout", 120, "in " + config), problems);
        Assert.Contains(Bare("Devices:dev-1:SilentAfter", 1, "in " + config), problems);
        Assert.Contains(Bare("Spool:Retention", 30, "from the argument --Spool:Retention"), problems);
        Assert.Equal("Relay:Timeout: 5 is a bare number, which would be read as 5 days (in " + config + "). Fix: write a time as [d.]hh:mm:ss, e.g. 00:00:05 for 5 seconds, "
            + "00:05:00 for 5 minutes or 5.00:00:00 for 5 days.", Bare("Relay:Timeout", 5, "in " + config));
        Assert.DoesNotContain(problems, p => p.StartsWith("Storm:", StringComparison.Ordinal) || p.StartsWith("Silence:", StringComparison.Ordinal)
            || p.StartsWith("Receipts:", StringComparison.Ordinal));
        Assert.Single(problems, p => p.StartsWith("Relay:Timeout:", StringComparison.Ordinal)); // not again as "5.00:00:00 is outside 1 second to 1 hour"
        Assert.Equal(5, problems.Count);
    }

    // A value the binder cannot convert failed the binding before any check ran: one line without a fix, and only the first.
    [Fact]
    public async Task Run_ValuesOfTheWrongType_ExitTwoNamingEachKeyAndTheFix()
    {
        string config = TestGateway.WriteConfig(_dir, tweak: c =>
        {
            c["Mqtt"] = new { Port = "many", PlainEnabled = "yes" };
            c["Console"] = new { Port = 0, MetricsAnonymous = "sometimes" };
            c["Relay"] = new { Timeout = "soon", Concurrency = 2.5, MaxAge = "99999999999" };
        });

        var run = await Cli.CliRun.RunAsync("run", "--config", config, "--Smtp:MaxHops=30x");

        Assert.True(run.Code == ExitCodes.InvalidConfiguration, run.ToString());
        Assert.Equal(
        [
            "edgemail: the configuration is invalid:",
            $"  - Console:MetricsAnonymous: 'sometimes' is not true or false (in {config}). Fix: write true or false (the default is false).",
            $"  - Mqtt:PlainEnabled: 'yes' is not true or false (in {config}). Fix: write true or false (the default is true).",
            $"  - Mqtt:Port: 'many' is not a whole number (in {config}). Fix: write a whole number, e.g. 1883 (the default).",
            $"  - Relay:Concurrency: '2.5' is not a whole number (in {config}). Fix: write a whole number, e.g. 4 (the default).",
            $"  - Relay:MaxAge: '99999999999' is not a time (in {config}). Fix: write a time as [d.]hh:mm:ss, e.g. 5.00:00:00 (the default).",
            $"  - Relay:Timeout: 'soon' is not a time (in {config}). Fix: write a time as [d.]hh:mm:ss, e.g. 00:00:30 (the default).",
            "  - Smtp:MaxHops: '30x' is not a whole number (from the argument --Smtp:MaxHops). Fix: write a whole number, e.g. 30 (the default).",
        ], run.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries));

        // The commands that only read the configuration (to find the console) say the same.
        var devices = await Cli.CliRun.RunAsync("devices", "list", "--config", config);
        Assert.Equal(ExitCodes.InvalidConfiguration, devices.Code);
        Assert.Contains($"  - Mqtt:Port: 'many' is not a whole number (in {config}). Fix: write a whole number, e.g. 1883 (the default).\n", devices.Error, StringComparison.Ordinal);
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
