using System.Net;
using System.Runtime.ExceptionServices;
using System.Security.Cryptography.X509Certificates;
using System.Threading.Channels;
using MQTTnet.Adapter;
using MQTTnet.Diagnostics.Logger;
using MQTTnet.Formatter;
using MQTTnet.Packets;
using MQTTnet.Server;

namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// Starts storing a device's alerts as they arrive rather than one at a time. MQTTnet's broker handles one client's
/// packets strictly in turn: it reads the next PUBLISH only after the PUBACK of the one before, and that PUBACK waits
/// for the spool's fsync'd commit. A device with ten alerts in flight thus had one in the spool's queue at a time, each
/// group commit held at most one alert per device, and ingest was bound by commit latency, not by work. This adapter
/// reads a connection's packets ahead of MQTTnet, once the device has authenticated, and hands each PUBLISH to
/// <see cref="IReadAheadSink.Prestore"/> when it arrives; MQTTnet still handles every packet in order, and its
/// publish interceptor awaits the store begun here before it lets MQTTnet send the PUBACK. Nothing about
/// acknowledgement changes: a PUBACK still follows its own alert's durable commit, in the order the alerts came.
/// </summary>
internal sealed class ReadAheadServerAdapter : IMqttServerAdapter
{
    private readonly IMqttServerAdapter _inner;
    private readonly IReadAheadSink _sink;

    public ReadAheadServerAdapter(IMqttServerAdapter inner, IReadAheadSink sink)
    {
        _inner = inner;
        _sink = sink;
    }

    public Func<IMqttChannelAdapter, Task>? ClientHandler { get; set; }

    public Task StartAsync(MqttServerOptions options, IMqttNetLogger logger)
    {
        _inner.ClientHandler = HandleClientAsync;
        return _inner.StartAsync(options, logger);
    }

    public Task StopAsync() => _inner.StopAsync();

    public void Dispose() => _inner.Dispose();

    private async Task HandleClientAsync(IMqttChannelAdapter channel)
    {
        if (ClientHandler is not { } handler)
        {
            return;
        }

        using var readAhead = new ReadAheadChannel(channel, _sink);
        await handler(readAhead).ConfigureAwait(false);
    }
}

/// <summary>Where a read-ahead connection hands the PUBLISH packets of its authenticated device.</summary>
internal interface IReadAheadSink
{
    /// <summary>Called in arrival order, before MQTTnet sees the packet; may begin storing it (and must not throw).</summary>
    /// <param name="deviceId">The device the connection authenticated as.</param>
    /// <param name="peer">Its remote endpoint.</param>
    /// <param name="packet">The PUBLISH.</param>
    /// <param name="stop">Cancelled when the connection is gone.</param>
    /// <returns>A key to forget when the packet never reaches MQTTnet's handler (the connection ended first), or null when nothing was begun.</returns>
    object? Prestore(string deviceId, string? peer, MqttPublishPacket packet, CancellationToken stop);

    /// <summary>Forgets a store begun for a packet MQTTnet will not handle (its store still completes).</summary>
    /// <param name="key">What <see cref="Prestore"/> returned.</param>
    void Forget(object key);
}

/// <summary>One connection's packets, read ahead of MQTTnet once the device is known (see <see cref="ReadAheadServerAdapter"/>).</summary>
internal sealed class ReadAheadChannel : IMqttChannelAdapter
{
    // Packets read and not yet taken by MQTTnet (the device's own in-flight window bounds this as well). A packet larger
    // than an alert is queued only when MQTTnet has taken everything before it, and nothing more is read until MQTTnet
    // has taken it too: a connection holds at most this many alert-sized packets, or one large one, plus the one read.
    internal const int Depth = 16;
    private const int LargePacketBytes = 8192;

    private readonly IMqttChannelAdapter _inner;
    private readonly IReadAheadSink _sink;
    private readonly Channel<(MqttPacket Packet, int Slots)> _ahead = Channel.CreateUnbounded<(MqttPacket, int)>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private readonly SemaphoreSlim _room = new(Depth, Depth);
    private readonly CancellationTokenSource _stop = new();
    private readonly Queue<object> _begun = new();
    private readonly Lock _begunLock = new();
    private string? _device;
    private string? _peer;
    private Task? _pump;
    private ExceptionDispatchInfo? _failure;
    private int _disposed;

    public ReadAheadChannel(IMqttChannelAdapter inner, IReadAheadSink sink)
    {
        _inner = inner;
        _sink = sink;
    }

