using System.Globalization;
using System.Text;
using EdgeMail.Emulator.Fleet;

namespace EdgeMail.Emulator.Chaos;

/// <summary>What a chaos run produced, and its report for a person (Markdown) and for tools (JSON lines of the timeline).</summary>
internal sealed record ChaosResult(
    ChaosOptions Options,
    List<PlannedFault> Plan,
    IReadOnlyList<FaultEvent> Faults,
    ChaosVerdict Verdict,
    FleetReport[] Fleets,
    int GatewayStarts,
    List<string> GatewayErrors,
    DateTimeOffset Start,
    TimeSpan WallTime,
    ChaosLedger Ledger,
    IReadOnlyList<SinkMessage> Sink)
{
    public bool Passed => Verdict.Violations.Count == 0 && Verdict.DevicesNotDrained == 0;

    /// <summary>Per fault kind: injected, and survived (no violation names it among the faults around it).</summary>
    public List<(string Kind, int Injected, int Survived)> FaultTable()
    {
        var blamed = Verdict.Violations.SelectMany(v => v.NearbyFaults).ToHashSet(StringComparer.Ordinal);
        return [.. Faults.GroupBy(f => f.Kind).OrderBy(g => g.Key, StringComparer.Ordinal).Select(g =>
        {
            int hit = g.Count(f => blamed.Contains(string.Create(CultureInfo.InvariantCulture, $"{f.Kind} @{f.SimMs / 1000.0:0.0}s")));
            return (g.Key, g.Count(), g.Count() - hit);
        })];
    }

    public static long Percentile(List<long> values, double p)
    {
        if (values.Count == 0)
        {
            return 0;
        }

        long[] sorted = [.. values.Order()];
        return sorted[Math.Clamp((int)Math.Ceiling(p * sorted.Length) - 1, 0, sorted.Length - 1)];
    }

    public string Markdown(string? chartFile)
    {
        ChaosVerdict v = Verdict;
        var s = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        void L(string line) => s.Append(line).Append('\n');
        int smtp = Ledger.Devices.Values.Count(d => d.Protocol == "smtp");
        L($"# Chaos run: seed {Options.Seed}, {Options.Devices} devices, {Options.DurationSeconds.ToString("0", inv)} s");
        L(string.Empty);
        L(string.Create(inv, $"{Options.Devices - smtp} devices over MQTT and {smtp} over the SMTP uplink, board `{Options.Board}`, {Options.AlertRatePerSecond} alerts/s per device plus storms, through a fault-injecting proxy to the gateway (a child process, SIGKILLed {Options.GatewayKills}× and restarted once gracefully with a new configuration; {GatewayStarts} starts), relaying to a misbehaving SMTP sink. Wall time {WallTime.TotalSeconds:0} s."));
        L(string.Empty);
        L($"**Verdict: {(Passed ? "PASS" : "FAIL")}** — {v.Violations.Count} violation(s), {v.DevicesNotDrained} device(s) not drained.");
        L(string.Empty);
        L("| outcome | count |");
        L("| --- | ---: |");
        L($"| alerts raised (after coalescing) | {v.Alerts} |");
        L($"| raises they carry | {v.Raises} |");
        L($"| delivered: one Message-ID per routed recipient | {v.Delivered} |");
        L($"| failed for a refused recipient, operator noticed | {v.FailedNoticed} |");
        L($"| … of which the device got its `failed` receipt (MQTT) | {v.FailedReceipts} |");
        L($"| evicted on the device, loss reported | {v.Evicted} |");
        L($"| same Message-ID taken again (crash/drop between 250 and commit) | {v.ResentSameMessageId} |");
        L($"| raises cut short by power loss that reached the sink anyway | {v.CutShortDelivered} |");
        L($"| the gateway's own silence notices (DEVICE_SILENT / DEVICE_BACK) for a device that was off or unlinked | {v.SilenceNotices} |");
        L($"| queue-full loss reports at the sink | {v.LossReports} |");
        L($"| messages at the sink | {Sink.Count} |");
        L($"| **violations** | **{v.Violations.Count}** |");
        L(string.Empty);
        L("## Faults");
        L(string.Empty);
        L("| fault | injected | survived |");
        L("| --- | ---: | ---: |");
        foreach ((string kind, int injected, int survived) in FaultTable())
        {
            L($"| {kind} | {injected} | {survived} |");
        }

        L(string.Empty);
        L("*Survived*: no violated alert has the fault among the faults around it. The full list with simulated and wall times is `timeline.jsonl`.");
        L(string.Empty);
        L("## Latency, raise → sink");
        L(string.Empty);
        L("| | p50 | p99 | max |");
        L("| --- | ---: | ---: | ---: |");
        L(string.Create(inv, $"| all time | {Percentile(v.Latencies, 0.5) / 1000.0:0.00} s | {Percentile(v.Latencies, 0.99) / 1000.0:0.00} s | {Percentile(v.Latencies, 1) / 1000.0:0.00} s |"));
        L(string.Create(inv, $"| less outage time | {Percentile(v.LatenciesWithoutOutages, 0.5) / 1000.0:0.00} s | {Percentile(v.LatenciesWithoutOutages, 0.99) / 1000.0:0.00} s | {Percentile(v.LatenciesWithoutOutages, 1) / 1000.0:0.00} s |"));
        L(string.Empty);
        L("Outage time: the part of an alert's wait when the gateway was down (killed or restarting), the sink refused connections (down, 421), or its own device was off or its link down.");
        if (chartFile is not null)
        {
            L(string.Empty);
            L($"![timeline]({chartFile})");
        }

        L(string.Empty);
        L("## Violations");
        L(string.Empty);
        if (v.Violations.Count == 0)
        {
            L("None.");
        }

        foreach (Violation x in v.Violations.Take(200))
        {
            L(string.Create(inv, $"- `{x.Device}` alert `{x.AlertId}` (raised @{x.RaisedMs / 1000.0:0.0}s): {x.What}. Faults around it: {(x.NearbyFaults.Length == 0 ? "none" : string.Join(", ", x.NearbyFaults.Take(12)))}"));
        }


        if (GatewayErrors.Count > 0)
        {
            L(string.Empty);
            L("## Gateway errors logged");
            L(string.Empty);
            foreach (string e in GatewayErrors.Take(30))
            {
                L("    " + e);
            }
        }

        L(string.Empty);
        L($"Replay: `emulator chaos --seed {Options.Seed} --devices {Options.Devices} --duration {Options.DurationSeconds.ToString(inv)}`. The fault plan and every device's alerts, links and power cuts are seeded; which write a cut strikes, round trips and thus exact counts depend on timing.");
        return s.ToString();
    }
}
