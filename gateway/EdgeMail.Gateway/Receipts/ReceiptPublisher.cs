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

/// <summary>A receipt the gateway gave, as an alert's journey shows it.</summary>
/// <param name="Device">Device.</param>
/// <param name="AlertId">Alert id.</param>
/// <param name="State">Receipt state.</param>
/// <param name="At">When.</param>
/// <param name="Detail">Detail.</param>
/// <param name="Published">False when the device held no receipt subscription, so it was not sent.</param>
public sealed record SentReceipt(string Device, string AlertId, string State, DateTimeOffset At, string Detail, bool Published);

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
/// Sends receipts to devices on <c>edgemail/v1/{deviceId}/receipt</c>. A device that is not subscribed misses the
/// receipt, and the alert's state stays visible in the spool. Receipts are queued and handed to the broker by one
/// background loop, in order, so the PUBACK path and the delivery path do not wait for the broker's dispatch —
/// until the queue holds <see cref="Capacity"/> receipts: then the caller waits for room (an alert's PUBACK is
/// delayed), so a broker that cannot keep up slows ingest down instead of growing memory. Receipts for devices
/// that hold no receipt subscription are not formatted at all.
/// </summary>
public sealed partial class ReceiptPublisher
{
    /// <summary>Receipts queued before callers wait.</summary>
    public const int Capacity = 4096;

    private readonly Channel<(string Device, byte[] Payload, string State)> _queue =
        Channel.CreateBounded<(string, byte[], string)>(new BoundedChannelOptions(Capacity) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });

    private readonly Lazy<IReceiptSink> _sink;
    private readonly SentReceipt[] _recent = new SentReceipt[RecentCapacity];
    private long _recentCount;
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

    /// <summary>Queues a receipt for publishing; waits only while the queue is full. Publishing failures are logged.</summary>
    /// <param name="deviceId">Device.</param>
    /// <param name="alertId">Alert id.</param>
    /// <param name="state">State.</param>
    /// <param name="detail">Detail.</param>
    /// <param name="cancellationToken">Cancels waiting for room.</param>
    /// <returns>A task completing once the receipt is queued (or dropped because nobody listens or the gateway stops).</returns>
    public ValueTask PublishAsync(string deviceId, string alertId, string state, string detail, CancellationToken cancellationToken = default)
    {
        bool listening = _sink.Value.IsListening(deviceId);
        Remember(new SentReceipt(deviceId, alertId, state, _clock.GetUtcNow(), detail, listening));
        if (!listening)
        {
            return ValueTask.CompletedTask;
        }

        if (Interlocked.CompareExchange(ref _pumpStarted, 1, 0) == 0)
        {
            _ = Task.Run(PumpAsync, CancellationToken.None);
        }

        var item = (deviceId, Format(alertId, state, _clock.GetUtcNow(), detail), state);
        return _queue.Writer.TryWrite(item) ? ValueTask.CompletedTask : WaitForRoomAsync(item, cancellationToken);
    }

    private async ValueTask WaitForRoomAsync((string, byte[], string) item, CancellationToken cancellationToken)
    {
        try
        {
            await _queue.Writer.WriteAsync(item, cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            // Stopping: the alert's state is in the spool; the device asks again by resending or sees it next time.
        }
    }

    /// <summary>Receipts most recently given for one alert (the last <see cref="RecentCapacity"/> receipts are remembered, in memory).</summary>
    /// <param name="deviceId">Device.</param>
    /// <param name="alertId">Alert id.</param>
    /// <returns>Oldest first.</returns>
    public IReadOnlyList<SentReceipt> RecentFor(string deviceId, string alertId)
    {
        var found = new List<SentReceipt>();
        lock (_recent)
        {
            foreach (var r in _recent)
            {
                if (r is not null && r.Device == deviceId && r.AlertId == alertId)
                {
                    found.Add(r);
                }
            }
        }

        return found.OrderBy(r => r.At).ToList();
    }

    private void Remember(SentReceipt receipt)
    {
        lock (_recent)
        {
            _recent[_recentCount++ % RecentCapacity] = receipt;
        }
    }

    /// <summary>How many receipts are remembered for alert journeys.</summary>
    public const int RecentCapacity = 20_000;

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
#pragma warning disable CA1031 // One receipt that cannot be published must not end the pump (and with it every later receipt).
            catch (Exception ex)
#pragma warning restore CA1031
            {
                LogFailed(ex, device, state);
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Receipt '{State}' to {Device} could not be published")]
    private partial void LogFailed(Exception ex, string device, string state);
}
