using EdgeMail.Gateway.Receipts;
using Microsoft.Extensions.Logging;
using MQTTnet;
using MQTTnet.Exceptions;
using MQTTnet.Protocol;

namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// Receipts to devices through the external broker, on the gateway's own connection: QoS 1, up to
/// <see cref="MaxInFlight"/> at once, each given <see cref="Timeout"/> for its PUBACK. While the broker is away, the
/// first receipt waits briefly for the reconnect and the rest are dropped: courtesy receipts are lost then, and the
/// alert's state stays in the spool. A final receipt is kept in the spool until the broker's PUBACK for it: from then on
/// the broker holds it for the device (in the device's persistent session, which the broker keeps across the device's
/// absence and, with its own persistence, across its restarts). One dropped, unacknowledged, or answered (MQTT 5)
/// with no matching subscribers is handed again when the gateway's link is subscribed again, and by <see cref="SweepAsync"/>.
/// </summary>
internal sealed partial class ExternalReceiptSink : IReceiptSink, IDisposable
{
    private const int MaxInFlight = 64;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan WaitForConnection = TimeSpan.FromSeconds(2);

    private readonly ExternalBrokerLink _link;
    private readonly TimeProvider _clock;
    private readonly ILogger _logger;
    private readonly CancellationToken _stopping;
    private readonly SemaphoreSlim _slots = new(MaxInFlight, MaxInFlight);
    private readonly ReceiptPublisher _receipts;
    private int _outageReported;

    /// <summary>Creates the sink on the gateway's connection to the broker.</summary>
    /// <param name="link">The connection.</param>
    /// <param name="clock">Clock for the wait on a reconnect.</param>
    /// <param name="logger">The external client's logger.</param>
    /// <param name="stopping">Cancelled when the gateway stops.</param>
    /// <param name="receipts">Told which receipts the broker took or did not, and asked to hand kept ones again.</param>
    public ExternalReceiptSink(ExternalBrokerLink link, TimeProvider clock, ILogger logger, CancellationToken stopping, ReceiptPublisher receipts)
    {
        _link = link;
        _clock = clock;
        _logger = logger;
        _stopping = stopping;
        _receipts = receipts;
        _link.Subscribed += (_, _) =>
        {
            Interlocked.Exchange(ref _outageReported, 0);
            _ = ReplayAsync(null);
        };
    }

    /// <summary>How often, and for receipts stored how long ago, <see cref="SweepAsync"/> hands kept receipts again.</summary>
    public static readonly TimeSpan SweepInterval = TimeSpan.FromMinutes(1);

    /// <summary>
    /// Until stopped, every <see cref="SweepInterval"/> while connected, hands again the kept receipts stored more than that
    /// long ago that no broker took: those of an instance that died between its commit and its publish (on a shared spool,
    /// any instance sweeps), or whose publish timed out.
    /// </summary>
    /// <returns>A task ending when the gateway stops.</returns>
    public async Task SweepAsync()
    {
        try
        {
            while (true)
            {
                await Task.Delay(SweepInterval, _clock, _stopping).ConfigureAwait(false);
                if (_link.IsConnected)
                {
                    await ReplayAsync(_clock.GetUtcNow() - SweepInterval).ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException)
        {
            // Stopping.
        }
    }

    private async Task ReplayAsync(DateTimeOffset? storedBefore)
    {
        try
        {
            await _receipts.ReplayAsync(null, storedBefore, _stopping).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is Spool.SpoolException or OperationCanceledException or ObjectDisposedException)
        {
            if (!_stopping.IsCancellationRequested)
            {
                LogReplayFailed(ex);
            }
        }
    }

    /// <inheritdoc />
    public async Task PublishAsync(string deviceId, byte[] payload, ReceiptHand? kept)
    {
        if (!_link.IsConnected)
        {
            bool first = Interlocked.Exchange(ref _outageReported, 1) == 0;
            if (first)
            {
                try
                {
                    await _link.Connected.WaitAsync(WaitForConnection, _clock, _stopping).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is TimeoutException or OperationCanceledException)
                {
                    LogReceiptsDropped(deviceId);
                    _receipts.NotDelivered(kept);
                    return;
                }
            }
            else
            {
                _receipts.NotDelivered(kept);
                return;
            }
        }

        var message = new MqttApplicationMessageBuilder()
            .WithTopic(Topics.Receipt(deviceId))
            .WithPayload(payload)
            .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce)
            .Build();
        await _slots.WaitAsync(_stopping).ConfigureAwait(false);
        _ = PublishOneAsync(deviceId, message, kept);
    }

    /// <inheritdoc />
    public void Dispose() => _slots.Dispose();

    private async Task PublishOneAsync(string deviceId, MqttApplicationMessage message, ReceiptHand? kept)
    {
        try
        {
            // Without a token MQTTnet waits for the PUBACK forever; several receipts are in flight at once.
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stopping);
            timeout.CancelAfter(Timeout);
            var result = await _link.PublishAsync(message, timeout.Token).ConfigureAwait(false);
            if (result.ReasonCode == MqttClientPublishReasonCode.Success)
            {
                _receipts.Acknowledged(deviceId, message.Payload); // the broker holds it for the device now
            }
            else if (result.ReasonCode == MqttClientPublishReasonCode.NoMatchingSubscribers)
            {
                // MQTTnet counts this as success (IsSuccess), but the broker dropped the receipt: nobody holds it.
                _receipts.NobodySubscribed(kept);
            }
            else
            {
                LogReceiptRefused(deviceId, result.ReasonCode.ToString(), result.ReasonString ?? string.Empty);
                _receipts.NotDelivered(kept);
            }
        }
        catch (Exception ex) when (ex is MqttCommunicationException or OperationCanceledException or ObjectDisposedException or InvalidOperationException)
        {
            if (!_stopping.IsCancellationRequested)
            {
                LogReceiptFailed(ex, deviceId);
            }

            _receipts.NotDelivered(kept);
        }
        finally
        {
            try
            {
                _slots.Release();
            }
            catch (ObjectDisposedException)
            {
                // Stopped meanwhile.
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "The external MQTT broker is not connected; receipts (first for {Device}) are dropped until it is back")]
    private partial void LogReceiptsDropped(string device);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The external MQTT broker refused a receipt to {Device}: {ReasonCode} {ReasonString}; allow the gateway to write edgemail/v1/+/receipt in its ACL")]
    private partial void LogReceiptRefused(string device, string reasonCode, string reasonString);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Kept receipts could not be read from the spool to hand them to the broker again; the next sweep tries again")]
    private partial void LogReplayFailed(Exception ex);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Receipt to {Device} could not be published")]
    private partial void LogReceiptFailed(Exception ex, string device);
}
