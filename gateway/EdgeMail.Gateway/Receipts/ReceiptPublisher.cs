using System.Text.Json;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Receipts;

/// <summary>Receipt states (Contract 1).</summary>
public static class ReceiptState
{
    /// <summary>Durably spooled.</summary>
    public const string Accepted = "accepted";

    /// <summary>Handed to the next hop; detail carries its reply.</summary>
    public const string Relayed = "relayed";

    /// <summary>A transient failure; will retry. Detail carries the reply.</summary>
    public const string Deferred = "deferred";

    /// <summary>Permanently failed or expired.</summary>
    public const string Failed = "failed";

    /// <summary>Malformed; detail carries the reason. Never retried.</summary>
    public const string Rejected = "rejected";
}

/// <summary>Where receipts go (the embedded broker, or an external one).</summary>
public interface IReceiptSink
{
    /// <summary>Publishes a receipt payload to a device's receipt topic (QoS 1, not retained).</summary>
    /// <param name="deviceId">Device.</param>
    /// <param name="payload">Receipt JSON.</param>
    /// <returns>A task completing when handed to the broker.</returns>
    Task PublishAsync(string deviceId, byte[] payload);

    /// <summary>
    /// Whether a receipt for <paramref name="deviceId"/> can reach anyone: the device holds a subscription to its
    /// receipt topic (connected now or in a persistent session). Receipts nobody would receive are not published.
    /// </summary>
    /// <param name="deviceId">Device.</param>
    /// <returns>True when the receipt should be published.</returns>
    bool IsListening(string deviceId) => true;
}

/// <summary>
/// Sends receipts to devices on <c>edgemail/v1/{deviceId}/receipt</c>. Fire and forget from the caller's
/// view: a device that is not subscribed misses the receipt, and the alert's state stays visible in the spool.
/// Receipts are queued and handed to the broker by one background loop, in order, so the PUBACK path and the
/// delivery path never wait for the broker's dispatch; receipts for devices that hold no receipt subscription
/// are not formatted at all.
/// </summary>
public sealed partial class ReceiptPublisher
{
    private readonly Channel<(string Device, byte[] Payload, string State)> _queue =
        Channel.CreateUnbounded<(string, byte[], string)>(new UnboundedChannelOptions { SingleReader = true });

    private readonly Lazy<IReceiptSink> _sink;
    private int _pumpStarted;
    private readonly TimeProvider _clock;
    private readonly ILogger<ReceiptPublisher> _logger;

    /// <summary>Creates the publisher.</summary>
    /// <param name="sink">The broker (lazily: the broker itself depends on ingest, which publishes receipts).</param>
    /// <param name="clock">Clock for the <c>at</c> field.</param>
    /// <param name="logger">Logger.</param>
    public ReceiptPublisher(Lazy<IReceiptSink> sink, TimeProvider clock, ILogger<ReceiptPublisher> logger)
    {
        _sink = sink;
        _clock = clock;
        _logger = logger;
    }

    /// <summary>The receipt JSON: <c>{ "id", "state", "at", "detail" }</c>.</summary>
    /// <param name="alertId">Alert id (empty when the alert had none).</param>
    /// <param name="state">A <see cref="ReceiptState"/>.</param>
    /// <param name="at">When.</param>
    /// <param name="detail">Reply, reason or empty.</param>
    /// <returns>UTF-8 JSON.</returns>
    public static byte[] Format(string alertId, string state, DateTimeOffset at, string detail)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("id", alertId);
            json.WriteString("state", state);
            json.WriteString("at", at.ToUniversalTime().ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", System.Globalization.CultureInfo.InvariantCulture));
            json.WriteString("detail", detail.Length > 512 ? detail[..512] : detail);
            json.WriteEndObject();
        }

        return buffer.ToArray();
    }

    /// <summary>Publishes a receipt without waiting; failures are logged.</summary>
    /// <param name="deviceId">Device.</param>
    /// <param name="alertId">Alert id.</param>
    /// <param name="state">State.</param>
    /// <param name="detail">Detail.</param>
    public void Publish(string deviceId, string alertId, string state, string detail)
    {
        if (!_sink.Value.IsListening(deviceId))
        {
            return;
        }

        _queue.Writer.TryWrite((deviceId, Format(alertId, state, _clock.GetUtcNow(), detail), state));
        if (Interlocked.CompareExchange(ref _pumpStarted, 1, 0) == 0)
        {
            _ = Task.Run(PumpAsync);
        }
    }

    /// <summary>Stops taking receipts; those already queued are still handed to the broker.</summary>
    public void Complete() => _queue.Writer.TryComplete();

    private async Task PumpAsync()
    {
        await foreach (var (device, payload, state) in _queue.Reader.ReadAllAsync().ConfigureAwait(false))
        {
            try
            {
                await _sink.Value.PublishAsync(device, payload).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is InvalidOperationException or OperationCanceledException or ObjectDisposedException or MQTTnet.Exceptions.MqttCommunicationException)
            {
                LogFailed(ex, device, state);
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Receipt '{State}' to {Device} could not be published")]
    private partial void LogFailed(Exception ex, string device, string state);
}
