using System;

namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>
/// A small synchronous MQTT 3.1.1 client for the device: CONNECT with a persistent session, QoS 0/1 PUBLISH with a
/// bounded in-flight window of caller tags, DUP resend after reconnect, one-filter SUBSCRIBE, keep-alive, DISCONNECT.
/// No threads: the caller drives it with <see cref="Poll"/>. Buffers are allocated once, in the constructor; a payload
/// larger than the send buffer is streamed through it (<see cref="Publish(string, IByteSource, long, bool, bool)"/>).
/// </summary>
/// <remarks>
/// Any failure of the link (send or receive fails, a timeout, bytes that break the protocol) closes the transport and
/// throws <see cref="MqttException"/>; unacknowledged publishes stay in the window. After the next <see cref="Connect"/>
/// the caller gets their tags from <see cref="CopyUnacknowledgedTags"/> and publishes each again with the same tag:
/// the client reuses the original packet id and sets DUP. Not thread-safe: use it from one thread.
/// </remarks>
public sealed class MqttClient
{
    private readonly ITransport _transport;
    private readonly IClock _clock;
    private readonly MqttClientOptions _options;
    private readonly IMqttClientHandler _handler;
    private readonly byte[] _tx;
    private readonly byte[] _rx;
    private readonly MqttPacket _packet = new MqttPacket();
    private readonly MqttInFlightWindow _window;
    private readonly PayloadSink _payloadSink;
    private int _txFill;
    private int _payloadLeft;
    private int _rxCount;
    private int _rxConsumed;
    private int _rxSkip;
    private bool _connected;
    private long _lastSendMs;
    private long _pingSentMs = -1;
    private int _lastPacketId;
    private int _subscribeId;
    private int _subackCode = -1;

    /// <summary>Creates a client; nothing is sent until <see cref="Connect"/>.</summary>
    /// <param name="transport">The byte stream to the broker.</param>
    /// <param name="clock">Uptime in milliseconds, for keep-alive and timeouts.</param>
    /// <param name="options">Identity, timeouts and buffer sizes.</param>
    /// <param name="handler">Receives acknowledgements and incoming messages.</param>
    public MqttClient(ITransport transport, IClock clock, MqttClientOptions options, IMqttClientHandler handler)
    {
        _transport = transport ?? throw new ArgumentNullException(nameof(transport));
        _clock = clock ?? throw new ArgumentNullException(nameof(clock));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _handler = handler ?? throw new ArgumentNullException(nameof(handler));
        if (options.MaxInFlight < 1 || options.MaxInFlight > 64)
        {
            throw new ArgumentException("MaxInFlight must be 1..64, was " + options.MaxInFlight.ToString() + ".", nameof(options));
        }

        if (options.SendBufferSize < 16 || options.ReceiveBufferSize < 16)
        {
            throw new ArgumentException("SendBufferSize and ReceiveBufferSize must be at least 16 bytes.", nameof(options));
        }

        if (options.KeepAliveSeconds < 0 || options.KeepAliveSeconds > 65_535)
        {
            throw new ArgumentException("KeepAliveSeconds must be 0..65535, was " + options.KeepAliveSeconds.ToString() + ".", nameof(options));
        }

        if (options.ClientId == null || (options.ClientId.Length == 0 && !options.CleanSession))
        {
            throw new ArgumentException("ClientId must be set when CleanSession is false (a persistent session needs an identity).", nameof(options));
        }

        _tx = new byte[options.SendBufferSize];
        _rx = new byte[options.ReceiveBufferSize];
        _window = new MqttInFlightWindow(options.MaxInFlight);
        _payloadSink = new PayloadSink(this);
    }

    /// <summary>True between an accepted <see cref="Connect"/> and a failure or <see cref="Disconnect"/>.</summary>
    public bool IsConnected => _connected;

    /// <summary>QoS 1 publishes sent and not yet acknowledged (kept across reconnects).</summary>
    public int UnacknowledgedCount => _window.Count;

    /// <summary>The in-flight window's size (<see cref="MqttClientOptions.MaxInFlight"/>).</summary>
    public int MaxInFlight => _window.Capacity;

