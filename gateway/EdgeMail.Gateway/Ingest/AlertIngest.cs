using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// What the MQTT and SMTP listeners do with an alert payload: validate it, store it durably (valid or rejected), and
/// tell the device. The caller acknowledges the transport only after this returns; if it throws (the spool failed,
/// the caller stopped), nothing is acknowledged and the device retries. An alert whose handling fails for a reason of
/// its own is kept as rejected and returns like any other, so that it is acknowledged and not redelivered for ever.
/// </summary>
public sealed partial class AlertIngest
{
    private readonly ISpool _spool;
    private readonly ReceiptPublisher _receipts;
    private readonly TimeProvider _clock;
    private readonly IngestPressure _pressure;
    private readonly DiskGuard _disk;
    private readonly Devices.DevicePresence _presence;
    private readonly GatewayMetrics _metrics;
    private readonly ILogger<AlertIngest> _logger;

    /// <summary>Creates the ingest step.</summary>
    /// <param name="spool">The spool.</param>
    /// <param name="receipts">Receipts back to devices.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="pressure">Counts accepted alerts, so background work can yield to a burst.</param>
    /// <param name="disk">Refuses new alerts while the disk is low.</param>
    /// <param name="logger">Logger.</param>
    /// <param name="presence">Records that the device was heard from.</param>
    /// <param name="metrics">Alerts received are counted there.</param>
    public AlertIngest(ISpool spool, ReceiptPublisher receipts, TimeProvider clock, IngestPressure pressure, DiskGuard disk, ILogger<AlertIngest> logger,
        Devices.DevicePresence presence, GatewayMetrics metrics)
    {
        _presence = presence;
        _metrics = metrics;
        _disk = disk;
        _spool = spool;
        _receipts = receipts;
        _clock = clock;
        _pressure = pressure;
        _logger = logger;
    }

