using Npgsql;

namespace EdgeMail.Gateway.Spool;

/// <summary>Kept final receipts on the PostgreSQL spool; the same answers as SQLite's (<see cref="SqliteSpool"/>).</summary>
public sealed partial class PostgresSpool
{
    /// <inheritdoc />
    public Task<bool> KeepReceiptAsync(KeptReceipt receipt, int maxPerDevice, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(receipt);
        return WriteAsync((c, tx, ctx) => KeepAsync(c, tx, receipt, maxPerDevice, ctx.NowMs, cancellationToken), cancellationToken);
    }

    // Inside the caller's transaction (a delivery commit keeps its receipt with its result, or neither).
    private static async Task<bool> KeepAsync(NpgsqlConnection c, NpgsqlTransaction tx, KeptReceipt r, int maxPerDevice, long nowMs, CancellationToken cancellationToken)
    {
        // Only alerts that came over MQTT: an SMTP device or the gateway's own DEVICE_SILENT have nobody to read it.
        int kept = await ExecAsync(c, tx, cancellationToken,
            """
            INSERT INTO receipts(device, alert_id, state, at, detail, created_at)
            SELECT $1, $2, $3, $4, $5, $6
            WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE device=$1 AND alert_id=$2 AND via IS NOT NULL AND via <> 'MQTT')
            ON CONFLICT (device, alert_id, state) DO UPDATE SET at=excluded.at, detail=excluded.detail, created_at=excluded.created_at
            """,
            Text(r.Device), Text(r.AlertId), r.State, r.At.ToUnixTimeMilliseconds(), Text(r.StoredDetail), nowMs).ConfigureAwait(false);
        if (kept > 0)
        {
            await ExecAsync(c, tx, cancellationToken,
                // The oldest `relayed` go first, as on SQLite: which alerts reached nobody is what a device must not miss.
                "DELETE FROM receipts WHERE rowid IN (SELECT rowid FROM receipts WHERE device=$1 ORDER BY state = 'relayed', rowid DESC OFFSET $2)",
                Text(r.Device), (long)Math.Max(1, maxPerDevice)).ConfigureAwait(false);
        }

        return kept > 0;
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<StoredReceipt>> KeptReceiptsAsync(string? device, long afterRowId, DateTimeOffset? storedBefore, int max, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<StoredReceipt>>(async (c, tx) =>
        {
            long before = storedBefore?.ToUnixTimeMilliseconds() ?? long.MaxValue;
            static StoredReceipt Row(NpgsqlDataReader r) =>
                new(r.GetInt64(0), new KeptReceipt(r.GetString(1), r.GetString(2), r.GetString(3), FromMs(r.GetInt64(4)), r.GetString(5)), FromMs(r.GetInt64(6)));
            return device is null
                ? await ListAsync(c, tx, cancellationToken, Row,
                    "SELECT rowid, device, alert_id, state, at, detail, created_at FROM receipts WHERE rowid > $1 AND created_at < $2 ORDER BY rowid LIMIT $3",
                    afterRowId, before, max).ConfigureAwait(false)
                : await ListAsync(c, tx, cancellationToken, Row,
                    "SELECT rowid, device, alert_id, state, at, detail, created_at FROM receipts WHERE device=$1 AND rowid > $2 AND created_at < $3 ORDER BY rowid LIMIT $4",
                    Text(device), afterRowId, before, max).ConfigureAwait(false);
        }, cancellationToken);

    /// <inheritdoc />
    public Task<int> RemoveReceiptsAsync(IReadOnlyCollection<ReceiptCopy> copies, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(copies);
        if (copies.Count == 0)
        {
            return Task.FromResult(0);
        }

        return WriteAsync((c, tx, _) => ExecAsync(c, tx, cancellationToken,
            """
            DELETE FROM receipts r USING unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[]) AS k(device, alert_id, state, at, detail)
            WHERE r.device = k.device AND r.alert_id = k.alert_id AND r.state = k.state AND r.at = k.at AND r.detail = k.detail
            """,
            copies.Select(k => Text(k.Device)).ToArray(), copies.Select(k => Text(k.AlertId)).ToArray(), copies.Select(k => k.State).ToArray(),
            copies.Select(k => k.AtMs).ToArray(), copies.Select(k => Text(k.Detail)).ToArray()), cancellationToken);
    }

    /// <inheritdoc />
    public Task<int> PruneReceiptsAsync(DateTimeOffset before, int maxRows, CancellationToken cancellationToken) =>
        WriteAsync((c, tx, _) => ExecAsync(c, tx, cancellationToken,
            "DELETE FROM receipts WHERE rowid IN (SELECT rowid FROM receipts WHERE created_at < $1 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            before.ToUnixTimeMilliseconds(), maxRows), cancellationToken);
}
