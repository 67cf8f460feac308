using System.Security.Cryptography;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// What the MQTT (and later SMTP) listeners do with an alert payload: validate it, store it durably (valid or
/// rejected), and tell the device. The caller acknowledges the transport only after this returns; if it throws,
/// nothing is acknowledged and the device retries.
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

    /// <summary>Validates and durably stores one alert, then sends the receipt.</summary>
    /// <param name="deviceId">Authenticated device.</param>
    /// <param name="peer">Remote endpoint.</param>
    /// <param name="payload">The payload.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <param name="via">The protocol it came with, for the Received trace (<see cref="IngestProtocols"/>).</param>
    /// <returns>The spool outcome.</returns>
    /// <exception cref="SpoolFullException">The disk is low: nothing was stored, refuse with back-pressure.</exception>
    public async Task<AcceptOutcome> IngestAlertAsync(string deviceId, string? peer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken, string via = IngestProtocols.Mqtt)
    {
        _presence.Seen(deviceId);
        _disk.ThrowIfLow();
        var parsed = AlertParser.Parse(payload.Span);
        string alertId = parsed.Id ?? "rejected-" + Convert.ToHexStringLower(SHA256.HashData(payload.Span).AsSpan(0, 16));
        var (kept, reason) = parsed.IsValid ? (payload, null) : AlertParser.KeepRejected(payload, parsed.Reason!);
        var incoming = new IncomingAlert(deviceId, alertId, _clock.GetUtcNow(), peer, kept, reason, parsed.Alert?.Code, via,
            parsed.Alert is { } a ? Severities.Name(a.Severity) : null);
        var outcome = await _spool.AcceptAlertAsync(incoming, cancellationToken).ConfigureAwait(false);
        _pressure.Accepted();
        _metrics.AlertsReceived.Add(1, new KeyValuePair<string, object?>("transport", via == IngestProtocols.Mqtt ? "mqtt" : "smtp"),
            new KeyValuePair<string, object?>("result", !parsed.IsValid ? "rejected" : outcome == AcceptOutcome.Duplicate ? "duplicate" : "stored"));
        if (parsed.IsValid)
        {
            await _receipts.PublishAsync(deviceId, alertId, ReceiptState.Accepted, outcome == AcceptOutcome.Duplicate ? "duplicate" : string.Empty, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            LogRejected(deviceId, parsed.Id ?? "(none)", reason!);
            await _receipts.PublishAsync(deviceId, parsed.Id ?? string.Empty, ReceiptState.Rejected, reason!, cancellationToken).ConfigureAwait(false);
        }

        return outcome;
    }

    /// <summary>Records a status heartbeat.</summary>
    /// <param name="deviceId">Device.</param>
    /// <param name="payload">Status JSON.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task completing after commit.</returns>
    public Task IngestStatusAsync(string deviceId, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        _presence.HeartbeatSeen(deviceId);
        return _spool.RecordStatusAsync(deviceId, _clock.GetUtcNow(), payload.Length > AlertParser.MaxPayloadBytes ? payload[..AlertParser.MaxPayloadBytes] : payload, cancellationToken);
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Rejected alert {AlertId} from {Device}: {Reason}")]
    private partial void LogRejected(string device, string alertId, string reason);
}
