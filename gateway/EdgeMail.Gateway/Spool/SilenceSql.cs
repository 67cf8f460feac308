using EdgeMail.Gateway.Devices;

namespace EdgeMail.Gateway.Spool;

/// <summary>The silence watch's start-up queries (<see cref="ISpool.SilenceHistoryAsync"/>), the same SQL for SQLite and PostgreSQL.</summary>
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

    public static List<DeviceSilenceHistory> Merge(Dictionary<string, TimeSpan> gaps, Dictionary<string, string> open) =>
        [.. gaps.Keys.Union(open.Keys, StringComparer.Ordinal).Select(d => new DeviceSilenceHistory(d, gaps.TryGetValue(d, out var g) ? g : null, open.GetValueOrDefault(d)))];
}
