using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Receipts;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MQTTnet;
using MQTTnet.Protocol;
using MQTTnet.Server;

namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// The in-process MQTTnet broker devices connect to. It authenticates devices (client id = user name = device id,
/// password checked against the stored hash), lets a device publish only <c>edgemail/v1/{id}/alert|status</c> and
/// subscribe only to <c>edgemail/v1/{id}/receipt</c>, and answers a QoS 1 alert with PUBACK only after the spool
/// committed it (MQTTnet awaits the publish interceptor before it sends PUBACK). When the spool fails, the
/// connection is closed without PUBACK so the device retries later — with MQTT 3.1.1 a PUBACK cannot carry a
/// refusal. An alert whose handling fails for a reason of its own is kept as rejected by <see cref="AlertIngest"/> and
/// acknowledged: an exception out of the interceptor would have MQTTnet close the connection, and the device would
/// send that alert first again at every connection, for ever.
/// </summary>
public sealed partial class EmbeddedBroker : IHostedService, IReceiptSink, IDisposable, IReadAheadSink
{
    // The endpoint object the connection holds anyway; its text is made when the device first sends an alert (PeerOf),
    // not for every connected device (~50 bytes each, idle ones included).
    private const string SessionPeer = "edgemail.peer";
    private const string SessionMqtt5 = "edgemail.mqtt5";
    private readonly GatewayOptions _options;
    private readonly AlertIngest _ingest;
    private readonly ILogger<EmbeddedBroker> _logger;
    // Devices holding a subscription to their receipt topic (the only topic a device may subscribe to), with its QoS.
    private readonly ConcurrentDictionary<string, MqttQualityOfServiceLevel> _receiptSubscribers = new(StringComparer.Ordinal);
    private readonly Security.MqttGuard _guard;
    private readonly Security.LogBudget _busyLog;
    private readonly Security.LogBudget _pendingLog;
    private readonly Security.LogBudget _refusedPacketLog;
    private readonly TimeProvider _clock;
    private readonly Devices.DeviceRegistry _devices;
    private readonly Devices.DevicePresence _presence;
    private readonly Security.SecretVerifier _secrets;
    private readonly Operations.GatewayMetrics _metrics;
    private readonly ReceiptPublisher _receipts;
    private MqttServer? _server;

    // Alerts whose store began when the read-ahead adapter received them, by the packet's payload array (a new one for
    // every packet MQTTnet decodes, and the very array its publish interceptor is handed).
    private readonly ConcurrentDictionary<object, Prestored> _prestored = new(ReferenceEqualityComparer.Instance);

    /// <summary>Creates the broker; it listens once the host starts it.</summary>
    /// <param name="options">Gateway options (devices and the <c>Mqtt</c> listener).</param>
    /// <param name="ingest">Where alerts and status go.</param>
    /// <param name="logger">Where the broker reports what it does.</param>
    /// <param name="guard">Connection limits and the TLS endpoint (<c>MqttGuard</c> section).</param>
    /// <param name="clock">Clock for publish-rate delays.</param>
    /// <param name="metrics">Throttled publishes are counted there.</param>
    /// <param name="devices">Who may connect; a device disabled or given a new secret is disconnected at once.</param>
    /// <param name="secrets">Checks presented secrets against their hashes.</param>
    /// <param name="presence">Records connects and disconnects.</param>
    /// <param name="receipts">Told when a device takes a receipt (its PUBACK) and when it subscribes to them, for kept receipts.</param>
    public EmbeddedBroker(IOptions<GatewayOptions> options, AlertIngest ingest, ILogger<EmbeddedBroker> logger, Security.MqttGuard guard, TimeProvider clock,
        Operations.GatewayMetrics metrics, Devices.DeviceRegistry devices, Security.SecretVerifier secrets, Devices.DevicePresence presence, ReceiptPublisher receipts)
    {
        _receipts = receipts;
        _presence = presence;
        _devices = devices;
        _secrets = secrets;
        _devices.Changed += OnDeviceChanged;
        _clock = clock;
        _metrics = metrics;
        _options = options.Value;
        _ingest = ingest;
        _logger = logger;
        _guard = guard;
        _busyLog = new Security.LogBudget(TimeSpan.FromMinutes(1), clock);
        _pendingLog = new Security.LogBudget(TimeSpan.FromMinutes(1), clock);
        _refusedPacketLog = new Security.LogBudget(TimeSpan.FromMinutes(1), clock);
    }

