using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Boards;
using EdgeMail.Simulation.Torture;

namespace EdgeMail.Emulator;

/// <summary>
/// The <c>torture</c> command: the model-based power-cut campaign (<see cref="PowerCutCampaign"/>) on a board's flash,
/// for rings of several sizes and every full policy, seeds added until each ring and policy has had the cut points
/// asked for. Prints, per ring and policy and per geometry, cut points explored, mounts compared and violations by kind.
/// </summary>
internal static class TortureCommand
{
    private static readonly FullPolicy[] AllPolicies = [FullPolicy.DropLowestPriority, FullPolicy.DropOldest, FullPolicy.Reject];

    public static Command Create(Option<string?> boardsDir, TextWriter stdout, TextWriter stderr)
    {
        var board = new Option<string>("--board") { Description = "Board profile id (see `boards`)", Required = true };
        var strict = new Option<bool>("--strict") { Description = "Refuse reprogramming a unit between erases, as encrypted/ECC flash does (forced when the board's flash forbids it)" };
        var sectors = new Option<string>("--sectors") { Description = "Ring sizes to test, in erase sectors of the board's flash", DefaultValueFactory = _ => "3,4,8,16" };
        var policy = new Option<string>("--policy") { Description = "Full policy: DropLowestPriority, DropOldest, Reject or all", DefaultValueFactory = _ => "all" };
        var cutPoints = new Option<long>("--cut-points") { Description = "Cut points to explore per ring size and policy (seeds 1, 2, ... until reached)", DefaultValueFactory = _ => 5_000 };
        var steps = new Option<int>("--steps") { Description = "Workload steps per seed (0: enough for the ring to fill and drain several times)", DefaultValueFactory = _ => 0 };
        var cutsPerOp = new Option<int>("--cuts-per-op") { Description = "Random power cuts tried at every program and erase", DefaultValueFactory = _ => 2 };
        var after = new Option<int>("--steps-after-cut") { Description = "Steps the device lives on after each cut, checked as it goes", DefaultValueFactory = _ => 24 };
        var seed = new Option<int>("--seed") { Description = "First seed", DefaultValueFactory = _ => 1 };
        var onlyOp = new Option<long?>("--only-operation") { Description = "Replay a violation: explore cuts only at this flash operation of the workload (as printed), for one seed" };
        var log = new Option<string?>("--log") { Description = "Replay a violation: write every step and check of the explored lives to this file" };
        var cmd = new Command("torture", "Run the flash queue's model-based power-cut campaign on a board's flash: cut power every way inside every program and erase, remount, live on, and compare with a reference model after every step and mount");
        foreach (Option o in new Option[] { board, strict, sectors, policy, cutPoints, steps, cutsPerOp, after, seed, onlyOp, log, boardsDir })
        {
            cmd.Options.Add(o);
        }

        cmd.SetAction(parse =>
        {
            try
            {
                BoardProfile profile = BoardProfile.LoadById(parse.GetValue(boardsDir) ?? BoardProfile.FindBoardsDirectory(), parse.GetValue(board)!);
                long? only = parse.GetValue(onlyOp);
                string? logPath = parse.GetValue(log);
                using TextWriter? logWriter = logPath is null ? null : new StreamWriter(logPath);
                var run = new Run(profile, parse.GetValue(strict), ParseRings(parse.GetValue(sectors)!, profile), ParsePolicies(parse.GetValue(policy)!),
                    only is null ? parse.GetValue(cutPoints) : 1, parse.GetValue(steps), parse.GetValue(cutsPerOp), parse.GetValue(after), parse.GetValue(seed), only, logWriter);
                return run.Execute(stdout);
            }
            catch (Exception ex) when (ex is IOException or InvalidDataException or ArgumentException or UnauthorizedAccessException or FormatException)
            {
                stderr.WriteLine($"error: {ex.Message}");
                return 2;
            }
        });
        return cmd;
    }

    private static int[] ParseRings(string text, BoardProfile profile)
    {
        int[] rings = [.. text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s => int.Parse(s, CultureInfo.InvariantCulture))];
        long most = profile.Flash.SizeBytes / profile.Flash.EraseSectorBytes;
        if (rings.Length == 0 || rings.Any(r => r < 3 || r > most))
        {
            throw new ArgumentException($"--sectors: ring sizes from 3 to {most} sectors (the board's flash), comma-separated; got '{text}'.");
        }

