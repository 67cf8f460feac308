using System.Security.Authentication;
using EdgeMail.Gateway.Configuration;
using Microsoft.Extensions.Logging;
using MQTTnet;
using MQTTnet.Exceptions;

namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// The gateway's connection to an external broker: connects and subscribes, waits while connected, and after a
/// failed attempt, or a connection it dropped itself, waits on the backoff schedule before the next. Each connection
/// gets a new generation number before it connects, so work received on a connection that is gone can be told apart
/// from work on the current one.
/// </summary>
internal sealed partial class ExternalBrokerLink : IDisposable
{
    private readonly ExternalBrokerOptions _broker;
    private readonly TimeProvider _clock;
    private readonly ILogger _logger;
    private readonly IMqttClient _client;
    private readonly MqttClientOptions _clientOptions;
    private readonly Lock _signalLock = new();
    private readonly CancellationToken _stopping;
    private TaskCompletionSource _connected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private TaskCompletionSource _lost = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _generation; // the connection attempt's number, taken before it connects
    private int _retired;    // the newest generation given up by TryRetire: nothing more of it is acknowledged
    private int _dropped;

    /// <summary>Creates the link; nothing connects before <see cref="RunAsync"/>.</summary>
    /// <param name="broker">The <c>Mqtt:External</c> options.</param>
    /// <param name="onMessage">Called for each message the broker delivers (MQTTnet's receive loop waits for it).</param>
    /// <param name="clock">Clock for the backoff waits.</param>
    /// <param name="logger">The external client's logger.</param>
    /// <param name="stopping">Cancelled when the gateway stops: no more "lost" warnings then.</param>
    public ExternalBrokerLink(ExternalBrokerOptions broker, Func<MqttApplicationMessageReceivedEventArgs, Task> onMessage, TimeProvider clock, ILogger logger,
        CancellationToken stopping)
    {
        _broker = broker;
        _clock = clock;
        _logger = logger;
        _stopping = stopping;
        _clientOptions = ExternalBrokerConnection.ClientOptions(broker);
        _client = new MqttClientFactory().CreateMqttClient();
        _client.ApplicationMessageReceivedAsync += onMessage;
        _client.DisconnectedAsync += OnDisconnectedAsync;
    }

    /// <summary>Test hook: runs when MQTTnet's ConnectAsync has returned (its receive loop already delivers messages).</summary>
    internal Func<CancellationToken, Task>? AfterConnect { get; set; }

    /// <summary>Raised after each successful connect and subscribe.</summary>
    public event EventHandler? Subscribed;

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

    /// <summary>Whether the MQTT client is connected now.</summary>
    public bool IsConnected => _client.IsConnected;

    /// <summary>The current connection's generation.</summary>
    public int Generation => Volatile.Read(ref _generation);

    /// <summary>Whether <paramref name="generation"/> is the connection the client is on now.</summary>
    /// <param name="generation">A generation read when the work arrived.</param>
    /// <returns>True when that connection is still up.</returns>
    public bool IsCurrent(int generation) => generation == Generation && generation != Volatile.Read(ref _retired) && _client.IsConnected;

    /// <summary>
    /// Retires <paramref name="generation"/> (later work of that connection is not acknowledged) when it is still
    /// the current one; only the first caller for a generation gets true and should drop the connection.
    /// </summary>
    /// <param name="generation">The generation to retire.</param>
    /// <returns>True for the caller that retired it.</returns>
    public bool TryRetire(int generation)
    {
        int retired = Volatile.Read(ref _retired);
        return generation == Generation && generation != retired && Interlocked.CompareExchange(ref _retired, generation, retired) == retired;
    }

    /// <summary>Publishes on the current connection.</summary>
    /// <param name="message">The message.</param>
    /// <param name="cancellationToken">Without one MQTTnet waits for a QoS 1 PUBACK forever.</param>
    /// <returns>The broker's answer.</returns>
    public Task<MqttClientPublishResult> PublishAsync(MqttApplicationMessage message, CancellationToken cancellationToken) =>
        _client.PublishAsync(message, cancellationToken);

