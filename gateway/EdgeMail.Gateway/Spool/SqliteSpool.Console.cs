using System.Text;
using System.Text.Json;
using Microsoft.Data.Sqlite;

namespace EdgeMail.Gateway.Spool;

/// <summary>The console's reads and actions on the SQLite spool (see <see cref="ISpool"/>).</summary>
public sealed partial class SqliteSpool
{
    private const string AlertColumns = "rowid, device, alert_id, code, severity, status, received_at, via, peer, reason";
    private const string MessageColumns = "rowid, kind, message_id, device, alert_id, status, attempts, created_at, next_attempt_at, last_reply, reason";

    /// <inheritdoc />
    public Task<IReadOnlyList<AlertSummary>> QueryAlertsAsync(AlertQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        return Read<IReadOnlyList<AlertSummary>>((s, _) =>
        {
            var (where, args) = query.Filter(i => "$p" + i.ToString(System.Globalization.CultureInfo.InvariantCulture), text => text);
            using var r = s.Query($"SELECT {AlertColumns} FROM alerts WHERE {where} ORDER BY rowid DESC LIMIT $p{args.Count - 1}", [.. args]);
            var list = new List<AlertSummary>();
            while (r.Read())
            {
                list.Add(ReadAlertSummary(r));
            }

            return list;
        }, cancellationToken);
    }

    private static AlertSummary ReadAlertSummary(SqliteDataReader r) =>
        new(r.GetInt64(0), r.GetString(1), r.GetString(2), NullableString(r, 3), NullableString(r, 4), r.GetString(5), FromMs(r.GetInt64(6)),
            NullableString(r, 7) ?? IngestProtocols.Mqtt, NullableString(r, 8), NullableString(r, 9));

    private static string? NullableString(SqliteDataReader r, int i) => r.IsDBNull(i) ? null : r.GetString(i);

