using System.Collections.Concurrent;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Threading.Channels;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MQTTnet;
using MQTTnet.Exceptions;
using MQTTnet.Protocol;

namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// MQTT ingest as a client of a broker the site already runs (<c>Mqtt:Mode = external</c>). The gateway holds a
/// persistent session there and subscribes with QoS 1 to every device's alert and status topics. Each message is
/// acknowledged (PUBACK) only after the spool committed it: MQTTnet's automatic acknowledgement is switched off, the
/// messages are stored concurrently (so the spool's group commit batches them) and acknowledged in the order they
/// arrived. A message that could not be stored is not acknowledged; the connection is dropped so the broker
/// redelivers it. The device id comes from the topic only, and a device missing from <c>Devices</c> is refused:
/// its alert is kept as rejected with the reason. Receipts go back through the same connection.
/// </summary>
public sealed partial class ExternalBrokerClient : IHostedService, IReceiptSink, IDisposable
{
    private const int MaxReceiptsInFlight = 64;
    private static readonly TimeSpan ReceiptTimeout = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan ReceiptWaitForConnection = TimeSpan.FromSeconds(2);

    private readonly GatewayOptions _options;
    private readonly ExternalBrokerOptions _broker;
    private readonly AlertIngest _ingest;
    private readonly ISpool _spool;
    private readonly Devices.DeviceRegistry _devices;
    private readonly ReceiptPublisher _receipts;
    private readonly TimeProvider _clock;
    private readonly ILogger<ExternalBrokerClient> _logger;
    private readonly IMqttClient _client;
    private readonly MqttClientOptions _clientOptions;
    private readonly Channel<Pending> _pending;
    private readonly SemaphoreSlim _receiptSlots = new(MaxReceiptsInFlight, MaxReceiptsInFlight);
    private readonly ConcurrentDictionary<string, bool> _unknownReported = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stopping = new();
    private readonly Lock _signalLock = new();
    private TaskCompletionSource _connected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private TaskCompletionSource _lost = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _generation;
    private int _receiptOutageReported;
    private Task _run = Task.CompletedTask;
    private Task _acks = Task.CompletedTask;