    /// <summary>The plain-text endpoint the broker listens on, known once started (the real port when 0 was asked for); null when <c>Mqtt:PlainEnabled</c> is false.</summary>
    public IPEndPoint? Endpoint { get; private set; }

    /// <summary>The TLS endpoint, known once started; null unless <c>Mqtt:TlsEnabled</c>.</summary>
    public IPEndPoint? TlsEndpoint => _guard.TlsEndpoint;

    /// <inheritdoc />
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var address = IPAddress.Parse(_options.Mqtt.BindAddress);
        var factory = new MqttServerFactory();
        var serverOptions = factory.CreateServerOptionsBuilder().WithPersistentSessions(true)
            .WithDefaultCommunicationTimeout(_options.Mqtt.ConnectTimeout); // the CONNECT wait, and our TLS handshake's
        IPEndPoint? plain = null;
        if (_options.Mqtt.PlainEnabled)
        {
            plain = new IPEndPoint(address, _options.Mqtt.Port == 0 ? ReserveFreePort(address) : _options.Mqtt.Port);
            serverOptions.WithDefaultEndpoint()
                .WithDefaultEndpointBoundIPAddress(address)
                .WithDefaultEndpointBoundIPV6Address(IPAddress.None)
                .WithDefaultEndpointPort(plain.Port);
        }
        else
        {
            serverOptions.WithoutDefaultEndpoint(); // TLS only: nothing answers on the plain port
        }

        var built = _guard.Configure(serverOptions, address).Build();

        // Every connection keeps a buffer for the packets the broker writes to it: CONNACK, PUBACK, PINGRESP (2-4
        // bytes) and a receipt's PUBLISH header, whose payload MQTTnet sends from its own buffer -- 5 bytes of fixed
        // header, the topic edgemail/v1/{id}/receipt (at most 84 bytes with a 64-character id) and the packet id, so
        // 128 bytes hold every packet the broker sends a device. MQTTnet's default of 4 KiB each was 40 MB of 10,000
        // idle devices (512 bytes, 5 MB). A larger packet grows it; it is cut back to WriterBufferSizeMax afterwards.
        built.WriterBufferSize = 128;
        built.WriterBufferSizeMax = 4096;
        // Our own listeners frame the packets (DeviceConnections.cs): an idle device costs less, a device's alerts in
        // flight are stored together, and sizes are checked; MQTTnet still handles every packet, and sends its PUBACK,
        // one by one and in order.
        _server = factory.CreateMqttServer(built, [new DeviceListener(this, AdmitConnection, _logger, _refusedPacketLog)]);
        _server.ValidatingConnectionAsync += ValidateConnectionAsync;
        _server.InterceptingSubscriptionAsync += InterceptSubscriptionAsync;
        _server.InterceptingUnsubscriptionAsync += InterceptUnsubscriptionAsync;
        _server.InterceptingPublishAsync += InterceptPublishAsync;
        _server.ClientConnectedAsync += e =>
        {
            // Here, not when validating: a resumed persistent session keeps the items of the connection that made it,
            // so what belongs to this connection (its address, its protocol) is set on the session it actually got.
            // MQTTnet awaits this before it reads the connection's first packet.
            e.SessionItems[SessionPeer] = e.RemoteEndPoint;
            if (e.ProtocolVersion == MQTTnet.Formatter.MqttProtocolVersion.V500)
            {
                e.SessionItems[SessionMqtt5] = true;
            }
            else
            {
                e.SessionItems.Remove(SessionMqtt5);
            }

            _presence.ConnectionOpened(e.ClientId);

            // A device subscribed at QoS 0 in a session it resumed need not subscribe again: what was kept for it while
            // it was away (PublishAsync withholds it) goes now. At QoS 1 its session holds those receipts already.
            if (_receiptSubscribers.TryGetValue(e.ClientId, out var qos) && qos == MqttQualityOfServiceLevel.AtMostOnce)
            {
                _receipts.ReplayInBackground(e.ClientId);
            }

            return Task.CompletedTask;
        };
        _server.ClientDisconnectedAsync += e =>
        {
            _presence.ConnectionClosed(e.ClientId);
            return Task.CompletedTask;
        };