        return rings;
    }

    private static FullPolicy[] ParsePolicies(string text) =>
        text.Equals("all", StringComparison.OrdinalIgnoreCase) ? AllPolicies
        : Enum.TryParse(text, ignoreCase: true, out FullPolicy p) ? [p]
        : throw new ArgumentException($"--policy: DropLowestPriority, DropOldest, Reject or all; got '{text}'.");

    private sealed class Run(BoardProfile profile, bool strict, int[] rings, FullPolicy[] policies, long cutPoints, int steps, int cutsPerOp, int after, int firstSeed, long? onlyOperation, TextWriter? log)
    {
        public int Execute(TextWriter stdout)
        {
            FlashProfile f = profile.Flash;
            bool isStrict = strict || !f.AllowsReprogram;
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"torture {profile.Id}: sectors of {f.EraseSectorBytes} B, page {f.PageBytes} B, unit {f.ProgramUnitBytes} B, {(isStrict ? "strict (no reprogramming)" : "reprogram allowed")}{(f.Encrypted ? ", encrypted" : string.Empty)}; "
                + $"{cutsPerOp} cut(s) per flash operation, {after} steps lived after each; .NET {Environment.Version}, {Environment.ProcessorCount} cores"));
            long totalCuts = 0;
            long totalViolations = 0;
            var byKind = new SortedDictionary<string, long>(StringComparer.Ordinal);
            var examples = new List<string>();
            var clock = Stopwatch.StartNew();
            foreach (int ring in rings)
            {
                var geometry = new FlashGeometry(ring * f.EraseSectorBytes, f.EraseSectorBytes, f.PageBytes, f.ProgramUnitBytes, !isStrict, f.Encrypted);
                // Alerts average about 330 bytes on flash: a stretch offline fills the ring, and the next drains it.
                int phase = Math.Clamp(ring * f.EraseSectorBytes / 330 * 3, 60, 3000);
                int scriptSteps = steps > 0 ? steps : phase * 6;
                foreach (FullPolicy policy in policies)
                {
                    var watch = Stopwatch.StartNew();
                    long cuts = 0, mounts = 0, mutations = 0, lived = 0, dropped = 0, violations = 0;
                    int seeds = 0;
                    var kinds = new SortedDictionary<string, long>(StringComparer.Ordinal);
                    for (int s = firstSeed; cuts < cutPoints; s++, seeds++)
                    {
                        var campaign = new PowerCutCampaign(new CampaignOptions
                        {
                            Geometry = geometry,
                            Policy = policy,
                            Seed = s,
                            CutsPerOperation = cutsPerOp,
                            StepsAfterCut = after,
                            MaxViolations = 5,
                            OnlyOperation = onlyOperation,
                            Log = log,
                        });
                        campaign.Run(Workload.Script(s, scriptSteps, phase));
                        cuts += campaign.CutPointsChecked;
                        mounts += campaign.MountsChecked;
                        mutations += campaign.Mutations;
                        lived += campaign.StepsRun;
                        dropped += campaign.DroppedReported;
                        violations += campaign.ViolationCount;
                        foreach (var (kind, n) in campaign.ViolationsByKind)
                        {
                            kinds[kind] = kinds.GetValueOrDefault(kind) + n;
                            byKind[kind] = byKind.GetValueOrDefault(kind) + n;
                        }

                        examples.AddRange(campaign.Violations.Take(Math.Max(0, 10 - examples.Count)));
                        if (campaign.CutPointsChecked == 0)
                        {
                            break;
                        }
                    }

                    totalCuts += cuts;
                    totalViolations += violations;
                    stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"  {ring,2} sectors, {policy,-18}: seeds {firstSeed}..{firstSeed + seeds - 1} × {scriptSteps} steps, {mutations:N0} flash operations, {cuts:N0} cut points, "
                        + $"{mounts:N0} mounts compared, {lived:N0} steps, {dropped:N0} drops reported, {violations} violations{Kinds(kinds)} ({watch.Elapsed.TotalSeconds:0.0} s)"));
                }
            }

            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"cut points checked: {totalCuts}"));
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"violations: {totalViolations}{Kinds(byKind)}"));
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"time: {clock.Elapsed.TotalSeconds:0.0} s"));
            foreach (string v in examples)
            {
                stdout.WriteLine("  " + v);
            }

            return totalViolations == 0 ? 0 : 1;
        }

        private static string Kinds(SortedDictionary<string, long> kinds) =>
            kinds.Count == 0 ? string.Empty : " (" + string.Join(", ", kinds.Select(k => string.Create(CultureInfo.InvariantCulture, $"{k.Key} {k.Value}"))) + ")";
    }
}
