using System;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Uplink.Mqtt;

namespace EdgeMail.Firmware.Uplink;

/// <summary>
/// Store-and-forward over MQTT: takes alerts from the <see cref="AlertStore"/> in order, publishes each as QoS 1
/// (tag = its flash sequence number) and acknowledges the store only when the gateway has sent PUBACK, in order.
/// A state machine (offline → connecting → sending ⇄ idle, and backoff with seeded full jitter after a failure)
/// driven by <see cref="Step"/>: no threads inside, nothing allocated per alert. On connect it subscribes to the
/// device's receipt topic and publishes a retained status heartbeat (again every
/// <see cref="ForwarderOptions.HeartbeatIntervalMs"/>); receipts set the <see cref="WallClock"/> when the device has
/// no RTC (an unknown clock only from a receipt that cannot be old, see <see cref="IMqttClientHandler.OnMessageReceived"/>).
/// In duty-cycled mode it connects on a schedule, or at once for a critical alert, drains the queue and
/// disconnects.
/// </summary>
/// <remarks>
/// Link failures are handled inside (they lead to backoff); any other exception — notably a power loss from the flash
/// below the store — passes through, and the device reboots and mounts the queue again: what was not acknowledged is
/// sent again under the same alert id, and the gateway de-duplicates. Not thread-safe: call <see cref="Step"/> from
/// one thread (raising alerts from other threads is fine; the store is thread-safe).
/// </remarks>
public sealed class Forwarder : IMqttClientHandler
{
    private const int MaxBackoffDoublings = 30;

    private readonly AlertStore _store;
    private readonly IClock _clock;
    private readonly WallClock _wall;
    private readonly ForwarderOptions _options;
    private readonly MqttClient _client;
    private readonly ForwarderRandom _random;
    private readonly DeviceStatus _status = new DeviceStatus();
    private readonly StatusPayload _statusPayload;
    // The alert being sent, held as its record (≤ 1.5 KiB); its JSON (up to 4 KiB) is streamed through the MQTT
    // client's send buffer and never held whole.
    private readonly OutgoingAlert _outgoing;
    private readonly string _alertTopic;
    private readonly string _statusTopic;
    private readonly string _receiptTopic;
    private readonly uint[] _pendingSeq;
    private readonly bool[] _pendingAcked;
    private readonly long[] _resendTags;
    private int _pendingCount;
    private int _resendCount;
    private int _resendIndex;
    private bool _held;
    private uint _heldSeq;
    private bool _drained;
    private int _attempt;
    private long _nextAttemptMs;
    private long _nextWakeMs;
    private long _nextHeartbeatMs;
    private long _connectedSinceMs;
    private long _drainedSinceMs;
    private bool _wakeRequested;
    private bool _started;
    private bool _linkUp;

    // Receipts may be old: queued by the broker while the device was off or out of reach, or kept by the gateway and
    // handed over again on subscribe. One about an alert that this boot first published on the current connection
    // was written after that connection came up, so only such a receipt may set an unknown clock. Alert ids at or
    // above _freshIdFrom were raised this boot and not published before the current connection.
    private uint _wireIdHigh;
    private uint _freshIdFrom = uint.MaxValue;

