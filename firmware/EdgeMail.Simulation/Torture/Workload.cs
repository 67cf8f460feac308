using EdgeMail.Firmware.Alerts;
using EdgeMail.Simulation.Flash;

namespace EdgeMail.Simulation.Torture;

/// <summary>One step of a device's life, as the campaign drives it.</summary>
public enum Step
{
    /// <summary>The application raises an alert (code, clock advance and text length from the argument).</summary>
    Raise,

    /// <summary>The uplink takes up to four alerts (an MQTT window in flight).</summary>
    ReadBatch,

    /// <summary>The gateway acknowledges the window in flight.</summary>
    AckBatch,

    /// <summary>The link drops: the window in flight will be handed out again.</summary>
    LinkLost,

    /// <summary>A clean reboot: mount the queue again.</summary>
    Reboot,

    /// <summary>Idle-time maintenance (pre-erases the next sector).</summary>
    Maintain,
}

/// <summary>A step and the random argument that shapes it.</summary>
/// <param name="Kind">What happens.</param>
/// <param name="Arg">A non-negative random number the step draws its details from.</param>
public readonly record struct WorkStep(Step Kind, int Arg);

/// <summary>The workloads and power cuts the campaign draws from.</summary>
public static class Workload
{
    /// <summary>
    /// The alert codes the application raises, each with its one severity (so repeats coalesce): few enough that
    /// every code keeps its coalescing slot, and critical ones to check the full policy's priorities.
    /// </summary>
    public static readonly (string Code, Severity Severity)[] Codes =
    [
        ("PUMP_CYCLING", Severity.Info),
        ("READING", Severity.Info),
        ("DOOR_OPEN", Severity.Warning),
        ("TEMP_HIGH", Severity.Critical),
        ("BATTERY_LOW", Severity.Info),
        ("LINK_POOR", Severity.Warning),
        ("SMOKE", Severity.Critical),
        ("TAMPER", Severity.Critical),
    ];

    /// <summary>
    /// A scripted life: offline stretches that fill the queue (storms of repeats, reboots while full), then
    /// online stretches that drain it (windows, acknowledgements, lost links).
    /// </summary>
    /// <param name="seed">Seed of the script.</param>
    /// <param name="steps">Number of steps.</param>
    /// <param name="phase">Steps per offline or online stretch.</param>
    /// <returns>The steps.</returns>
    public static List<WorkStep> Script(int seed, int steps, int phase = 120)
    {
        var rng = new Random(seed);
        var script = new List<WorkStep>(steps);
        for (int i = 0; i < steps; i++)
        {
            bool online = (i / phase) % 2 == 1;
            int r = rng.Next(100);
            Step step = online
                ? r switch { < 38 => Step.Raise, < 62 => Step.ReadBatch, < 85 => Step.AckBatch, < 90 => Step.LinkLost, < 95 => Step.Reboot, _ => Step.Maintain }
                : r switch { < 90 => Step.Raise, < 95 => Step.Reboot, _ => Step.Maintain };
            script.Add(new WorkStep(step, rng.Next()));
        }

        return script;
    }

    /// <summary>What the device does after a power cut: mostly raises, so the full ring is reclaimed again, and some sending.</summary>
    /// <param name="rng">The random source.</param>
    /// <returns>One step.</returns>
    public static WorkStep NextAfterCut(Random rng)
    {
        ArgumentNullException.ThrowIfNull(rng);
        int r = rng.Next(100);
        Step step = r switch { < 62 => Step.Raise, < 74 => Step.ReadBatch, < 86 => Step.AckBatch, < 90 => Step.LinkLost, < 96 => Step.Reboot, _ => Step.Maintain };
        return new WorkStep(step, rng.Next());
    }

    /// <summary>
    /// A random power cut for a program or an erase: before it starts, after it changed nothing visible,
    /// part of it (random bits, random bytes, a prefix) with or without weak cells, or complete but unreturned.
    /// </summary>
    /// <param name="rng">The random source.</param>
    /// <param name="isErase">Whether the operation is a sector erase.</param>
    /// <returns>The cut.</returns>
    public static PowerCut RandomCut(Random rng, bool isErase)
    {
        ArgumentNullException.ThrowIfNull(rng);
        double f = 0.02 + (rng.NextDouble() * 0.96);
        WeakCells weak = rng.Next(3) switch { 0 => WeakCells.None, 1 => WeakCells.Noisy, _ => WeakCells.Fade };
        return rng.Next(isErase ? 7 : 8) switch
        {
            0 => new PowerCut(CutMode.BeforeStart),
            1 => new PowerCut(CutMode.NothingVisible, 0, rng.Next(2) == 0 ? WeakCells.None : WeakCells.Noisy),
            2 => new PowerCut(CutMode.RandomBits, f, weak),
            3 => new PowerCut(CutMode.RandomBits, rng.NextDouble() * 0.01, weak), // a few bits at most
            4 => new PowerCut(CutMode.Prefix, f, weak),
            5 => new PowerCut(CutMode.RandomBytes, f, weak),
            6 => new PowerCut(CutMode.Complete, 1, isErase ? WeakCells.None : weak),
            _ => new PowerCut(CutMode.RandomBits, 0.99 + (rng.NextDouble() * 0.01), weak),
        };
    }
}