    /// <summary>Opens the transport, sends CONNECT and waits for CONNACK.</summary>
    /// <param name="host">Broker host.</param>
    /// <param name="port">Broker port.</param>
    /// <returns>The session-present flag and return code of an accepted connection.</returns>
    /// <exception cref="TransportException">The transport could not connect.</exception>
    /// <exception cref="MqttException">The broker refused (<see cref="MqttError.ConnectionRefused"/>, with the code),
    /// did not answer in time, or the link failed.</exception>
    public MqttConnectResult Connect(string host, int port)
    {
        if (_connected)
        {
            throw new InvalidOperationException("Already connected; call Disconnect first.");
        }

        _rxCount = 0;
        _rxConsumed = 0;
        _rxSkip = 0;
        _pingSentMs = -1;
        _subscribeId = 0;
        int length = MqttCodec.EncodeConnect(_tx, 0, _options.ClientId, _options.UserName, _options.Password, _options.CleanSession, _options.KeepAliveSeconds);
        long deadline = _clock.UptimeMs + _options.ConnectTimeoutMs;
        _transport.Open(host, port, _options.ConnectTimeoutMs);
        SendAll(_tx, 0, length);
        while (true)
        {
            long left = deadline - _clock.UptimeMs;
            if (left <= 0)
            {
                throw Fail(MqttError.Timeout, "no CONNACK from " + host + ":" + port.ToString() + " within " + _options.ConnectTimeoutMs.ToString() + " ms");
            }

            if (TryReadPacket((int)left))
            {
                break;
            }
        }

        if (_packet.Type != MqttPacketType.ConnAck)
        {
            throw Fail(MqttError.ProtocolError, "expected CONNACK as the first packet, got packet type " + ((int)_packet.Type).ToString());
        }

        var code = (MqttConnectReturnCode)_packet.ReturnCode;
        bool sessionPresent = _packet.SessionPresent;
        if (code != MqttConnectReturnCode.Accepted)
        {
            _transport.Close();
            throw new MqttException(code, "broker " + host + ":" + port.ToString() + " refused CONNECT of client '" + _options.ClientId + "': " + Describe(code) + " (return code " + ((int)code).ToString() + ")");
        }

        _connected = true;
        return new MqttConnectResult(sessionPresent, code);
    }

    /// <summary>
    /// Sends a QoS 1 PUBLISH. A new <paramref name="tag"/> takes a free window slot and the packet id its tag maps to
    /// (a positive tag: (tag − 1) mod 65,000 + 1, so the same tag has the same id in every client, after a reboot too); a
    /// tag still in the window (e.g. after a reconnect) is resent with its packet id and DUP set. The payload is sent from
    /// the caller's buffer and not kept; when the broker acknowledges, <see cref="IMqttClientHandler.OnPublishAcknowledged"/>
    /// reports the tag.
    /// </summary>
    /// <param name="topic">Topic name.</param>
    /// <param name="payload">Payload buffer (e.g. the record read from flash).</param>
    /// <param name="offset">Index of the first payload byte.</param>
    /// <param name="count">Payload length.</param>
    /// <param name="tag">The caller's identity for this message (e.g. the flash sequence number); unique among unacknowledged publishes.</param>
    /// <param name="retain">The RETAIN flag.</param>
    /// <param name="dup">Set DUP even for a tag the window does not hold (e.g. resending after a reboot).</param>
    /// <returns>False when the window is full (nothing sent; poll for acknowledgements first), true when sent.</returns>
    /// <exception cref="MqttException">Not connected, or the link failed (the publish stays unacknowledged).</exception>
    public bool Publish(string topic, byte[] payload, int offset, int count, long tag, bool retain, bool dup)
    {
        EnsureConnected();
        CheckRange(payload, offset, count);
        int header = BeginQos1(topic, count, tag, retain, dup);
        if (header < 0)
        {
            return false;
        }

        SendPublish(header, payload, offset, count);
        return true;
    }