    /// <summary>Creates the client; it connects once the host starts it.</summary>
    /// <param name="options">Gateway options (<c>Mqtt:External</c> and the known <c>Devices</c>).</param>
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
        _options = options.Value;
        _broker = _options.Mqtt.External;
        _ingest = ingest;
        _spool = spool;
        _receipts = receipts;
        _clock = clock;
        _logger = logger;
        _clientOptions = ExternalBrokerConnection.ClientOptions(_broker);
        _pending = Channel.CreateBounded<Pending>(new BoundedChannelOptions(Math.Max(1, _broker.MaxInFlight))
        {
            SingleReader = true,
            SingleWriter = true,
        });
        _client = new MqttClientFactory().CreateMqttClient();
        _client.ApplicationMessageReceivedAsync += OnMessageAsync;
        _client.DisconnectedAsync += OnDisconnectedAsync;
    }

    /// <summary>Completes when the client is connected and subscribed (the current connection; reset when it is lost).</summary>
    public Task Connected
    {
        get
        {
            lock (_signalLock)
            {
                return _connected.Task;
            }
        }
    }

    /// <summary>Test hook: runs after a message is received and before it is stored (simulates a crash in between).</summary>
    internal Func<string, CancellationToken, Task>? BeforeStore { get; set; }

    /// <inheritdoc />
    public Task StartAsync(CancellationToken cancellationToken)
    {
        _acks = Task.Run(() => AcknowledgeInOrderAsync(_stopping.Token), CancellationToken.None);
        _run = Task.Run(() => RunAsync(_stopping.Token), CancellationToken.None);
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _stopping.CancelAsync().ConfigureAwait(false);
        _pending.Writer.TryComplete();
        await Task.WhenAll(_run, _acks).WaitAsync(cancellationToken).ConfigureAwait(false);
        if (_client.IsConnected)
        {
            // A normal DISCONNECT keeps the session: what is not acknowledged yet is redelivered on the next start.
            try
            {
                await _client.DisconnectAsync(new MqttClientDisconnectOptionsBuilder().WithReason(MqttClientDisconnectOptionsReason.NormalDisconnection).Build(), cancellationToken).ConfigureAwait(false);
            }
            catch (MqttCommunicationException ex)
            {
                LogDisconnectFailed(ex);
            }
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _client.Dispose();
        _stopping.Dispose();
        _receiptSlots.Dispose();
    }

    /// <inheritdoc />
    public async Task PublishAsync(string deviceId, byte[] payload)
    {
        if (!_client.IsConnected)
        {
            // A receipt made while the broker is away waits briefly for the reconnect, then is dropped: receipts are
            // a courtesy, and the alert's state stays in the spool.
            bool first = Interlocked.Exchange(ref _receiptOutageReported, 1) == 0;
            if (first)
            {
                try
                {
                    await Connected.WaitAsync(ReceiptWaitForConnection, _clock, _stopping.Token).ConfigureAwait(false);
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
        await _receiptSlots.WaitAsync(_stopping.Token).ConfigureAwait(false);
        _ = PublishReceiptAsync(deviceId, message);
    }

    private async Task PublishReceiptAsync(string deviceId, MqttApplicationMessage message)
    {
        try
        {
            // Without a token MQTTnet waits for the PUBACK forever; several receipts are in flight at once.
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
            timeout.CancelAfter(ReceiptTimeout);
            var result = await _client.PublishAsync(message, timeout.Token).ConfigureAwait(false);
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
                _receiptSlots.Release();
            }
            catch (ObjectDisposedException)
            {
                // Stopped meanwhile.
            }
        }
    }

    private async Task RunAsync(CancellationToken stop)
    {
        int failures = 0;
        while (!stop.IsCancellationRequested)
        {
            string problem;
            try
            {
                problem = await ConnectOnceAsync(stop).ConfigureAwait(false) ?? string.Empty;
                if (problem.Length == 0)
                {
                    failures = 0;
                    Task lost;
                    lock (_signalLock)
                    {
                        lost = _lost.Task;
                    }

                    await lost.WaitAsync(stop).ConfigureAwait(false);
                    continue; // reconnect at once; the backoff applies to failed attempts
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                break;
            }
            catch (Exception ex) when (ex is MqttCommunicationException or OperationCanceledException or AuthenticationException or IOException
                or InvalidOperationException or System.Net.Sockets.SocketException)
            {
                problem = ex.InnerException is { } inner ? $"{ex.Message} ({inner.Message})" : ex.Message;
            }

            failures++;
            var delay = Backoff(failures);
            LogConnectFailed(_broker.Host, _broker.Port, problem, delay);
            try
            {
                await Task.Delay(delay, _clock, stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }
    }

    /// <summary>One connection attempt: CONNECT, then SUBSCRIBE. Returns null when connected and subscribed, else the problem.</summary>
    private async Task<string?> ConnectOnceAsync(CancellationToken stop)
    {
        lock (_signalLock)
        {
            if (_lost.Task.IsCompleted)
            {
                _lost = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stop);
        timeout.CancelAfter(_broker.ConnectTimeout);
        var result = await _client.ConnectAsync(_clientOptions, timeout.Token).ConfigureAwait(false);
        if (result.ResultCode != MqttClientConnectResultCode.Success)
        {
            string hint = result.ResultCode switch
            {
                MqttClientConnectResultCode.BadUserNameOrPassword or MqttClientConnectResultCode.NotAuthorized =>
                    "; check Mqtt:External:Username and Mqtt:External:Password against the broker's password file",
                MqttClientConnectResultCode.ClientIdentifierNotValid => "; check Mqtt:External:ClientId",
                MqttClientConnectResultCode.UnsupportedProtocolVersion => "; set Mqtt:External:ProtocolVersion to 3.1.1 for brokers without MQTT 5",
                _ => string.Empty,
            };
            return $"the broker refused the connection: {result.ResultCode} {result.ReasonString}{hint}";
        }

        int generation = Interlocked.Increment(ref _generation);
        bool subscribe = !result.IsSessionPresent || !ExternalBrokerConnection.IsV311(_broker);
        if (subscribe)
        {
            var granted = await _client.SubscribeAsync(ExternalBrokerConnection.SubscribeOptions(), timeout.Token).ConfigureAwait(false);
            foreach (var item in granted.Items)
            {
                if (item.ResultCode != MqttClientSubscribeResultCode.GrantedQoS1 && item.ResultCode != MqttClientSubscribeResultCode.GrantedQoS2)
                {
                    await DisconnectQuietlyAsync().ConfigureAwait(false);
                    return $"the broker granted '{item.TopicFilter.Topic}' as {item.ResultCode}, not QoS 1; allow the gateway's user to read "
                        + "edgemail/v1/+/alert and edgemail/v1/+/status and write edgemail/v1/+/receipt in the broker's ACL";
                }
            }
        }

        lock (_signalLock)
        {
            _connected.TrySetResult();
        }

        Interlocked.Exchange(ref _receiptOutageReported, 0);
        LogConnected(_broker.Host, _broker.Port, _broker.ClientId, result.IsSessionPresent, generation);
        return null;
    }

    private async Task DisconnectQuietlyAsync()
    {
        try
        {
            await _client.DisconnectAsync().ConfigureAwait(false);
        }
        catch (MqttCommunicationException ex)
        {
            LogDisconnectFailed(ex);
        }
    }

    private TimeSpan Backoff(int failures)
    {
        double first = Math.Max(_broker.ReconnectDelay.TotalMilliseconds, 1);
        double max = Math.Max(_broker.MaxReconnectDelay.TotalMilliseconds, first);
        double wait = Math.Min(max, first * Math.Pow(2, Math.Min(failures - 1, 30)));

        // Jitter between 75 % and 100 % so several gateways do not reconnect in step; deterministic per client id and attempt.
        uint hash = 2166136261;
        foreach (char c in _broker.ClientId + "#" + failures.ToString(System.Globalization.CultureInfo.InvariantCulture))
        {
            hash = (hash ^ c) * 16777619;
        }

        double jitter = 0.75 + (0.25 * (hash / (double)uint.MaxValue));
        return TimeSpan.FromMilliseconds(wait * jitter);
    }

    private Task OnDisconnectedAsync(MqttClientDisconnectedEventArgs e)
    {
        if (!e.ClientWasConnected)
        {
            return Task.CompletedTask;
        }

        lock (_signalLock)
        {
            if (_connected.Task.IsCompleted)
            {
                _connected = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            _lost.TrySetResult();
        }

        if (!_stopping.IsCancellationRequested)
        {
            LogLost(_broker.Host, _broker.Port, e.Reason.ToString(), e.Exception?.Message ?? e.ReasonString ?? string.Empty);
        }

        return Task.CompletedTask;
    }

    private async Task OnMessageAsync(MqttApplicationMessageReceivedEventArgs e)
    {
        // PUBACK only after the spool commit: acknowledged by AcknowledgeInOrderAsync, not by MQTTnet on return.
        e.AutoAcknowledge = false;
        int generation = Volatile.Read(ref _generation);
        byte[] payload = e.ApplicationMessage.Payload.IsEmpty ? [] : System.Buffers.BuffersExtensions.ToArray(e.ApplicationMessage.Payload);
        var work = StoreAsync(e.ApplicationMessage.Topic, payload, _stopping.Token);
        try
        {
            await _pending.Writer.WriteAsync(new Pending(e, work, generation), _stopping.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is OperationCanceledException or ChannelClosedException)
        {
            // Stopping: the message stays unacknowledged and the broker redelivers it after the restart.
        }
    }

    private async Task StoreAsync(string topic, byte[] payload, CancellationToken cancellationToken)
    {
        await Task.Yield(); // the receive loop goes on to the next message while this one is stored
        if (BeforeStore is { } hook)
        {
            await hook(topic, cancellationToken).ConfigureAwait(false);
        }

        var kind = ExternalTopics.Parse(topic, out string device);
        if (kind == TopicKind.None)
        {
            LogForeignTopic(topic);
            return; // nothing of ours: acknowledged so the broker does not resend it forever
        }

        if (_devices.FindEnabled(device) is null)
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

        string reason = $"unknown device '{device}': not configured under Devices";
        var trimmed = payload.Length > AlertParser.MaxPayloadBytes ? payload.AsMemory(0, AlertParser.MaxPayloadBytes) : payload;
        string alertId = AlertParser.Parse(trimmed.Span).Id ?? "rejected-" + Convert.ToHexStringLower(SHA256.HashData(payload).AsSpan(0, 16));
        var incoming = new IncomingAlert(device, alertId, _clock.GetUtcNow(), null, trimmed, reason, null);
        await _spool.AcceptAlertAsync(incoming, cancellationToken).ConfigureAwait(false);
        LogUnknownAlert(device, alertId, topic);
        if (GatewayOptionsValidator.DeviceIdRegex().IsMatch(device))
        {
            await _receipts.PublishAsync(device, alertId, ReceiptState.Rejected, reason, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Acknowledges stored messages in the order they arrived (MQTT requires PUBACKs in order).</summary>
    private async Task AcknowledgeInOrderAsync(CancellationToken stop)
    {
        try
        {
            await foreach (var pending in _pending.Reader.ReadAllAsync(stop).ConfigureAwait(false))
            {
                try
                {
                    await pending.Work.ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    if (stop.IsCancellationRequested)
                    {
                        return;
                    }

                    // Not durable: no PUBACK. Dropping the connection makes the broker redeliver this message and every
                    // later one of this connection; those already stored come back as duplicates and are acknowledged then.
                    if (Interlocked.CompareExchange(ref _generation, pending.Generation + 1, pending.Generation) == pending.Generation)
                    {
                        LogNotStored(ex, pending.Args.ApplicationMessage.Topic);
                        await DisconnectQuietlyAsync().ConfigureAwait(false);
                    }

                    continue;
                }

                if (pending.Generation != Volatile.Read(ref _generation) || !_client.IsConnected)
                {
                    continue; // received on a connection that is gone: the broker redelivers it
                }

                try
                {
                    await pending.Args.AcknowledgeAsync(stop).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is not OperationCanceledException || !stop.IsCancellationRequested)
                {
                    // The connection broke under the PUBACK: the broker redelivers the message and the spool sees a duplicate.
                    LogAckFailed(ex, pending.Args.ApplicationMessage.Topic);
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // Stopping: what is not acknowledged is redelivered after the restart.
        }
    }

    private readonly record struct Pending(MqttApplicationMessageReceivedEventArgs Args, Task Work, int Generation);

    [LoggerMessage(Level = LogLevel.Information, Message = "Connected to the external MQTT broker {Host}:{Port} as '{ClientId}' (session present: {SessionPresent}, connection {Generation}); subscribed to edgemail/v1/+/alert and edgemail/v1/+/status")]
    private partial void LogConnected(string host, int port, string clientId, bool sessionPresent, int generation);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Cannot connect to the external MQTT broker {Host}:{Port}: {Problem}. Retrying in {Delay}")]
    private partial void LogConnectFailed(string host, int port, string problem, TimeSpan delay);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Lost the external MQTT broker {Host}:{Port} ({Reason}: {Detail}); reconnecting")]
    private partial void LogLost(string host, int port, string reason, string detail);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Message on {Topic} not stored; dropping the connection without PUBACK so the broker redelivers it")]
    private partial void LogNotStored(Exception ex, string topic);

    [LoggerMessage(Level = LogLevel.Debug, Message = "PUBACK for {Topic} not sent; the broker will redeliver it")]
    private partial void LogAckFailed(Exception ex, string topic);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Rejected alert {AlertId} from unknown device '{Device}' (topic {Topic}): not configured under Devices; kept as rejected. The broker's ACL should not let it publish there.")]
    private partial void LogUnknownAlert(string device, string alertId, string topic);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Ignoring status of unknown device '{Device}' (topic {Topic}): not configured under Devices")]
    private partial void LogUnknownStatus(string device, string topic);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Ignoring a message on '{Topic}': not an edgemail/v1/{{device}}/alert or status topic")]
    private partial void LogForeignTopic(string topic);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The external MQTT broker is not connected; receipts (first for {Device}) are dropped until it is back")]
    private partial void LogReceiptsDropped(string device);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The external MQTT broker refused a receipt to {Device}: {ReasonCode} {ReasonString}; allow the gateway to write edgemail/v1/+/receipt in its ACL")]
    private partial void LogReceiptRefused(string device, string reasonCode, string reasonString);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Receipt to {Device} could not be published")]
    private partial void LogReceiptFailed(Exception ex, string device);

    [LoggerMessage(Level = LogLevel.Debug, Message = "DISCONNECT to the external MQTT broker failed")]
    private partial void LogDisconnectFailed(Exception ex);
}