    /// <summary>Creates the forwarder; nothing happens until <see cref="Step"/>.</summary>
    /// <param name="store">The alert store to drain.</param>
    /// <param name="transport">The byte stream to the gateway (TCP, TLS, a simulated link).</param>
    /// <param name="clock">Monotonic time.</param>
    /// <param name="wall">Wall-clock time; set from receipts unless <see cref="ForwarderOptions.HasRtc"/>.</param>
    /// <param name="options">Identity, gateway address, retry and heartbeat settings; read once, here.</param>
    public Forwarder(AlertStore store, ITransport transport, IClock clock, WallClock wall, ForwarderOptions options)
    {
        if (store == null || transport == null || clock == null || wall == null || options == null)
        {
            throw new ArgumentNullException(store == null ? nameof(store) : transport == null ? nameof(transport) : clock == null ? nameof(clock) : wall == null ? nameof(wall) : nameof(options));
        }

        if (options.DeviceId == null || !DeviceIds.IsValid(options.DeviceId))
        {
            // It is the client id, the user name and a level of every topic: '/', '+' or '#' in it would name other
            // topics (a '+' in the receipt subscription matches every device's), and the gateway refuses such an id anyway.
            throw new ArgumentException("DeviceId '" + options.DeviceId + "' " + DeviceIds.Rule, nameof(options));
        }

        if (options.BackoffBaseMs < 1 || options.BackoffMaxMs < options.BackoffBaseMs)
        {
            throw new ArgumentException("BackoffBaseMs must be at least 1 and BackoffMaxMs at least BackoffBaseMs.", nameof(options));
        }

        _store = store;
        _clock = clock;
        _wall = wall;
        _options = options;
        _random = new ForwarderRandom(options.JitterSeed);
        var json = new JsonOutput(); // alert and status JSON are written one after the other, on this thread
        _outgoing = new OutgoingAlert(json);
        _statusPayload = new StatusPayload(new StatusJsonWriter(json));
        _alertTopic = "edgemail/v1/" + options.DeviceId + "/alert";
        _statusTopic = "edgemail/v1/" + options.DeviceId + "/status";
        _receiptTopic = "edgemail/v1/" + options.DeviceId + "/receipt";
        _pendingSeq = new uint[options.MaxInFlight];
        _pendingAcked = new bool[options.MaxInFlight];
        _resendTags = new long[options.MaxInFlight];
        _status.FirmwareVersion = options.FirmwareVersion;
        _client = new MqttClient(transport, clock, new MqttClientOptions
        {
            ClientId = options.DeviceId,
            UserName = options.DeviceId,
            Password = options.Secret,
            CleanSession = false,
            KeepAliveSeconds = options.KeepAliveSeconds,
            ConnectTimeoutMs = options.ConnectTimeoutMs,
            ResponseTimeoutMs = options.ConnectTimeoutMs,
            SendTimeoutMs = options.ConnectTimeoutMs,
            AckTimeoutMs = options.AckTimeoutMs,
            MaxInFlight = options.MaxInFlight,
            SendBufferSize = options.SendBufferSize,
            ReceiveBufferSize = options.ReceiveBufferSize,
        }, this);
    }

    /// <summary>Where the forwarder is in its cycle.</summary>
    public ForwarderState State { get; private set; }

    /// <summary>
    /// The status the heartbeat reports. The forwarder fills boot, uptime and queue depth; the application sets the
    /// rest (battery, RSSI, flash wear, dropped) whenever it likes.
    /// </summary>
    public DeviceStatus Status => _status;

    /// <summary>This boot's number, for the heartbeat.</summary>
    public uint Boot
    {
        get => _status.Boot;
        set => _status.Boot = value;
    }

    /// <summary>Every alert up to this flash sequence number is acknowledged by the gateway (this boot; 0 before the first).</summary>
    public uint AcknowledgedThrough { get; private set; }

    /// <summary>Alerts published for the first time on a connection.</summary>
    public long Published { get; private set; }

    /// <summary>Alerts published again after a reconnect (DUP, same packet id) or a reboot-time resend of a known tag.</summary>
    public long Resent { get; private set; }

    /// <summary>PUBACKs received for alerts.</summary>
    public long Acknowledged { get; private set; }

    /// <summary>Connections established.</summary>
    public long Connects { get; private set; }

    /// <summary>Connection attempts that failed and links that broke.</summary>
    public long Failures { get; private set; }

    /// <summary>Status heartbeats published.</summary>
    public long Heartbeats { get; private set; }

    /// <summary>Receipts received on the receipt topic.</summary>
    public long Receipts { get; private set; }

    /// <summary>
    /// Connections on which the broker refused the receipt subscription (SUBACK 0x80, e.g. an external broker's ACL).
    /// Receipts are optional: alerts still flow on such a connection, but no receipt comes (nor the clock it sets).
    /// </summary>
    public long ReceiptsRefused { get; private set; }

    /// <summary>Whether the broker granted the receipt subscription on the current (or last) connection.</summary>
    public bool ReceiptsAvailable { get; private set; }

    /// <summary>Told of every receipt (null: receipts only set the clock).</summary>
    public IReceiptHandler? ReceiptHandler { get; set; }

    /// <summary>Milliseconds spent connected, summed over connections (the radio-on time of duty-cycled mode).</summary>
    public long ConnectedMs { get; private set; }

    /// <summary>Why the last attempt or link failed; null while none did.</summary>
    public string? LastError { get; private set; }

    /// <summary>When the next connection attempt is due (uptime ms), while <see cref="ForwarderState.Backoff"/> or offline.</summary>
    public long NextAttemptMs => State == ForwarderState.Backoff ? _nextAttemptMs : _nextWakeMs;