    /// <summary>
    /// Sends a QoS 1 PUBLISH whose payload writes itself: the header (with the payload's length) goes into the send
    /// buffer, then the payload is streamed through it, <see cref="MqttClientOptions.SendBufferSize"/> bytes at a time,
    /// so no buffer ever holds the whole payload. On the wire the bytes are those of
    /// <see cref="Publish(string, byte[], int, int, long, bool, bool)"/>; tags, packet ids, DUP and the window work
    /// the same (a resend writes the payload again).
    /// </summary>
    /// <param name="topic">Topic name.</param>
    /// <param name="payload">The payload (e.g. an <see cref="Alerts.OutgoingAlert"/> held as its record).</param>
    /// <param name="tag">The caller's identity for this message; unique among unacknowledged publishes.</param>
    /// <param name="retain">The RETAIN flag.</param>
    /// <param name="dup">Set DUP even for a tag the window does not hold.</param>
    /// <returns>False when the window is full (nothing sent), true when sent.</returns>
    /// <exception cref="MqttException">Not connected, or the link failed (the publish stays unacknowledged).</exception>
    /// <exception cref="InvalidOperationException">The payload wrote a different number of bytes than its
    /// <see cref="IByteSource.Length"/> (the link is closed: the packet on the wire is broken).</exception>
    public bool Publish(string topic, IByteSource payload, long tag, bool retain, bool dup)
    {
        EnsureConnected();
        if (payload == null)
        {
            throw new ArgumentNullException(nameof(payload));
        }

        int count = payload.Length;
        int header = BeginQos1(topic, count, tag, retain, dup);
        if (header < 0)
        {
            return false;
        }

        StreamPublish(header, payload, count);
        return true;
    }

    /// <summary>Sends a QoS 0 PUBLISH whose payload is streamed through the send buffer (see <see cref="Publish(string, IByteSource, long, bool, bool)"/>).</summary>
    /// <param name="topic">Topic name.</param>
    /// <param name="payload">The payload.</param>
    /// <param name="retain">The RETAIN flag.</param>
    /// <exception cref="MqttException">Not connected, or the link failed.</exception>
    /// <exception cref="InvalidOperationException">The payload wrote a different number of bytes than its length.</exception>
    public void PublishQos0(string topic, IByteSource payload, bool retain)
    {
        EnsureConnected();
        if (payload == null)
        {
            throw new ArgumentNullException(nameof(payload));
        }

        int count = payload.Length;
        int header = MqttCodec.EncodePublishHeader(_tx, 0, topic, 0, false, retain, 0, count);
        StreamPublish(header, payload, count);
    }

    /// <summary>Sends a QoS 0 PUBLISH (fire and forget; nothing is tracked).</summary>
    /// <param name="topic">Topic name.</param>
    /// <param name="payload">Payload buffer.</param>
    /// <param name="offset">Index of the first payload byte.</param>
    /// <param name="count">Payload length.</param>
    /// <param name="retain">The RETAIN flag.</param>
    /// <exception cref="MqttException">Not connected, or the link failed.</exception>
    public void PublishQos0(string topic, byte[] payload, int offset, int count, bool retain)
    {
        EnsureConnected();
        CheckRange(payload, offset, count);
        int header = MqttCodec.EncodePublishHeader(_tx, 0, topic, 0, false, retain, 0, count);
        SendPublish(header, payload, offset, count);
    }

    /// <summary>Copies the tags of unacknowledged QoS 1 publishes, oldest first: after a reconnect, publish each
    /// again (same tag) to resend it with DUP.</summary>
    /// <param name="tags">Destination; at most its length are copied.</param>
    /// <returns>The number of tags copied.</returns>
    public int CopyUnacknowledgedTags(long[] tags)
    {
        if (tags == null)
        {
            throw new ArgumentNullException(nameof(tags));
        }

        return _window.CopyTags(tags);
    }

    /// <summary>Drops one unacknowledged publish from the window (e.g. the queue gave it up); it will not be reported.</summary>
    /// <param name="tag">The publish's tag.</param>
    /// <returns>True when the tag was in the window.</returns>
    public bool Forget(long tag)
    {
        int slot = _window.FindTag(tag);
        if (slot < 0)
        {
            return false;
        }

        _window.Remove(slot);
        return true;
    }

