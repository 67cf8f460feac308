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

    // One pass over the heartbeat history, ordered by the (device, at) key: each device's shortest positive gap.
    public static string HeartbeatGaps(string since) => $"""
        SELECT device, MIN(gap) FROM (
          SELECT device, at - LAG(at) OVER (PARTITION BY device ORDER BY at) AS gap FROM heartbeats WHERE at >= {since}) g
        WHERE gap > 0 GROUP BY device
        """;

    // Each device's last silence alert, when no return alert came after it: from the partial index, not the alerts.
    public const string OpenSilences = $"""
        SELECT s.device, s.alert_id FROM alerts s
        WHERE s.rowid IN (SELECT MAX(rowid) FROM alerts WHERE {SilenceCodes} AND code = '{SilenceWatch.SilentCode}' GROUP BY device)
          AND NOT EXISTS (SELECT 1 FROM alerts b WHERE {SilenceCodes} AND b.device = s.device AND b.code = '{SilenceWatch.BackCode}' AND b.rowid > s.rowid)
        """;

    // For the prune: not a device's open silence, i.e. the gateway's newest DEVICE_SILENT of the device with nothing of
    // the silence watch after it. It is what tells a restart that the episode was announced (OpenSilences); the time
    // the device was last heard, which a restart checks against, is never pruned, so with this alert gone a restart
    // mailed DEVICE_SILENT again for the same episode. One row per device, gone with the first prune after DEVICE_BACK.
    public const string NotAnOpenSilence = $"""
        NOT (alerts.code = '{SilenceWatch.SilentCode}' AND alerts.via = '{IngestProtocols.Local}'
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

    public static List<DeviceSilenceHistory> Merge(Dictionary<string, TimeSpan> gaps, Dictionary<string, string> open) =>
        [.. gaps.Keys.Union(open.Keys, StringComparer.Ordinal).Select(d => new DeviceSilenceHistory(d, gaps.TryGetValue(d, out var g) ? g : null, open.GetValueOrDefault(d)))];
}