    /// <summary>True while the MQTT link is up.</summary>
    public bool IsConnected => _client.IsConnected;

    /// <summary>Raises an alert through the store and, for a critical one, wakes a duty-cycled forwarder at once.</summary>
    /// <param name="alert">The alert.</param>
    /// <returns>What <see cref="AlertStore.Raise"/> returns.</returns>
    public uint Raise(Alert alert)
    {
        uint seq = _store.Raise(alert);
        if (alert.Severity == Severity.Critical)
        {
            _wakeRequested = true;
        }

        return seq;
    }

    /// <summary>Asks for a connection at the next <see cref="Step"/> (duty-cycled mode), e.g. after a critical alert.</summary>
    public void Wake() => _wakeRequested = true;

    /// <summary>
    /// Does the work that is due: connects when it is time, publishes what the window allows, handles incoming
    /// acknowledgements and receipts, sends heartbeats, and disconnects a drained duty-cycled link.
    /// </summary>
    /// <param name="waitMs">While connected, how long to wait for incoming packets (0 only looks).</param>
    /// <returns>Milliseconds until the forwarder next needs a call (0: call again soon).</returns>
    public long Step(int waitMs)
    {
        long now = _clock.UptimeMs;
        if (!_started)
        {
            _started = true;
            _nextWakeMs = now;
            _nextAttemptMs = now;
        }

        if (!_client.IsConnected)
        {
            if (State == ForwarderState.Sending || State == ForwarderState.Idle)
            {
                LinkLost("the link closed");
            }

            if (!DueToConnect(now))
            {
                return Until(State == ForwarderState.Backoff ? _nextAttemptMs : _nextWakeMs, now);
            }

            if (!TryConnect())
            {
                return Until(_nextAttemptMs, _clock.UptimeMs);
            }
        }

        try
        {
            if (_options.HeartbeatIntervalMs > 0 && _options.DutyCycleIntervalMs == 0 && _clock.UptimeMs >= _nextHeartbeatMs)
            {
                PublishHeartbeat();
            }

            FillWindow();
            _client.Poll(waitMs);
            FillWindow();
        }
        catch (MqttException ex)
        {
            LinkLost(ex.Message);
            return Until(_nextAttemptMs, _clock.UptimeMs);
        }

        now = _clock.UptimeMs;
        bool drained = _drained && _pendingCount == 0 && !_held;
        State = drained ? ForwarderState.Idle : ForwarderState.Sending;
        if (!drained)
        {
            _drainedSinceMs = -1;
            return 0;
        }

        if (_drainedSinceMs < 0)
        {
            _drainedSinceMs = now;
            _attempt = 0;
        }

        if (_options.DutyCycleIntervalMs > 0 && now - _drainedSinceMs >= _options.DutyLingerMs)
        {
            Disconnect();
            return Until(_nextWakeMs, now);
        }

        return 0;
    }

    /// <summary>Disconnects cleanly (DISCONNECT, then close) and goes offline until the next scheduled wake.</summary>
    public void Disconnect()
    {
        long now = _clock.UptimeMs;
        if (_linkUp)
        {
            ConnectedMs += now - _connectedSinceMs;
            _linkUp = false;
        }

        _client.Disconnect();
        State = ForwarderState.Offline;
        _held = false;
        _pendingCount = 0;
        if (_options.DutyCycleIntervalMs > 0)
        {
            if (_nextWakeMs <= now)
            {
                _nextWakeMs += (((now - _nextWakeMs) / _options.DutyCycleIntervalMs) + 1) * _options.DutyCycleIntervalMs;
            }
        }
        else
        {
            _nextWakeMs = long.MaxValue;
        }
    }

    /// <inheritdoc/>
    void IMqttClientHandler.OnPublishAcknowledged(long tag)
    {
        int i = 0;
        while (i < _pendingCount && _pendingSeq[i] != (uint)tag)
        {
            i++;
        }

        if (i == _pendingCount)
        {
            return;
        }

        _pendingAcked[i] = true;
        Acknowledged++;
        int done = 0;
        while (done < _pendingCount && _pendingAcked[done])
        {
            done++;
        }

        if (done == 0)
        {
            return;
        }

        uint through = _pendingSeq[done - 1];
        for (int j = done; j < _pendingCount; j++)
        {
            _pendingSeq[j - done] = _pendingSeq[j];
            _pendingAcked[j - done] = _pendingAcked[j];
        }

        _pendingCount -= done;
        _store.Acknowledge(through);
        AcknowledgedThrough = through;
        _attempt = 0;
    }

