using System.Collections.Concurrent;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MQTTnet;

namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// MQTT ingest as a client of a broker the site already runs (<c>Mqtt:Mode = external</c>). The gateway holds a
/// persistent session there and subscribes with QoS 1 to every device's alert and status topics. Each message is
/// acknowledged (PUBACK) only after the spool committed it: MQTTnet's automatic acknowledgement is switched off, the
/// messages are stored concurrently (so the spool's group commit batches them) and acknowledged in the order they
/// arrived. A message that could not be stored (the spool failed) is not acknowledged; the connection is dropped so
/// the broker redelivers it. An alert whose handling fails for a reason of its own is kept as rejected and
/// acknowledged (<see cref="AlertIngest.KeepFailedAsync"/>), a status heartbeat dropped: redelivered, it would stop
/// every device's messages behind it for ever. The device id comes from the topic only, and a device missing from
/// <c>Devices</c> is refused: its alert is kept as rejected with the reason. Receipts go back through the same connection.
/// The parts: <see cref="ExternalBrokerLink"/> (connection and backoff), <see cref="OrderedAckPipeline"/> (PUBACKs in
/// order after the commit), <see cref="ExternalReceiptSink"/> (receipts); this class stores what arrives.
/// </summary>
public sealed partial class ExternalBrokerClient : IHostedService, IReceiptSink, IDisposable
{
    private readonly AlertIngest _ingest;
    private readonly ISpool _spool;
    private readonly Devices.DeviceRegistry _devices;
    private readonly ReceiptPublisher _receipts;
    private readonly TimeProvider _clock;
    private readonly ILogger<ExternalBrokerClient> _logger;
    private readonly ConcurrentDictionary<string, bool> _unknownReported = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stopping = new();
    private readonly ExternalBrokerLink _link;
    private readonly OrderedAckPipeline _acks;
    private readonly ExternalReceiptSink _receiptSink;
    private readonly ExternalBrokerOptions _broker;
    private Task _run = Task.CompletedTask;
    private Task _acking = Task.CompletedTask;
    private Task _sweep = Task.CompletedTask;

    /// <summary>Creates the client; it connects once the host starts it.</summary>
    /// <param name="options">Gateway options (<c>Mqtt:External</c>).</param>
    /// <param name="ingest">Where alerts and status of known devices go.</param>
    /// <param name="spool">Where alerts of unknown devices are kept as rejected.</param>
    /// <param name="receipts">Receipts (the rejection of an unknown device's alert).</param>
    /// <param name="clock">Clock for backoff waits and receive times.</param>
    /// <param name="logger">Where the client reports what it does.</param>
    /// <param name="devices">Which devices are known and enabled.</param>
    public ExternalBrokerClient(IOptions<GatewayOptions> options, AlertIngest ingest, ISpool spool, ReceiptPublisher receipts, TimeProvider clock, ILogger<ExternalBrokerClient> logger,
        Devices.DeviceRegistry devices)
    {
        _devices = devices;
        ArgumentNullException.ThrowIfNull(options);
        _ingest = ingest;
        _spool = spool;
        _receipts = receipts;
        _clock = clock;
        _logger = logger;
        var broker = options.Value.Mqtt.External;
        _broker = broker;
        _link = new ExternalBrokerLink(broker, OnMessageAsync, clock, logger, _stopping.Token);
        _acks = new OrderedAckPipeline(_link, broker.MaxInFlight, logger);
        _receiptSink = new ExternalReceiptSink(_link, clock, logger, _stopping.Token, receipts);
    }

    /// <summary>Completes when the client is connected and subscribed (the current connection; reset when it is lost).</summary>
    public Task Connected => _link.Connected;

    /// <summary>Test hook: runs after a message is received and before it is stored (simulates a crash in between).</summary>
    internal Func<string, CancellationToken, Task>? BeforeStore { get; set; }

    /// <summary>Test hook: runs when a connection is up, before the link goes on (holds it while messages already arrive).</summary>
    internal Func<CancellationToken, Task>? AfterConnect
    {
        get => _link.AfterConnect;
        set => _link.AfterConnect = value;
    }

    /// <inheritdoc />
    public Task StartAsync(CancellationToken cancellationToken)
    {
        _acking = Task.Run(() => _acks.RunAsync(_stopping.Token), CancellationToken.None);
        _run = Task.Run(() => _link.RunAsync(_stopping.Token), CancellationToken.None);
        _sweep = Task.Run(_receiptSink.SweepAsync, CancellationToken.None);
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_broker.SharedGroup.Length > 0)
        {
            await LeaveGroupAsync(cancellationToken).ConfigureAwait(false);
        }

