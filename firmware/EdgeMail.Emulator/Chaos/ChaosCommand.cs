using System.CommandLine;
using System.Globalization;

namespace EdgeMail.Emulator.Chaos;

/// <summary>The <c>chaos</c> command: the whole chain under every fault at once, and a verdict on every alert.</summary>
internal static class ChaosCommand
{
    public static Command Create(Option<string?> boardsDir, TextWriter stdout, TextWriter stderr)
    {
        var devices = new Option<int>("--devices") { Description = "Emulated devices", DefaultValueFactory = _ => 200 };
        var smtpShare = new Option<double>("--smtp-share") { Description = "Share of the devices on the SMTP uplink", DefaultValueFactory = _ => 0.2 };
        var seed = new Option<int>("--seed") { Description = "Seed of the fault plan and the fleet", DefaultValueFactory = _ => 1 };
        var duration = new Option<double>("--duration") { Description = "Seconds of alerts and faults", DefaultValueFactory = _ => 120 };
        var settle = new Option<double>("--settle") { Description = "Seconds afterwards at most to drain and deliver", DefaultValueFactory = _ => 240 };
        var rate = new Option<double>("--rate") { Description = "Alerts per second per device", DefaultValueFactory = _ => 0.05 };
        var kills = new Option<int>("--gateway-kills") { Description = "SIGKILLs of the gateway", DefaultValueFactory = _ => 2 };
        var sinkDown = new Option<double>("--sink-down") { Description = "Seconds the sink refuses connections", DefaultValueFactory = _ => 60 };
        var board = new Option<string>("--board") { Description = "Board profile id", DefaultValueFactory = _ => "esp32-wroom-32" };
        var output = new Option<string>("--out") { Description = "Folder for report.md, timeline.jsonl, chart.svg, gateway.log", DefaultValueFactory = _ => "chaos-out" };
        var gateway = new Option<string?>("--gateway") { Description = "The gateway's build (EdgeMail.Gateway.dll or its folder); default: the newest build under gateway/" };
        var cmd = new Command("chaos", "Run the whole chain — a fleet, the gateway as a process, a relay — under power cuts, link faults, gateway kills and relay misbehaviour; judge every alert");
        foreach (Option o in new Option[] { devices, smtpShare, seed, duration, settle, rate, kills, sinkDown, board, output, gateway, boardsDir })
        {
            cmd.Options.Add(o);
        }

        cmd.SetAction(async (parse, cancel) =>
        {
            var options = new ChaosOptions
            {
                Devices = parse.GetValue(devices),
                SmtpShare = parse.GetValue(smtpShare),
                Seed = parse.GetValue(seed),
                DurationSeconds = parse.GetValue(duration),
                SettleSeconds = parse.GetValue(settle),
                AlertRatePerSecond = parse.GetValue(rate),
                GatewayKills = parse.GetValue(kills),
                SinkDownSeconds = parse.GetValue(sinkDown),
                Board = parse.GetValue(board)!,
                OutputDirectory = parse.GetValue(output)!,
                GatewayPath = parse.GetValue(gateway),
                BoardsDirectory = parse.GetValue(boardsDir),
            };
            if (options.Devices < 1 || options.SmtpShare is < 0 or > 1 || options.DurationSeconds < 5 || options.SettleSeconds < 10 || options.AlertRatePerSecond < 0 || options.GatewayKills < 0 || options.SinkDownSeconds < 0)
            {
                stderr.WriteLine("error: --devices ≥ 1, --smtp-share 0..1, --duration ≥ 5, --settle ≥ 10, and --rate, --gateway-kills, --sink-down not negative.");
                return 2;
            }

            try
            {
                Directory.CreateDirectory(options.OutputDirectory);
                ChaosResult result = await new ChaosRun(options, stderr).RunAsync(cancel).ConfigureAwait(false);
                string chart = ChaosChart.Write(result, Path.Combine(options.OutputDirectory, "chart.svg"));
                string md = result.Markdown(Path.GetFileName(chart));
                await File.WriteAllTextAsync(Path.Combine(options.OutputDirectory, "report.md"), md, cancel).ConfigureAwait(false);
                stdout.Write(md);
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"seed {options.Seed}: {(result.Passed ? "PASS" : "FAIL")}, {result.Verdict.Violations.Count} violation(s); report in {Path.GetFullPath(options.OutputDirectory)}"));
                return result.Passed ? 0 : 1;
            }
            catch (Exception ex) when (ex is IOException or InvalidDataException or ArgumentException or UnauthorizedAccessException or InvalidOperationException or TimeoutException)
            {
                stderr.WriteLine($"error: {ex.Message}");
                return 2;
            }
        });
        return cmd;
    }
}
