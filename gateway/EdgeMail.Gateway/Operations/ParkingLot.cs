using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Operations;

/// <summary>
/// What happens around an item the spool has parked: one Error log line with the reason (and the stack, when an
/// exception caused it), a count, a <c>failed</c> receipt to the device whose alert it is, and a (rate-limited)
/// notice to the operator. Parking itself is the spool's: the item stays there, with its reason, until released.
/// </summary>
public sealed partial class ParkingLot
{
    private readonly ReceiptPublisher _receipts;
    private readonly ISpool _spool;
    private readonly OperatorNotices _notices;
    private readonly GatewayMetrics _metrics;
    private readonly ILogger<ParkingLot> _logger;
    private readonly TimeProvider _clock;

    /// <summary>Creates the parking lot.</summary>
    /// <param name="receipts">Receipts to devices.</param>
    /// <param name="spool">Where a parked digest's alerts are found.</param>
    /// <param name="notices">Notices to the operator.</param>
    /// <param name="metrics">Counters.</param>
    /// <param name="logger">Logger.</param>
    /// <param name="clock">When a parked item's receipt says it failed.</param>
    public ParkingLot(ReceiptPublisher receipts, ISpool spool, OperatorNotices notices, GatewayMetrics metrics, ILogger<ParkingLot> logger, TimeProvider clock)
    {
        _clock = clock;
        _receipts = receipts;
        _spool = spool;
        _notices = notices;
        _metrics = metrics;
        _logger = logger;
    }

    /// <summary>
    /// Whether an exception thrown while handling one item is that item's fault and parks it: anything but the
    /// gateway stopping and the spool failing (those leave the item where it is, to be tried again).
    /// </summary>
    /// <param name="ex">The exception.</param>
    /// <param name="stopping">The loop's stopping token.</param>
    /// <returns>True when the item is to be parked.</returns>
    public static bool Contains(Exception ex, CancellationToken stopping) =>
        ex is not SpoolException && (ex is not OperationCanceledException || !stopping.IsCancellationRequested);

    /// <summary>The reason stored with a parked item.</summary>
    /// <param name="stage">What was being done ("routing", "delivering").</param>
    /// <param name="ex">What went wrong.</param>
    /// <returns>One line: stage, exception type and message.</returns>
    public static string Describe(string stage, Exception ex)
    {
        ArgumentNullException.ThrowIfNull(ex);
        string message = ex.Message.ReplaceLineEndings(" ");
        return $"{stage} failed: {ex.GetType().Name}: {(message.Length > 500 ? message[..500] : message)}";
    }

    /// <summary>Reports a parked alert.</summary>
    /// <param name="stage">Metric tag: route, digest.</param>
    /// <param name="device">Its device.</param>
    /// <param name="alertId">Its id.</param>
    /// <param name="reason">Why.</param>
    /// <param name="fault">The exception, if one caused it.</param>
    /// <returns>A task completing once the receipt is queued.</returns>
    public async Task AlertParkedAsync(string stage, string device, string alertId, string reason, Exception? fault)
    {
        LogAlertParked(fault, alertId, device, reason);
        _metrics.Parked.Add(1, new KeyValuePair<string, object?>("stage", stage));
        _notices.Report($"alert {alertId} from {device} parked", $"alert {alertId} from {device} parked: {reason}");
        await ReceiptAsync(device, alertId, reason).ConfigureAwait(false);
    }

    /// <summary>Reports a parked mail.</summary>
    /// <param name="message">The mail.</param>
    /// <param name="reason">Why.</param>
    /// <param name="fault">The exception, if one caused it.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task completing once the receipts are queued.</returns>
    /// <exception cref="SpoolException">A parked digest's alerts could not be read; the operator was told, the devices not.</exception>
    public async Task MessageParkedAsync(QueuedMessage message, string reason, Exception? fault, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        LogMessageParked(fault, message.MessageId, message.Kind, reason);
        _metrics.Parked.Add(1, new KeyValuePair<string, object?>("stage", "deliver"));
        _notices.Report($"mail <{message.MessageId}> parked", $"{message.Kind} mail <{message.MessageId}> parked: {reason}");
        if (message is { Kind: "alert", Device: { } device, AlertId: { } alertId })
        {
            await ReceiptAsync(device, alertId, reason).ConfigureAwait(false);
        }
        else if (message is { Kind: "digest", Device: { } digestDevice })
        {
            // Each alert a digest covers is told, as a single alert's parked mail tells its own.
            foreach (string covered in await _spool.DigestAlertIdsAsync(digestDevice, message.MessageId, _receipts.MaxPerDevice, cancellationToken).ConfigureAwait(false))
            {
                await ReceiptAsync(digestDevice, covered, reason).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// Reports mail a device submitted over SMTP that was quarantined (its handling failed; logged by the handler, with
    /// the fault): counted as parked at stage <c>submit</c>, and the operator told. A device that submits mail has no
    /// receipt topic.
    /// </summary>
    /// <param name="device">Its device.</param>
    /// <param name="messageId">Its key in the spool.</param>
    /// <param name="reason">Why.</param>
    public void MailQuarantined(string device, string messageId, string reason)
    {
        _metrics.Parked.Add(1, new KeyValuePair<string, object?>("stage", "submit"));
        _notices.Report($"mail from {device} quarantined", $"mail <{messageId}> from {device} quarantined: {reason}");
    }

    /// <summary>Tells a device its alert failed.</summary>
    /// <param name="device">Device.</param>
    /// <param name="alertId">Alert id.</param>
    /// <param name="reason">Why.</param>
    /// <returns>A task completing once the receipt is queued.</returns>
    public Task ReceiptAsync(string device, string alertId, string reason) =>
        _receipts.KeepAndPublishAsync(new KeptReceipt(device, alertId, ReceiptState.Failed, _clock.GetUtcNow(), "parked: " + reason));

    [LoggerMessage(Level = LogLevel.Error, Message = "Parked alert {AlertId} from {Device}: {Reason}")]
    private partial void LogAlertParked(Exception? ex, string alertId, string device, string reason);

    [LoggerMessage(Level = LogLevel.Error, Message = "Parked {Kind} mail <{MessageId}>: {Reason}")]
    private partial void LogMessageParked(Exception? ex, string messageId, string kind, string reason);
}