    /// <summary>Drops every unacknowledged publish (e.g. after a clean-session connect, when the caller restarts from flash).</summary>
    public void ForgetAll() => _window.Clear();

    /// <summary>
    /// Subscribes to one topic filter and waits for SUBACK, handling other packets (acknowledgements, messages)
    /// meanwhile.
    /// </summary>
    /// <param name="topicFilter">Topic filter (EdgeMail: the device's receipt topic).</param>
    /// <param name="qos">Requested QoS, 0 or 1.</param>
    /// <returns>The granted QoS.</returns>
    /// <exception cref="MqttException">Refused (<see cref="MqttError.SubscribeRefused"/>), no SUBACK in time, or the link failed.</exception>
    public int Subscribe(string topicFilter, int qos)
    {
        EnsureConnected();
        int packetId = NextPacketId(0);
        int length = MqttCodec.EncodeSubscribe(_tx, 0, packetId, topicFilter, qos);
        _subscribeId = packetId;
        _subackCode = -1;
        SendAll(_tx, 0, length);
        long deadline = _clock.UptimeMs + _options.ResponseTimeoutMs;
        while (_subackCode < 0)
        {
            long left = deadline - _clock.UptimeMs;
            if (left <= 0)
            {
                throw Fail(MqttError.Timeout, "no SUBACK for '" + topicFilter + "' within " + _options.ResponseTimeoutMs.ToString() + " ms");
            }

            if (TryReadPacket((int)left))
            {
                Handle();
            }
        }

        _subscribeId = 0;
        if (_subackCode == 0x80)
        {
            throw new MqttException(MqttError.SubscribeRefused, "broker refused the subscription to '" + topicFilter + "' (SUBACK 0x80)");
        }

        return _subackCode;
    }

    /// <summary>
    /// Processes incoming packets and keeps the connection alive: waits up to <paramref name="timeoutMs"/> (less when
    /// a PINGREQ falls due sooner) for a packet, then handles every packet already received. Call it often: keep-alive
    /// only works while something polls.
    /// </summary>
    /// <param name="timeoutMs">Longest wait for the first packet; 0 only looks.</param>
    /// <returns>The number of packets handled.</returns>
    /// <exception cref="MqttException">Not connected, the link failed, PINGRESP or PUBACK was overdue, or a protocol error.</exception>
    public int Poll(int timeoutMs)
    {
        EnsureConnected();
        int wait = KeepAlive(timeoutMs);
        int handled = 0;
        while (TryReadPacket(wait))
        {
            Handle();
            handled++;
            wait = 0;
        }

        KeepAlive(0);
        return handled;
    }

    /// <summary>Sends DISCONNECT (best effort) and closes the transport. Unacknowledged publishes stay in the window.</summary>
    public void Disconnect()
    {
        if (_connected)
        {
            _connected = false;
            int length = MqttCodec.EncodeDisconnect(_tx, 0);
            _transport.Send(_tx, 0, length, _options.SendTimeoutMs);
        }

        _transport.Close();
    }

    private static string Describe(MqttConnectReturnCode code)
    {
        switch (code)
        {
            case MqttConnectReturnCode.UnacceptableProtocolVersion: return "the broker does not speak MQTT 3.1.1 (protocol level 4)";
            case MqttConnectReturnCode.IdentifierRejected: return "client identifier rejected";
            case MqttConnectReturnCode.ServerUnavailable: return "server unavailable, try later";
            case MqttConnectReturnCode.BadUserNameOrPassword: return "bad user name or password; check the device's credentials";
            case MqttConnectReturnCode.NotAuthorized: return "not authorised";
            default: return "unknown return code";
        }
    }

    private static void CheckRange(byte[] payload, int offset, int count)
    {
        if (payload == null)
        {
            throw new ArgumentNullException(nameof(payload));
        }

        if (offset < 0 || count < 0 || offset > payload.Length - count)
        {
            throw new ArgumentOutOfRangeException(nameof(count), "payload range " + offset.ToString() + "+" + count.ToString() + " lies outside an array of " + payload.Length.ToString() + " bytes.");
        }
    }

