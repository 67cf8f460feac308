using System.Globalization;
using System.Text.RegularExpressions;

namespace EdgeMail.Emulator.Chaos;

/// <summary>An alert whose end is not one of the allowed ones, with the faults around it.</summary>
internal sealed record Violation(string Device, string AlertId, string What, long RaisedMs, string[] NearbyFaults);

/// <summary>
/// The verdict of a chaos run, from ground truth kept outside the system under test: what each device's application
/// raised (the <see cref="ChaosLedger"/>) against what reached the sink. Every alert must end as exactly one of:
/// delivered (exactly one Message-ID at the sink for each routed recipient; the same Message-ID arriving again after a
/// crash between the sink's 250 and the gateway's commit is SMTP's at-least-once and counted apart), failed (the
/// recipient refused for good, a failure notice at the operator and, over MQTT, a <c>failed</c> receipt on the device),
/// or evicted on the device with the loss reported (its <c>EDGEMAIL.QUEUE_FULL</c> alert reached the sink).
/// </summary>
internal sealed partial class ChaosVerdict
{
    public int Alerts { get; private set; }

    public int Raises { get; private set; }

    public int Delivered { get; private set; }

    public int FailedNoticed { get; private set; }

    public int FailedReceipts { get; private set; }

    public int Evicted { get; private set; }

    /// <summary>Copies of a Message-ID the sink took again (the gateway could not know the first arrived).</summary>
    public int ResentSameMessageId { get; private set; }

    /// <summary>Alerts whose raise a power cut interrupted (no promise made) that reached the sink anyway.</summary>
    public int CutShortDelivered { get; private set; }

    /// <summary>The gateway's own DEVICE_SILENT / DEVICE_BACK alerts for a device that really was off or unlinked.</summary>
    public int SilenceNotices { get; private set; }

    public int LossReports { get; private set; }

    public int DevicesNotDrained { get; private set; }

    public List<Violation> Violations { get; } = [];

    /// <summary>Raise to first arrival at the sink, simulated ms; and the same less the time the path was down.</summary>
    public List<long> Latencies { get; } = [];

    public List<long> LatenciesWithoutOutages { get; } = [];

    /// <summary>Simulated ms at which each alert first reached the sink, for the chart.</summary>
    public List<long> DeliveredAt { get; } = [];

    /// <summary>The (device, alert id) a failure notice reports, from its Message-ID (<c>{device}.{alert id}.alert.n{attempt}.notice@host</c>).</summary>
    public static (string Device, string AlertId)? NoticeFor(SinkMessage m)
    {
        Match match = NoticeId().Match(m.MessageId);
        return match.Success ? (match.Groups[1].Value, match.Groups[2].Value) : null;
    }

