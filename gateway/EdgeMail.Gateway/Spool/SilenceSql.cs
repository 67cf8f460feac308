using EdgeMail.Gateway.Devices;

namespace EdgeMail.Gateway.Spool;

/// <summary>
/// The silence watch's start-up queries (<see cref="ISpool.SilenceHistoryAsync"/>, <see cref="ISpool.DeviceActivityAsync"/>,
/// which the console's device list reads too), the same SQL for SQLite and PostgreSQL.
/// </summary>
internal static class SilenceSql
{
    // The alerts the silence watch raises. The codes are literals, and each query repeats this condition as the index
    // has it: a planner uses a partial index only when it can see that the query's WHERE implies the index's.
    private const string SilenceCodes = $"code IN ('{SilenceWatch.SilentCode}', '{SilenceWatch.BackCode}')";

    /// <summary>The partial index the queries read (SQLite schema 9, PostgreSQL schema 3).</summary>
    public const string CreateIndex = $"CREATE INDEX alerts_silence ON alerts(device, rowid) WHERE {SilenceCodes};";

    /// <summary>
    /// The devices the silence watch watches, each with when it began to (SQLite schema 15, PostgreSQL schema 10). The spool
    /// keeps when each device was last heard but not when it was configured; without this, a device put back in the
    /// configuration after days away counted as silent for those days. A device the spool has heard from before this
    /// version counts as watched from before (0): as before it, its silence runs from when it was last heard. Its devices
    /// are found by a skip scan of the alerts as in <see cref="LastAlerts"/>, not a read of every alert.
    /// </summary>
    public const string CreateWatched = """
        CREATE TABLE watched_devices(
          device TEXT PRIMARY KEY,
          since BIGINT NOT NULL);
        WITH RECURSIVE d(device) AS (
          SELECT MIN(device) FROM alerts
          UNION ALL
          SELECT (SELECT MIN(device) FROM alerts WHERE device > d.device) FROM d WHERE d.device IS NOT NULL)
        INSERT INTO watched_devices(device, since)
        SELECT device, 0 FROM d WHERE device IS NOT NULL UNION SELECT device, 0 FROM device_status;
        """;

    // One pass over the heartbeat history, ordered by the (device, at) key: each device's shortest positive gap.
    public static string HeartbeatGaps(string since) => $"""
        SELECT device, MIN(gap) FROM (
          SELECT device, at - LAG(at) OVER (PARTITION BY device ORDER BY at) AS gap FROM heartbeats WHERE at >= {since}) g
        WHERE gap > 0 GROUP BY device
        """;

    // Each device's last alert of the silence watch, from the partial index, not the alerts: a silence alert is a silence
    // still open; a return alert stored cancelled records a silence that ended unheard (Merge).
    public const string LastSilences = $"""
        SELECT s.device, s.code, s.alert_id, s.status, s.received_at FROM alerts s
        WHERE s.rowid IN (SELECT MAX(rowid) FROM alerts WHERE {SilenceCodes} GROUP BY device)
        """;

    // For the prune: not the gateway's newest alert of the silence watch for the device when it is a DEVICE_SILENT (an
    // open silence) or a DEVICE_BACK stored cancelled (a silence that ended unheard). The first tells a restart that the
    // episode was announced (LastSilences); the time the device was last heard, which a restart checks against, is never
    // pruned, so with this alert gone a restart mailed DEVICE_SILENT again for the same episode. The second tells a
    // restart that a device configured again measures its next silence from that end, not from when it was last heard,
    // which names the ended silence: gone, that silence's id was taken again. One row per device, gone with the first
    // prune after the device's next alert of the silence watch.
    public const string NotAKeptSilence = $"""
        NOT (alerts.via = '{IngestProtocols.Local}'
          AND (alerts.code = '{SilenceWatch.SilentCode}' OR (alerts.code = '{SilenceWatch.BackCode}' AND alerts.status = '{AlertStatus.Cancelled}'))
          AND NOT EXISTS (SELECT 1 FROM alerts b WHERE {SilenceCodes} AND b.device = alerts.device AND b.rowid > alerts.rowid))
        """;

    // When each device last sent an alert (the gateway's own do not count), from alerts_device_received: the recursive
    // part steps from one device to the next in the index (a skip scan), and each device's latest rows are read
    // backwards until one is not LOCAL. Work in proportion to the devices, where a GROUP BY reads every alert. A device
    // with only LOCAL alerts comes back with a NULL time; the caller skips it (a WHERE on the column would make SQLite
    // run the subquery twice).
    public const string LastAlerts = $"""
        WITH RECURSIVE d(device) AS (
          SELECT MIN(device) FROM alerts
          UNION ALL
          SELECT (SELECT MIN(device) FROM alerts WHERE device > d.device) FROM d WHERE d.device IS NOT NULL)
        SELECT device, (SELECT received_at FROM alerts a WHERE a.device = d.device AND (a.via IS NULL OR a.via <> '{IngestProtocols.Local}')
                        ORDER BY a.received_at DESC LIMIT 1)
        FROM d WHERE device IS NOT NULL
        """;

    public static List<DeviceSilenceHistory> Merge(Dictionary<string, TimeSpan> gaps, IEnumerable<LastSilence> last)
    {
        var open = new Dictionary<string, string>(StringComparer.Ordinal);
        var ended = new Dictionary<string, DateTimeOffset>(StringComparer.Ordinal);
        foreach (var l in last)
        {
            if (l.Code == SilenceWatch.SilentCode)
            {
                open[l.Device] = l.AlertId;
            }
            else if (l.Code == SilenceWatch.BackCode && l.Status == AlertStatus.Cancelled)
            {
                ended[l.Device] = DateTimeOffset.FromUnixTimeMilliseconds(l.ReceivedAtMs);
            }
        }

        return [.. gaps.Keys.Union(open.Keys, StringComparer.Ordinal).Union(ended.Keys, StringComparer.Ordinal)
            .Select(d => new DeviceSilenceHistory(d, gaps.TryGetValue(d, out var g) ? g : null, open.GetValueOrDefault(d), ended.TryGetValue(d, out var e) ? e : null))];
    }

    /// <summary>A row of <see cref="LastSilences"/>.</summary>
    public readonly record struct LastSilence(string Device, string Code, string AlertId, string Status, long ReceivedAtMs);
}
