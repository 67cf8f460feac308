using System.Buffers;
using System.Text.Json;
using System.Threading.Channels;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

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

/// <summary>
/// One hand-over of a kept receipt to the broker, from the moment the publisher decided to send it. The publisher
/// forgets it when the device's session ends; a copy that had not reached the broker by then must not go into the
/// session that follows, which gets a copy of its own from the replay at its subscription
/// (<see cref="ReceiptPublisher.StillHanded"/>).
/// </summary>
public sealed class ReceiptHand
{
    internal ReceiptHand(ReceiptCopy copy, object record)
    {
        Copy = copy;
        Record = record;
    }

    /// <summary>The copy handed over: device, alert id and state, and the <c>at</c> and detail it says.</summary>
    public ReceiptCopy Copy { get; }

    // The device's record of handed copies it went into (one per session: SessionEnded drops it), and whether it was
    // pushed out of that record by newer copies (Receipts:MaxPerDevice). Under the publisher's custody lock.
    internal object Record { get; }

    internal bool Evicted { get; set; }
}

/// <summary>Where receipts go (the embedded broker, or an external one).</summary>
public interface IReceiptSink
{
    /// <summary>Publishes a receipt payload to a device's receipt topic (QoS 1, not retained).</summary>
    /// <param name="deviceId">Device.</param>
    /// <param name="payload">Receipt JSON.</param>
    /// <param name="kept">
    /// The hand-over of a kept receipt (null for a courtesy one): the sink reports with it a receipt that reached nobody
    /// (<see cref="ReceiptPublisher.NotDelivered"/>), and puts it into a device's session only while
    /// <see cref="ReceiptPublisher.StillHanded"/>.
    /// </param>
    /// <returns>A task completing when handed to the broker.</returns>
    Task PublishAsync(string deviceId, byte[] payload, ReceiptHand? kept);

    /// <summary>
    /// Whether a receipt for <paramref name="deviceId"/> can reach anyone: the device holds a subscription to its
    /// receipt topic (connected now or in a persistent session). Receipts nobody would receive are not published.
    /// </summary>
    /// <param name="deviceId">Device.</param>
    /// <returns>True when the receipt should be published.</returns>
    bool IsListening(string deviceId) => true;
}

/// <summary>
/// Sends receipts to devices on <c>edgemail/v1/{deviceId}/receipt</c>. Receipts are queued and handed to the broker by
/// one background loop, in order, so the PUBACK path and the delivery path do not wait for the broker's dispatch —
/// until the queue holds <see cref="Capacity"/> receipts: then the caller waits for room (an alert's PUBACK is
/// delayed), so a broker that cannot keep up slows ingest down instead of growing memory. Receipts for devices
/// that hold no receipt subscription are not formatted at all.
/// <para>
/// <c>accepted</c>, <c>deferred</c> and <c>rejected</c> are courtesies: a device that is not subscribed misses them. The
/// final ones (<c>failed</c>, <c>relayed</c>) are kept in the spool (<see cref="KeptReceipt"/>) until delivered: handed
/// to the broker at most once per session (<see cref="PublishKeptAsync"/>, <see cref="ReplayAsync"/>), removed from the
/// spool when the device's PUBACK for it comes back (<see cref="Acknowledged"/>; with an external broker, the broker's
/// PUBACK) or, for a device subscribed at QoS 0, when it goes into the connected device's session
/// (<see cref="DeliveredAtMostOnce"/>), and handed again when the device subscribes after its session was lost (a
/// gateway restart, a clean session).
/// See docs/spool.md, "Kept receipts".
/// </para>
/// </summary>
public sealed partial class ReceiptPublisher : IDisposable
{
    /// <summary>Receipts queued before callers wait.</summary>
    public const int Capacity = 4096;

    private const int ReplayPage = 256;
    private static readonly TimeSpan RemovalRetry = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan ReplayAfterNotDelivered = TimeSpan.FromSeconds(1);

