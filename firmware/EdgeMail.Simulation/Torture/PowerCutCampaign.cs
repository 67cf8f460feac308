using System.Globalization;
using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;

namespace EdgeMail.Simulation.Torture;

/// <summary>How a campaign runs: the flash, the queue's policy, and how hard it cuts.</summary>
public sealed class CampaignOptions
{
    /// <summary>The queue region.</summary>
    public required FlashGeometry Geometry { get; init; }

    /// <summary>The queue's full policy.</summary>
    public FullPolicy Policy { get; init; } = FullPolicy.DropLowestPriority;

    /// <summary>Seed of every random choice (script, cuts, torn bits); printed with every violation.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>Power cuts tried at every program and erase of the workload (each a random <see cref="PowerCut"/>).</summary>
    public int CutsPerOperation { get; init; } = 2;

    /// <summary>Steps the device lives on after each cut, checked as it goes (more raises refill and reclaim the ring).</summary>
    public int StepsAfterCut { get; init; } = 24;

    /// <summary>Share of those lives in which power fails a second time, somewhere in the steps after the cut.</summary>
    public double SecondCutRate { get; init; } = 0.1;

    /// <summary>Whether the state after every step of the workload is also remounted on a copy and checked.</summary>
    public bool CheckEveryStep { get; init; } = true;

    /// <summary>Violations kept with their full description (each names the seed and cut point that show it).</summary>
    public int MaxViolations { get; init; } = 50;

    /// <summary>Stop exploring after this many violations.</summary>
    public long StopAfterViolations { get; init; } = long.MaxValue;

    /// <summary>To replay one violation: explore cuts only at this flash operation of the workload (as printed).</summary>
    public long? OnlyOperation { get; init; }

    /// <summary>To replay one violation: where every step and check of the explored lives is written.</summary>
    public TextWriter? Log { get; init; }
}

/// <summary>
/// A model-based power-cut campaign for the flash queue and the alert store on top of it. A workload (alerts
/// raised in storms that coalesce, windows handed to an uplink, acknowledgements, lost links, reboots) runs on
/// simulated NOR flash while a <see cref="ReferenceModel"/> tracks what the device owes the gateway. Before every
/// program and erase the flash is copied and the same operation is replayed on the copy with power cut inside it
/// (<see cref="Workload.RandomCut"/>); the copy reboots, is compared with the model, and lives on for a while
/// (more raises, so a full ring is reclaimed again; sometimes a second cut), compared again after every step and
/// every mount. The comparison: every raised and unacknowledged alert is handed out in order with its latest
/// count, or its newest record is counted by a drop marker; nothing acknowledged, dropped or never raised comes
/// back, except the duplicates docs/flash-queue.md allows; sequence numbers never repeat; the full policy drops
/// no entry while an older one of lower priority stays; no unit is programmed twice (strict flash throws).
/// </summary>
public sealed partial class PowerCutCampaign
{
    private readonly CampaignOptions _options;
    private readonly List<string> _violations = [];
    private readonly SortedDictionary<string, long> _byKind = new(StringComparer.Ordinal);
    private Life? _main;

    /// <summary>Prepares a campaign.</summary>
    /// <param name="options">What to run.</param>
    public PowerCutCampaign(CampaignOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options;
    }

    /// <summary>Cut points explored: a program or erase, cut one way, then remounted, lived on and checked.</summary>
    public long CutPointsChecked { get; private set; }

    /// <summary>Mounts compared with the model (after cuts, reboots, and the remount after every step).</summary>
    public long MountsChecked { get; private set; }

    /// <summary>Program and erase operations of the workload itself.</summary>
    public long Mutations { get; private set; }

    /// <summary>Reclaims of a sector by the full policy seen in the workload (a sector opened while the ring was full).</summary>
    public long DroppedReported { get; private set; }

    /// <summary>Steps run, in the workload and in the lives after cuts.</summary>
    public long StepsRun { get; private set; }

    /// <summary>Every broken promise found (the first of each cut point explored), with the seed and cut point that show it.</summary>
    public IReadOnlyList<string> Violations => _violations;

    /// <summary>How many broken promises of each kind ("lost", "acknowledged came back", "reprogrammed", ...) were found.</summary>
    public IReadOnlyDictionary<string, long> ViolationsByKind => _byKind;

    /// <summary>Broken promises found, all kinds (more than <see cref="Violations"/> keeps when it is full).</summary>
    public long ViolationCount { get; private set; }