        await _stopping.CancelAsync().ConfigureAwait(false);
        _acks.Complete();
        await Task.WhenAll(_run, _acking, _sweep).WaitAsync(cancellationToken).ConfigureAwait(false);
        await _link.CloseAsync(cancellationToken).ConfigureAwait(false);
    }

    // A member of a share group that disconnects with its session kept is still dealt messages by some brokers (measured
    // on mosquitto 2.0.11: docs/scale-out.md); they would wait in its session until it came back. So it leaves the group
    // first and stores and acknowledges what the broker had already sent it, until nothing new arrived for a quiet period.
    private async Task LeaveGroupAsync(CancellationToken cancellationToken)
    {
        if (!await _link.LeaveGroupAsync(cancellationToken).ConfigureAwait(false))
        {
            return; // not connected: what it was sent and did not acknowledge is redelivered to its session
        }

        long seen = -1;
        try
        {
            while (_acks.Outstanding > 0 || _acks.Received != seen)
            {
                seen = _acks.Received;
                await Task.Delay(_broker.LeaveQuietPeriod, _clock, cancellationToken).ConfigureAwait(false);
            }

            LogLeftGroup(_broker.SharedGroup, _acks.Received);
        }
        catch (OperationCanceledException)
        {
            // The host's shutdown timeout: what is not acknowledged stays in this instance's session.
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Left the share group '{Group}' and acknowledged everything the broker had sent ({Received} messages since start)")]
    private partial void LogLeftGroup(string group, long received);

    /// <inheritdoc />
    public void Dispose()
    {
        _link.Dispose();
        _stopping.Dispose();
        _receiptSink.Dispose();
    }

    /// <inheritdoc />
    public Task PublishAsync(string deviceId, byte[] payload, ReceiptHand? kept) => _receiptSink.PublishAsync(deviceId, payload, kept);

    // PUBACK only after the spool commit: acknowledged by the pipeline, not by MQTTnet on return.
    private Task OnMessageAsync(MqttApplicationMessageReceivedEventArgs e) =>
        _acks.AddAsync(e, (topic, payload) => StoreAsync(topic, payload, _stopping.Token), _stopping.Token);

    private async Task StoreAsync(string topic, byte[] payload, CancellationToken cancellationToken)
    {
        var kind = ExternalTopics.Parse(topic, out string device);
        try
        {
            if (BeforeStore is { } hook)
            {
                await hook(topic, cancellationToken).ConfigureAwait(false);
            }

            if (kind == TopicKind.None)
            {
                LogForeignTopic(topic);
                return; // nothing of ours: acknowledged so the broker does not resend it forever
            }

            if (await _devices.FindFreshAsync(device, cancellationToken).ConfigureAwait(false) is not { Disabled: false })
            {
                await RefuseUnknownAsync(device, kind, topic, payload, cancellationToken).ConfigureAwait(false);
                return;
            }

            if (kind == TopicKind.Alert)
            {
                // The broker does not tell the device's address; the Received trace names the device only.
                await _ingest.IngestAlertAsync(device, null, payload, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                await _ingest.IngestStatusAsync(device, payload, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
        {
            // Not acknowledged, the broker would deliver this message first again and again, and every device's after it.
            if (kind == TopicKind.Alert)
            {
                await _ingest.KeepFailedAsync(device, null, payload, ex, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                LogHandlingFailed(ex, topic);
            }
        }
    }

    private async Task RefuseUnknownAsync(string device, TopicKind kind, string topic, byte[] payload, CancellationToken cancellationToken)
    {
        if (kind == TopicKind.Status)
        {
            if (_unknownReported.Count < 10_000 && _unknownReported.TryAdd(device, true))
            {
                LogUnknownStatus(device, topic);
            }

            return; // acknowledged and dropped
        }

        var (kept, reason) = AlertParser.KeepRejected(payload, _devices.Find(device) is { Disabled: true }
            ? $"device '{device}' is disabled"
            : $"unknown device '{device}': not configured under Devices");
        string alertId = AlertParser.Parse(kept.Span).Id ?? AlertParser.RejectedId(payload);
        var incoming = new IncomingAlert(device, alertId, _clock.GetUtcNow(), null, kept, reason, null);
        await _spool.AcceptAlertAsync(incoming, cancellationToken).ConfigureAwait(false);
        LogUnknownAlert(device, alertId, topic, reason);
        if (GatewayOptionsValidator.DeviceIdRegex().IsMatch(device))
        {
            await _receipts.PublishAsync(device, alertId, ReceiptState.Rejected, reason, cancellationToken).ConfigureAwait(false);
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Rejected alert {AlertId} of '{Device}' (topic {Topic}): {Reason}; kept as rejected. The broker's ACL should not let it publish there.")]
    private partial void LogUnknownAlert(string device, string alertId, string topic, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Ignoring status of unknown device '{Device}' (topic {Topic}): not configured under Devices")]
    private partial void LogUnknownStatus(string device, string topic);

    [LoggerMessage(Level = LogLevel.Error, Message = "Handling a message on '{Topic}' failed; dropped it and acknowledged it")]
    private partial void LogHandlingFailed(Exception ex, string topic);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Ignoring a message on '{Topic}': not an edgemail/v1/{{device}}/alert or status topic")]
    private partial void LogForeignTopic(string topic);
}
