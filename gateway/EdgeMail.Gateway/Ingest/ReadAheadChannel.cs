using System.Net;
using System.Security.Cryptography.X509Certificates;
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
/// <see cref="IReadAheadSink.Prestore"/> as soon as it is read; MQTTnet still handles every packet in order, and its
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
    /// <param name="stop">The connection's token (MQTTnet's, for its receive loop): cancelled when the connection ends.</param>
    /// <returns>A key to forget when the packet never reaches MQTTnet's handler (the connection ended first), or null when nothing was begun.</returns>
    object? Prestore(string deviceId, string? peer, MqttPublishPacket packet, CancellationToken stop);

    /// <summary>Forgets a store begun for a packet MQTTnet will not handle (its store still completes).</summary>
    /// <param name="key">What <see cref="Prestore"/> returned.</param>
    void Forget(object key);
}

/// <summary>
/// One connection's packets, read ahead of MQTTnet once the device is known (see <see cref="ReadAheadServerAdapter"/>).
/// There is no reader of its own: each time MQTTnet asks for the next packet, the packets the socket already holds are
/// read as well (reads that complete at once), up to <see cref="Depth"/>, and their stores begun; the first read that
/// would wait is kept and handed to MQTTnet in turn. An idle connection thus costs what it did (one pending read), and
/// a device's alerts that arrived together are stored together while MQTTnet acknowledges the first of them.
/// </summary>
internal sealed class ReadAheadChannel : IMqttChannelAdapter
{
    // Packets read and not yet taken by MQTTnet, at most (the device's own in-flight window bounds this as well), and
    // at most this many payload bytes among them beyond the first.
    internal const int Depth = 16;
    private const int AheadBytes = 64 * 1024;

    private readonly IMqttChannelAdapter _inner;
    private readonly IReadAheadSink _sink;
    private Queue<(MqttPacket Packet, object? Key)>? _ahead;
    private int _aheadBytes;
    private Task<MqttPacket>? _next; // the read after the queued packets, started and not yet complete (or failed)
    private object? _handed; // the store begun for the packet MQTTnet took last
    private string? _device;
    private string? _peer;
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
    public void Authenticated(string deviceId) => Volatile.Write(ref _device, deviceId);

    public Task ConnectAsync(CancellationToken cancellationToken) => _inner.ConnectAsync(cancellationToken);

    public Task DisconnectAsync(CancellationToken cancellationToken) => _inner.DisconnectAsync(cancellationToken);

    public void ResetStatistics() => _inner.ResetStatistics();

    public Task SendPacketAsync(MqttPacket packet, CancellationToken cancellationToken) => _inner.SendPacketAsync(packet, cancellationToken);

    // MQTTnet's receive loop is the only caller, one call at a time: no reads run concurrently.
    public async Task<MqttPacket> ReceivePacketAsync(CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _device) is not { } device)
        {
            return await _inner.ReceivePacketAsync(cancellationToken).ConfigureAwait(false);
        }

        // MQTTnet asks for a packet only once it has handled the one before: a store begun for that one and not taken
        // by the publish interceptor (MQTTnet dropped the packet without asking it) is forgotten now, not kept forever.
        if (_handed is { } previous)
        {
            _handed = null;
            _sink.Forget(previous);
        }

        MqttPacket packet;
        if (_ahead is { Count: > 0 })
        {
            var (queued, key) = _ahead.Dequeue();
            _aheadBytes -= Size(queued);
            packet = queued;
            _handed = key;
        }
        else
        {
            var next = _next ?? _inner.ReceivePacketAsync(cancellationToken);
            _next = null;
            packet = await next.ConfigureAwait(false); // a failure reaches MQTTnet here, after the packets before it
            _handed = packet is null ? null : Begin(device, packet, cancellationToken);
        }

        if (packet is not null and not MqttDisconnectPacket)
        {
            ReadAhead(device, cancellationToken);
        }

        return packet!;
    }

    // Reads what the socket already holds (reads that complete at once), begins storing each alert, and keeps the
    // first read that would wait for the next call. Stops at a packet that ends the connection or at a failed read.
    private void ReadAhead(string device, CancellationToken cancellationToken)
    {
        while ((_ahead?.Count ?? 0) < Depth && _aheadBytes <= AheadBytes)
        {
            var next = _next ?? _inner.ReceivePacketAsync(cancellationToken);
            if (!next.IsCompletedSuccessfully || next.Result is not { } packet)
            {
                _next = next; // pending, failed, or the end of the connection: MQTTnet meets it in turn
                return;
            }

            _next = null;
            _ahead ??= new Queue<(MqttPacket, object?)>(Depth);
            _ahead.Enqueue((packet, Begin(device, packet, cancellationToken)));
            _aheadBytes += Size(packet);
            if (packet is MqttDisconnectPacket)
            {
                return;
            }
        }
    }

    private object? Begin(string device, MqttPacket packet, CancellationToken cancellationToken) =>
        packet is MqttPublishPacket publish ? _sink.Prestore(device, _peer ??= _inner.RemoteEndPoint?.ToString(), publish, cancellationToken) : null;

    private static int Size(MqttPacket packet) => packet is MqttPublishPacket publish ? (int)Math.Min(publish.Payload.Length, int.MaxValue / 2) : 0;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        // Stores begun for packets MQTTnet will not handle now complete unobserved; the device sends those alerts
        // again (no PUBACK), and the spool answers them as duplicates.
        if (_handed is { } handed)
        {
            _sink.Forget(handed);
        }

        while (_ahead is { Count: > 0 })
        {
            if (_ahead.Dequeue().Key is { } key)
            {
                _sink.Forget(key);
            }
        }

        // A read left pending ends with the socket (the inner adapter belongs to the listener); its failure is expected.
        _next?.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }
}
