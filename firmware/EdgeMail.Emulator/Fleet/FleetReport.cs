using System.Globalization;
using System.Text.Json;
using Spectre.Console;

namespace EdgeMail.Emulator.Fleet;

/// <summary>Raise-to-acknowledge latency percentiles in simulated milliseconds.</summary>
internal sealed record Latency(int Count, long P50, long P90, long P99, long Max)
{
    public static Latency Of(long[] values)
    {
        if (values.Length == 0)
        {
            return new Latency(0, 0, 0, 0, 0);
        }

        long[] sorted = [.. values.Order()];
        long At(double q) => sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];
        return new Latency(sorted.Length, At(0.50), At(0.90), At(0.99), sorted[^1]);
    }
}

/// <summary>One row of the report: a device, or the total.</summary>
internal sealed record DeviceReport(
    string Id,
    uint Boots,
    long Raised,
    long Written,
    long Coalesced,
    long RaisesCutShort,
    long Acknowledged,
    long Unacknowledged,
    long Queued,
    long Dropped,
    long Rejected,
    long Resent,
    long ResentAfterReboot,
    long PowerCuts,
    long TornWrites,
    long LinkDowns,
    long Connects,
    long Failures,
    long ConnectedMs,
    long BytesSent,
    long BytesReceived,
    Latency LatencyMs);

/// <summary>The end-of-run report: per device and in total.</summary>
internal sealed record FleetReport(
    int Seed,
    string Board,
    string Uplink,
    int Devices,
    double SimulatedSeconds,
    double RealSeconds,
    double Speed,
    DeviceReport Total,
    IReadOnlyList<DeviceReport> PerDevice)
{
    public static FleetReport From(Scenario scenario, IReadOnlyList<VirtualDevice> devices, FleetClock clock)
    {
        var rows = devices.Select(d =>
        {
            DeviceStats s = d.Stats;
            return new DeviceReport(d.Id, s.Boots, s.RaiseCalls - s.RaisesCutShort, s.Written, s.Coalesced, s.RaisesCutShort, s.Acknowledged, s.StillUnacked, s.LastDepth,
                s.Dropped, s.Rejected, s.Resent, s.ResentAfterReboot, s.PowerCuts, s.TornWrites, s.LinkDowns, s.Connects, s.Failures, s.ConnectedMs,
                s.BytesSent, s.BytesReceived, Latency.Of(s.Latencies));
        }).ToList();
        var total = new DeviceReport("total", (uint)rows.Sum(r => r.Boots), rows.Sum(r => r.Raised), rows.Sum(r => r.Written), rows.Sum(r => r.Coalesced),
            rows.Sum(r => r.RaisesCutShort), rows.Sum(r => r.Acknowledged), rows.Sum(r => r.Unacknowledged), rows.Sum(r => r.Queued), rows.Sum(r => r.Dropped), rows.Sum(r => r.Rejected), rows.Sum(r => r.Resent),
            rows.Sum(r => r.ResentAfterReboot), rows.Sum(r => r.PowerCuts), rows.Sum(r => r.TornWrites), rows.Sum(r => r.LinkDowns), rows.Sum(r => r.Connects),
            rows.Sum(r => r.Failures), rows.Sum(r => r.ConnectedMs), rows.Sum(r => r.BytesSent), rows.Sum(r => r.BytesReceived),
            Latency.Of([.. devices.SelectMany(d => d.Stats.Latencies)]));
        return new FleetReport(scenario.Seed, scenario.Board, scenario.Uplink.Protocol == UplinkProtocol.Smtp ? "smtp" : "mqtt", devices.Count, clock.NowMs / 1000.0, clock.RealElapsed.TotalSeconds, scenario.Speed, total, rows);
    }

    public string ToJson() => JsonSerializer.Serialize(this, Scenario.Json);

    /// <summary>The table for people: the first <paramref name="rows"/> devices and the total.</summary>
    public void Render(IAnsiConsole console, int rows)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .Title(string.Create(CultureInfo.InvariantCulture, $"EdgeMail fleet: {Devices} × {Board} over {Uplink}, seed {Seed}, {SimulatedSeconds:0.#} s simulated in {RealSeconds:0.#} s"));
        foreach (string h in new[] { "device", "boots", "raised", "cut short", "coalesced", "acked", "unacked", "queued", "dropped", "resent", "cuts", "links down", "p50 ms", "p90 ms", "p99 ms", "max ms" })
        {
            table.AddColumn(new TableColumn(h).RightAligned());
        }

        static string[] Cells(DeviceReport r) =>
        [
            r.Id, N(r.Boots), N(r.Raised), N(r.RaisesCutShort), N(r.Coalesced), N(r.Acknowledged), N(r.Unacknowledged), N(r.Queued), N(r.Dropped), N(r.Resent + r.ResentAfterReboot),
            N(r.PowerCuts), N(r.LinkDowns), N(r.LatencyMs.P50), N(r.LatencyMs.P90), N(r.LatencyMs.P99), N(r.LatencyMs.Max),
        ];

        foreach (DeviceReport r in PerDevice.Take(rows))
        {
            table.AddRow(Cells(r).Select(Markup.Escape).ToArray());
        }

        if (PerDevice.Count > rows)
        {
            table.AddRow([$"… {PerDevice.Count - rows} more", .. Enumerable.Repeat(string.Empty, 15)]);
        }

        table.AddRow(Cells(Total).Select(c => $"[bold]{Markup.Escape(c)}[/]").ToArray());
        console.Write(table);
    }

    private static string N(long v) => v.ToString(CultureInfo.InvariantCulture);
}