    /// <summary>
    /// Window bookkeeping and header of a QoS 1 PUBLISH: a tag in the window is resent with its packet id and DUP, a
    /// new one takes a free slot. Returns the header length in the send buffer, or -1 when the window is full.
    /// </summary>
    private int BeginQos1(string topic, int count, long tag, bool retain, bool dup)
    {
        int slot = _window.FindTag(tag);
        bool resend = slot >= 0;
        int packetId;
        if (resend)
        {
            packetId = _window.PacketId(slot);
            dup = true;
        }
        else
        {
            slot = _window.FreeSlot();
            if (slot < 0)
            {
                return -1;
            }

            packetId = NextPacketId(tag);
        }

        int header = MqttCodec.EncodePublishHeader(_tx, 0, topic, 1, dup, retain, packetId, count);
        long now = _clock.UptimeMs;
        if (resend)
        {
            _window.Resent(slot, now);
        }
        else
        {
            _window.Add(slot, tag, packetId, now);
        }

        return header;
    }

    /// <summary>Sends the header already in the send buffer, then the payload as it writes itself, a buffer-full at a time.</summary>
    private void StreamPublish(int header, IByteSource payload, int count)
    {
        _txFill = header;
        _payloadLeft = count;
        bool complete = false;
        try
        {
            payload.WriteTo(_payloadSink);
            if (_payloadLeft != 0)
            {
                throw new InvalidOperationException("The payload wrote " + (count - _payloadLeft).ToString() + " bytes but announced " + count.ToString() + " (IByteSource.Length); the PUBLISH on the wire is broken, so the link was closed.");
            }

            if (_txFill > 0)
            {
                SendAll(_tx, 0, _txFill);
            }

            complete = true;
        }
        finally
        {
            _txFill = 0;
            _payloadLeft = 0;
            if (!complete && _connected)
            {
                // Part of a packet went out: nothing can follow it on this connection.
                _ = Fail(MqttError.LinkBroken, "a streamed PUBLISH payload failed part way");
            }
        }
    }

    /// <summary>Takes the next bytes of a streamed payload: into the send buffer, which goes out whenever it is full.</summary>
    private void WritePayload(byte[] buffer, int offset, int count)
    {
        CheckRange(buffer, offset, count);
        if (count > _payloadLeft)
        {
            throw new InvalidOperationException("The payload wrote more bytes than it announced (IByteSource.Length); the PUBLISH on the wire is broken, so the link was closed.");
        }

        _payloadLeft -= count;
        while (count > 0)
        {
            int room = _tx.Length - _txFill;
            if (room == 0)
            {
                SendAll(_tx, 0, _txFill);
                _txFill = 0;
                room = _tx.Length;
            }

            int n = count < room ? count : room;
            Array.Copy(buffer, offset, _tx, _txFill, n);
            _txFill += n;
            offset += n;
            count -= n;
        }
    }

    private void SendPublish(int header, byte[] payload, int offset, int count)
    {
        if (_tx.Length - header >= count)
        {
            Array.Copy(payload, offset, _tx, header, count);
            SendAll(_tx, 0, header + count);
        }
        else
        {
            SendAll(_tx, 0, header);
            SendAll(payload, offset, count);
        }
    }

