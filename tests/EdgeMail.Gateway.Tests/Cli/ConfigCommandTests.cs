using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using EdgeMail.Gateway.Cli;
using EdgeMail.Gateway.Configuration;
using Xunit;

namespace EdgeMail.Gateway.Tests.Cli;

/// <summary>check-config, hash-secret and admin set-password, run in-process as an operator would type them.</summary>
public sealed class ConfigCommandTests : TempDirectory
{
    [Fact]
    public async Task CheckConfig_AValidFile_PassesWithItsWarnings()
    {
        string config = TestGateway.WriteConfig(Dir);
        var valid = await CliRun.RunAsync("check-config", "--config", config, "--Spool:Fsync=false");
        Assert.True(valid.Code == ExitCodes.Ok, valid.ToString());
        Assert.Contains("valid. 3 device(s), 2 user(s)", valid.Out, StringComparison.Ordinal);
        Assert.Contains("Spool:Fsync is false", valid.Out, StringComparison.Ordinal); // a warning, from the console's own list
    }

    [Fact]
    public async Task CheckConfig_AnInvalidFile_NamesEachKeyAndFix_AndExits2()
    {
        string config = TestGateway.WriteConfig(Dir, tweak: c =>
        {
            c["Devices"] = new Dictionary<string, object> { ["dev-1"] = new { Secret = "plain-text", Owners = new[] { "nobody" } } };
            c["Relay"] = new { Mode = "Carrier pigeon" };
        });
        var invalid = await CliRun.RunAsync("check-config", "--config", config);
        Assert.Equal(ExitCodes.InvalidConfiguration, invalid.Code);
        Assert.Contains("Devices:dev-1:Secret", invalid.Out, StringComparison.Ordinal);
        Assert.Contains("Devices:dev-1:Owners:0", invalid.Out, StringComparison.Ordinal);
        Assert.Contains("Relay:Mode", invalid.Out, StringComparison.Ordinal);
        Assert.Contains("Fix:", invalid.Out, StringComparison.Ordinal);

        var json = await CliRun.RunAsync("check-config", "--config", config, "--json");
        var doc = JsonDocument.Parse(json.Out).RootElement;
        Assert.False(doc.GetProperty("valid").GetBoolean());
        Assert.Equal(3, doc.GetProperty("problems").GetArrayLength());

        // A value of the wrong type, a broken file and a missing one are invalid configurations too, not crashes.
        var wrongType = await CliRun.RunAsync("check-config", "--config", TestGateway.WriteConfig(Dir), "--Mqtt:Port=many");
        Assert.Equal(ExitCodes.InvalidConfiguration, wrongType.Code);
        Assert.Contains("Mqtt:Port", wrongType.Out, StringComparison.Ordinal);
        File.WriteAllText(config, "{ \"DataDirectory\": ");
        Assert.Equal(ExitCodes.InvalidConfiguration, (await CliRun.RunAsync("check-config", "--config", config)).Code);
        var missing = await CliRun.RunAsync("check-config", "--config", Path.Combine(Dir, "nope.json"));
        Assert.Equal(ExitCodes.InvalidConfiguration, missing.Code);
        Assert.Contains("nope.json", missing.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Run_AMissingOrBrokenFile_ExitsTwoWithTheFix()
    {
        string missing = Path.Combine(Dir, "nope.json");
        var run = await CliRun.RunAsync("run", "--config", missing);
        Assert.Equal(ExitCodes.InvalidConfiguration, run.Code);
        Assert.Contains("nope.json", run.Error, StringComparison.Ordinal);
        Assert.Contains("Fix: give the path of the configuration file with --config FILE (or EDGEMAIL_CONFIG)", run.Error, StringComparison.Ordinal);

        string config = TestGateway.WriteConfig(Dir);
        File.WriteAllText(config, "{ \"DataDirectory\": ");
        run = await CliRun.RunAsync("run", "--config", config);
        Assert.Equal(ExitCodes.InvalidConfiguration, run.Code);
        Assert.Contains("Fix: correct the JSON", run.Error, StringComparison.Ordinal);
    }

    // A file that is there but cannot be opened (no permission; here a socket, which root cannot open either) stopped the
    // start with exit code 1 and the OS's error alone, as if a restart could fix it; a directory was reported "not found".
    [Fact]
    public async Task Run_AnUnreadableFileOrADirectory_ExitsTwoNamingTheFileTheErrorAndTheFix()
    {
        Directory.CreateDirectory(Dir);
        string socketPath = Path.Combine(Dir, "edgemail.json");
        using var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        socket.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(socketPath));
        var run = await CliRun.RunAsync("run", "--config", socketPath);
        Assert.True(run.Code == ExitCodes.InvalidConfiguration, run.ToString());
        Assert.Contains($"The configuration file '{socketPath}' cannot be read: No such device or address", run.Error, StringComparison.Ordinal);
        Assert.Contains("Fix: give the path of a JSON file the gateway's user can read with --config FILE", run.Error, StringComparison.Ordinal);

        var check = await CliRun.RunAsync("check-config", "--config", socketPath);
        Assert.True(check.Code == ExitCodes.InvalidConfiguration, check.ToString());
        Assert.Contains("cannot be read", check.Out, StringComparison.Ordinal);

        run = await CliRun.RunAsync("run", "--config", Dir);
        Assert.True(run.Code == ExitCodes.InvalidConfiguration, run.ToString());
        Assert.Contains($"The configuration file '{Dir}' is a directory. Fix: give the path of the JSON file itself", run.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task CheckConfig_ConsoleAddressNotAnIp_NamesTheKey_AndTheGatewayDoesNotStart()
    {
        string config = TestGateway.WriteConfig(Dir);
        var check = await CliRun.RunAsync("check-config", "--config", config, "--Console:BindAddress=localhost:8088");
        Assert.Equal(ExitCodes.InvalidConfiguration, check.Code);
        Assert.Contains("Console:BindAddress: 'localhost:8088' is not an IP address. Fix: ", check.Out, StringComparison.Ordinal);

        var run = await CliRun.RunAsync("run", "--config", config, "--Console:BindAddress=localhost:8088");
        Assert.Equal(ExitCodes.InvalidConfiguration, run.Code);
    }

    [Fact]
    public async Task CheckConfig_StrayWords_AreAUsageError()
    {
        var stray = await CliRun.RunAsync("check-config", "--config", TestGateway.WriteConfig(Dir), "please");
        Assert.Equal(ExitCodes.Usage, stray.Code);
        Assert.Contains("'please' is neither a command nor a --Section:Key=value override", stray.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task HashSecret_ReadsStandardInput_AndThePrintedHashVerifies()
    {
        var hashed = await CliRun.RunWithInputAsync("correct horse battery staple\n", "hash-secret");
        Assert.True(hashed.Code == ExitCodes.Ok, hashed.ToString());
        string stored = hashed.Out.Trim();
        Assert.True(SecretHash.IsWellFormed(stored, out _));
        Assert.True(SecretHash.Verify(stored, "correct horse battery staple"u8));
        Assert.False(SecretHash.Verify(stored, "correct horse battery staple\n"u8)); // the line ending is not part of it

        var onArgv = await CliRun.RunAsync("hash-secret", "s3cret");
        Assert.Equal(ExitCodes.Usage, onArgv.Code);
        Assert.Contains("standard input", onArgv.Error, StringComparison.Ordinal);
        Assert.Empty(onArgv.Out);
        Assert.Equal(ExitCodes.Failed, (await CliRun.RunWithInputAsync(string.Empty, "hash-secret")).Code);
    }

    [Fact]
    public async Task AdminSetPassword_WithTheGatewayRunning_LoginWorksAtOnce()
    {
        await using var gw = await TestGateway.StartAsync();
        var set = await CliRun.RunWithInputAsync("a long enough password\n", [.. CliRun.At(gw), "admin", "set-password"]);
        Assert.True(set.Code == ExitCodes.Ok, set.ToString());
        Assert.Contains("running gateway", set.Out, StringComparison.Ordinal);

        using var http = new HttpClient { BaseAddress = gw.ConsoleAddress };
        Assert.Equal(HttpStatusCode.NoContent, (await http.PostAsJsonAsync("api/v1/login", new { password = "a long enough password" })).StatusCode);
        using (var stranger = new HttpClient { BaseAddress = gw.ConsoleAddress })
        {
            Assert.Equal(HttpStatusCode.Unauthorized, (await stranger.PostAsJsonAsync("api/v1/login", new { password = "another password!" })).StatusCode);
        }

        var tooShort = await CliRun.RunWithInputAsync("short\n", [.. CliRun.At(gw), "admin", "set-password"]);
        Assert.Equal(ExitCodes.Failed, tooShort.Code);
        Assert.Contains("at least 12 characters", tooShort.Error, StringComparison.Ordinal);
        using var later = new HttpClient { BaseAddress = gw.ConsoleAddress };
        Assert.Equal(HttpStatusCode.NoContent, (await later.PostAsJsonAsync("api/v1/login", new { password = "a long enough password" })).StatusCode);
    }

    [Fact]
    public async Task AdminSetPassword_WithTheGatewayStopped_GoesIntoTheSpool_AndWorksAfterTheStart()
    {
        var first = await TestGateway.StartAsync(dataDir: Dir, tweak: null, services: null);
        await first.StopAsync(); // its spool stays
        string config = Path.Combine(Dir, "edgemail.json");

        var set = await CliRun.RunWithInputAsync("written while stopped\n", "admin", "set-password", "--config", config);
        Assert.True(set.Code == ExitCodes.Ok, set.ToString());
        Assert.Contains("next login", set.Out, StringComparison.Ordinal);

        await using var gw = await TestGateway.StartAsync(dataDir: Dir, tweak: null, services: null);
        using var http = new HttpClient { BaseAddress = gw.ConsoleAddress };
        Assert.Equal(HttpStatusCode.NoContent, (await http.PostAsJsonAsync("api/v1/login", new { password = "written while stopped" })).StatusCode);
    }

    [Fact]
    public async Task AdminSetPassword_WrittenToTheSpoolBesideARunningGateway_CountsAtItsNextLogin()
    {
        await using var gw = await TestGateway.StartAsync(dataDir: Dir, tweak: null, services: null);
        string config = Path.Combine(Dir, "edgemail.json");

        // The console is not reachable (another port): the password goes into the spool the gateway has open.
        var set = await CliRun.RunWithInputAsync("written beside it\n", "admin", "set-password", "--config", config, "--Console:Port=1");
        Assert.True(set.Code == ExitCodes.Ok, set.ToString());

        using var http = new HttpClient { BaseAddress = gw.ConsoleAddress };
        Assert.Equal(HttpStatusCode.NoContent, (await http.PostAsJsonAsync("api/v1/login", new { password = "written beside it" })).StatusCode);
    }

    [Fact]
    public async Task AdminSetPassword_WithoutASpool_CreatesNone()
    {
        string config = TestGateway.WriteConfig(Dir);
        var set = await CliRun.RunWithInputAsync("a long enough password\n", "admin", "set-password", "--config", config, "--Console:Port=1");
        Assert.Equal(ExitCodes.Failed, set.Code);
        Assert.Contains("no spool at", set.Error, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(Dir, "spool.db")));
    }
}