        // Kept (final) receipts: the device's PUBACK is what removes one from the spool; its subscription is when the
        // ones its session does not hold (after a restart, a clean session) are handed to it again.
        _server.ClientAcknowledgedPublishPacketAsync += OnReceiptAcknowledgedAsync;
        _server.SessionDeletedAsync += e =>
        {
            // A session that does not outlive its connection (clean session, MQTT 5 expiry 0) takes its subscription
            // with it: receipts for the device wait in the spool for its next subscription, instead of being handed to
            // nobody and retried every second.
            _receiptSubscribers.TryRemove(e.Id, out _);
            _receipts.SessionEnded(e.Id);
            SessionDeleted?.Invoke(e.Id);
            return Task.CompletedTask;
        };
        await _server.StartAsync().ConfigureAwait(false);
        Endpoint = plain;
        if (_guard.Certificate is { } certificate)
        {
            LogTlsCertificate(_guard.CertificateGenerated ? "generated self-signed" : "loaded", certificate.Subject, certificate.GetCertHashString(HashAlgorithmName.SHA256), certificate.NotAfter);
            Security.TlsCertificates.WarnAboutDates(_logger, certificate, _options.Mqtt.CertificatePath, _options.DataPath(), "MQTT over TLS", "Mqtt:CertificatePath", _clock.GetUtcNow());
        }