    /// <summary>Checks keep-alive and PUBACK deadlines, sends PINGREQ when due, and returns how long the caller may wait.</summary>
    private int KeepAlive(int timeoutMs)
    {
        long now = _clock.UptimeMs;
        long wait = timeoutMs;
        if (_options.AckTimeoutMs > 0)
        {
            long oldest = _window.OldestSentMs();
            if (oldest >= 0)
            {
                long left = oldest + _options.AckTimeoutMs - now;
                if (left <= 0)
                {
                    throw Fail(MqttError.Timeout, "no PUBACK within " + _options.AckTimeoutMs.ToString() + " ms for " + _window.Count.ToString() + " in-flight publish(es)");
                }

                wait = left < wait ? left : wait;
            }
        }

        if (_options.KeepAliveSeconds > 0)
        {
            if (_pingSentMs >= 0)
            {
                long left = _pingSentMs + _options.PingTimeoutMs - now;
                if (left <= 0)
                {
                    throw Fail(MqttError.Timeout, "no PINGRESP within " + _options.PingTimeoutMs.ToString() + " ms; the link is dead");
                }

                wait = left < wait ? left : wait;
            }
            else
            {
                long left = _lastSendMs + (_options.KeepAliveSeconds * 1000L) - now;
                if (left <= 0)
                {
                    int length = MqttCodec.EncodePingReq(_tx, 0);
                    SendAll(_tx, 0, length);
                    _pingSentMs = _clock.UptimeMs;
                    left = _options.PingTimeoutMs;
                }

                wait = left < wait ? left : wait;
            }
        }

        return (int)wait;
    }

    private void Handle()
    {
        MqttPacket packet = _packet;
        switch (packet.Type)
        {
            case MqttPacketType.PubAck:
                int slot = _window.FindPacketId(packet.PacketId);
                if (slot >= 0)
                {
                    long tag = _window.Tag(slot);
                    _window.Remove(slot);
                    _handler.OnPublishAcknowledged(tag);
                }

                break;

            case MqttPacketType.Publish:
                int qos = packet.Qos;
                int packetId = packet.PacketId;
                _handler.OnMessageReceived(packet);
                if (qos == 1 && _connected)
                {
                    int length = MqttCodec.EncodePubAck(_tx, 0, packetId);
                    SendAll(_tx, 0, length);
                }

                break;

            case MqttPacketType.PingResp:
                _pingSentMs = -1;
                break;

            case MqttPacketType.SubAck:
                if (packet.PacketId == _subscribeId)
                {
                    _subackCode = packet.ReturnCode;
                }

                break;

            default:
                throw Fail(MqttError.ProtocolError, "unexpected packet type " + ((int)packet.Type).ToString() + " while connected");
        }
    }

    /// <summary>Reads until one whole packet is in <see cref="_packet"/> (true) or the wait ends without one (false).</summary>
    private bool TryReadPacket(int timeoutMs)
    {
        if (_rxConsumed > 0)
        {
            _rxCount -= _rxConsumed;
            if (_rxCount > 0)
            {
                Array.Copy(_rx, _rxConsumed, _rx, 0, _rxCount);
            }

            _rxConsumed = 0;
        }

        bool received = false;
        while (true)
        {
            if (_rxSkip > 0 && _rxCount > 0)
            {
                // The rest of a PUBLISH whose head was handled truncated: dropped as it arrives.
                int drop = _rxCount < _rxSkip ? _rxCount : _rxSkip;
                _rxSkip -= drop;
                _rxCount -= drop;
                if (_rxCount > 0)
                {
                    Array.Copy(_rx, drop, _rx, 0, _rxCount);
                }
            }

            if (_rxCount > 0 && _rxSkip == 0)
            {
                MqttDecodeStatus status = MqttCodec.Decode(_rx, 0, _rxCount, _packet);
                if (status == MqttDecodeStatus.Complete)
                {
                    _rxConsumed = _packet.Length;
                    return true;
                }

                if (status == MqttDecodeStatus.Malformed)
                {
                    throw Fail(MqttError.ProtocolError, "malformed packet from the broker: " + _packet.Error);
                }

                if (_packet.Length > _rx.Length)
                {
                    if (_packet.Type != MqttPacketType.Publish)
                    {
                        throw Fail(MqttError.ProtocolError, "incoming packet of " + _packet.Length.ToString() + " bytes exceeds the receive buffer of " + _rx.Length.ToString() + " bytes (ReceiveBufferSize)");
                    }

                    // A PUBLISH larger than the buffer (e.g. a receipt with a long detail): its head is handled
                    // once the buffer is full, truncated, and the rest is skipped.
                    if (_rxCount == _rx.Length)
                    {
                        status = MqttCodec.DecodePublishHead(_rx, 0, _rxCount, _packet);
                        if (status != MqttDecodeStatus.Complete)
                        {
                            throw Fail(MqttError.ProtocolError, "a PUBLISH of " + _packet.Length.ToString() + " bytes whose topic does not fit the receive buffer of " + _rx.Length.ToString() + " bytes (ReceiveBufferSize)" + (_packet.Error != null ? ": " + _packet.Error : string.Empty));
                        }

                        _rxSkip = _packet.Length - _rxCount;
                        _rxConsumed = _rxCount;
                        return true;
                    }
                }
            }

            if (received)
            {
                timeoutMs = 0;
            }

            int n = _transport.Receive(_rx, _rxCount, _rx.Length - _rxCount, timeoutMs < 0 ? 0 : timeoutMs);
            if (n < 0)
            {
                throw Fail(MqttError.LinkBroken, "the connection to the broker was closed" + (_window.Count > 0 ? "; " + _window.Count.ToString() + " publish(es) unacknowledged" : string.Empty));
            }

            if (n == 0)
            {
                return false;
            }

            _rxCount += n;
            received = true;
        }
    }