    /// <summary>
    /// Validates and durably stores one alert, then sends the receipt. An alert whose handling fails for a reason of its
    /// own (a bug, anything but the spool failing or the caller stopping) is kept as rejected instead
    /// (<see cref="KeepFailedAsync"/>), so the transport acknowledges it and the device's later alerts flow.
    /// </summary>
    /// <param name="deviceId">Authenticated device.</param>
    /// <param name="peer">Remote endpoint.</param>
    /// <param name="payload">The payload.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <param name="via">The protocol it came with, for the Received trace (<see cref="IngestProtocols"/>).</param>
    /// <param name="receivedAt">
    /// When the alert came, when that was before now: an alert of quarantined mail the operator releases. It is stored as
    /// received then, and the device is not heard from by it (<see cref="Devices.DevicePresence.Seen"/>, and the last-heard
    /// time the silence watch reads back from the spool at start): one silent since must not be reported back.
    /// </param>
    /// <returns>The spool outcome.</returns>
    /// <exception cref="SpoolException">Nothing durable: do not acknowledge (<see cref="SpoolFullException"/>: the disk is low, refuse with back-pressure).</exception>
    public async Task<AcceptOutcome> IngestAlertAsync(string deviceId, string? peer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken, string via = IngestProtocols.Mqtt,
        DateTimeOffset? receivedAt = null)
    {
        AlertParseResult parsed;
        string alertId;
        string? reason;
        AcceptOutcome outcome;
        try
        {
            if (receivedAt is null)
            {
                _presence.Seen(deviceId);
            }

            _disk.ThrowIfLow();
            parsed = AlertParser.Parse(payload.Span);
            alertId = parsed.Id ?? AlertParser.RejectedId(payload.Span);
            (var kept, reason) = parsed.IsValid ? (payload, null) : AlertParser.KeepRejected(payload, parsed.Reason!);
            var incoming = new IncomingAlert(deviceId, alertId, receivedAt ?? _clock.GetUtcNow(), peer, kept, reason, parsed.Alert?.Code, via, SeverityOf(parsed));
            outcome = await _spool.AcceptAlertAsync(incoming, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
        {
            return await KeepFailedAsync(deviceId, peer, payload, ex, cancellationToken, via, receivedAt).ConfigureAwait(false);
        }

        // Durable from here: whatever fails now must not keep the transport from acknowledging it.
        try
        {
            _pressure.Accepted();
            CountReceived(via, !parsed.IsValid ? "rejected" : outcome == AcceptOutcome.Duplicate ? "duplicate" : "stored");
            if (outcome == AcceptOutcome.Duplicate)
            {
                await AnswerDuplicateAsync(deviceId, parsed.Id, alertId, cancellationToken).ConfigureAwait(false);
            }
            else if (parsed.IsValid)
            {
                await _receipts.PublishAsync(deviceId, alertId, ReceiptState.Accepted, string.Empty, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                LogRejected(deviceId, parsed.Id ?? "(none)", reason!);
                await _receipts.PublishAsync(deviceId, parsed.Id ?? string.Empty, ReceiptState.Rejected, reason!, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            LogAfterStoreFailed(ex, alertId, deviceId);
        }

        return outcome;
    }

    /// <summary>
    /// Keeps an alert whose handling failed for a reason of its own as rejected, with the reason
    /// <c>handling failed: &lt;exception type&gt;: &lt;message&gt;</c>: logged at Error, counted as a rejected alert, and
    /// answered with a <c>rejected</c> receipt (a retransmission: with what the spool holds for its first copy). The transport then acknowledges it (PUBACK, 250): a message it could
    /// never handle would otherwise be redelivered for ever, first in its device's queue (and, through an external
    /// broker, in every device's).
    /// </summary>
    /// <param name="deviceId">The device whose alert it is.</param>
    /// <param name="peer">Remote endpoint.</param>
    /// <param name="payload">The payload as it came.</param>
    /// <param name="fault">What failed; see <see cref="ParkingLot.Contains"/> for which faults are the alert's own.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <param name="via">The protocol it came with.</param>
    /// <param name="receivedAt">When it came, when that was before now (see <see cref="IngestAlertAsync"/>).</param>
    /// <returns>The spool outcome (a duplicate when the same alert was kept before).</returns>
    /// <exception cref="SpoolException">The rejection could not be stored either: do not acknowledge.</exception>
    public async Task<AcceptOutcome> KeepFailedAsync(string deviceId, string? peer, ReadOnlyMemory<byte> payload, Exception fault, CancellationToken cancellationToken,
        string via = IngestProtocols.Mqtt, DateTimeOffset? receivedAt = null)
    {
        ArgumentNullException.ThrowIfNull(fault);
        var (kept, reason) = AlertParser.KeepRejected(payload, ParkingLot.Describe(HandlingStage, fault));
        string? id = IdOf(kept);
        string alertId = id ?? AlertParser.RejectedId(payload.Span);
        LogHandlingFailed(fault, alertId, deviceId, reason);
        var outcome = await _spool.AcceptAlertAsync(new IncomingAlert(deviceId, alertId, receivedAt ?? _clock.GetUtcNow(), peer, kept, reason, null, via), cancellationToken)
            .ConfigureAwait(false);
        try
        {
            _pressure.Accepted();
            CountReceived(via, outcome == AcceptOutcome.Duplicate ? "duplicate" : "rejected");

            if (outcome == AcceptOutcome.Stored)
            {
                await _receipts.PublishAsync(deviceId, id ?? string.Empty, ReceiptState.Rejected, reason, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                await AnswerDuplicateAsync(deviceId, id, alertId, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            LogAfterStoreFailed(ex, alertId, deviceId);
        }

        return outcome;
    }

    // A retransmission is answered with what the spool holds for the first copy, not with what this copy would have been:
    // a device must never hear "accepted" for an alert kept as rejected (nor "rejected" for one accepted). Only duplicates
    // pay for the look-up.
    private async Task AnswerDuplicateAsync(string deviceId, string? id, string alertId, CancellationToken cancellationToken)
    {
        var stored = await _spool.GetAlertAsync(deviceId, alertId, cancellationToken).ConfigureAwait(false);
        if (stored is { Status: AlertStatus.Rejected } rejected)
        {
            await _receipts.PublishAsync(deviceId, id ?? string.Empty, ReceiptState.Rejected, rejected.Reason ?? string.Empty, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            await _receipts.PublishAsync(deviceId, id ?? string.Empty, ReceiptState.Accepted, "duplicate", cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Retries a rejected alert whose handling failed (reason <c>handling failed: …</c>), once the fault is fixed: its
    /// payload is parsed again as <see cref="IngestAlertAsync"/> parses it. Valid now, the same row becomes a new alert
    /// under the payload's own id (not the digest it was kept under when its id could not be read), with its device
    /// and received time, routed like any other, and the device gets an <c>accepted</c> receipt. Still invalid, it
    /// stays rejected with the new reason. Refused: any other rejection (the payload itself is wrong, and would be
    /// again), a payload cut when it was kept, and an id another alert of the device already has (it would be mailed
    /// twice).
    /// </summary>
    /// <param name="rowId">The alert's row.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>What became of it, with a message for the operator.</returns>
    /// <exception cref="SpoolException">The spool could not read or commit; nothing changed.</exception>
    public async Task<RejectedRetryReport> RetryRejectedAsync(long rowId, CancellationToken cancellationToken)
    {
        if (await _spool.AlertJourneyAsync(rowId, cancellationToken).ConfigureAwait(false) is not { Alert: var stored, Payload: var payload })
        {
            return new(RetryVerdict.NotFound, $"no alert {rowId}");
        }

        string reason = stored.Reason ?? string.Empty;
        if (stored.Status != AlertStatus.Rejected)
        {
            return new(RetryVerdict.Refused, $"alert {rowId} is {stored.Status}, not rejected: only a rejected alert can be retried");
        }

        if (!reason.StartsWith(HandlingFailed, StringComparison.Ordinal))
        {
            return new(RetryVerdict.Refused,
                $"alert {rowId} was rejected for what was sent ({reason}), not because handling it failed: a retry would only reject it again. "
                + "Only an alert rejected with 'handling failed: ...' can be retried; this one needs the device to send a corrected alert");
        }

        if (AlertParser.WasCut(payload, reason))
        {
            return new(RetryVerdict.Refused,
                $"alert {rowId} cannot be retried: only the first {AlertParser.MaxPayloadBytes} bytes of its payload were kept, and an alert is never larger, so it would only be rejected as cut short");
        }

        AlertParseResult parsed = default;
        string? rejected;
        try
        {
            parsed = AlertParser.Parse(payload);
            rejected = parsed.Reason;
        }
        catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
        {
            rejected = ParkingLot.Describe(HandlingStage, ex);
        }

        string alertId = parsed.Alert?.Id ?? stored.AlertId;
        var result = await _spool.RetryRejectedAsync(new RejectedRetry(rowId, reason, alertId, parsed.Alert?.Code, SeverityOf(parsed), rejected), cancellationToken)
            .ConfigureAwait(false);
        switch (result.Outcome)
        {
            case RejectedRetryOutcome.StillRejected:
                LogRetryStillRejected(rowId, stored.AlertId, stored.Device, rejected!);
                return new(RetryVerdict.StillRejected, $"alert {rowId} is still rejected: {rejected}");
            case RejectedRetryOutcome.Duplicate:
                return new(RetryVerdict.Refused,
                    $"alert {rowId} cannot be retried: its payload's id '{alertId}' is that of {stored.Device}'s alert {result.HolderRowId} (the device sent it again), and "
                    + "routing both would mail it twice; it stays rejected");
            case RejectedRetryOutcome.Changed:
                return new(RetryVerdict.Refused, $"alert {rowId} changed while it was retried (retried from elsewhere at the same time?); look at it again");
        }

        LogRetried(rowId, alertId, stored.Device, stored.AlertId);
        try
        {
            await _receipts.PublishAsync(stored.Device, alertId, ReceiptState.Accepted, "retried by the operator", cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            LogAfterStoreFailed(ex, alertId, stored.Device);
        }

        return new(RetryVerdict.Retried, $"alert {rowId} is new again as {alertId}: it is routed like any other", alertId);
    }

    private const string HandlingStage = "handling";

    // How ParkingLot.Describe begins the reason of an alert KeepFailedAsync kept.
    private const string HandlingFailed = HandlingStage + " failed: ";

    private static string? SeverityOf(AlertParseResult parsed) => parsed.Alert is { } a ? Severities.Name(a.Severity) : null;

    // The alert's own id when it can still be read, so that the receipt names it and a retransmission is a duplicate;
    // reading it may be the very thing that failed.
    private static string? IdOf(ReadOnlyMemory<byte> payload)
    {
        try
        {
            return AlertParser.Parse(payload.Span).Id;
        }
#pragma warning disable CA1031 // The alert is kept under its digest instead.
        catch (Exception)
#pragma warning restore CA1031
        {
            return null;
        }
    }

    private void CountReceived(string via, string result) =>
        _metrics.AlertsReceived.Add(1, new KeyValuePair<string, object?>("transport", via == IngestProtocols.Mqtt ? "mqtt" : "smtp"),
            new KeyValuePair<string, object?>("result", result));

    /// <summary>
    /// Records a status heartbeat. A heartbeat whose handling fails for a reason of its own is logged and dropped (the
    /// next one replaces it), so the transport acknowledges it.
    /// </summary>
    /// <param name="deviceId">Device.</param>
    /// <param name="payload">Status JSON.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task completing after commit.</returns>
    /// <exception cref="SpoolException">Not recorded: do not acknowledge.</exception>
    public async Task IngestStatusAsync(string deviceId, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        try
        {
            _presence.HeartbeatSeen(deviceId);
            await _spool.RecordStatusAsync(deviceId, _clock.GetUtcNow(), payload.Length > AlertParser.MaxPayloadBytes ? payload[..AlertParser.MaxPayloadBytes] : payload,
                cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
        {
            LogStatusFailed(ex, deviceId);
        }
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "Handling alert {AlertId} from {Device} failed; keeping it as rejected and acknowledging it, so that the device's later alerts flow: {Reason}")]
    private partial void LogHandlingFailed(Exception ex, string alertId, string device, string reason);

    [LoggerMessage(Level = LogLevel.Error, Message = "Alert {AlertId} from {Device} is stored, but what follows the commit (counting it, its receipt) failed; it is acknowledged all the same")]
    private partial void LogAfterStoreFailed(Exception ex, string alertId, string device);

    [LoggerMessage(Level = LogLevel.Error, Message = "Handling a status heartbeat of {Device} failed; dropped it and acknowledged it")]
    private partial void LogStatusFailed(Exception ex, string device);

    [LoggerMessage(Level = LogLevel.Information, Message = "Rejected alert {RowId} ({AlertId} from {Device}, kept as {KeptAs}) retried by the operator: new again, to be routed")]
    private partial void LogRetried(long rowId, string alertId, string device, string keptAs);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Rejected alert {RowId} ({AlertId} from {Device}) retried by the operator, and rejected again: {Reason}")]
    private partial void LogRetryStillRejected(long rowId, string alertId, string device, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Rejected alert {AlertId} from {Device}: {Reason}")]
    private partial void LogRejected(string device, string alertId, string reason);
}

/// <summary>How a retry of a rejected alert ended (<see cref="AlertIngest.RetryRejectedAsync"/>).</summary>
public enum RetryVerdict
{
    /// <summary>New again: it is routed like any other alert.</summary>
    Retried,

    /// <summary>No such alert.</summary>
    NotFound,

    /// <summary>Not retried, and nothing changed: the message says why.</summary>
    Refused,

    /// <summary>Parsed again and still invalid: it stays rejected with the new reason.</summary>
    StillRejected,
}

/// <summary>How a retry of a rejected alert ended, said for the operator.</summary>
/// <param name="Verdict">The verdict.</param>
/// <param name="Message">What happened, or why not.</param>
/// <param name="AlertId">The alert's id now, when retried.</param>
public sealed record RejectedRetryReport(RetryVerdict Verdict, string Message, string? AlertId = null);