        LogListening(ListenerNames(plain, TlsEndpoint), _devices.EnabledCount);
    }

    private static string ListenerNames(IPEndPoint? plain, IPEndPoint? tls) =>
        string.Join(" and ", new[] { plain is null ? null : $"{plain} (plain)", tls is null ? null : $"{tls} (TLS)" }.Where(n => n is not null));

    /// <inheritdoc />
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_server is not null)
        {
            await _server.StopAsync().ConfigureAwait(false);
        }
    }

    /// <inheritdoc />
    public void Dispose() => _server?.Dispose();

    /// <inheritdoc />
    public bool IsListening(string deviceId) => _receiptSubscribers.ContainsKey(deviceId);

    /// <summary>Whether the broker is up and accepting connections.</summary>
    public bool IsRunning => _server is { IsStarted: true };

    /// <summary>
    /// Hands a receipt to the device's own session. MQTTnet's publish path (InjectApplicationMessage) copies the list of
    /// every session holding a subscription and checks each one against the topic: with 10,000 subscribed devices that
    /// was 10,000 checks and an 80 KB list per receipt, two receipts per alert. A device may subscribe to nothing but its
    /// own receipt topic, so its session is the only possible subscriber: the receipt goes into that session's queue, at
    /// the QoS it subscribed with (at most 1), as MQTTnet's dispatch would have put it. No session holding the
    /// subscription is what MQTTnet reports as "not consumed"; a full queue drops it, as dispatch does (a kept receipt
    /// stays in the spool).
    /// </summary>
    /// <param name="deviceId">Device.</param>
    /// <param name="payload">Receipt JSON.</param>
    /// <param name="kept">The hand-over of a kept receipt; null for a courtesy one.</param>
    /// <returns>A task completing when queued for the device.</returns>
    public async Task PublishAsync(string deviceId, byte[] payload, ReceiptHand? kept)
    {
        var server = _server ?? throw new InvalidOperationException("The broker is not started.");
        MqttSessionStatus? session = null;
        if (_receiptSubscribers.TryGetValue(deviceId, out var qos))
        {
            try
            {
                session = await server.GetSessionAsync(deviceId).ConfigureAwait(false);
            }
            catch (InvalidOperationException)
            {
                // No session (any more): nobody holds the subscription.
            }
        }

        if (session is null)
        {
            _receipts.NotDelivered(kept);
            return;
        }

        // Asked after the session was found: a clean-session CONNECT makes the publisher forget the old session's
        // receipts (ValidateConnectionAsync) before MQTTnet puts the new session in place. A copy still counted on goes
        // into the session it was handed for (a clean start drops it with that session) or one the device resumed; a
        // copy handed before the session ended would reach the new one beside the copy its subscription's replay gave.
        if (kept is not null && !_receipts.StillHanded(kept))
        {
            return;
        }

        bool atMostOnce = qos == MqttQualityOfServiceLevel.AtMostOnce;
        if (kept is not null && atMostOnce && session.DisconnectedTimestamp is not null)
        {
            // A device away in its persistent session: MQTTnet empties the session's QoS 0 queue when the device resumes
            // it, so the receipt waits in the spool for the replay at its connection instead.
            _receipts.Withheld(kept);
            if (session.DisconnectedTimestamp is null)
            {
                _receipts.ReplayInBackground(deviceId); // it came back meanwhile: its connection's replay may have run already
            }

            return;
        }

        var message = new MqttApplicationMessageBuilder()
            .WithTopic(Topics.Receipt(deviceId))
            .WithPayload(payload)
            .WithQualityOfServiceLevel(atMostOnce ? qos : MqttQualityOfServiceLevel.AtLeastOnce)
            .Build();
        if (session.TryEnqueueApplicationMessage(message, out _) && kept is not null && atMostOnce)
        {
            _receipts.DeliveredAtMostOnce(kept); // no PUBACK will come: handed to its connection is delivered, as it asked
        }
    }

    // A connection just accepted, before anything is read from it: its slot among those not yet authenticated, or null
    // (counted and logged here) to close it at once.
    private IDisposable? AdmitConnection(EndPoint? remote)
    {
        if (_guard.AdmitConnection(remote, out string reason) is { } pending)
        {
            return pending;
        }

        _metrics.MqttConnectsRefused.Add(1, new KeyValuePair<string, object?>("reason", "pending"));
        if (_pendingLog.TryLog(Security.MqttGuard.Source(remote), out long skipped))
        {
            LogRefusedPending(remote?.ToString() ?? "?", reason, skipped);
        }

        return null;
    }

    private Task ValidateConnectionAsync(ValidatingConnectionEventArgs e)
    {
        string user = e.UserName ?? string.Empty;
        var device = _devices.FindEnabled(user);
        byte[] secret = e.RawPassword ?? [];
        bool known = device is not null && _secrets.Recognizes(user, device.SecretHash, secret);
        if (_guard.Refuse(e.RemoteEndPoint, user, known) is { } busy)
        {
            e.ReasonCode = MqttConnectReasonCode.ServerBusy;
            e.ReasonString = busy.Text;
            _metrics.MqttConnectsRefused.Add(1, new KeyValuePair<string, object?>("reason", busy.WrongSecrets ? "wrong_secrets" : "rate"));
            string source = e.RemoteEndPoint is IPEndPoint ip ? ip.Address.ToString() : e.RemoteEndPoint?.ToString() ?? "?";
            if (_busyLog.TryLog(source, out long skipped))
            {
                LogRefusedBusy(e.ClientId ?? string.Empty, e.RemoteEndPoint?.ToString() ?? "?", busy.Text, skipped);
            }
        }
        else if (device is null || !(known || _secrets.Verify(user, device.SecretHash, secret)))
        {
            e.ReasonCode = MqttConnectReasonCode.BadUserNameOrPassword;
            e.ReasonString = "unknown device or wrong secret";
            _metrics.MqttConnectsRefused.Add(1, new KeyValuePair<string, object?>("reason", "credentials"));
            _guard.AuthFailed(e.RemoteEndPoint, user);
            LogRefused(e.ClientId ?? string.Empty, e.RemoteEndPoint?.ToString() ?? "?", "unknown device or wrong secret");
        }
        else if (!string.Equals(e.ClientId, user, StringComparison.Ordinal))
        {
            e.ReasonCode = MqttConnectReasonCode.ClientIdentifierNotValid;
            e.ReasonString = "client id must equal the user name (the device id)";
            _metrics.MqttConnectsRefused.Add(1, new KeyValuePair<string, object?>("reason", "client_id"));
            LogRefused(e.ClientId ?? string.Empty, e.RemoteEndPoint?.ToString() ?? "?", "client id differs from user name");
        }
        else
        {
            if (e.ChannelAdapter is DeviceChannel channel)
            {
                channel.Authenticated(device.Id);
            }

            if (e.CleanSession == true)
            {
                _receiptSubscribers.TryRemove(user, out _); // a clean session starts without subscriptions
                _receipts.SessionEnded(user); // nor the receipts the old one held
            }
        }

        if (e.ReasonCode != MqttConnectReasonCode.Success && e.ChannelAdapter is DeviceChannel refused)
        {
            refused.Settled();
        }

        return Task.CompletedTask;
    }

    /// <summary>Raised after the broker deleted a device's session and the gateway forgot its receipt subscription (tests).</summary>
    public event Action<string>? SessionDeleted;

    /// <summary>Raised after a device's sessions were ended because it was disabled or given a new secret (tests).</summary>
    public event Action<string>? DeviceDisconnected;

    // Only the changed device's connection ends; every other session goes on. A disabled device also loses its
    // persistent session (queued receipts for it would never be read).
    private void OnDeviceChanged(Devices.DeviceChange change)
    {
        if (!change.CredentialsChanged || _server is not { IsStarted: true } server)
        {
            return;
        }

        _ = DisconnectAsync(server, change.Id);
    }

    private async Task DisconnectAsync(MqttServer server, string deviceId)
    {
        try
        {
            // By id: listing every client and session is O(fleet) per change (10,000 status objects each).
            try
            {
                await server.DisconnectClientAsync(deviceId, new MqttServerClientDisconnectOptions { ReasonCode = MqttDisconnectReasonCode.NormalDisconnection }).ConfigureAwait(false);
            }
            catch (InvalidOperationException)
            {
                // Not connected.
            }

            if (_devices.Find(deviceId) is { Disabled: true })
            {
                try
                {
                    await (await server.GetSessionAsync(deviceId).ConfigureAwait(false)).DeleteAsync().ConfigureAwait(false);
                }
                catch (InvalidOperationException)
                {
                    // No session.
                }

                _receiptSubscribers.TryRemove(deviceId, out _);
                _receipts.SessionEnded(deviceId);
            }

            LogDeviceDisconnected(deviceId);
            DeviceDisconnected?.Invoke(deviceId);
        }
#pragma warning disable CA1031 // The change is committed; a session that could not be ended ends at its next CONNECT check.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            LogDisconnectFailed(ex, deviceId);
        }
    }

    // MQTTnet does not keep the subscription: receipts go straight into the device's session (PublishAsync), so its
    // subscription structures (~350 bytes of live heap per subscribed device) would serve nothing. The SUBACK still grants what MQTTnet would.
    // Replay starts once the subscription is recorded, so what it hands over is delivered; the client's packet loop
    // waits for this handler, so the spool is read in the background.
    private Task InterceptSubscriptionAsync(InterceptingSubscriptionEventArgs e)
    {
        e.ProcessSubscription = false;
        if (e.TopicFilter.Topic != Topics.Receipt(e.ClientId))
        {
            e.Response.ReasonCode = MqttSubscribeReasonCode.NotAuthorized;
            LogTopicRefused(e.ClientId, "subscribe", e.TopicFilter.Topic);
        }
        else
        {
            _receiptSubscribers[e.ClientId] = e.TopicFilter.QualityOfServiceLevel;
            _receipts.ReplayInBackground(e.ClientId);
        }

        return Task.CompletedTask;
    }

    private Task OnReceiptAcknowledgedAsync(ClientAcknowledgedPublishPacketEventArgs e)
    {
        if (e.IsCompleted && e.PublishPacket.Topic == Topics.Receipt(e.ClientId))
        {
            _receipts.Acknowledged(e.ClientId, e.PublishPacket.Payload);
        }

        return Task.CompletedTask;
    }

    private Task InterceptUnsubscriptionAsync(InterceptingUnsubscriptionEventArgs e)
    {
        // MQTTnet holds no subscription (InterceptSubscriptionAsync), so it would answer "no subscription existed".
        if (e.Topic == Topics.Receipt(e.ClientId) && _receiptSubscribers.TryRemove(e.ClientId, out _))
        {
            e.Response.ReasonCode = MqttUnsubscribeReasonCode.Success;
        }

        return Task.CompletedTask;
    }

    private async Task InterceptPublishAsync(InterceptingPublishEventArgs e)
    {
        if (string.IsNullOrEmpty(e.ClientId))
        {
            return; // not from a device (the gateway injects nothing: receipts go straight into sessions, PublishAsync)
        }

        e.ProcessPublish = false; // the gateway is the only consumer of device topics
        string topic = e.ApplicationMessage.Topic;
        var kind = Topics.Classify(topic, e.ClientId);
        if (kind == TopicKind.None)
        {
            // MQTT 5 refuses the one message (PUBACK 0x87) and the device goes on; MQTT 3.1.1 has no refusing PUBACK,
            // and a PUBACK would tell the device its alert was taken, so the connection is closed.
            LogTopicRefused(e.ClientId, "publish", topic);
            e.Response.ReasonCode = MqttPubAckReasonCode.NotAuthorized;
            e.Response.ReasonString = $"not authorized: a device publishes only to edgemail/v1/{e.ClientId}/alert and /status";
            e.CloseConnection = !e.SessionItems.Contains(SessionMqtt5);
            return;
        }

        var payload = e.ApplicationMessage.Payload;
        ReadOnlyMemory<byte> bytes = payload.IsSingleSegment ? payload.First : System.Buffers.BuffersExtensions.ToArray(payload);
        try
        {
            // Begun when the packet arrived (same device, same alert topic, rate already reserved): its PUBACK waits
            // for that store's commit exactly as for one begun here.
            if (kind == TopicKind.Alert && payload.Start.GetObject() is { } key && _prestored.TryRemove(key, out var prestored))
            {
                if (prestored.Device == e.ClientId)
                {
                    await prestored.Stored.ConfigureAwait(false);
                    return;
                }

                _ = prestored.Stored.Exception; // not this device's: cannot happen, but never acknowledge on its strength
            }

            if (kind == TopicKind.Alert)
            {
                await StoreAlertAsync(e.ClientId, PeerOf(e.SessionItems), bytes, e.CancellationToken).ConfigureAwait(false);
            }
            else
            {
                var delay = _guard.PublishDelay(e.ClientId);
                if (delay > TimeSpan.Zero)
                {
                    await ThrottleAsync(delay, e.CancellationToken).ConfigureAwait(false);
                }

                await _ingest.IngestStatusAsync(e.ClientId, bytes, e.CancellationToken).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is Spool.SpoolException or OperationCanceledException)
        {
            // Not durable: no PUBACK. Closing the connection is the only refusal MQTT 3.1.1 understands.
            LogNotStored(ex, e.ClientId);
            e.Response.ReasonCode = MqttPubAckReasonCode.ImplementationSpecificError;
            e.CloseConnection = true;
        }
    }

    /// <inheritdoc />
    object? IReadAheadSink.Prestore(string deviceId, string? peer, MQTTnet.Packets.MqttPublishPacket packet, CancellationToken stop)
    {
        // Only what the interceptor would store as this device's alert, as it would: anything else (another topic,
        // QoS 0 or 2, a topic alias) is left to the interceptor, which refuses or handles it as before.
        try
        {
            var payload = packet.Payload;
            if (packet.QualityOfServiceLevel != MqttQualityOfServiceLevel.AtLeastOnce || string.IsNullOrEmpty(packet.Topic) || payload.IsEmpty || !payload.IsSingleSegment
                || payload.Start.GetObject() is not { } key || Topics.Classify(packet.Topic, deviceId) != TopicKind.Alert)
            {
                return null;
            }

            _prestored[key] = new Prestored(deviceId, StoreAlertAsync(deviceId, peer, payload.First, stop));
            return key;
        }
        catch (Exception ex)
        {
            // Never into MQTTnet's receive loop: the interceptor handles this packet as it would without read-ahead.
            LogPrestoreFailed(ex, deviceId);
            return null;
        }
    }

    /// <inheritdoc />
    void IReadAheadSink.Forget(object key)
    {
        if (_prestored.TryRemove(key, out var prestored))
        {
            _ = prestored.Stored.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
    }

    // Over its rate, the store (and so the PUBACK) waits: MQTTnet reads the client's next packet only after that, and
    // read-ahead goes no further than its depth, so a device that floods slows itself down and nobody else.
    private Task<Spool.AcceptOutcome> StoreAlertAsync(string deviceId, string? peer, ReadOnlyMemory<byte> payload, CancellationToken stop)
    {
        var delay = _guard.PublishDelay(deviceId);
        return delay > TimeSpan.Zero ? StoreAfterAsync(delay, deviceId, peer, payload, stop) : _ingest.IngestAlertAsync(deviceId, peer, payload, stop);
    }

    private async Task<Spool.AcceptOutcome> StoreAfterAsync(TimeSpan delay, string deviceId, string? peer, ReadOnlyMemory<byte> payload, CancellationToken stop)
    {
        await ThrottleAsync(delay, stop).ConfigureAwait(false);
        return await _ingest.IngestAlertAsync(deviceId, peer, payload, stop).ConfigureAwait(false);
    }

    private Task ThrottleAsync(TimeSpan delay, CancellationToken stop)
    {
        _metrics.IngestThrottled.Add(1);
        return Task.Delay(delay, _clock, stop);
    }

    private sealed record Prestored(string Device, Task Stored);

    private static string? PeerOf(System.Collections.IDictionary items)
    {
        switch (items[SessionPeer])
        {
            case string text:
                return text;
            case EndPoint endpoint:
                string made = endpoint.ToString() ?? string.Empty;
                items[SessionPeer] = made;
                return made;
            default:
                return null;
        }
    }

    // MQTTnet does not report the port it bound, so port 0 is resolved by asking the OS first.
    internal static int ReserveFreePort(IPAddress address)
    {
        using var probe = new TcpListener(address, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "MQTT broker listening on {Endpoints} for {Devices} device(s)")]
    private partial void LogListening(string endpoints, int devices);

    [LoggerMessage(Level = LogLevel.Information, Message = "MQTT over TLS with a {Origin} certificate {Subject}, SHA-256 {Fingerprint} (the value devices pin), valid until {NotAfter:yyyy-MM-dd}")]
    private partial void LogTlsCertificate(string origin, string subject, string fingerprint, DateTime notAfter);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused MQTT connection of '{ClientId}' from {Peer}: {Reason}")]
    private partial void LogRefused(string clientId, string peer, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused MQTT connection of '{ClientId}' from {Peer}: {Reason} (at most one such line a minute per address, {Skipped} more since the last; every refusal is counted in edgemail_mqtt_connects_refused_total)")]
    private partial void LogRefusedBusy(string clientId, string peer, string reason, long skipped);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Closed a new MQTT connection from {Peer} before reading from it, as connections not yet authenticated are over their limit: {Reason} (at most one such line a minute per address, {Skipped} more since the last; every one is counted in edgemail_mqtt_connects_refused_total{{reason=\"pending\"}})")]
    private partial void LogRefusedPending(string peer, string reason, long skipped);

    [LoggerMessage(Level = LogLevel.Information, Message = "Device {Device} was disabled or given a new secret: its MQTT connection was ended")]
    private partial void LogDeviceDisconnected(string device);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not end the MQTT session of device {Device}")]
    private partial void LogDisconnectFailed(Exception ex, string device);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Device {Device} may not {Action} '{Topic}'; only its own edgemail/v1/{Device}/... topics")]
    private partial void LogTopicRefused(string device, string action, string topic);

    [LoggerMessage(Level = LogLevel.Error, Message = "Could not begin storing an alert of {Device} as it arrived; the broker's publish check stores it instead")]
    private partial void LogPrestoreFailed(Exception ex, string device);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Alert from {Device} not stored; closing its connection without PUBACK so it retries")]
    private partial void LogNotStored(Exception ex, string device);
}

/// <summary>What a device may publish to.</summary>
public enum TopicKind
{
    /// <summary>Not allowed.</summary>
    None,

    /// <summary><c>edgemail/v1/{id}/alert</c>.</summary>
    Alert,

    /// <summary><c>edgemail/v1/{id}/status</c>.</summary>
    Status,
}

/// <summary>The topic names of Contract 1.</summary>
public static class Topics
{
    /// <summary>The receipt topic of a device.</summary>
    /// <param name="deviceId">Device.</param>
    /// <returns>The topic.</returns>
    public static string Receipt(string deviceId) => $"edgemail/v1/{deviceId}/receipt";

    /// <summary>Classifies a topic a device published to.</summary>
    /// <param name="topic">Topic.</param>
    /// <param name="deviceId">The publishing device.</param>
    /// <returns>Alert, status, or not allowed.</returns>
    public static TopicKind Classify(string topic, string deviceId)
    {
        ArgumentNullException.ThrowIfNull(topic);
        ArgumentNullException.ThrowIfNull(deviceId);
        const string Prefix = "edgemail/v1/";
        var rest = topic.AsSpan();
        if (!rest.StartsWith(Prefix, StringComparison.Ordinal) || !rest[Prefix.Length..].StartsWith(deviceId, StringComparison.Ordinal))
        {
            return TopicKind.None;
        }

        rest = rest[(Prefix.Length + deviceId.Length)..];
        return rest switch
        {
            "/alert" => TopicKind.Alert,
            "/status" => TopicKind.Status,
            _ => TopicKind.None,
        };
    }
}