    /// <inheritdoc/>
    void IMqttClientHandler.OnMessageReceived(MqttPacket message)
    {
        if (!message.TopicEquals(_receiptTopic) || message.Buffer == null)
        {
            return;
        }

        Receipts++;
        if (ReceiptHandler != null)
        {
            ReceiptHandler.OnReceipt(message.Buffer, message.PayloadOffset, message.PayloadLength);
        }

        if (_options.HasRtc)
        {
            return;
        }

        long at = ForwarderReceipt.ReadAt(message.Buffer, message.PayloadOffset, message.PayloadLength);
        if (at == AlertRecord.UnknownTime)
        {
            return;
        }

        if (!_wall.IsKnown)
        {
            // An old receipt would set the clock hours back, and every alert after it would carry that error.
            if (IsFresh(message))
            {
                _wall.Set(at);
            }

            return;
        }

        // Once known, a receipt can only be behind the clock (old) or ahead of it (the clock drifted): move forward only.
        if (at > _wall.UnixMs)
        {
            _wall.Set(at);
        }
    }

    /// <summary>Whether the receipt names an alert this boot first published on the current connection.</summary>
    private bool IsFresh(MqttPacket message)
    {
        return ForwarderReceipt.TryReadId(message.Buffer!, message.PayloadOffset, message.PayloadLength, out uint epoch, out uint idSeq)
            && epoch == _store.Epoch && idSeq >= _freshIdFrom && idSeq <= _wireIdHigh;
    }

    private bool DueToConnect(long now)
    {
        if (State == ForwarderState.Backoff)
        {
            return now >= _nextAttemptMs;
        }

        if (_options.DutyCycleIntervalMs == 0)
        {
            return true;
        }

        return now >= _nextWakeMs || _wakeRequested;
    }

    private bool TryConnect()
    {
        State = ForwarderState.Connecting;
        _wakeRequested = false;
        try
        {
            try
            {
                _client.Connect(_options.Host, _options.Port);
            }
            catch (ArgumentException ex)
            {
                // CONNECT cannot be encoded (it does not fit the send buffer, or a string MQTT forbids): no retry helps,
                // but it must not escape Step on every call either; it is reported like any failed connection.
                LinkLost("CONNECT cannot be sent with these options (" + ex.Message + "); shorten DeviceId or Secret, or raise SendBufferSize.");
                return false;
            }

            _freshIdFrom = _wireIdHigh + 1 > _store.FirstSeqOfBoot ? _wireIdHigh + 1 : _store.FirstSeqOfBoot;
            _connectedSinceMs = _clock.UptimeMs;
            _linkUp = true;
            Connects++;
            _resendCount = _client.CopyUnacknowledgedTags(_resendTags);
            SortResendTags();
            _resendIndex = 0;
            _store.Rewind();
            _pendingCount = 0;
            _held = false;
            _drained = false;
            _drainedSinceMs = -1;
            SubscribeToReceipts();
            PublishHeartbeat();
            State = ForwarderState.Sending;
            return true;
        }
        catch (MqttException ex)
        {
            LinkLost(ex.Message);
        }
        catch (TransportException ex)
        {
            LinkLost(ex.Message);
        }

        return false;
    }

    private void SubscribeToReceipts()
    {
        ReceiptsAvailable = false;
        try
        {
            _client.Subscribe(_receiptTopic, 1);
            ReceiptsAvailable = true;
        }
        catch (MqttException ex) when (ex.Error == MqttError.SubscribeRefused)
        {
            // The link is fine and alerts do not need receipts: failing the connection here would stop them for good.
            ReceiptsRefused++;
        }
    }

    private void LinkLost(string reason)
    {
        long now = _clock.UptimeMs;
        if (_linkUp)
        {
            ConnectedMs += now - _connectedSinceMs;
            _linkUp = false;
        }

        _client.Disconnect();
        Failures++;
        LastError = reason;
        _held = false;
        _pendingCount = 0;
        long ceiling = _options.BackoffBaseMs;
        for (int i = 0; i < _attempt && ceiling < _options.BackoffMaxMs; i++)
        {
            ceiling *= 2;
        }

        if (ceiling > _options.BackoffMaxMs)
        {
            ceiling = _options.BackoffMaxMs;
        }

        if (_attempt < MaxBackoffDoublings)
        {
            _attempt++;
        }

        _nextAttemptMs = now + _random.Next(ceiling);
        State = ForwarderState.Backoff;
    }