    private readonly Channel<Outgoing> _queue =
        Channel.CreateBounded<Outgoing>(new BoundedChannelOptions(Capacity) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });

    private readonly Lazy<IReceiptSink> _sink;
    private readonly SentReceipt[] _recent = new SentReceipt[RecentCapacity];
    private long _recentCount;
    private int _pumpStarted;
    private readonly TimeProvider _clock;
    private readonly ILogger<ReceiptPublisher> _logger;
    private readonly ISpool _spool;
    private readonly ReceiptOptions _options;
    private readonly CancellationTokenSource _stopping = new();

    // Kept receipts handed to the broker and not acknowledged yet, by device: what the device's session (or the external
    // broker) holds or is about to, so a replay does not send them twice. Forgotten with the session (SessionEnded), and
    // empty after a restart, which is when a replay sends them again. Each with its hand-over: a copy on its way when the
    // session ended is no longer the one counted on, and must neither reach the next session nor release the copy the
    // replay gave it. By copy, not by (alert, state): a receipt that replaced its row while an older copy is on its way
    // (a cancel's 'failed' after the parked item's) is news the device must get, so it is handed over beside that copy.
    // In hand-over order, at most Receipts:MaxPerDevice per device (TryHand).
    private readonly Dictionary<string, OrderedDictionary<ReceiptCopy, ReceiptHand>> _handed = new(StringComparer.Ordinal);

    // Acknowledged, their removal from the spool not committed yet: a replay meanwhile must not send them again.
    private readonly HashSet<ReceiptCopy> _removing = [];
    private readonly Lock _custody = new();
    private readonly Channel<ReceiptCopy> _acked = Channel.CreateUnbounded<ReceiptCopy>(new UnboundedChannelOptions { SingleReader = true });

    private int _removerStarted;
    private int _disposed;

    /// <summary>Creates the publisher.</summary>
    /// <param name="sink">The broker (lazily: the broker itself depends on ingest, which publishes receipts).</param>
    /// <param name="clock">Clock for the <c>at</c> field.</param>
    /// <param name="logger">Logger.</param>
    /// <param name="spool">Where final receipts are kept until delivered.</param>
    /// <param name="options">Gateway options (<c>Receipts</c>).</param>
    public ReceiptPublisher(Lazy<IReceiptSink> sink, TimeProvider clock, ILogger<ReceiptPublisher> logger, ISpool spool, IOptions<GatewayOptions> options)
    {
        ArgumentNullException.ThrowIfNull(options);
        _sink = sink;
        _clock = clock;
        _logger = logger;
        _spool = spool;
        _options = options.Value.Receipts;
    }

    /// <summary>Most receipts kept per device (<c>Receipts:MaxPerDevice</c>).</summary>
    public int MaxPerDevice => _options.MaxPerDevice;

    /// <summary>Raised after kept receipts were removed from the spool because they were delivered (tests).</summary>
    public event Action<int>? Removed;

    /// <summary>Raised when a replay for a device that subscribed has finished, with how many receipts it handed over (tests).</summary>
    public event Action<string, int>? ReplayFinished;

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

        return Enqueue(new Outgoing(deviceId, Format(alertId, state, _clock.GetUtcNow(), detail), state, null), cancellationToken);
    }

    /// <summary>
    /// Queues a final receipt the spool keeps already (committed with the delivery result): handed to the broker now if
    /// the device listens and its session does not hold it yet; otherwise left in the spool for <see cref="ReplayAsync"/>.
    /// </summary>
    /// <param name="receipt">The kept receipt.</param>
    /// <param name="cancellationToken">Cancels waiting for room.</param>
    /// <returns>A task completing once the receipt is queued or left to a replay.</returns>
    public ValueTask PublishKeptAsync(KeptReceipt receipt, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(receipt);
        bool listening = _sink.Value.IsListening(receipt.Device);
        Remember(new SentReceipt(receipt.Device, receipt.AlertId, receipt.State, receipt.At, receipt.Detail, listening));
        return listening && TryHand(receipt.Copy) is { } hand ? Enqueue(Outgoing.Of(receipt, hand), cancellationToken) : ValueTask.CompletedTask;
    }

    /// <summary>Keeps a final receipt in the spool (outside a delivery commit: a parked item), then publishes it as <see cref="PublishKeptAsync"/>.</summary>
    /// <param name="receipt">The receipt.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task completing once it is kept and queued.</returns>
    public async Task KeepAndPublishAsync(KeptReceipt receipt, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(receipt);
        try
        {
            await _spool.KeepReceiptAsync(receipt, _options.MaxPerDevice, cancellationToken).ConfigureAwait(false);
        }
        catch (SpoolException ex)
        {
            // The item itself is safe where it is (parked, with its reason, and the operator told); the device gets the
            // receipt now if it listens, only not again after a restart.
            LogKeepFailed(ex, receipt.Device, receipt.AlertId);
        }

        await PublishKeptAsync(receipt, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Hands the kept receipts of <paramref name="deviceId"/> (or of every device) to the broker again, those its session
    /// does not hold: called when a device subscribes to its receipts (embedded broker) or when the gateway's link to an
    /// external broker is subscribed again, and by the external broker's sweep for receipts stored before a time.
    /// </summary>
    /// <param name="deviceId">The device; null for all.</param>
    /// <param name="storedBefore">Only receipts stored before this (null: all).</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>How many were handed to the broker.</returns>
    public async Task<int> ReplayAsync(string? deviceId, DateTimeOffset? storedBefore, CancellationToken cancellationToken)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _stopping.Token);
        int handed = 0;
        long after = 0;
        while (true)
        {
            var page = await _spool.KeptReceiptsAsync(deviceId, after, storedBefore, ReplayPage, linked.Token).ConfigureAwait(false);
            foreach (var stored in page)
            {
                after = stored.RowId;
                var r = stored.Receipt;
                if (!_sink.Value.IsListening(r.Device) || TryHand(r.Copy) is not { } hand)
                {
                    continue;
                }

                Remember(new SentReceipt(r.Device, r.AlertId, r.State, _clock.GetUtcNow(), r.Detail, true));
                await Enqueue(Outgoing.Of(r, hand), linked.Token).ConfigureAwait(false);
                handed++;
            }

            if (page.Count < ReplayPage)
            {
                return handed;
            }
        }
    }

    /// <summary>Starts <see cref="ReplayAsync"/> for one device in the background (from a broker's event handler, which must not wait).</summary>
    /// <param name="deviceId">The device.</param>
    public void ReplayInBackground(string deviceId) => _ = ReplaySafelyAsync(deviceId, TimeSpan.Zero);

    /// <summary>
    /// A receipt publish was acknowledged: by the device (embedded broker: its PUBACK) or by the external broker, which
    /// holds it for the device from then on. A kept receipt is removed from the spool, if its row still holds that copy.
    /// </summary>
    /// <param name="deviceId">The device.</param>
    /// <param name="payload">The receipt JSON that was acknowledged.</param>
    public void Acknowledged(string deviceId, ReadOnlySequence<byte> payload)
    {
        lock (_custody)
        {
            if (!_handed.ContainsKey(deviceId))
            {
                return; // no kept receipt in flight for it: a courtesy receipt
            }
        }

        if (!TryReadCopy(deviceId, payload, out var copy))
        {
            return;
        }

        lock (_custody)
        {
            if (!Delivered(copy))
            {
                return;
            }
        }

        QueueRemoval(copy);
    }

    /// <summary>
    /// A kept receipt went into the session of a device that is connected and subscribed at QoS 0: that is its
    /// delivery, as the device asked (at most once, never acknowledged). It is forgotten and removed from the spool as
    /// an acknowledged one is; waiting for a PUBACK that never comes held it in memory for the session's life.
    /// </summary>
    /// <param name="kept">The hand-over.</param>
    public void DeliveredAtMostOnce(ReceiptHand kept)
    {
        ArgumentNullException.ThrowIfNull(kept);
        lock (_custody)
        {
            if (!IsCurrent(kept) || !Delivered(kept.Copy))
            {
                return;
            }
        }

        QueueRemoval(kept.Copy);
    }

    // Under _custody: a handed copy was delivered; it leaves custody and is on its way out of the spool.
    private bool Delivered(ReceiptCopy copy)
    {
        if (!_handed.TryGetValue(copy.Device, out var held) || !held.Remove(copy))
        {
            return false;
        }

        if (held.Count == 0)
        {
            _handed.Remove(copy.Device);
        }

        _removing.Add(copy);
        return true;
    }

    /// <summary>
    /// A kept receipt was not put into the device's session because it would not survive there (QoS 0 to a device that
    /// is away: MQTTnet empties that queue when the device resumes the session). It stays in the spool, no longer
    /// counted as handed, for the replay when the device connects or subscribes again.
    /// </summary>
    /// <param name="kept">The hand-over.</param>
    public void Withheld(ReceiptHand kept)
    {
        ArgumentNullException.ThrowIfNull(kept);
        Release(kept);
    }

    private void QueueRemoval(ReceiptCopy copy)
    {
        _acked.Writer.TryWrite(copy);
        if (Interlocked.CompareExchange(ref _removerStarted, 1, 0) == 0)
        {
            _ = Task.Run(RemoveDeliveredAsync, CancellationToken.None);
        }
    }

    /// <summary>
    /// A receipt publish reached nobody (no subscription at that moment) or failed: a kept one is handed again by the
    /// next replay, started here after a moment if the device listens (its subscription may have been completing).
    /// </summary>
    /// <param name="kept">The kept receipt's hand-over; null for a courtesy receipt, which is simply lost.</param>
    public void NotDelivered(ReceiptHand? kept)
    {
        if (kept is null || !Release(kept))
        {
            return; // a courtesy receipt, or a copy no longer counted on: the one that is goes its own way
        }

        if (_sink.Value.IsListening(kept.Copy.Device))
        {
            _ = ReplaySafelyAsync(kept.Copy.Device, ReplayAfterNotDelivered);
        }
    }

    /// <summary>
    /// Whether <paramref name="kept"/> is still the copy of its receipt that the publisher counts on: false once the
    /// device's session ended after it was handed over (<see cref="SessionEnded"/>). The embedded broker asks this after
    /// it found the device's session and before it puts the receipt into it: the gateway forgets what a session held
    /// before MQTTnet puts a clean session in its place, so a copy still counted on goes into the session it was handed
    /// for (or one the device resumed), and a copy from before a session ended does not reach the new one, which gets
    /// its own at its subscription.
    /// </summary>
    /// <param name="kept">The hand-over.</param>
    /// <returns>True while it is counted on.</returns>
    public bool StillHanded(ReceiptHand kept)
    {
        ArgumentNullException.ThrowIfNull(kept);
        lock (_custody)
        {
            // One pushed out of the record by newer copies still goes into the session it was handed for.
            return IsCurrent(kept) || (kept.Evicted && _handed.TryGetValue(kept.Copy.Device, out var held) && ReferenceEquals(held, kept.Record));
        }
    }

    /// <summary>
    /// The external broker took a receipt but had no subscription for it (MQTT 5 NoMatchingSubscribers): nobody holds
    /// it, so a kept one stays in the spool. It is handed again by the next replay (the link subscribed again, the
    /// sweep), not at once: the gateway cannot see when the device subscribes, and would otherwise publish it every
    /// second until then.
    /// </summary>
    /// <param name="kept">The kept receipt's hand-over; null for a courtesy receipt.</param>
    public void NobodySubscribed(ReceiptHand? kept)
    {
        if (kept is not null)
        {
            Release(kept);
        }
    }

    /// <summary>The broker dropped the device's session (a clean session, a deleted session): what it held is handed again at the next subscription.</summary>
    /// <param name="deviceId">The device.</param>
    public void SessionEnded(string deviceId)
    {
        lock (_custody)
        {
            _handed.Remove(deviceId);
        }
    }

    /// <summary>Kept receipts handed to the broker and not acknowledged yet (tests, diagnostics).</summary>
    /// <returns>The count.</returns>
    public int InFlight()
    {
        lock (_custody)
        {
            return _handed.Values.Sum(s => s.Count);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        // The console's container forwards this instance and disposes it too.
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }

        _stopping.Cancel();
        _acked.Writer.TryComplete();
        _stopping.Dispose();
    }

    private ReceiptHand? TryHand(ReceiptCopy copy)
    {
        lock (_custody)
        {
            if (_removing.Contains(copy))
            {
                return null;
            }

            if (!_handed.TryGetValue(copy.Device, out var held))
            {
                _handed[copy.Device] = held = new();
            }

            if (held.ContainsKey(copy))
            {
                return null;
            }

            var hand = new ReceiptHand(copy, held);
            held.Add(copy, hand);

            // A device away in its persistent session at QoS 1 acknowledges nothing until it is back, and MQTTnet keeps
            // the copies it queued for it (dropping its oldest past its own limit): the record grew by one per receipt
            // for as long as the session lived, though the spool keeps only the newest Receipts:MaxPerDevice of them. It
            // keeps as many, the newest. An older copy's PUBACK then removes nothing (its row is trimmed, or is handed
            // again at a later subscription: at least once), and one still on its way goes into the session all the same.
            while (held.Count > Math.Max(1, _options.MaxPerDevice))
            {
                held.GetAt(0).Value.Evicted = true;
                held.RemoveAt(0);
            }

            return hand;
        }
    }

    // Only the copy counted on is released: a stale one's failure says nothing about the copy that replaced it.
    private bool Release(ReceiptHand kept)
    {
        lock (_custody)
        {
            if (!IsCurrent(kept))
            {
                return false;
            }

            var held = _handed[kept.Copy.Device];
            held.Remove(kept.Copy);
            if (held.Count == 0)
            {
                _handed.Remove(kept.Copy.Device);
            }

            return true;
        }
    }

    private bool IsCurrent(ReceiptHand kept) =>
        _handed.TryGetValue(kept.Copy.Device, out var held) && held.TryGetValue(kept.Copy, out var current) && ReferenceEquals(current, kept);

    private async Task ReplaySafelyAsync(string deviceId, TimeSpan after)
    {
        try
        {
            if (after > TimeSpan.Zero)
            {
                await Task.Delay(after, _clock, _stopping.Token).ConfigureAwait(false);
            }

            int handed = await ReplayAsync(deviceId, null, _stopping.Token).ConfigureAwait(false);
            if (handed > 0)
            {
                LogReplayed(handed, deviceId);
            }

            ReplayFinished?.Invoke(deviceId, handed);
        }
        catch (OperationCanceledException)
        {
            // Stopping: the receipts stay kept; the next start replays them.
        }
        catch (ObjectDisposedException)
        {
            // Stopped meanwhile.
        }
        catch (SpoolException ex)
        {
            LogReplayFailed(ex, deviceId);
        }
        catch (Exception ex) when (ParkingLot.Contains(ex, _stopping.Token))
        {
            // Started without anyone awaiting it: a surprise here must be seen, not left to the finalizer.
            LogReplayBroke(ex, deviceId);
        }
    }

    // Removals are batched: acknowledgements come from many connections at once, each one commit would cost a write.
    private async Task RemoveDeliveredAsync()
    {
        var batch = new List<ReceiptCopy>();
        try
        {
            while (await _acked.Reader.WaitToReadAsync().ConfigureAwait(false))
            {
                batch.Clear();
                while (batch.Count < ReplayPage && _acked.Reader.TryRead(out var copy))
                {
                    batch.Add(copy);
                }

                while (true)
                {
                    try
                    {
                        int removed = await _spool.RemoveReceiptsAsync(batch, _stopping.Token).ConfigureAwait(false);
                        lock (_custody)
                        {
                            _removing.ExceptWith(batch);
                        }

                        Removed?.Invoke(removed);
                        break;
                    }
                    catch (SpoolException ex)
                    {
                        // Still kept: were the gateway to stop now, the device would get them once more (QoS 1 allows it).
                        LogRemoveFailed(ex, batch.Count);
                        await Task.Delay(RemovalRetry, _clock, _stopping.Token).ConfigureAwait(false);
                    }
                    catch (Exception ex) when (ParkingLot.Contains(ex, _stopping.Token))
                    {
                        // Not retried (it would fail the same way): the batch stays kept and is handed again at the
                        // device's next subscription; the remover goes on with the next acknowledgements.
                        LogRemoveBroke(ex, batch.Count);
                        lock (_custody)
                        {
                            _removing.ExceptWith(batch);
                        }

                        break;
                    }
                }
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
        {
            // Stopping: acknowledged receipts not removed yet are sent once more after the restart.
        }
    }

    /// <summary>Reads which copy of a kept receipt a payload is: its <c>id</c>, <c>state</c>, <c>at</c> and <c>detail</c> (the gateway's own JSON).</summary>
    internal static bool TryReadCopy(string deviceId, ReadOnlySequence<byte> payload, out ReceiptCopy copy)
    {
        copy = default;
        string? id = null, state = null, detail = null;
        DateTimeOffset? at = null;
        try
        {
            var json = new Utf8JsonReader(payload);
            while (json.Read() && (id is null || state is null || at is null || detail is null))
            {
                if (json.TokenType == JsonTokenType.PropertyName && json.CurrentDepth == 1)
                {
                    bool isId = json.ValueTextEquals("id"u8), isState = json.ValueTextEquals("state"u8);
                    bool isAt = json.ValueTextEquals("at"u8), isDetail = json.ValueTextEquals("detail"u8);
                    json.Read();
                    if (json.TokenType != JsonTokenType.String)
                    {
                        continue;
                    }

                    if (isId)
                    {
                        id = json.GetString();
                    }
                    else if (isState)
                    {
                        state = json.GetString();
                    }
                    else if (isAt && json.TryGetDateTimeOffset(out var value))
                    {
                        at = value;
                    }
                    else if (isDetail)
                    {
                        detail = json.GetString();
                    }
                }
            }
        }
        catch (JsonException)
        {
            return false;
        }

        if (id is null || state is null || at is null || detail is null)
        {
            return false;
        }

        copy = new ReceiptCopy(deviceId, id, state, at.Value.ToUnixTimeMilliseconds(), detail);
        return true;
    }

    private ValueTask Enqueue(Outgoing item, CancellationToken cancellationToken)
    {
        if (Interlocked.CompareExchange(ref _pumpStarted, 1, 0) == 0)
        {
            _ = Task.Run(PumpAsync, CancellationToken.None);
        }

        return _queue.Writer.TryWrite(item) ? ValueTask.CompletedTask : WaitForRoomAsync(item, cancellationToken);
    }

    private async ValueTask WaitForRoomAsync(Outgoing item, CancellationToken cancellationToken)
    {
        try
        {
            await _queue.Writer.WriteAsync(item, cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            // Stopping: the alert's state is in the spool; the device asks again by resending or sees it next time.
            if (item.Kept is { } hand)
            {
                Release(hand);
            }
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
        await foreach (var (device, payload, state, kept) in _queue.Reader.ReadAllAsync().ConfigureAwait(false))
        {
            try
            {
                await _sink.Value.PublishAsync(device, payload, kept).ConfigureAwait(false);
            }
#pragma warning disable CA1031 // One receipt that cannot be published must not end the pump (and with it every later receipt).
            catch (Exception ex)
#pragma warning restore CA1031
            {
                LogFailed(ex, device, state);
                if (kept is not null)
                {
                    Release(kept); // still kept: the next replay hands it again
                }
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Receipt '{State}' to {Device} could not be published")]
    private partial void LogFailed(Exception ex, string device, string state);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The final receipt for alert {AlertId} of {Device} could not be kept in the spool; it is sent now if the device listens, but not again after a restart")]
    private partial void LogKeepFailed(Exception ex, string device, string alertId);

    [LoggerMessage(Level = LogLevel.Information, Message = "Handed {Count} kept receipt(s) to {Device} again")]
    private partial void LogReplayed(int count, string device);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Kept receipts for {Device} could not be read from the spool; they go at its next subscription")]
    private partial void LogReplayFailed(Exception ex, string device);

    [LoggerMessage(Level = LogLevel.Error, Message = "Handing kept receipts to {Device} failed unexpectedly; they go at its next subscription")]
    private partial void LogReplayBroke(Exception ex, string device);

    [LoggerMessage(Level = LogLevel.Error, Message = "{Count} delivered receipt(s) could not be removed from the spool (unexpected failure); they stay kept")]
    private partial void LogRemoveBroke(Exception ex, int count);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Count} delivered receipt(s) could not be removed from the spool; retrying")]
    private partial void LogRemoveFailed(Exception ex, int count);

    private sealed record Outgoing(string Device, byte[] Payload, string State, ReceiptHand? Kept)
    {
        public static Outgoing Of(KeptReceipt r, ReceiptHand hand) => new(r.Device, Format(r.AlertId, r.State, r.At, r.StoredDetail), r.State, hand);
    }
}
