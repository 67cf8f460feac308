using System.CommandLine;
using System.Globalization;
using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Boards;
using EdgeMail.Simulation.Torture;
using Spectre.Console;

namespace EdgeMail.Emulator;

/// <summary>The emulator's command line: one verb per job.</summary>
public static class EmulatorCli
{
    /// <summary>Parses <paramref name="args"/> and runs the chosen command.</summary>
    /// <param name="args">Command-line arguments.</param>
    /// <param name="stdout">Where results go.</param>
    /// <param name="stderr">Where errors and progress go.</param>
    /// <returns>The process exit code: 0 on success.</returns>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var boardsDir = new Option<string?>("--boards") { Description = "Folder of board profiles (default: hardware/boards above the current directory)" };

        var boards = new Command("boards", "List the board profiles the emulator can run, with their flash geometry");
        boards.Options.Add(boardsDir);
        boards.SetAction(parse => ListBoards(parse.GetValue(boardsDir), stdout, stderr));

        var root = new RootCommand("EdgeMail device emulator: runs the firmware core on virtual boards");
        root.Subcommands.Add(boards);
        root.Subcommands.Add(RunCommand.Create(boardsDir, stdout, stderr));
        root.Subcommands.Add(TortureCommand(boardsDir, stdout, stderr));
        root.Subcommands.Add(BenchCommand.Create(boardsDir, stdout, stderr));
        root.Subcommands.Add(Chaos.ChaosCommand.Create(boardsDir, stdout, stderr));
        var config = new InvocationConfiguration { Output = stdout, Error = stderr };
        return root.Parse(args).Invoke(config);
    }

    private static int ListBoards(string? directory, TextWriter stdout, TextWriter stderr)
    {
        try
        {
            string dir = directory ?? BoardProfile.FindBoardsDirectory();
            foreach (var p in BoardProfile.LoadAll(dir))
            {
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{p.Id,-22} {p.Flash.SizeBytes / 1024,8} KiB  sector {p.Flash.EraseSectorBytes,5} B  page {p.Flash.PageBytes,4} B  unit {p.Flash.ProgramUnitBytes,2} B  {(p.Flash.AllowsReprogram ? "reprogram ok" : "no reprogram")}  {p.Name}"));
            }

            return 0;
        }
        catch (Exception ex) when (ex is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            stderr.WriteLine($"error: {ex.Message}");
            return 2;
        }
    }

    private static Command TortureCommand(Option<string?> boardsDir, TextWriter stdout, TextWriter stderr)
    {
        var board = new Option<string>("--board") { Description = "Board profile id (see `boards`)", Required = true };
        var seeds = new Option<int>("--seeds") { Description = "Workload seeds to run (1..N)", DefaultValueFactory = _ => 3 };
        var strict = new Option<bool>("--strict") { Description = "Refuse reprogramming a unit between erases, as encrypted/ECC flash does" };
        var steps = new Option<int>("--steps") { Description = "Workload steps per seed", DefaultValueFactory = _ => 400 };
        var regionKib = new Option<int?>("--region-kib") { Description = "Queue region to test in KiB (default: the board's queue region, at most 256 KiB: every cut point copies the flash)" };
        var policy = new Option<FullPolicy>("--policy") { Description = "Full policy of the queue", DefaultValueFactory = _ => FullPolicy.DropLowestPriority };
        var cmd = new Command("torture", "Run the flash queue's power-cut campaign on a board's flash: cut power inside every program and erase, remount, check every promise");
        foreach (Option o in new Option[] { board, seeds, strict, steps, regionKib, policy, boardsDir })
        {
            cmd.Options.Add(o);
        }

        cmd.SetAction(parse =>
        {
            try
            {
                BoardProfile profile = BoardProfile.LoadById(parse.GetValue(boardsDir) ?? BoardProfile.FindBoardsDirectory(), parse.GetValue(board)!);
                FlashProfile f = profile.Flash;
                long size = parse.GetValue(regionKib) is int kib ? kib * 1024L : Math.Min(f.SizeBytes, 256 * 1024);
                size -= size % f.EraseSectorBytes;
                bool isStrict = parse.GetValue(strict) || !f.AllowsReprogram;
                var geometry = new FlashGeometry(checked((int)size), f.EraseSectorBytes, f.PageBytes, f.ProgramUnitBytes, !isStrict, f.Encrypted);
                int n = parse.GetValue(seeds);
                long cuts = 0, mutations = 0;
                var violations = new List<string>();
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"torture {profile.Id}: region {size / 1024} KiB ({geometry.SectorCount} sectors of {f.EraseSectorBytes} B, page {f.PageBytes} B, unit {f.ProgramUnitBytes} B, {(isStrict ? "strict" : "reprogram allowed")}), policy {parse.GetValue(policy)}, {n} seed(s) × {parse.GetValue(steps)} steps"));
                for (int seed = 1; seed <= n; seed++)
                {
                    var random = new Random(seed);
                    var campaign = new PowerCutCampaign(geometry, parse.GetValue(policy), seed,
                        _ => [0.0, 0.02 + (random.NextDouble() * 0.96), 1.0], weakBits: seed % 2 == 0);
                    campaign.Run(PowerCutCampaign.Script(seed, parse.GetValue(steps)));
                    cuts += campaign.CutPointsChecked;
                    mutations += campaign.Mutations;
                    violations.AddRange(campaign.Violations);
                    stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"  seed {seed}: {campaign.Mutations} writes/erases, {campaign.CutPointsChecked} cut points checked, {campaign.Violations.Count} violations"));
                }

                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"cut points checked: {cuts}"));
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"violations: {violations.Count}"));
                foreach (string v in violations.Take(20))
                {
                    stdout.WriteLine("  " + v);
                }

                return violations.Count == 0 ? 0 : 1;
            }
            catch (Exception ex) when (ex is IOException or InvalidDataException or ArgumentException or UnauthorizedAccessException)
            {
                stderr.WriteLine($"error: {ex.Message}");
                return 2;
            }
        });
        return cmd;
    }

    internal static IAnsiConsole Console(TextWriter writer, bool interactive)
    {
        IAnsiConsole console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = interactive ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = interactive ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = interactive ? InteractionSupport.Yes : InteractionSupport.No,
        });
        if (!interactive)
        {
            console.Profile.Width = 200;
        }

        return console;
    }
}
