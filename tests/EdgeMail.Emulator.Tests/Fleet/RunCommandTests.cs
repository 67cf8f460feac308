using System.Text.Json;
using EdgeMail.Simulation.Boards;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Emulator.Tests.Fleet;

/// <summary>The <c>run</c> command end to end: real TCP to the emulator's own MQTTnet broker, flash images in a temp folder.</summary>
public sealed class RunCommandTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _state = Path.Combine(Path.GetTempPath(), "edgemail-emulator-tests", Guid.NewGuid().ToString("N"));
    private readonly string _boards = BoardProfile.FindBoardsDirectory(AppContext.BaseDirectory);

    public void Dispose()
    {
        if (Directory.Exists(_state))
        {
            Directory.Delete(_state, recursive: true);
        }
    }

    private (int Exit, JsonElement Report, string Err) Run(params string[] args)
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        string[] all = ["run", "--boards", _boards, "--state-dir", _state, "--progress", "none", "--json", "-", .. args];
        output.WriteLine("emulator " + string.Join(' ', all));
        int exit = EmulatorCli.Run(all, stdout, stderr);
        output.WriteLine(stderr.ToString());
        if (exit != 0)
        {
            return (exit, default, stderr.ToString());
        }

        return (exit, JsonDocument.Parse(stdout.ToString()).RootElement.Clone(), stderr.ToString());
    }

    private static long Total(JsonElement report, string field) => report.GetProperty("total").GetProperty(field).GetInt64();

    [Fact]
    public void Run_WithFlappingLinksPowerCutsAndStorms_AcknowledgesEveryRaisedAlert()
    {
        const int seed = 11;
        output.WriteLine($"seed {seed}");
        var (exit, report, _) = Run("--embedded-broker", "--devices", "12", "--seed", seed.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--duration", "40", "--drain", "120", "--speed", "20", "--rate", "0.5", "--link", "flaps", "--mean-up", "15", "--mean-down", "4",
            "--power-cut-mean", "20", "--mid-write", "0.7", "--storm-every", "30", "--storm-size", "40");

        Assert.Equal(0, exit);
        output.WriteLine(report.GetProperty("total").ToString());
        Assert.True(Total(report, "raised") > 100);
        Assert.True(Total(report, "powerCuts") > 0);
        Assert.True(Total(report, "linkDowns") > 0);
        Assert.Equal(Total(report, "raised"), Total(report, "acknowledged"));
        Assert.Equal(0, Total(report, "unacknowledged"));

        // A write torn by a cut burns its sequence number: the queue counts it until the next acknowledgement covers it.
        Assert.All(report.GetProperty("perDevice").EnumerateArray(),
            d => Assert.InRange(d.GetProperty("queued").GetInt64(), 0, d.GetProperty("tornWrites").GetInt64()));
        Assert.True(report.GetProperty("total").GetProperty("latencyMs").GetProperty("p50").GetInt64() >= 0);
        Assert.Equal(12, report.GetProperty("perDevice").GetArrayLength());
    }

    [Fact]
    public void Run_SameSeed_RaisesTheSameAlertsAndLinkChanges_AnotherSeedDoesNot()
    {
        string[] Args(int seed) => ["--embedded-broker", "--devices", "5", "--seed", seed.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--duration", "30", "--drain", "60", "--speed", "30", "--rate", "0.3", "--link", "flaps", "--mean-up", "10", "--mean-down", "3", "--fresh"];
        static string Shape(JsonElement r) => string.Join(";", r.GetProperty("perDevice").EnumerateArray()
            .Select(d => $"{d.GetProperty("raised").GetInt64()}/{d.GetProperty("linkDowns").GetInt64()}"));

        string a = Shape(Run(Args(5)).Report);
        string b = Shape(Run(Args(5)).Report);
        string c = Shape(Run(Args(6)).Report);
        output.WriteLine($"seed 5: {a}; again: {b}; seed 6: {c}");

        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
    }

    [Fact]
    public void Run_AgainOnTheSameStateFolder_RebootsTheDevicesAndDeliversWhatTheyKeptOnFlash()
    {
        int closed = FreePort();
        var (_, first, _) = Run("--devices", "3", "--port", closed.ToString(System.Globalization.CultureInfo.InvariantCulture), "--duration", "20",
            "--drain", "0", "--speed", "50", "--rate", "0.5");
        long kept = Total(first, "queued");
        output.WriteLine($"queued on flash after the offline run: {kept}");
        Assert.True(kept > 0);
        Assert.Equal(0, Total(first, "acknowledged"));

        // The drain ends as soon as every device is drained; the long limit only matters on a loaded machine, where at
        // speed 50 a slow CONNACK (device-time timeout: 200 ms real) costs a backoff of seconds of device time.
        var (exit, second, _) = Run("--embedded-broker", "--devices", "3", "--duration", "1", "--drain", "600", "--speed", "50", "--rate", "0");

        Assert.Equal(0, exit);
        Assert.Equal(0, Total(second, "queued"));
        Assert.All(second.GetProperty("perDevice").EnumerateArray(), d => Assert.Equal(2, d.GetProperty("boots").GetInt64()));
    }

    [Fact]
    public void Run_ScenarioFile_IsReadAndFlagsOverrideIt()
    {
        Directory.CreateDirectory(_state);
        string file = Path.Combine(_state, "scenario.json");
        File.WriteAllText(file, """
            { "devices": 2, "seed": 3, "durationSeconds": 5, "drainSeconds": 30, "speed": 25, "embeddedBroker": true,
              "alerts": { "ratePerSecond": 1, "severityMix": [0, 0, 1], "codes": ["ONLY_CODE"] },
              "link": { "mode": "outages", "outages": [ { "atSeconds": 1, "forSeconds": 2 } ] } }
            """);

        var (exit, report, _) = Run("--scenario", file, "--devices", "3");

        Assert.Equal(0, exit);
        Assert.Equal(3, report.GetProperty("devices").GetInt32());
        Assert.Equal(3, report.GetProperty("seed").GetInt32());
        Assert.Equal(3, Total(report, "linkDowns"));
        Assert.Equal(Total(report, "raised"), Total(report, "acknowledged"));
    }

    [Fact]
    public void Run_WithExplicitIdsAndASecretsFile_UsesThoseDevicesAndSecrets()
    {
        Directory.CreateDirectory(_state);
        string secrets = Path.Combine(_state, "secrets.txt");
        File.WriteAllText(secrets, "# id secret\nfreezer-2 pa55-word\ndoor-1 other\n");

        var (exit, report, _) = Run("--embedded-broker", "--ids", "freezer-2,door-1", "--secrets-file", secrets, "--duration", "5", "--speed", "25", "--rate", "1");

        Assert.Equal(0, exit);
        Assert.Equal(["freezer-2", "door-1"], report.GetProperty("perDevice").EnumerateArray().Select(d => d.GetProperty("id").GetString()));
        Assert.True(Total(report, "raised") > 0);
        Assert.Equal(Total(report, "raised"), Total(report, "acknowledged"));
        Assert.Equal(0, Total(report, "failures"));
    }

    [Fact]
    public void Run_InvalidSetting_NamesItAndFails()
    {
        var (exit, _, err) = Run("--devices", "0");
        Assert.Equal(2, exit);
        Assert.Contains("devices must be at least 1", err, StringComparison.Ordinal);

        (exit, _, err) = Run("--outage", "soon");
        Assert.Equal(2, exit);
        Assert.Contains("--outage soon", err, StringComparison.Ordinal);
    }

    [Fact]
    public void Run_OverSmtpWithTheEmbeddedReceiver_WithFlapsAndPowerCuts_AcknowledgesEveryRaisedAlert()
    {
        const int seed = 13;
        output.WriteLine($"seed {seed}");
        var (exit, report, err) = Run("--uplink", "smtp", "--embedded-broker", "--devices", "8", "--seed", seed.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--duration", "30", "--drain", "120", "--speed", "10", "--rate", "0.5", "--link", "flaps", "--mean-up", "8", "--mean-down", "3",
            "--power-cut-mean", "15", "--mid-write", "0.7");

        Assert.Equal(0, exit);
        Assert.Contains("embedded SMTP receiver on 127.0.0.1:", err, StringComparison.Ordinal);
        output.WriteLine(report.GetProperty("total").ToString());
        Assert.Equal("smtp", report.GetProperty("uplink").GetString());
        Assert.True(Total(report, "raised") > 50);
        Assert.True(Total(report, "powerCuts") > 0);
        Assert.True(Total(report, "linkDowns") > 0);
        Assert.True(Total(report, "failures") > 0, "sessions against a link that is down fail and back off");
        Assert.Equal(Total(report, "raised"), Total(report, "acknowledged"));
        Assert.Equal(0, Total(report, "unacknowledged"));
        Assert.All(report.GetProperty("perDevice").EnumerateArray(),
            d => Assert.InRange(d.GetProperty("queued").GetInt64(), 0, d.GetProperty("tornWrites").GetInt64()));
        Assert.True(report.GetProperty("total").GetProperty("latencyMs").GetProperty("count").GetInt64() > 0);
    }

    [Fact]
    public void Run_OverSmtpToAReceiverThatIsNotThere_KeepsEveryAlertQueuedAndBacksOff()
    {
        int closed = FreePort();
        var (exit, report, _) = Run("--uplink", "smtp", "--devices", "2", "--port", closed.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--duration", "20", "--drain", "0", "--speed", "50", "--rate", "0.5");

        Assert.Equal(0, exit);
        Assert.True(Total(report, "queued") > 0);
        Assert.Equal(0, Total(report, "acknowledged"));
        Assert.InRange(Total(report, "failures"), 2, 2 * 20); // backoff, not a session per tick
    }

    [Fact]
    public void Run_UplinkOptions_BadValuesAreNamedWithTheFix()
    {
        var (exit, _, err) = Run("--uplink", "carrier-pigeon");
        Assert.Equal(2, exit);
        Assert.Contains("--uplink carrier-pigeon: expected mqtt or smtp", err, StringComparison.Ordinal);

        (exit, _, err) = Run("--uplink", "smtp", "--smtp-to", "nobody");
        Assert.Equal(2, exit);
        Assert.Contains("uplink.smtp.to must be one address", err, StringComparison.Ordinal);

        (exit, _, err) = Run("--uplink", "smtp", "--smtp-from", "device {id}");
        Assert.Equal(2, exit);
        Assert.Contains("uplink.smtp.from must be an address pattern", err, StringComparison.Ordinal);

        (exit, _, err) = Run("--uplink", "smtp", "--tls", "--tls-pin", "12:34");
        Assert.Equal(2, exit);
        Assert.Contains("uplink.tlsPin must be the certificate's SHA-1 (40 hex digits) or SHA-256 (64 hex digits) thumbprint", err, StringComparison.Ordinal);

        (exit, _, err) = Run("--uplink", "smtp", "--embedded-broker", "--tls");
        Assert.Equal(2, exit);
        Assert.Contains("--embedded-broker listens without TLS", err, StringComparison.Ordinal);
    }

    [Fact]
    public void Run_ScenarioFileWithAnSmtpUplink_IsReadAndAnUnknownProtocolIsNamed()
    {
        Directory.CreateDirectory(_state);
        string file = Path.Combine(_state, "smtp.json");
        File.WriteAllText(file, """
            { "devices": 2, "durationSeconds": 5, "drainSeconds": 30, "speed": 25, "embeddedBroker": true,
              "alerts": { "ratePerSecond": 1 },
              "uplink": { "protocol": "smtp", "smtp": { "from": "{id}@ups.example", "to": "alarms@gw.example" } } }
            """);

        var (exit, report, _) = Run("--scenario", file);

        Assert.Equal(0, exit);
        Assert.Equal("smtp", report.GetProperty("uplink").GetString());
        Assert.True(Total(report, "raised") > 0);
        Assert.Equal(Total(report, "raised"), Total(report, "acknowledged"));

        File.WriteAllText(file, """{ "uplink": { "protocol": "uucp" } }""");
        (exit, _, string err) = Run("--scenario", file);
        Assert.Equal(2, exit);
        Assert.Contains($"Scenario file {file} is not valid", err, StringComparison.Ordinal);
        Assert.Contains("uplink.protocol", err, StringComparison.Ordinal);
    }

    private static int FreePort() => EdgeMail.Testing.Loopback.FreePort();
}