    /// <summary>Connects, and reconnects after every loss or failed attempt, until <paramref name="stop"/>.</summary>
    /// <param name="stop">Stops the loop.</param>
    /// <returns>A task completing when stopped.</returns>
    public async Task RunAsync(CancellationToken stop)
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
                    long connectedAt = _clock.GetTimestamp();
                    Task lost;
                    lock (_signalLock)
                    {
                        lost = _lost.Task;
                    }

                    await lost.WaitAsync(stop).ConfigureAwait(false);
                    if (Interlocked.Exchange(ref _dropped, 0) == 0)
                    {
                        failures = 0;
                        continue; // lost: reconnect at once; the backoff applies to failed attempts
                    }

                    // Dropped by us because a message could not be stored: the broker redelivers it at once, so while
                    // the cause lasts (a low disk) reconnecting at once would fail again in a tight loop. Back off as
                    // after a failed attempt; a connection that held for MaxReconnectDelay starts the count afresh.
                    if (_clock.GetElapsedTime(connectedAt) >= _broker.MaxReconnectDelay)
                    {
                        failures = 0;
                    }

                    failures++;
                    var backoff = ExternalBrokerConnection.ReconnectDelay(_broker, failures);
                    LogDroppedBackoff(backoff);
                    await Task.Delay(backoff, _clock, stop).ConfigureAwait(false);
                    continue;
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                break;
            }
            catch (Exception ex)
            {
                // Any failure is this attempt's, retried on the backoff schedule: an exception the loop did not expect
                // (MQTTnet refusing options it cannot send, say) once ended it, and with it all ingest, without a word.
                problem = ex.InnerException is { } inner ? $"{ex.Message} ({inner.Message})" : ex.Message;
                if (ex is not (MqttCommunicationException or OperationCanceledException or AuthenticationException or IOException
                    or InvalidOperationException or System.Net.Sockets.SocketException))
                {
                    LogUnexpected(ex);
                }
            }

            // A message that arrives right after CONNACK and cannot be stored drops the connection while it is still
            // being set up: then this attempt failed, and the drop is not carried over to the next connection's loss.
            if (Interlocked.Exchange(ref _dropped, 0) != 0)
            {
                problem = "the gateway dropped the connection because a message could not be stored";
            }

            failures++;
            var delay = ExternalBrokerConnection.ReconnectDelay(_broker, failures);
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

    /// <summary>
    /// Leaves the share group (UNSUBSCRIBE): the broker hands this instance no new messages, but still delivers what it
    /// already queued for it. False when not connected or the broker did not answer.
    /// </summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Whether the group was left.</returns>
    public async Task<bool> LeaveGroupAsync(CancellationToken cancellationToken)
    {
        if (!_client.IsConnected)
        {
            return false;
        }

        try
        {
            await _client.UnsubscribeAsync(ExternalBrokerConnection.UnsubscribeOptions(_broker), cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (Exception ex) when (ex is MqttCommunicationException or OperationCanceledException or InvalidOperationException)
        {
            LogDisconnectFailed(ex); // the connection went meanwhile: what the broker sent and was not acknowledged is redelivered
            return false;
        }
    }

    /// <summary>Sends DISCONNECT when connected; a normal DISCONNECT keeps the session, so what is not acknowledged is redelivered.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task.</returns>
    public async Task CloseAsync(CancellationToken cancellationToken)
    {
        if (_client.IsConnected)
        {
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

    /// <summary>Drops the connection (the broker then redelivers what is not acknowledged); failures are only logged.</summary>
    /// <returns>A task.</returns>
    public async Task DisconnectQuietlyAsync()
    {
        try
        {
            await _client.DisconnectAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is MqttCommunicationException or ObjectDisposedException or InvalidOperationException)
        {
            LogDisconnectFailed(ex);
        }
    }

    /// <summary>
    /// Starts dropping the connection and returns at once (see <see cref="DisconnectQuietlyAsync"/>). For the loop that
    /// drains received messages: MQTTnet's disconnect waits until the message handler has returned, and the handler may
    /// be waiting for that loop.
    /// </summary>
    public void DropInBackground()
    {
        Volatile.Write(ref _dropped, 1); // the reconnect after this loss waits on the backoff
        _ = Task.Run(DisconnectQuietlyAsync, CancellationToken.None);
    }

    /// <inheritdoc />
    public void Dispose() => _client.Dispose();

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

        // Numbered before connecting: MQTTnet starts its receive loop inside ConnectAsync, and a persistent session's
        // queued messages arrive right after CONNACK; numbered afterwards, those carried the previous connection's
        // number, were stored but never acknowledged, and held the broker's in-flight slots.
        int generation = Interlocked.Increment(ref _generation);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stop);
        timeout.CancelAfter(_broker.ConnectTimeout);
        var result = await _client.ConnectAsync(_clientOptions, timeout.Token).ConfigureAwait(false);
        if (AfterConnect is { } hook)
        {
            await hook(timeout.Token).ConfigureAwait(false);
        }

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

        // A 3.1.1 session that is present keeps its subscriptions, except in a share group: the instance may have left
        // the group (unsubscribed) when it last stopped.
        bool subscribe = !result.IsSessionPresent || !ExternalBrokerConnection.IsV311(_broker) || _broker.SharedGroup.Length > 0;
        if (subscribe)
        {
            var granted = await _client.SubscribeAsync(ExternalBrokerConnection.SubscribeOptions(_broker), timeout.Token).ConfigureAwait(false);
            foreach (var item in granted.Items)
            {
                if (item.ResultCode != MqttClientSubscribeResultCode.GrantedQoS1 && item.ResultCode != MqttClientSubscribeResultCode.GrantedQoS2)
                {
                    await DisconnectQuietlyAsync().ConfigureAwait(false);
                    return $"the broker granted '{item.TopicFilter.Topic}' as {item.ResultCode}, not QoS 1; allow the gateway's user to read "
                        + "edgemail/v1/+/alert and edgemail/v1/+/status and write edgemail/v1/+/receipt in the broker's ACL"
                        + (_broker.SharedGroup.Length > 0 ? ", and check that the broker supports shared subscriptions ($share/...)" : string.Empty);
                }
            }
        }

        lock (_signalLock)
        {
            _connected.TrySetResult();
        }

        Subscribed?.Invoke(this, EventArgs.Empty);
        LogConnected(_broker.Host, _broker.Port, _broker.ClientId, result.IsSessionPresent, generation, string.Join(" and ", ExternalBrokerConnection.Filters(_broker)));
        return null;
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

    [LoggerMessage(Level = LogLevel.Information, Message = "Connected to the external MQTT broker {Host}:{Port} as '{ClientId}' (session present: {SessionPresent}, connection {Generation}); subscribed to {Filters}")]
    private partial void LogConnected(string host, int port, string clientId, bool sessionPresent, int generation, string filters);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Cannot connect to the external MQTT broker {Host}:{Port}: {Problem}. Retrying in {Delay}")]
    private partial void LogConnectFailed(string host, int port, string problem, TimeSpan delay);

    [LoggerMessage(Level = LogLevel.Error, Message = "Unexpected failure of the connection to the external MQTT broker; retrying on the backoff schedule")]
    private partial void LogUnexpected(Exception ex);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Reconnecting to the external MQTT broker in {Delay}, after dropping the connection because a message could not be stored")]
    private partial void LogDroppedBackoff(TimeSpan delay);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Lost the external MQTT broker {Host}:{Port} ({Reason}: {Detail}); reconnecting")]
    private partial void LogLost(string host, int port, string reason, string detail);

    [LoggerMessage(Level = LogLevel.Debug, Message = "DISCONNECT to the external MQTT broker failed")]
    private partial void LogDisconnectFailed(Exception ex);
}