    private void PublishHeartbeat()
    {
        // Measured and then streamed from a snapshot: the application may change the status meanwhile.
        _status.UptimeMs = _clock.UptimeMs;
        _status.QueueDepth = _store.Depth;
        _statusPayload.Load(_status);
        if (_options.HeartbeatQos1)
        {
            // Tag 0 never collides with a flash sequence number (they start at 1); its PUBACK is ignored.
            if (!_client.Publish(_statusTopic, _statusPayload, 0, true, false))
            {
                return;
            }
        }
        else
        {
            _client.PublishQos0(_statusTopic, _statusPayload, true);
        }

        Heartbeats++;
        _nextHeartbeatMs = _clock.UptimeMs + _options.HeartbeatIntervalMs;
    }

    /// <summary>
    /// The store hands alerts out again in sequence order after a rewind, and the resend walk follows it; the window may
    /// hold them in another order (an alert the store fell back to goes out after later ones, docs/flash-queue.md).
    /// </summary>
    private void SortResendTags()
    {
        for (int i = 1; i < _resendCount; i++)
        {
            long tag = _resendTags[i];
            int j = i - 1;
            while (j >= 0 && _resendTags[j] > tag)
            {
                _resendTags[j + 1] = _resendTags[j];
                j--;
            }

            _resendTags[j + 1] = tag;
        }
    }

    /// <summary>Publishes from the store while the in-flight window has room.</summary>
    private void FillWindow()
    {
        while (_client.IsConnected)
        {
            if (!_held)
            {
                if (!_store.TryNext(_outgoing))
                {
                    // Tags left in the window that the store no longer hands out (merged into a later update) are given up.
                    while (_resendIndex < _resendCount)
                    {
                        _client.Forget(_resendTags[_resendIndex++]);
                    }

                    _drained = true;
                    return;
                }

                _held = true;
                _heldSeq = _outgoing.Seq;
                _drained = false;
            }

            while (_resendIndex < _resendCount && _resendTags[_resendIndex] < _heldSeq)
            {
                _client.Forget(_resendTags[_resendIndex++]);
            }

            bool resend = _resendIndex < _resendCount && _resendTags[_resendIndex] == _heldSeq;
            if (_pendingCount == _pendingSeq.Length)
            {
                return;
            }

            if (_outgoing.IdSeq > _wireIdHigh)
            {
                _wireIdHigh = _outgoing.IdSeq; // before the bytes leave: a send cut short may still reach the gateway
            }

            // The alert may have waited for a slot since it was loaded (up to the ack timeout): its age is the one it
            // has as it leaves, also when resent after a reconnect.
            _outgoing.Stamp();
            if (!_client.Publish(_alertTopic, _outgoing, _heldSeq, false, false))
            {
                if (_client.UnacknowledgedCount == _resendCount - _resendIndex)
                {
                    // Every slot holds a newer tag from before the reconnect, not resent yet: nothing of this
                    // connection is in flight, so no PUBACK will free a slot. The store hands out again an alert
                    // the gateway PUBACKed while its acknowledgement was held back (AlertStore's hold behind an update
                    // from an earlier boot): give up the newest such tag; it is published afresh when its turn comes.
                    _client.Forget(_resendTags[--_resendCount]);
                    continue;
                }

                return;
            }

            if (resend)
            {
                _resendIndex++;
                Resent++;
            }
            else
            {
                Published++;
            }

            _pendingSeq[_pendingCount] = _heldSeq;
            _pendingAcked[_pendingCount] = false;
            _pendingCount++;
            _held = false;
        }
    }

    private static long Until(long due, long now) => due <= now ? 0 : due - now;

    /// <summary>The status heartbeat as a streamed payload: a snapshot of the status, measured when loaded.</summary>
    private sealed class StatusPayload : IByteSource
    {
        private readonly StatusJsonWriter _writer;
        private readonly DeviceStatus _snapshot = new DeviceStatus();

        public StatusPayload(StatusJsonWriter writer) => _writer = writer;

        public int Length { get; private set; }

        public void Load(DeviceStatus status)
        {
            _snapshot.CopyFrom(status);
            Length = _writer.Measure(_snapshot);
        }

        public void WriteTo(IByteSink sink) => _writer.Write(_snapshot, sink);
    }
}
