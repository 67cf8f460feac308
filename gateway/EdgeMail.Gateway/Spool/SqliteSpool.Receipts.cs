namespace EdgeMail.Gateway.Spool;

/// <summary>Kept final receipts on the SQLite spool (see <see cref="ISpool.KeepReceiptAsync"/>, docs/spool.md).</summary>
public sealed partial class SqliteSpool
{
    private readonly Dictionary<string, int> _receiptCeiling = new(StringComparer.Ordinal);

    /// <inheritdoc />
    public Task<bool> KeepReceiptAsync(KeptReceipt receipt, int maxPerDevice, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(receipt);
        return Enqueue((s, ctx) => s.Keep(receipt, maxPerDevice, ctx.Now.ToUnixTimeMilliseconds()), cancellationToken);
    }

    // Inside the caller's transaction (a delivery commit keeps its receipt with its result, or neither).
    private bool Keep(KeptReceipt r, int maxPerDevice, long nowMs)
    {
        // Only alerts that came over MQTT: an SMTP device or the gateway's own DEVICE_SILENT have nobody to read it.
        int kept = Exec(
            """
            INSERT INTO receipts(device, alert_id, state, at, detail, created_at)
            SELECT $p0, $p1, $p2, $p3, $p4, $p5
            WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE device=$p0 AND alert_id=$p1 AND via IS NOT NULL AND via <> 'MQTT')
            ON CONFLICT(device, alert_id, state) DO UPDATE SET at=excluded.at, detail=excluded.detail, created_at=excluded.created_at
            """,
            r.Device, r.AlertId, r.State, r.At.ToUnixTimeMilliseconds(), r.StoredDetail, nowMs);
        if (kept > 0)
        {
            TrimReceipts(r.Device, Math.Max(1, maxPerDevice));
        }

        return kept > 0;
    }

    // Finding a device's oldest receipts scans and sorts all of its rows, so it is not done per keep: a device that
    // never takes its receipts (a plain MQTT publisher) would pay it on every alert. Past the cap the oldest go down to
    // seven eighths of it, once per eighth. _receiptCeiling holds, per device, at least how many rows it has: a keep adds
    // one (or replaced a row), removals only lower the truth; after a trim the entry goes, and the next keep counts
    // again -- the trim's transaction may yet roll back.
    private void TrimReceipts(string device, int max)
    {
        int ceiling = _receiptCeiling.TryGetValue(device, out int known)
            ? known + 1
            : (int)(long)Scalar("SELECT COUNT(*) FROM receipts WHERE device=$p0", device)!;
        if (ceiling <= max)
        {
            _receiptCeiling[device] = ceiling;
            return;
        }

        // What goes first is the oldest `relayed`: a device away for long learns before anything else which of its alerts
        // reached nobody (a storm digest's receipts, one per alert, would otherwise push an older `failed` out).
        Exec("DELETE FROM receipts WHERE rowid IN (SELECT rowid FROM receipts WHERE device=$p0 ORDER BY state = 'relayed', rowid DESC LIMIT -1 OFFSET $p1)",
            device, max - (max / 8));
        _receiptCeiling.Remove(device);
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<StoredReceipt>> KeptReceiptsAsync(string? device, long afterRowId, DateTimeOffset? storedBefore, int max, CancellationToken cancellationToken) =>
        Read<IReadOnlyList<StoredReceipt>>((s, _) =>
        {
            long before = storedBefore?.ToUnixTimeMilliseconds() ?? long.MaxValue;
            using var r = device is null
                ? s.Query("SELECT rowid, device, alert_id, state, at, detail, created_at FROM receipts WHERE rowid > $p0 AND created_at < $p1 ORDER BY rowid LIMIT $p2",
                    afterRowId, before, max)
                : s.Query("SELECT rowid, device, alert_id, state, at, detail, created_at FROM receipts WHERE device=$p0 AND rowid > $p1 AND created_at < $p2 ORDER BY rowid LIMIT $p3",
                    device, afterRowId, before, max);
            var list = new List<StoredReceipt>();
            while (r.Read())
            {
                list.Add(new StoredReceipt(r.GetInt64(0), new KeptReceipt(r.GetString(1), r.GetString(2), r.GetString(3), FromMs(r.GetInt64(4)), r.GetString(5)),
                    FromMs(r.GetInt64(6))));
            }

            return list;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<int> RemoveReceiptsAsync(IReadOnlyCollection<ReceiptCopy> copies, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(copies);
        return Enqueue((s, _) =>
        {
            int removed = 0;
            foreach (var c in copies)
            {
                removed += s.Exec("DELETE FROM receipts WHERE device=$p0 AND alert_id=$p1 AND state=$p2 AND at=$p3 AND detail=$p4",
                    c.Device, c.AlertId, c.State, c.AtMs, c.Detail);
            }

            return removed;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<int> PruneReceiptsAsync(DateTimeOffset before, int maxRows, CancellationToken cancellationToken) =>
        Enqueue((s, _) => s.Exec("DELETE FROM receipts WHERE rowid IN (SELECT rowid FROM receipts WHERE created_at < $p0 ORDER BY created_at LIMIT $p1)",
            before.ToUnixTimeMilliseconds(), maxRows), cancellationToken, isolate: false);
}
