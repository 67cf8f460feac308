namespace EdgeMail.Gateway.Spool;

/// <summary>The silence watch's start-up queries (<see cref="ISpool.SilenceHistoryAsync"/>), the same SQL for SQLite and PostgreSQL.</summary>
internal static class SilenceSql
{
    // One pass over the heartbeat history, ordered by the (device, at) key: each device's shortest positive gap.
    public static string HeartbeatGaps(string since) => $"""
        SELECT device, MIN(gap) FROM (
          SELECT device, at - LAG(at) OVER (PARTITION BY device ORDER BY at) AS gap FROM heartbeats WHERE at >= {since}) g
        WHERE gap > 0 GROUP BY device
        """;

    // Each device's last silence alert, when no return alert came after it.
    public static string OpenSilences(string silentCode, string backCode) => $"""
        SELECT s.device, s.alert_id FROM alerts s
        WHERE s.rowid IN (SELECT MAX(rowid) FROM alerts WHERE code = {silentCode} GROUP BY device)
          AND NOT EXISTS (SELECT 1 FROM alerts b WHERE b.device = s.device AND b.code = {backCode} AND b.rowid > s.rowid)
        """;

    public static List<DeviceSilenceHistory> Merge(Dictionary<string, TimeSpan> gaps, Dictionary<string, string> open) =>
        [.. gaps.Keys.Union(open.Keys, StringComparer.Ordinal).Select(d => new DeviceSilenceHistory(d, gaps.TryGetValue(d, out var g) ? g : null, open.GetValueOrDefault(d)))];
}
