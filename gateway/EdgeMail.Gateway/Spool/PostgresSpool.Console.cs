using System.Text;
using System.Text.Json;
using Npgsql;

namespace EdgeMail.Gateway.Spool;

/// <summary>The console's reads and actions on the PostgreSQL spool (see <see cref="ISpool"/>); the same answers as SQLite's.</summary>
public sealed partial class PostgresSpool
{
    private const string AlertColumns = "rowid, device, alert_id, code, severity, status, received_at, via, peer, reason";
    private const string MessageColumns = "rowid, kind, message_id, device, alert_id, status, attempts, created_at, next_attempt_at, last_reply, reason";

    /// <inheritdoc />
    public Task<IReadOnlyList<AlertSummary>> QueryAlertsAsync(AlertQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        var (where, args) = query.Filter(i => "$" + (i + 1).ToString(System.Globalization.CultureInfo.InvariantCulture), text => Text(text));
        string sql = $"SELECT {AlertColumns} FROM alerts WHERE {where} ORDER BY rowid DESC LIMIT ${args.Count}";
        return ReadAsync<IReadOnlyList<AlertSummary>>(async (c, tx) => await ListAsync(c, tx, cancellationToken, ReadAlertSummary, sql, [.. args]).ConfigureAwait(false),
            cancellationToken);
    }

    private static AlertSummary ReadAlertSummary(NpgsqlDataReader r) =>
        new(r.GetInt64(0), r.GetString(1), r.GetString(2), Str(r, 3), Str(r, 4), r.GetString(5), FromMs(r.GetInt64(6)), Str(r, 7) ?? IngestProtocols.Mqtt, Str(r, 8), Str(r, 9));