    /// <inheritdoc />
    public Task<AlertJourney?> AlertJourneyAsync(long rowId, CancellationToken cancellationToken) =>
        Read((s, _) =>
        {
            AlertSummary summary;
            byte[] payload;
            string? route, digest;
            using (var r = s.Query($"SELECT {AlertColumns}, payload, route, digest_message FROM alerts WHERE rowid=$p0", rowId))
            {
                if (!r.Read())
                {
                    return null;
                }

                summary = ReadAlertSummary(r);
                payload = (byte[])r.GetValue(10);
                route = NullableString(r, 11);
                digest = NullableString(r, 12);
            }

            var rows = new List<long>();
            using (var r = s.Query("SELECT rowid FROM messages WHERE alert_rowid=$p0 OR message_id=$p1 ORDER BY rowid", rowId, digest ?? string.Empty))
            {
                while (r.Read())
                {
                    rows.Add(r.GetInt64(0));
                }
            }

            // Notices about a failed alert mail name it by device and alert id.
            using (var r = s.Query("SELECT rowid FROM messages WHERE kind='notice' AND device=$p0 AND alert_id=$p1 ORDER BY rowid", summary.Device, summary.AlertId))
            {
                while (r.Read())
                {
                    rows.Add(r.GetInt64(0));
                }
            }

            var messages = rows.Distinct().Select(s.ReadMessageDetail).OfType<MessageDetail>().ToList();
            return (AlertJourney?)new AlertJourney(summary, payload, route, digest, messages);
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<MessageSummary>> QueryMessagesAsync(MessageQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        return Read<IReadOnlyList<MessageSummary>>((s, _) =>
        {
            var where = new StringBuilder("1=1");
            var args = new List<object?>();
            switch (query.State)
            {
                case null or "":
                    break;
                case "queued":
                    where.Append(" AND status='queued' AND attempts=0");
                    break;
                case "deferred":
                    where.Append(" AND status='queued' AND attempts>0");
                    break;
                default:
                    where.Append(" AND status=$p0");
                    args.Add(query.State);
                    break;
            }

            if (query.Device is { Length: > 0 } device)
            {
                where.Append(" AND device=$p").Append(args.Count);
                args.Add(device);
            }

            if (query.BeforeRowId is { } before)
            {
                where.Append(" AND rowid<$p").Append(args.Count);
                args.Add(before);
            }

            args.Add(Math.Clamp(query.Limit, 1, 1000));
            using var r = s.Query($"SELECT {MessageColumns} FROM messages WHERE {where} ORDER BY rowid DESC LIMIT $p{args.Count - 1}", [.. args]);
            var list = new List<MessageSummary>();
            while (r.Read())
            {
                list.Add(ReadMessageSummary(r));
            }

            return list;
        }, cancellationToken);
    }

    private static MessageSummary ReadMessageSummary(SqliteDataReader r) =>
        new(r.GetInt64(0), r.GetString(1), r.GetString(2), NullableString(r, 3), NullableString(r, 4), r.GetString(5), r.GetInt32(6), FromMs(r.GetInt64(7)),
            FromMs(r.GetInt64(8)), NullableString(r, 9), NullableString(r, 10));

    /// <inheritdoc />
    public Task<MessageDetail?> MessageDetailAsync(long rowId, CancellationToken cancellationToken) =>
        Read((s, _) => s.ReadMessageDetail(rowId), cancellationToken);

    private MessageDetail? ReadMessageDetail(long rowId)
    {
        MessageSummary summary;
        string envelopeFrom;
        DateTimeOffset expires;
        DateTimeOffset? finished;
        byte[] mime;
        using (var r = Query($"SELECT {MessageColumns}, envelope_from, expires_at, finished_at, COALESCE((SELECT mime FROM message_bodies WHERE message=messages.rowid), mime) FROM messages WHERE rowid=$p0", rowId))
        {
            if (!r.Read())
            {
                return null;
            }

            summary = ReadMessageSummary(r);
            envelopeFrom = r.GetString(11);
            expires = FromMs(r.GetInt64(12));
            finished = r.IsDBNull(13) ? null : FromMs(r.GetInt64(13));
            mime = (byte[])r.GetValue(14);
        }

        var recipients = new List<RecipientState>();
        using (var r = Query("SELECT address, status, reply FROM recipients WHERE message=$p0 ORDER BY address", rowId))
        {
            while (r.Read())
            {
                recipients.Add(new RecipientState(r.GetString(0), r.GetString(1), NullableString(r, 2)));
            }
        }

        var attempts = new List<AttemptRecord>();
        using (var r = Query("SELECT attempt, at, results FROM attempts WHERE message=$p0 ORDER BY attempt", rowId))
        {
            while (r.Read())
            {
                attempts.Add(new AttemptRecord(r.GetInt32(0), FromMs(r.GetInt64(1)), JsonSerializer.Deserialize<List<RecipientResult>>(r.GetString(2)) ?? []));
            }
        }

        return new MessageDetail(summary, envelopeFrom, expires, finished, recipients, attempts, mime);
    }

    /// <inheritdoc />
    public Task<bool> RetryNowAsync(long rowId, CancellationToken cancellationToken) =>
        Enqueue((s, ctx) =>
        {
            bool due = s.Exec("UPDATE messages SET next_attempt_at=$p1 WHERE rowid=$p0 AND status='queued'", rowId, ctx.Now.ToUnixTimeMilliseconds()) > 0;
            ctx.MessagesQueued |= due;
            return due;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<RejectedRetryResult> RetryRejectedAsync(RejectedRetry retry, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(retry);
        return Enqueue((s, ctx) =>
        {
            if (s.Scalar("SELECT 1 FROM alerts WHERE rowid=$p0 AND status='rejected' AND reason=$p1", retry.RowId, retry.ExpectedReason) is null)
            {
                return new RejectedRetryResult(RejectedRetryOutcome.Changed);
            }

            if (retry.RejectReason is { } reason)
            {
                s.Exec("UPDATE alerts SET reason=$p1 WHERE rowid=$p0", retry.RowId, Truncate(reason));
                return new RejectedRetryResult(RejectedRetryOutcome.StillRejected);
            }

            if (s.Scalar("SELECT rowid FROM alerts WHERE device=(SELECT device FROM alerts WHERE rowid=$p0) AND alert_id=$p1 AND rowid<>$p0", retry.RowId, retry.AlertId)
                is long holder)
            {
                return new RejectedRetryResult(RejectedRetryOutcome.Duplicate, holder);
            }

            s.Exec("UPDATE alerts SET status='new', reason=NULL, alert_id=$p1, code=$p2, severity=$p3 WHERE rowid=$p0", retry.RowId, retry.AlertId, retry.Code, retry.Severity);
            ctx.AlertsStored = true;
            return new RejectedRetryResult(RejectedRetryOutcome.Retried);
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<DashboardCounts> DashboardAsync(DateTimeOffset since, CancellationToken cancellationToken) =>
        Read((s, _) =>
        {
            long from = since.ToUnixTimeMilliseconds();
            var alerts = new Dictionary<string, long>(StringComparer.Ordinal);
            using (var r = s.Query("SELECT CASE WHEN status='rejected' THEN 'rejected' ELSE COALESCE(severity, 'unknown') END, COUNT(*) FROM alerts WHERE received_at >= $p0 GROUP BY 1", from))
            {
                while (r.Read())
                {
                    alerts[r.GetString(0)] = r.GetInt64(1);
                }
            }

            var messages = new Dictionary<string, long>(StringComparer.Ordinal);
            using (var r = s.Query(
                """
                SELECT 'queued', COUNT(*) FROM messages WHERE status='queued' AND attempts=0
                UNION ALL SELECT 'deferred', COUNT(*) FROM messages WHERE status='queued' AND attempts>0
                UNION ALL SELECT 'parked', COUNT(*) FROM messages WHERE status='parked'
                UNION ALL SELECT 'failed', COUNT(*) FROM messages WHERE status='failed' AND finished_at >= $p0
                UNION ALL SELECT 'sent', COUNT(*) FROM messages WHERE status='sent' AND finished_at >= $p0
                """, from))
            {
                while (r.Read())
                {
                    messages[r.GetString(0)] = r.GetInt64(1);
                }
            }

            messages["parked_alerts"] = s.Scalar("SELECT COUNT(*) FROM alerts WHERE status='parked'") is long p ? p : 0;
            long pages = s.Scalar("PRAGMA page_count") is long c ? c : 0;
            long size = s.Scalar("PRAGMA page_size") is long z ? z : 4096;
            return new DashboardCounts(alerts, messages, pages * size);
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<DeviceActivity>> DeviceActivityAsync(CancellationToken cancellationToken) =>
        Read<IReadOnlyList<DeviceActivity>>((s, _) =>
        {
            var byDevice = new Dictionary<string, DeviceActivity>(StringComparer.Ordinal);
            using (var r = s.Query(SilenceSql.LastAlerts))
            {
                while (r.Read())
                {
                    if (!r.IsDBNull(1))
                    {
                        byDevice[r.GetString(0)] = new DeviceActivity(r.GetString(0), FromMs(r.GetInt64(1)), null, null);
                    }
                }
            }

            using (var r = s.Query("SELECT device, received_at, payload FROM device_status"))
            {
                while (r.Read())
                {
                    string device = r.GetString(0);
                    var known = byDevice.GetValueOrDefault(device) ?? new DeviceActivity(device, null, null, null);
                    byDevice[device] = known with { LastStatusAt = FromMs(r.GetInt64(1)), LastStatus = (byte[])r.GetValue(2) };
                }
            }

            return byDevice.Values.OrderBy(d => d.Device, StringComparer.Ordinal).ToList();
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<(DateTimeOffset Hour, long Count)>> AlertsPerHourAsync(string device, DateTimeOffset since, CancellationToken cancellationToken) =>
        Read<IReadOnlyList<(DateTimeOffset, long)>>((s, _) =>
        {
            var list = new List<(DateTimeOffset, long)>();
            using var r = s.Query("SELECT received_at / 3600000, COUNT(*) FROM alerts WHERE device=$p0 AND received_at >= $p1 GROUP BY 1 ORDER BY 1",
                device, since.ToUnixTimeMilliseconds());
            while (r.Read())
            {
                list.Add((FromMs(r.GetInt64(0) * 3_600_000), r.GetInt64(1)));
            }

            return list;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<DeviceSilenceHistory>> SilenceHistoryAsync(DateTimeOffset heartbeatsSince, CancellationToken cancellationToken) =>
        Read<IReadOnlyList<DeviceSilenceHistory>>((s, _) =>
        {
            var gaps = new Dictionary<string, TimeSpan>(StringComparer.Ordinal);
            using (var r = s.Query(SilenceSql.HeartbeatGaps("$p0"), heartbeatsSince.ToUnixTimeMilliseconds()))
            {
                while (r.Read())
                {
                    gaps[r.GetString(0)] = TimeSpan.FromMilliseconds(r.GetInt64(1));
                }
            }

            var last = new List<SilenceSql.LastSilence>();
            using (var r = s.Query(SilenceSql.LastSilences))
            {
                while (r.Read())
                {
                    last.Add(new(r.GetString(0), r.GetString(1), r.GetString(2), r.GetString(3), r.GetInt64(4)));
                }
            }

            return SilenceSql.Merge(gaps, last);
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyDictionary<string, DateTimeOffset>> WatchDevicesAsync(IReadOnlyCollection<string> devices, DateTimeOffset now, bool forgetOthers,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(devices);
        var given = devices.ToHashSet(StringComparer.Ordinal);
        long nowMs = now.ToUnixTimeMilliseconds();
        return Enqueue<IReadOnlyDictionary<string, DateTimeOffset>>((s, _) =>
        {
            var since = new Dictionary<string, long>(StringComparer.Ordinal);
            using (var r = s.Query("SELECT device, since FROM watched_devices"))
            {
                while (r.Read())
                {
                    since[r.GetString(0)] = r.GetInt64(1);
                }
            }

            // As on PostgreSQL, not the devices kept in the devices table (one contract; here one process has them all).
            foreach (string gone in forgetOthers ? since.Keys.Where(d => !given.Contains(d)).ToList() : [])
            {
                s.Exec("DELETE FROM watched_devices WHERE device=$p0 AND NOT EXISTS (SELECT 1 FROM devices WHERE id=$p0)", gone);
            }

            foreach (string added in given.Where(d => !since.ContainsKey(d)))
            {
                s.Exec("INSERT INTO watched_devices(device, since) VALUES($p0,$p1)", added, nowMs);
                since[added] = nowMs;
            }

            return given.ToDictionary(d => d, d => FromMs(since[d]), StringComparer.Ordinal);
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<(DateTimeOffset At, byte[] Payload)>> HeartbeatsAsync(string device, DateTimeOffset since, CancellationToken cancellationToken) =>
        Read<IReadOnlyList<(DateTimeOffset, byte[])>>((s, _) =>
        {
            var list = new List<(DateTimeOffset, byte[])>();
            using var r = s.Query("SELECT at, payload FROM heartbeats WHERE device=$p0 AND at >= $p1 ORDER BY at", device, since.ToUnixTimeMilliseconds());
            while (r.Read())
            {
                list.Add((FromMs(r.GetInt64(0)), (byte[])r.GetValue(1)));
            }

            return list;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<string?> AdminPasswordHashAsync(CancellationToken cancellationToken) =>
        Read((s, _) => s.Scalar("SELECT password_hash FROM console_admin WHERE id=1") as string, cancellationToken);

    /// <inheritdoc />
    public Task SetAdminPasswordHashAsync(string hash, CancellationToken cancellationToken) =>
        Enqueue((s, ctx) => s.Exec("INSERT OR REPLACE INTO console_admin(id, password_hash, updated_at) VALUES(1, $p0, $p1)", hash, ctx.Now.ToUnixTimeMilliseconds()),
            cancellationToken, isolate: false);

    /// <inheritdoc />
    public Task<IReadOnlyList<ApiKeyRecord>> ApiKeysAsync(CancellationToken cancellationToken) =>
        Read<IReadOnlyList<ApiKeyRecord>>((s, _) =>
        {
            var list = new List<ApiKeyRecord>();
            using var r = s.Query("SELECT id, name, hash, created_at, revoked_at, scope FROM api_keys ORDER BY created_at");
            while (r.Read())
            {
                list.Add(new ApiKeyRecord(r.GetString(0), r.GetString(1), r.GetString(2), FromMs(r.GetInt64(3)), r.IsDBNull(4) ? null : FromMs(r.GetInt64(4)),
                    ApiKeyScopes.FromStored(r.GetString(5))));
            }

            return list;
        }, cancellationToken);

    /// <inheritdoc />
    public Task SaveApiKeyAsync(ApiKeyRecord key, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        return Enqueue((s, _) => s.Exec("INSERT OR REPLACE INTO api_keys(id, name, hash, created_at, revoked_at, scope) VALUES($p0,$p1,$p2,$p3,$p4,$p5)",
            key.Id, key.Name, key.Hash, key.CreatedAt.ToUnixTimeMilliseconds(), key.RevokedAt?.ToUnixTimeMilliseconds(), ApiKeyScopes.Name(key.Scope)), cancellationToken, isolate: false);
    }
}
