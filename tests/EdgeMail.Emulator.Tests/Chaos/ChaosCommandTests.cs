using System.Globalization;
using EdgeMail.Simulation.Boards;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Emulator.Tests.Chaos;

/// <summary>
/// The CI-sized chaos run: the gateway as a child process, a small fleet (MQTT and SMTP uplink) through the fault
/// proxy, a misbehaving relay, power cuts, link faults, two SIGKILLs and a graceful restart — every alert must end
/// delivered once, failed with notice and receipt, or evicted with the loss reported. The seed is printed; set
/// EDGEMAIL_CHAOS_SEED to replay or explore another.
/// </summary>
public sealed class ChaosCommandTests(ITestOutputHelper output)
{
    [Fact]
    public void Chaos_SmallFleetUnderEveryFault_EveryAlertEndsDeliveredOnceOrFailedOrEvictedWithNotice()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("EDGEMAIL_CHAOS_SEED"), NumberStyles.Integer, CultureInfo.InvariantCulture, out int s) ? s : 14;
        string dir = Path.Combine(Path.GetTempPath(), "edgemail-chaos-test", Guid.NewGuid().ToString("N"));
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        string[] args =
        [
            "chaos", "--boards", BoardProfile.FindBoardsDirectory(AppContext.BaseDirectory), "--out", dir,
            "--seed", seed.ToString(CultureInfo.InvariantCulture), "--devices", "24", "--smtp-share", "0.25", "--duration", "40",
            "--settle", "120", "--rate", "0.1", "--sink-down", "8", "--gateway-kills", "2",
        ];
        output.WriteLine($"chaos seed {seed}: emulator {string.Join(' ', args)}");

        int exit = EmulatorCli.Run(args, stdout, stderr);

        output.WriteLine(stdout.ToString());
        output.WriteLine(stderr.ToString());
        Assert.True(exit == 0, $"chaos seed {seed} failed (exit {exit}); report and timeline in {dir}");
        string report = File.ReadAllText(Path.Combine(dir, "report.md"));
        Assert.Contains("**Verdict: PASS**", report, StringComparison.Ordinal);

        // The run did what it says: alerts went through, and every kind of fault was injected.
        string[] timeline = File.ReadAllLines(Path.Combine(dir, "timeline.jsonl"));
        foreach (string kind in new[] { "gateway SIGKILL", "graceful restart", "device power cut", "proxy: reset", "proxy: half-open", "sink: down", "sink: connection dropped after DATA" })
        {
            Assert.Contains(timeline, l => l.Contains(kind, StringComparison.Ordinal));
        }

        Assert.Matches(@"\| delivered: one Message-ID per routed recipient \| [1-9]\d+ \|", report);
        Assert.Matches(@"\| failed for a refused recipient, operator noticed \| [1-9]\d* \|", report);
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
            // a file still open; the temp folder is cleaned some other day
        }
    }
}