    /// <summary>Runs the workload, exploring cut points at every program and erase.</summary>
    /// <param name="script">The steps.</param>
    public void Run(IEnumerable<WorkStep> script)
    {
        ArgumentNullException.ThrowIfNull(script);
        var flash = new NorFlashSimulator(_options.Geometry, seed: _options.Seed);
        _main = new Life(this, flash, new ReferenceModel(), "workload", _options.Seed);
        flash.BeforeMutation = OnMutation;
        try
        {
            _main.Boot();
            int index = 0;
            foreach (WorkStep step in script)
            {
                if (ViolationCount >= _options.StopAfterViolations)
                {
                    break;
                }

                _main.Where = string.Create(CultureInfo.InvariantCulture, $"seed {_options.Seed}, step {index} ({step.Kind})");
                _main.Do(step);
                StepsRun++;
                if (_options.CheckEveryStep)
                {
                    using var copy = flash.Fork(Mix(_options.Seed, index, -1));
                    var life = new Life(this, copy, _main.Model.Clone(), string.Create(CultureInfo.InvariantCulture, $"seed {_options.Seed}, remount after step {index} ({step.Kind})"), _options.Seed + index);
                    life.Model.Rebooted();
                    try
                    {
                        life.BootAndCheck();
                    }
                    catch (LifeFailedException)
                    {
                    }
                }

                index++;
            }
        }
        catch (LifeFailedException)
        {
            // The workload's own check failed: the model no longer matches the device, so it stops here.
        }
        catch (Exception ex) when (ex is FlashViolationException or InvalidOperationException or ArgumentException or IndexOutOfRangeException or KeyNotFoundException)
        {
            Violation(Kind(ex), _main.Where, $"the workload stopped: {ex.GetType().Name}: {ex.Message}");
        }

        Mutations = flash.Mutations;
        DroppedReported = _main.DroppedReported;
    }

    private void OnMutation(long index, bool isErase, int address, byte[] buffer, int offset, int count)
    {
        if (ViolationCount >= _options.StopAfterViolations || _main is null || (_options.OnlyOperation is long only && only != index))
        {
            return;
        }

        for (int i = 0; i < _options.CutsPerOperation; i++)
        {
            // Every choice at this cut point follows from (seed, operation, i): a violation replays with OnlyOperation.
            int seed = Mix(_options.Seed, index, i);
            PowerCut cut = Workload.RandomCut(new Random(seed), isErase);
            string where = string.Create(CultureInfo.InvariantCulture,
                $"{_main.Where}, flash operation {index} ({(isErase ? "erase" : "program")} 0x{address:X}+{count}) cut {cut}");
            CutPointsChecked++;
            var copy = _main.Flash.Fork(seed);
            copy.ScheduleCut(0, cut);
            try
            {
                if (isErase)
                {
                    copy.EraseSector(address / _options.Geometry.SectorBytes);
                }
                else
                {
                    copy.Program(address, buffer, offset, count);
                }

                Violation("simulator", where, "the scheduled cut did not strike");
                continue;
            }
            catch (PowerLossException)
            {
            }

            var life = new Life(this, copy, _main.Model.Clone(), where, seed) { InFlight = _main.InFlight };
            try
            {
                life.LiveOn(_options.StepsAfterCut, _options.SecondCutRate);
            }
            catch (LifeFailedException)
            {
            }
            catch (Exception ex) when (ex is FlashViolationException or InvalidOperationException or ArgumentException or IndexOutOfRangeException or KeyNotFoundException or QueueFullException)
            {
                Violation(Kind(ex), life.Where, $"{ex.GetType().Name}: {ex.Message}");
            }
            finally
            {
                StepsRun += life.Steps;
                copy.Dispose();
            }
        }
    }

    /// <summary>A seed for one cut point, the same in every process (HashCode is randomised per process).</summary>
    private static int Mix(int seed, long index, int i)
    {
        ulong x = ((ulong)(uint)seed << 32) ^ ((ulong)index * 0x9E3779B97F4A7C15UL) ^ ((ulong)(uint)i * 0xC2B2AE3D27D4EB4FUL);
        x ^= x >> 29;
        x *= 0xBF58476D1CE4E5B9UL;
        x ^= x >> 32;
        return (int)(x & 0x7FFFFFFF);
    }

    private static string Kind(Exception ex) => ex is FlashViolationException ? "reprogrammed" : "crashed";

    private void Violation(string kind, string where, string what)
    {
        ViolationCount++;
        _byKind[kind] = _byKind.GetValueOrDefault(kind) + 1;
        if (_violations.Count < _options.MaxViolations)
        {
            _violations.Add($"[{kind}] {where}: {what}");
        }
    }

    /// <summary>Ends a life at its first broken promise.</summary>
    private sealed class LifeFailedException : Exception
    {
    }
}
