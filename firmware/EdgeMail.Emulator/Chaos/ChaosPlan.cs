namespace EdgeMail.Emulator.Chaos;

/// <summary>What a chaos run does; every random choice comes from <see cref="Seed"/>.</summary>
internal sealed class ChaosOptions
{
    public int Devices { get; set; } = 200;

    /// <summary>Share of the devices that use the SMTP uplink (Contract 2) instead of MQTT.</summary>
    public double SmtpShare { get; set; } = 0.2;

    public int Seed { get; set; } = 1;

    /// <summary>Seconds of faults and alerts; then the fleet drains and the gateway delivers.</summary>
    public double DurationSeconds { get; set; } = 120;

    /// <summary>Seconds after the run at most for everything to be delivered and the queues drained.</summary>
    public double SettleSeconds { get; set; } = 180;

    public double AlertRatePerSecond { get; set; } = 0.05;

    public string Board { get; set; } = "esp32-wroom-32";

    /// <summary>Every this many devices, one also routes to a recipient the relay refuses for good (550).</summary>
    public int RefusedEvery { get; set; } = 5;

    public int GatewayKills { get; set; } = 2;

    /// <summary>How long the sink is down (connections refused) in its down window.</summary>
    public double SinkDownSeconds { get; set; } = 60;

    public string OutputDirectory { get; set; } = "chaos-out";

    public string? GatewayPath { get; set; }

    public string? BoardsDirectory { get; set; }
}

/// <summary>A fault at a planned instant (ms since the start of the run) lasting a while.</summary>
internal sealed record PlannedFault(string Kind, long AtMs, long ForMs);

/// <summary>The faults of a run, derived from the seed alone: the same seed plans the same faults at the same instants.</summary>
internal static class ChaosPlan
{
    public static List<PlannedFault> Create(ChaosOptions o)
    {
        var random = new Random(unchecked((o.Seed * 7919) + 0x5EED));
        long d = (long)(o.DurationSeconds * 1000);
        var plan = new List<PlannedFault>();
        long At(double from, double to) => (long)(d * (from + (random.NextDouble() * (to - from))));

        // The gateway: killed at random instants in the middle of the run, and one graceful restart with a new configuration.
        for (int i = 0; i < o.GatewayKills; i++)
        {
            plan.Add(new PlannedFault(FaultKind.GatewayKill, At(0.1, 0.85), 0));
        }

        plan.Add(new PlannedFault(FaultKind.GatewayRestart, At(0.3, 0.7), 0));

        // The proxy between devices and gateway: about one of each every minute of run, at least one.
        int rounds = Math.Max(1, (int)Math.Round(o.DurationSeconds / 60));
        for (int r = 0; r < rounds; r++)
        {
            plan.Add(new PlannedFault(FaultKind.ProxyReset, At(0.05, 0.9), 0));
            plan.Add(new PlannedFault(FaultKind.ProxyStall, At(0.05, 0.9), 1_000 + random.Next(4_000)));
            plan.Add(new PlannedFault(FaultKind.ProxyHalfOpen, At(0.05, 0.9), 0));
            plan.Add(new PlannedFault(FaultKind.ProxyBlackhole, At(0.05, 0.9), 2_000 + random.Next(4_000)));
            plan.Add(new PlannedFault(FaultKind.ProxyThrottle, At(0.05, 0.9), 3_000 + random.Next(5_000)));
        }

        // The relay: its windows one after another (they would hide each other if they overlapped), in a seeded order.
        var sink = new List<(string Kind, long For)>
        {
            (FaultKind.Sink421, 3_000 + random.Next(3_000)),
            (FaultKind.Sink451, 3_000 + random.Next(4_000)),
            (FaultKind.Sink452, 3_000 + random.Next(4_000)),
            (FaultKind.SinkSlow, 4_000 + random.Next(4_000)),
            (FaultKind.SinkDropAfterData, 4_000 + random.Next(4_000)),
            (FaultKind.SinkDown, (long)(o.SinkDownSeconds * 1000)),
        };
        for (int i = sink.Count - 1; i > 0; i--)
        {
            int j = random.Next(i + 1);
            (sink[i], sink[j]) = (sink[j], sink[i]);
        }

        long total = sink.Sum(s => s.For);
        long gap = Math.Max(500, ((long)(d * 0.9) - total) / (sink.Count + 1));
        long t = gap / 2;
        foreach ((string kind, long length) in sink)
        {
            plan.Add(new PlannedFault(kind, t, length));
            t += length + gap;
        }

        return [.. plan.OrderBy(p => p.AtMs).ThenBy(p => p.Kind, StringComparer.Ordinal)];
    }
}