    public long BytesReceived => _inner.BytesReceived;

    public long BytesSent => _inner.BytesSent;

    public X509Certificate2 ClientCertificate => _inner.ClientCertificate;

    public EndPoint RemoteEndPoint => _inner.RemoteEndPoint;

    public EndPoint LocalEndPoint => _inner.LocalEndPoint;

    public bool IsSecureConnection => _inner.IsSecureConnection;

    public MqttPacketFormatterAdapter PacketFormatterAdapter => _inner.PacketFormatterAdapter;

    /// <summary>
    /// The connection authenticated as <paramref name="deviceId"/> (the broker's CONNECT check passed): from the next
    /// packet on, packets are read ahead. Before this, nothing is read ahead, let alone stored.
    /// </summary>
    /// <param name="deviceId">The device.</param>
    /// <param name="peer">Its remote endpoint, for the stored alert.</param>
    public void Authenticated(string deviceId, string? peer)
    {
        _peer = peer;
        Volatile.Write(ref _device, deviceId);
    }

    public Task ConnectAsync(CancellationToken cancellationToken) => _inner.ConnectAsync(cancellationToken);

    public Task DisconnectAsync(CancellationToken cancellationToken) => _inner.DisconnectAsync(cancellationToken);

    public void ResetStatistics() => _inner.ResetStatistics();

    public Task SendPacketAsync(MqttPacket packet, CancellationToken cancellationToken) => _inner.SendPacketAsync(packet, cancellationToken);

    // MQTTnet's receive loop is the only caller, one call at a time.
    public async Task<MqttPacket> ReceivePacketAsync(CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _device) is not { } device)
        {
            return await _inner.ReceivePacketAsync(cancellationToken).ConfigureAwait(false);
        }

        _pump ??= Task.Run(() => PumpAsync(device));
        try
        {
            if (await _ahead.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false) && _ahead.Reader.TryRead(out var item))
            {
                _room.Release(item.Slots);
                return item.Packet;
            }
        }
        catch (OperationCanceledException)
        {
            return null!; // as MqttChannelAdapter does when its receive is cancelled
        }

        _failure?.Throw(); // the read failed after the packets before it were taken: MQTTnet sees the failure now
        return null!; // the connection closed
    }

    private async Task PumpAsync(string device)
    {
        var token = _stop.Token;
        try
        {
            while (!token.IsCancellationRequested)
            {
                var packet = await _inner.ReceivePacketAsync(token).ConfigureAwait(false);
                if (packet is null)
                {
                    break;
                }

                if (packet is MqttPublishPacket publish && _sink.Prestore(device, _peer, publish, token) is { } key)
                {
                    lock (_begunLock)
                    {
                        _begun.Enqueue(key);
                        if (_begun.Count > 4 * Depth)
                        {
                            _begun.Dequeue(); // long handled: only the last few can still be waiting for MQTTnet
                        }
                    }
                }

                // A large packet takes every slot: it waits until MQTTnet has taken all before it, and nothing is read
                // after it until MQTTnet took it too.
                int slots = packet is MqttPublishPacket { Payload.Length: > LargePacketBytes } ? Depth : 1;
                for (int i = 0; i < slots; i++)
                {
                    await _room.WaitAsync(token).ConfigureAwait(false);
                }

                _ahead.Writer.TryWrite((packet, slots));
                if (packet is MqttDisconnectPacket)
                {
                    break;
                }
            }
        }
        catch (OperationCanceledException) when (token.IsCancellationRequested)
        {
            // The connection is being disposed.
        }
#pragma warning disable CA1031 // Any read failure belongs to MQTTnet's loop, which sees it after the packets before it.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            _failure = ExceptionDispatchInfo.Capture(ex);
        }
        finally
        {
            _ahead.Writer.TryComplete();
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _stop.Cancel();
        lock (_begunLock)
        {
            while (_begun.TryDequeue(out var key))
            {
                _sink.Forget(key);
            }
        }

        // The pump ends once its read is cancelled; the inner adapter (and its socket) belongs to the listener.
        if (_pump is { } pump)
        {
            _ = pump.ContinueWith(static (_, state) => ((ReadAheadChannel)state!).DisposeWaits(), this, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
        else
        {
            DisposeWaits();
        }
    }

    private void DisposeWaits()
    {
        _stop.Dispose();
        _room.Dispose();
    }
}
