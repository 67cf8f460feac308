namespace EdgeMail.Gateway.Spool;

/// <summary>
/// A final receipt (<c>failed</c> or <c>relayed</c>) the spool keeps until the device acknowledged it: the embedded
/// broker's sessions live in memory, so without it a receipt given while the device is away across a gateway restart
/// would be lost. See docs/spool.md ("Kept receipts").
/// </summary>
/// <param name="Device">The device.</param>
/// <param name="AlertId">The alert's id.</param>
/// <param name="State">The receipt state (<c>failed</c> or <c>relayed</c>).</param>
/// <param name="At">When the outcome happened (the receipt's <c>at</c>, also when it is sent again later).</param>
/// <param name="Detail">The remote reply or reason.</param>
public sealed record KeptReceipt(string Device, string AlertId, string State, DateTimeOffset At, string Detail)
{
    /// <summary>What identifies its row: at most one kept receipt per device, alert and state.</summary>
    public (string Device, string AlertId, string State) Key => (Device, AlertId, State);

    /// <summary>
    /// The detail as kept and as sent: at most what a receipt carries on the wire (512 characters, a surrogate pair not
    /// cut), a NUL as U+FFFD (PostgreSQL's text cannot hold it), so a copy read back from the spool says what the first did.
    /// </summary>
    public string StoredDetail
    {
        get
        {
            string clipped = Detail.Length <= 512 ? Detail : Detail[..(char.IsHighSurrogate(Detail[511]) ? 511 : 512)];
            return clipped.Contains('\0', StringComparison.Ordinal) ? clipped.Replace('\0', '\uFFFD') : clipped;
        }
    }

    /// <summary>This receipt as a device is sent it, and as its acknowledgement names it.</summary>
    public ReceiptCopy Copy => new(Device, AlertId, State, At.ToUnixTimeMilliseconds(), StoredDetail);
}

/// <summary>
/// A kept receipt as a device is sent it: what the acknowledgement names (the receipt's JSON, which the broker gives
/// back with the device's PUBACK, or with its own for an external broker). The same device, alert and state can be kept
/// again with a later outcome (a cancel's <c>failed</c> after a parked item's) while the older copy is still on its
/// way: <c>at</c> and <c>detail</c> tell the two apart, so taking the older copy does not take the newer receipt.
/// </summary>
/// <param name="Device">The device.</param>
/// <param name="AlertId">The alert's id.</param>
/// <param name="State">The receipt state.</param>
/// <param name="AtMs">The receipt's <c>at</c>, in Unix milliseconds (as precise as the wire).</param>
/// <param name="Detail">The detail as kept and sent (<see cref="KeptReceipt.StoredDetail"/>).</param>
public readonly record struct ReceiptCopy(string Device, string AlertId, string State, long AtMs, string Detail);

/// <summary>A kept receipt as the spool holds it.</summary>
/// <param name="RowId">Its row (kept receipts are read in row order).</param>
/// <param name="Receipt">The receipt.</param>
/// <param name="CreatedAt">When it was stored.</param>
public sealed record StoredReceipt(long RowId, KeptReceipt Receipt, DateTimeOffset CreatedAt);

/// <summary>Final receipts kept until delivered (docs/spool.md, "Kept receipts").</summary>
public partial interface ISpool
{
    /// <summary>
    /// Keeps a final receipt (insert, or replace the one with the same device, alert and state), then drops the device's
    /// oldest kept receipts beyond <paramref name="maxPerDevice"/>. Receipts for alerts that came over SMTP or were raised
    /// by the gateway itself are not kept (nobody could receive them).
    /// </summary>
    /// <param name="receipt">The receipt.</param>
    /// <param name="maxPerDevice">Most receipts kept per device.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>True when it was kept.</returns>
    Task<bool> KeepReceiptAsync(KeptReceipt receipt, int maxPerDevice, CancellationToken cancellationToken);

    /// <summary>Kept receipts in row order: of one device (or all), after a row, stored before a time (or any time).</summary>
    /// <param name="device">Only this device; null for all.</param>
    /// <param name="afterRowId">Paging: only rows after this one.</param>
    /// <param name="storedBefore">Only receipts stored before this; null for all.</param>
    /// <param name="max">Most to return.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The receipts.</returns>
    Task<IReadOnlyList<StoredReceipt>> KeptReceiptsAsync(string? device, long afterRowId, DateTimeOffset? storedBefore, int max, CancellationToken cancellationToken);

    /// <summary>
    /// Removes kept receipts that were delivered (one transaction): each row only while it still holds the copy the device
    /// took (the same <c>at</c> and detail). A row that a later outcome replaced meanwhile stays, to be sent and taken
    /// itself; copies not kept are ignored.
    /// </summary>
    /// <param name="copies">The copies the device acknowledged.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>How many were removed.</returns>
    Task<int> RemoveReceiptsAsync(IReadOnlyCollection<ReceiptCopy> copies, CancellationToken cancellationToken);

    /// <summary>Removes kept receipts stored before <paramref name="before"/>, at most <paramref name="maxRows"/>.</summary>
    /// <param name="before">The horizon (<c>Receipts:MaxAge</c> ago).</param>
    /// <param name="maxRows">Most removed by this call.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>How many were removed.</returns>
    Task<int> PruneReceiptsAsync(DateTimeOffset before, int maxRows, CancellationToken cancellationToken);
}

/// <summary>What an operator's cancel owes devices, the same on every provider (<see cref="ISpool.CancelAsync"/>).</summary>
internal static class CancelReceipts
{
    /// <summary>The <c>failed</c> receipt for an alert a cancel gave up.</summary>
    internal static KeptReceipt For(string device, string alertId, DateTimeOffset at, string reason) => new(device, alertId, "failed", at, SpoolReasons.Cancelled + reason);

    /// <summary>Whether cancelling mail of this kind gives up alerts of a device: its own alert, or the held alerts of a digest.</summary>
    internal static bool Concerns(string kind) => kind is "alert" or "digest";
}

/// <summary>What a delivery result owes devices, the same on every provider (<see cref="ISpool.CommitDeliveryAsync"/>).</summary>
internal static class DeliveryReceipts
{
    /// <summary>
    /// Whether a result gives no receipt: it failed no recipient, but the message has <paramref name="failed"/> failed
    /// ones all the same, failed by an earlier attempt, whose result gave the device <c>failed</c>
    /// (<see cref="DeliveryRecorded.RecordedAlreadyFailed"/>).
    /// </summary>
    internal static bool FailedBefore(long failed, DeliveryCommit commit) =>
        failed > 0 && !commit.Results.Any(r => r.Outcome == "failed");
}
