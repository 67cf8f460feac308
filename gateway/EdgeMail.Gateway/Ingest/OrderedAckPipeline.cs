using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using MQTTnet;

namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// PUBACK only after the spool commit, in the order the messages arrived (MQTT requires PUBACKs in order), while the
/// messages are stored concurrently so the spool's group commit batches them. At most <c>MaxInFlight</c> messages wait
/// for their PUBACK; then the broker's receive loop waits. A message that could not be stored is not acknowledged:
/// its connection is dropped so the broker redelivers it and every later message of that connection. The store keeps
/// a message whose handling fails for a reason of its own (as a rejected alert), so only a spool failure or the
/// gateway stopping comes here: a message that failed every time would hold back all the others for ever.
/// </summary>
internal sealed partial class OrderedAckPipeline
{
    private readonly ExternalBrokerLink _link;
    private readonly ILogger _logger;
    private readonly Channel<Pending> _pending;
    private long _outstanding;
    private long _received;

    /// <summary>Creates the pipeline; acknowledgements flow once <see cref="RunAsync"/> runs.</summary>
    /// <param name="link">The connection the messages came on.</param>
    /// <param name="maxInFlight">Messages received and not yet acknowledged before the receive loop waits.</param>
    /// <param name="logger">The external client's logger.</param>
    public OrderedAckPipeline(ExternalBrokerLink link, int maxInFlight, ILogger logger)
    {
        _link = link;
        _logger = logger;
        _pending = Channel.CreateBounded<Pending>(new BoundedChannelOptions(Math.Max(1, maxInFlight))
        {
            SingleReader = true,
            SingleWriter = true,
        });
    }

    /// <summary>
    /// Takes a message off MQTTnet's automatic acknowledgement, starts storing a copy of its payload, and queues its
    /// PUBACK behind the messages before it. Returns once queued, so the receive loop goes on while this one is stored.
    /// </summary>
    /// <param name="message">The message as MQTTnet delivered it.</param>
    /// <param name="store">Stores the topic and payload; the PUBACK is sent when this completes, none when it throws.</param>
    /// <param name="stop">Cancelled when the gateway stops; the message then stays unacknowledged and is redelivered after the restart.</param>
    /// <returns>A task completing when the PUBACK is queued.</returns>
    public async Task AddAsync(MqttApplicationMessageReceivedEventArgs message, Func<string, byte[], Task> store, CancellationToken stop)
    {
        message.AutoAcknowledge = false;
        int generation = _link.Generation;
        Interlocked.Increment(ref _received);
        Interlocked.Increment(ref _outstanding);

        // The store runs after this handler has returned: it gets a copy of the payload it owns.
        byte[] payload = message.ApplicationMessage.Payload.IsEmpty ? [] : System.Buffers.BuffersExtensions.ToArray(message.ApplicationMessage.Payload);
        var work = StoreLaterAsync(store, message.ApplicationMessage.Topic, payload);
        try
        {
            await _pending.Writer.WriteAsync(new Pending(message, work, generation), stop).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is OperationCanceledException or ChannelClosedException)
        {
            // Stopping: the message stays unacknowledged and the broker redelivers it after the restart.
        }
    }

    /// <summary>Messages received and not yet acknowledged or given up (an instance leaving its share group drains them).</summary>
    public long Outstanding => Interlocked.Read(ref _outstanding);

    /// <summary>Messages received so far (whether anything new arrived during a wait).</summary>
    public long Received => Interlocked.Read(ref _received);

    /// <summary>No more messages: <see cref="RunAsync"/> ends once the queued ones are done.</summary>
    public void Complete() => _pending.Writer.TryComplete();

    /// <summary>Acknowledges stored messages in the order they arrived, until stopped.</summary>
    /// <param name="stop">Stops the loop; what is not acknowledged then is redelivered after the restart.</param>
    /// <returns>A task completing when stopped.</returns>
    public async Task RunAsync(CancellationToken stop)
    {
        try
        {
            await foreach (var pending in _pending.Reader.ReadAllAsync(stop).ConfigureAwait(false))
            {
                try
                {
                    await HandleAsync(pending, stop).ConfigureAwait(false);
                }
                finally
                {
                    Interlocked.Decrement(ref _outstanding);
                }

                if (stop.IsCancellationRequested)
                {
                    return;
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // Stopping: what is not acknowledged is redelivered after the restart.
        }
    }

    private async Task HandleAsync(Pending pending, CancellationToken stop)
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
            // The drop is not awaited here: MQTTnet's disconnect waits for its message handler, which may be waiting
            // in AddAsync for room in the queue that only this loop makes; the loop goes on and drains the rest of
            // the retired connection (none of it is acknowledged).
            if (_link.TryRetire(pending.Generation))
            {
                LogNotStored(ex, pending.Args.ApplicationMessage.Topic);
                _link.DropInBackground();
            }

            return;
        }

        if (!_link.IsCurrent(pending.Generation))
        {
            return; // received on a connection that is gone: the broker redelivers it
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

    private static async Task StoreLaterAsync(Func<string, byte[], Task> store, string topic, byte[] payload)
    {
        await Task.Yield(); // the receive loop goes on to the next message while this one is stored
        await store(topic, payload).ConfigureAwait(false);
    }

    private readonly record struct Pending(MqttApplicationMessageReceivedEventArgs Args, Task Work, int Generation);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Message on {Topic} not stored; dropping the connection without PUBACK so the broker redelivers it")]
    private partial void LogNotStored(Exception ex, string topic);

    [LoggerMessage(Level = LogLevel.Debug, Message = "PUBACK for {Topic} not sent; the broker will redeliver it")]
    private partial void LogAckFailed(Exception ex, string topic);
}