    /// <inheritdoc />
    public Task<AlertJourney?> AlertJourneyAsync(long rowId, CancellationToken cancellationToken) =>
        ReadAsync(async (c, tx) =>
        {
            var found = await ListAsync(c, tx, cancellationToken, r => (Summary: ReadAlertSummary(r), Payload: (byte[])r.GetValue(10), Route: Str(r, 11), Digest: Str(r, 12)),
                $"SELECT {AlertColumns}, payload, route, digest_message FROM alerts WHERE rowid=$1", rowId).ConfigureAwait(false);
            if (found.Count == 0)
            {
                return null;
            }

            var (summary, payload, route, digest) = found[0];

            // The mail made from it, the digest it went out in, and notices about its failed mail (named by device and alert id).
            var rows = await ListAsync(c, tx, cancellationToken, r => r.GetInt64(0),
                """
                SELECT rowid FROM messages WHERE alert_rowid=$1 OR message_id=$2
                UNION SELECT rowid FROM messages WHERE kind='notice' AND device=$3 AND alert_id=$4
                ORDER BY 1
                """, rowId, digest ?? string.Empty, summary.Device, summary.AlertId).ConfigureAwait(false);
            var messages = new List<MessageDetail>();
            foreach (long row in rows)
            {
                if (await ReadMessageDetailAsync(c, tx, row, cancellationToken).ConfigureAwait(false) is { } detail)
                {
                    messages.Add(detail);
                }
            }

            return (AlertJourney?)new AlertJourney(summary, payload, route, digest, messages);
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<MessageSummary>> QueryMessagesAsync(MessageQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        var where = new StringBuilder("TRUE");
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
                args.Add(query.State);
                where.Append(" AND status=$1");
                break;
        }

        if (query.Device is { Length: > 0 } device)
        {
            args.Add(Text(device));
            where.Append(" AND device=$").Append(args.Count);
        }

        if (query.BeforeRowId is { } before)
        {
            args.Add(before);
            where.Append(" AND rowid<$").Append(args.Count);
        }

        args.Add(Math.Clamp(query.Limit, 1, 1000));
        string sql = $"SELECT {MessageColumns} FROM messages WHERE {where} ORDER BY rowid DESC LIMIT ${args.Count}";
        return ReadAsync<IReadOnlyList<MessageSummary>>(async (c, tx) => await ListAsync(c, tx, cancellationToken, ReadMessageSummary, sql, [.. args]).ConfigureAwait(false),
            cancellationToken);
    }

    private static MessageSummary ReadMessageSummary(NpgsqlDataReader r) =>
        new(r.GetInt64(0), r.GetString(1), r.GetString(2), Str(r, 3), Str(r, 4), r.GetString(5), r.GetInt32(6), FromMs(r.GetInt64(7)), FromMs(r.GetInt64(8)), Str(r, 9), Str(r, 10));

    /// <inheritdoc />
    public Task<MessageDetail?> MessageDetailAsync(long rowId, CancellationToken cancellationToken) =>
        ReadAsync((c, tx) => ReadMessageDetailAsync(c, tx, rowId, cancellationToken), cancellationToken);

    private static async Task<MessageDetail?> ReadMessageDetailAsync(NpgsqlConnection c, NpgsqlTransaction tx, long rowId, CancellationToken ct)
    {
        var found = await ListAsync(c, tx, ct,
            r => new MessageDetail(ReadMessageSummary(r), r.GetString(11), FromMs(r.GetInt64(12)), r.IsDBNull(13) ? null : FromMs(r.GetInt64(13)), [], [], (byte[])r.GetValue(14)),
            $"SELECT {MessageColumns}, envelope_from, expires_at, finished_at, mime FROM messages WHERE rowid=$1", rowId).ConfigureAwait(false);
        if (found.Count == 0)
        {
            return null;
        }

        var recipients = await ListAsync(c, tx, ct, r => new RecipientState(r.GetString(0), r.GetString(1), Str(r, 2)),
            "SELECT address, status, reply FROM recipients WHERE message=$1 ORDER BY address COLLATE \"C\"", rowId).ConfigureAwait(false);
        var attempts = await ListAsync(c, tx, ct,
            r => new AttemptRecord(r.GetInt32(0), FromMs(r.GetInt64(1)), JsonSerializer.Deserialize<List<RecipientResult>>(r.GetString(2)) ?? []),
            "SELECT attempt, at, results FROM attempts WHERE message=$1 ORDER BY attempt", rowId).ConfigureAwait(false);
        return found[0] with { Recipients = recipients, Attempts = attempts };
    }

    /// <inheritdoc />
    public Task<bool> RetryNowAsync(long rowId, CancellationToken cancellationToken) =>
        WriteAsync(async (c, tx, ctx) =>
        {
            bool due = await ExecAsync(c, tx, cancellationToken, "UPDATE messages SET next_attempt_at=$2 WHERE rowid=$1 AND status='queued'", rowId, ctx.NowMs).ConfigureAwait(false) > 0;
            ctx.MessagesQueued |= due;
            return due;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<RejectedRetryResult> RetryRejectedAsync(RejectedRetry retry, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(retry);
        return WriteAsync(async (c, tx, ctx) =>
        {
            // Locked: a second retry at the same moment waits here, then finds the row changed.
            if (await ScalarAsync(c, tx, cancellationToken, "SELECT device FROM alerts WHERE rowid=$1 AND status='rejected' AND reason=$2 FOR UPDATE",
                retry.RowId, Text(retry.ExpectedReason)).ConfigureAwait(false) is not string device)
            {
                return new RejectedRetryResult(RejectedRetryOutcome.Changed);
            }

            if (retry.RejectReason is { } reason)
            {
                await ExecAsync(c, tx, cancellationToken, "UPDATE alerts SET reason=$2 WHERE rowid=$1", retry.RowId, Truncate(Text(reason)!)).ConfigureAwait(false);
                return new RejectedRetryResult(RejectedRetryOutcome.StillRejected);
            }

            const string Holder = "SELECT rowid FROM alerts WHERE device=$1 AND alert_id=$2 AND rowid<>$3";
            if (await ScalarAsync(c, tx, cancellationToken, Holder, device, Text(retry.AlertId), retry.RowId).ConfigureAwait(false) is long holder)
            {
                return new RejectedRetryResult(RejectedRetryOutcome.Duplicate, holder);
            }

            // The device may send the same alert at this very moment, on another connection or instance.
            await tx.SaveAsync("retry", cancellationToken).ConfigureAwait(false);
            try
            {
                await ExecAsync(c, tx, cancellationToken,
                    "UPDATE alerts SET status='new', reason=NULL, alert_id=$2, code=$3, severity=$4, claimed_by=NULL, claim_until=NULL WHERE rowid=$1",
                    retry.RowId, Text(retry.AlertId), Text(retry.Code), Text(retry.Severity)).ConfigureAwait(false);
            }
            catch (PostgresException ex) when (ex.SqlState == UniqueViolation)
            {
                await tx.RollbackAsync("retry", cancellationToken).ConfigureAwait(false);
                return new RejectedRetryResult(RejectedRetryOutcome.Duplicate,
                    await ScalarAsync(c, tx, cancellationToken, Holder, device, Text(retry.AlertId), retry.RowId).ConfigureAwait(false) as long?);
            }

            ctx.AlertsStored = true;
            return new RejectedRetryResult(RejectedRetryOutcome.Retried);
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<DashboardCounts> DashboardAsync(DateTimeOffset since, CancellationToken cancellationToken) =>
        ReadAsync(async (c, tx) =>
        {
            long from = since.ToUnixTimeMilliseconds();
            var alerts = (await ListAsync(c, tx, cancellationToken, r => (r.GetString(0), r.GetInt64(1)),
                "SELECT CASE WHEN status='rejected' THEN 'rejected' ELSE COALESCE(severity, 'unknown') END, COUNT(*) FROM alerts WHERE received_at >= $1 GROUP BY 1",
                from).ConfigureAwait(false)).ToDictionary(x => x.Item1, x => x.Item2, StringComparer.Ordinal);
            var messages = (await ListAsync(c, tx, cancellationToken, r => (r.GetString(0), r.GetInt64(1)),
                """
                SELECT 'queued', COUNT(*) FROM messages WHERE status='queued' AND attempts=0
                UNION ALL SELECT 'deferred', COUNT(*) FROM messages WHERE status='queued' AND attempts>0
                UNION ALL SELECT 'parked', COUNT(*) FROM messages WHERE status='parked'
                UNION ALL SELECT 'failed', COUNT(*) FROM messages WHERE status='failed' AND finished_at >= $1
                UNION ALL SELECT 'sent', COUNT(*) FROM messages WHERE status='sent' AND finished_at >= $1
                UNION ALL SELECT 'parked_alerts', COUNT(*) FROM alerts WHERE status='parked'
                """, from).ConfigureAwait(false)).ToDictionary(x => x.Item1, x => x.Item2, StringComparer.Ordinal);
            long size = await ScalarAsync(c, tx, cancellationToken, "SELECT pg_database_size(current_database())").ConfigureAwait(false) is long s ? s : 0;
            return new DashboardCounts(alerts, messages, size);
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<DeviceActivity>> DeviceActivityAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<DeviceActivity>>(async (c, tx) =>
        {
            var byDevice = (await ListAsync(c, tx, cancellationToken, r => r.IsDBNull(1) ? null : new DeviceActivity(r.GetString(0), FromMs(r.GetInt64(1)), null, null),
                SilenceSql.LastAlerts).ConfigureAwait(false))
                .OfType<DeviceActivity>().ToDictionary(d => d.Device, StringComparer.Ordinal);
            foreach (var (device, at, payload) in await ListAsync(c, tx, cancellationToken, r => (r.GetString(0), r.GetInt64(1), (byte[])r.GetValue(2)),
                "SELECT device, received_at, payload FROM device_status").ConfigureAwait(false))
            {
                var known = byDevice.GetValueOrDefault(device) ?? new DeviceActivity(device, null, null, null);
                byDevice[device] = known with { LastStatusAt = FromMs(at), LastStatus = payload };
            }

            return byDevice.Values.OrderBy(d => d.Device, StringComparer.Ordinal).ToList();
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<(DateTimeOffset Hour, long Count)>> AlertsPerHourAsync(string device, DateTimeOffset since, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<(DateTimeOffset, long)>>(async (c, tx) => await ListAsync(c, tx, cancellationToken, r => (FromMs(r.GetInt64(0) * 3_600_000), r.GetInt64(1)),
            "SELECT received_at / 3600000, COUNT(*) FROM alerts WHERE device=$1 AND received_at >= $2 GROUP BY 1 ORDER BY 1",
            Text(device), since.ToUnixTimeMilliseconds()).ConfigureAwait(false), cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<DeviceSilenceHistory>> SilenceHistoryAsync(DateTimeOffset heartbeatsSince, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<DeviceSilenceHistory>>(async (c, tx) =>
        {
            var gaps = (await ListAsync(c, tx, cancellationToken, r => (Device: r.GetString(0), Gap: TimeSpan.FromMilliseconds(r.GetInt64(1))),
                SilenceSql.HeartbeatGaps("$1"), heartbeatsSince.ToUnixTimeMilliseconds()).ConfigureAwait(false)).ToDictionary(g => g.Device, g => g.Gap, StringComparer.Ordinal);
            var last = await ListAsync(c, tx, cancellationToken, r => new SilenceSql.LastSilence(r.GetString(0), r.GetString(1), r.GetString(2), r.GetString(3), r.GetInt64(4)),
                SilenceSql.LastSilences).ConfigureAwait(false);
            return SilenceSql.Merge(gaps, last);
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyDictionary<string, DateTimeOffset>> WatchDevicesAsync(IReadOnlyCollection<string> devices, DateTimeOffset now, bool forgetOthers,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(devices);
        string[] given = [.. devices.Distinct(StringComparer.Ordinal)];

        // Instances sharing the spool take the time of whichever recorded a device first, so their silences of it share ids.
        return WriteAsync<IReadOnlyDictionary<string, DateTimeOffset>>(async (c, tx, _) =>
        {
            // Not the devices kept in the devices table (added or changed at run time): every instance has them, and one
            // missing from those given was added on another instance after the caller read them. That instance recorded
            // it watched only after its devices row committed, so this statement's snapshot, if it sees the one, sees the
            // other: no lock needed. Deleting it made this instance record it again later, from then, and the two
            // instances had two times for it (two silence ids, its silence mailed twice).
            if (forgetOthers)
            {
                await ExecAsync(c, tx, cancellationToken, """
                    DELETE FROM watched_devices w
                    WHERE NOT EXISTS (SELECT 1 FROM unnest($1::text[]) d WHERE d = w.device) AND NOT EXISTS (SELECT 1 FROM devices m WHERE m.id = w.device)
                    """, (object)given).ConfigureAwait(false);
            }

            await ExecAsync(c, tx, cancellationToken, "INSERT INTO watched_devices(device, since) SELECT d, $2 FROM unnest($1::text[]) d ON CONFLICT (device) DO NOTHING",
                given, now.ToUnixTimeMilliseconds()).ConfigureAwait(false);
            return (await ListAsync(c, tx, cancellationToken, r => (Device: r.GetString(0), Since: FromMs(r.GetInt64(1))),
                "SELECT w.device, w.since FROM watched_devices w JOIN unnest($1::text[]) d ON d = w.device", (object)given).ConfigureAwait(false))
                .ToDictionary(w => w.Device, w => w.Since, StringComparer.Ordinal);
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<(DateTimeOffset At, byte[] Payload)>> HeartbeatsAsync(string device, DateTimeOffset since, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<(DateTimeOffset, byte[])>>(async (c, tx) => await ListAsync(c, tx, cancellationToken, r => (FromMs(r.GetInt64(0)), (byte[])r.GetValue(1)),
            "SELECT at, payload FROM heartbeats WHERE device=$1 AND at >= $2 ORDER BY at", Text(device), since.ToUnixTimeMilliseconds()).ConfigureAwait(false), cancellationToken);

    /// <inheritdoc />
    public Task<string?> AdminPasswordHashAsync(CancellationToken cancellationToken) =>
        ReadAsync(async (c, tx) => await ScalarAsync(c, tx, cancellationToken, "SELECT password_hash FROM console_admin WHERE id=1").ConfigureAwait(false) as string, cancellationToken);

    /// <inheritdoc />
    public Task SetAdminPasswordHashAsync(string hash, CancellationToken cancellationToken) =>
        WriteAsync((c, tx, ctx) => ExecAsync(c, tx, cancellationToken,
            "INSERT INTO console_admin(id, password_hash, updated_at) VALUES(1, $1, $2) ON CONFLICT (id) DO UPDATE SET password_hash=excluded.password_hash, updated_at=excluded.updated_at",
            hash, ctx.NowMs), cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<ApiKeyRecord>> ApiKeysAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<ApiKeyRecord>>(async (c, tx) => await ListAsync(c, tx, cancellationToken,
            r => new ApiKeyRecord(r.GetString(0), r.GetString(1), r.GetString(2), FromMs(r.GetInt64(3)), r.IsDBNull(4) ? null : FromMs(r.GetInt64(4)), ApiKeyScopes.FromStored(r.GetString(5))),
            "SELECT id, name, hash, created_at, revoked_at, scope FROM api_keys ORDER BY created_at").ConfigureAwait(false), cancellationToken);

    /// <inheritdoc />
    public Task SaveApiKeyAsync(ApiKeyRecord key, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        return WriteAsync((c, tx, _) => ExecAsync(c, tx, cancellationToken,
            """
            INSERT INTO api_keys(id, name, hash, created_at, revoked_at, scope) VALUES($1,$2,$3,$4,$5,$6)
            ON CONFLICT (id) DO UPDATE SET name=excluded.name, hash=excluded.hash, created_at=excluded.created_at, revoked_at=excluded.revoked_at, scope=excluded.scope, last_used_at=NULL
            """, key.Id, Text(key.Name), key.Hash, key.CreatedAt.ToUnixTimeMilliseconds(), key.RevokedAt?.ToUnixTimeMilliseconds(), ApiKeyScopes.Name(key.Scope)), cancellationToken);
    }
}
