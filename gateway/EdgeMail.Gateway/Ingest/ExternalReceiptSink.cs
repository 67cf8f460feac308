using EdgeMail.Gateway.Receipts;
using Microsoft.Extensions.Logging;
using MQTTnet;
using MQTTnet.Exceptions;
using MQTTnet.Protocol;

namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// Receipts to devices through the external broker, on the gateway's own connection: QoS 1, up to
/// <see cref="MaxInFlight"/> at once, each given <see cref="Timeout"/> for its PUBACK. While the broker is away, the
/// first receipt waits briefly for the reconnect and the rest are dropped: receipts are a courtesy, and the alert's
/// state stays in the spool.
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
    private int _outageReported;

    /// <summary>Creates the sink on the gateway's connection to the broker.</summary>
    /// <param name="link">The connection.</param>
    /// <param name="clock">Clock for the wait on a reconnect.</param>
    /// <param name="logger">The external client's logger.</param>
    /// <param name="stopping">Cancelled when the gateway stops.</param>
    public ExternalReceiptSink(ExternalBrokerLink link, TimeProvider clock, ILogger logger, CancellationToken stopping)
    {
        _link = link;
        _clock = clock;
        _logger = logger;
        _stopping = stopping;
        _link.Subscribed += (_, _) => Interlocked.Exchange(ref _outageReported, 0);
    }

    /// <inheritdoc />
    public async Task PublishAsync(string deviceId, byte[] payload)
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
                    return;
                }
            }
            else
            {
                return;
            }
        }

        var message = new MqttApplicationMessageBuilder()
            .WithTopic(Topics.Receipt(deviceId))
            .WithPayload(payload)
            .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce)
            .Build();
        await _slots.WaitAsync(_stopping).ConfigureAwait(false);
        _ = PublishOneAsync(deviceId, message);
    }

    /// <inheritdoc />
    public void Dispose() => _slots.Dispose();

    private async Task PublishOneAsync(string deviceId, MqttApplicationMessage message)
    {
        try
        {
            // Without a token MQTTnet waits for the PUBACK forever; several receipts are in flight at once.
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stopping);
            timeout.CancelAfter(Timeout);
            var result = await _link.PublishAsync(message, timeout.Token).ConfigureAwait(false);
            if (!result.IsSuccess)
            {
                LogReceiptRefused(deviceId, result.ReasonCode.ToString(), result.ReasonString ?? string.Empty);
            }
        }
        catch (Exception ex) when (ex is MqttCommunicationException or OperationCanceledException or ObjectDisposedException or InvalidOperationException)
        {
            if (!_stopping.IsCancellationRequested)
            {
                LogReceiptFailed(ex, deviceId);
            }
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

    [LoggerMessage(Level = LogLevel.Warning, Message = "Receipt to {Device} could not be published")]
    private partial void LogReceiptFailed(Exception ex, string device);
}
