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
    /// <summary>What identifies it: at most one kept receipt per device, alert and state.</summary>
    public (string Device, string AlertId, string State) Key => (Device, AlertId, State);

    /// <summary>The detail as kept: at most what a receipt carries on the wire (512 characters).</summary>
    public string StoredDetail => Detail.Length > 512 ? Detail[..512] : Detail;
}

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

    /// <summary>Removes kept receipts that were delivered (one transaction); keys not kept are ignored.</summary>
    /// <param name="keys">Device, alert id and state of each.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>How many were removed.</returns>
    Task<int> RemoveReceiptsAsync(IReadOnlyCollection<(string Device, string AlertId, string State)> keys, CancellationToken cancellationToken);

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