    private void SendAll(byte[] buffer, int offset, int count)
    {
        long deadline = _clock.UptimeMs + _options.SendTimeoutMs;
        while (count > 0)
        {
            long left = deadline - _clock.UptimeMs;
            int n = left > 0 ? _transport.Send(buffer, offset, count, (int)left) : 0;
            if (n < 0)
            {
                throw Fail(MqttError.LinkBroken, "the connection to the broker broke while sending" + (_window.Count > 0 ? "; " + _window.Count.ToString() + " publish(es) unacknowledged" : string.Empty));
            }

            if (n == 0 && left <= 0)
            {
                throw Fail(MqttError.Timeout, "sending stalled for " + _options.SendTimeoutMs.ToString() + " ms with " + count.ToString() + " bytes left");
            }

            offset += n;
            count -= n;
        }

        _lastSendMs = _clock.UptimeMs;
    }

    // A positive tag has an identifier of its own, (tag - 1) mod TaggedIds + 1: a caller whose tags outlive this client
    // (flash sequence numbers, across boots) sends a message under the identifier it had before. A broker's late PUBACK
    // from an earlier connection (MQTTnet puts what a taken-over connection still answers into the resumed session) can
    // then only acknowledge the message it was for, never another one that a new boot's counter gave the same number.
    // Tags 0 and below, SUBSCRIBE, and a tag whose identifier is taken draw from the identifiers above TaggedIds (535 of
    // them for at most 64 publishes in flight).
    private const int TaggedIds = 65_000;

    private int NextPacketId(long tag)
    {
        if (tag > 0)
        {
            int own = (int)((tag - 1) % TaggedIds) + 1;
            if (_window.FindPacketId(own) < 0)
            {
                return own;
            }
        }

        while (true)
        {
            _lastPacketId = _lastPacketId <= TaggedIds || _lastPacketId >= 65_535 ? TaggedIds + 1 : _lastPacketId + 1;
            if (_lastPacketId != _subscribeId && _window.FindPacketId(_lastPacketId) < 0)
            {
                return _lastPacketId;
            }
        }
    }

    private void EnsureConnected()
    {
        if (!_connected)
        {
            throw new MqttException(MqttError.NotConnected, "the MQTT client is not connected; call Connect first");
        }
    }

    /// <summary>Closes the link and builds the exception to throw; the window keeps its publishes.</summary>
    private MqttException Fail(MqttError error, string message)
    {
        _connected = false;
        _pingSentMs = -1;
        _rxCount = 0;
        _rxConsumed = 0;
        _rxSkip = 0;
        _transport.Close();
        return new MqttException(error, message);
    }

    /// <summary>The client as the sink of a streamed payload (private, so only the client's own publishes write to it).</summary>
    private sealed class PayloadSink : IByteSink
    {
        private readonly MqttClient _client;

        public PayloadSink(MqttClient client) => _client = client;

        public void Write(byte[] buffer, int offset, int count) => _client.WritePayload(buffer, offset, count);
    }
}