    public static ChaosVerdict Judge(ChaosLedger ledger, IReadOnlyList<SinkMessage> stored, string operatorAddress, string refusedRecipient,
        IReadOnlyList<FaultEvent> faults, DateTimeOffset t0, List<(long From, long To)> gatewayDown, List<(long From, long To)> sinkDown)
    {
        var v = new ChaosVerdict();
        long Sim(DateTimeOffset at) => (long)(at - t0).TotalMilliseconds;
        var byAlert = stored.Where(m => m.Device is not null && m.AlertId is not null)
            .GroupBy(m => (m.Device!, m.AlertId!)).ToDictionary(g => g.Key, g => g.ToList());
        var noticed = new HashSet<(string, string)>();
        foreach (SinkMessage m in stored)
        {
            if (m.Recipients.Contains(operatorAddress, StringComparer.OrdinalIgnoreCase) && NoticeFor(m) is (string d, string a))
            {
                noticed.Add((d, a));
            }
        }

        // Loss reports: the device's EDGEMAIL.QUEUE_FULL alert names the sequence numbers it dropped.
        var lossRanges = new Dictionary<string, List<(uint From, uint To)>>(StringComparer.Ordinal);
        foreach (SinkMessage m in stored)
        {
            if (m.Device is not null && m.Subject is not null && DroppedRange().Match(m.Subject) is { Success: true } r)
            {
                if (!lossRanges.TryGetValue(m.Device, out List<(uint, uint)>? list))
                {
                    lossRanges[m.Device] = list = [];
                }

                list.Add((uint.Parse(r.Groups[1].Value, CultureInfo.InvariantCulture), uint.Parse(r.Groups[2].Value, CultureInfo.InvariantCulture)));
            }
        }

        v.LossReports = lossRanges.Values.Sum(l => l.Count);
        var global = faults.Where(f => f.Target is "gateway" or "proxy" or "sink").ToList();
        var known = new HashSet<(string, string)>();
        foreach (DeviceTruth d in ledger.Devices.Values)
        {
            if (!d.Drained)
            {
                v.DevicesNotDrained++;
            }

            foreach (AlertTruth a in d.Alerts.Values.OrderBy(a => a.IdSeq))
            {
                v.Alerts++;
                v.Raises += a.Raises;
                known.Add((d.Id, a.AlertId));
                byAlert.TryGetValue((d.Id, a.AlertId), out List<SinkMessage>? mails);
                mails ??= [];
                var problems = new List<string>();
                bool failed = false, evicted = false;
                long? firstArrival = null;
                foreach (string r in d.Recipients)
                {
                    var copies = mails.Where(m => m.Recipients.Contains(r, StringComparer.OrdinalIgnoreCase)).ToList();
                    int ids = copies.Select(m => m.MessageId).Distinct(StringComparer.Ordinal).Count();
                    if (ids > 1)
                    {
                        problems.Add($"mailed to {r} under {ids} different Message-IDs (a duplicate mail)");
                    }

                    if (copies.Count > 0)
                    {
                        v.ResentSameMessageId += copies.Count - ids;
                        long first = copies.Min(m => Sim(m.At));
                        firstArrival = firstArrival is null ? first : Math.Min(firstArrival.Value, first);
                        if (string.Equals(r, refusedRecipient, StringComparison.OrdinalIgnoreCase))
                        {
                            problems.Add($"accepted for {r}, which the sink refuses");
                        }

                        continue;
                    }

                    if (string.Equals(r, refusedRecipient, StringComparison.OrdinalIgnoreCase))
                    {
                        if (!noticed.Contains((d.Id, a.AlertId)))
                        {
                            problems.Add($"refused for {r} and no failure notice reached the operator");
                            continue;
                        }

                        failed = true;
                        if (d.Protocol == "mqtt")
                        {
                            // The gateway keeps a final receipt in its spool until the device took it, so a device away
                            // across a gateway restart still gets it (docs/spool.md, "Kept receipts").
                            if (d.Receipts.TryGetValue(a.AlertId, out List<string>? states) && states.Contains("failed"))
                            {
                                v.FailedReceipts++;
                            }
                            else
                            {
                                problems.Add($"refused for {r}, the operator was told, but the device got no 'failed' receipt (receipts: {(states is null ? "none" : string.Join(",", states))})");
                            }
                        }

                        continue;
                    }

                    if (lossRanges.TryGetValue(d.Id, out List<(uint From, uint To)>? ranges) && ranges.Any(x => a.LastSeq >= x.From && a.LastSeq <= x.To))
                    {
                        v.Evicted++;
                        evicted = true;
                        break;
                    }

                    problems.Add(a.AckedMs is null
                        ? $"never reached {r}: still on the device's flash at the end"
                        : $"never reached {r}, though the gateway acknowledged it at {a.AckedMs / 1000.0:0.0} s");
                }

                if (problems.Count > 0)
                {
                    long until = a.AckedMs ?? long.MaxValue;
                    string[] nearby = [.. global.Concat(faults.Where(f => f.Target == d.Id))
                        .Where(f => f.SimMs + f.DurationMs >= a.RaisedMs - 5_000 && f.SimMs <= until + 30_000)
                        .OrderBy(f => f.SimMs).Select(f => string.Create(CultureInfo.InvariantCulture, $"{f.Kind} @{f.SimMs / 1000.0:0.0}s"))];
                    v.Violations.Add(new Violation(d.Id, a.AlertId, string.Join("; ", problems), a.RaisedMs, nearby));
                    continue;
                }

                if (failed)
                {
                    v.FailedNoticed++;
                }

                if (evicted || firstArrival is null)
                {
                    continue; // evicted, reported
                }

                v.Delivered++;
                {
                    long arrived = firstArrival.Value;
                    v.DeliveredAt.Add(arrived);
                    long latency = arrived - a.RaisedMs;
                    v.Latencies.Add(latency);
                    long down = Overlap(a.RaisedMs, arrived, [.. gatewayDown, .. sinkDown, .. d.Down]);
                    v.LatenciesWithoutOutages.Add(Math.Max(0, latency - down));
                }
            }
        }

        foreach (((string device, string alert), List<SinkMessage> mails) in byAlert)
        {
            if (known.Contains((device, alert)) || mails.Any(m => m.Subject is not null && DroppedRange().IsMatch(m.Subject)))
            {
                continue;
            }

            var d = ledger.Devices.GetValueOrDefault(device);
            if (SilenceNotice().IsMatch(alert))
            {
                // The gateway raises these itself when it has not heard a device for SilentAfter. Counted apart; one for
                // a device that was never off nor unlinked in the run is flagged for a person to look at.
                if (d is not null && (d.Down.Count > 0 || d.LinkDownSince is not null))
                {
                    v.SilenceNotices++;
                    continue;
                }

                v.Violations.Add(new Violation(device, alert, "the gateway reported the device silent (or back), but it was never off nor unlinked", 0, []));
                continue;
            }

            if (d is not null && d.RaisesCutShort > 0)
            {
                v.CutShortDelivered++;
                continue;
            }

            v.Violations.Add(new Violation(device, alert, $"mailed ({mails.Count}×) but no device raised it", 0, []));
        }

        return v;
    }

    /// <summary>Milliseconds of [from, to] covered by the union of <paramref name="intervals"/>.</summary>
    public static long Overlap(long from, long to, List<(long From, long To)> intervals)
    {
        long covered = 0, cursor = from;
        foreach ((long f, long t) in intervals.OrderBy(i => i.From))
        {
            long s = Math.Max(f, cursor), e = Math.Min(t, to);
            if (e > s)
            {
                covered += e - s;
                cursor = e;
            }
        }

        return covered;
    }

    [GeneratedRegex(@"^(?:_f\.)?([^.]+)\.(.+)\.alert\.n\d+\.notice@", RegexOptions.CultureInvariant)]
    private static partial Regex NoticeId();

    [GeneratedRegex(@"^gw-(?:silent|back)-\d+$", RegexOptions.CultureInvariant)]
    private static partial Regex SilenceNotice();

    [GeneratedRegex(@"dropped while the device queue was full \(sequence numbers (\d+) to (\d+)\)", RegexOptions.CultureInvariant)]
    private static partial Regex DroppedRange();
}
