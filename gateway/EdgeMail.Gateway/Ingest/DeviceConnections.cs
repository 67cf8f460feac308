using System.Buffers;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using MQTTnet.Adapter;
using MQTTnet.Diagnostics.Logger;
using MQTTnet.Exceptions;
using MQTTnet.Formatter;
using MQTTnet.Packets;
using MQTTnet.Server;

namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// The embedded broker's TCP and TLS listeners, in place of MQTTnet's own adapter. MQTTnet's broker logic (sessions,
/// subscriptions, keep-alive, the interceptors) is unchanged; what differs is how a connection's bytes become packets:
/// <list type="bullet">
/// <item>An idle connection holds no read buffer: it waits with a zero-byte receive, and a pooled buffer is taken only
/// while there are bytes to frame. MQTTnet's adapter held a chain of five pending async reads, a send lock with a
/// 64-slot waiter array and a stream per connection — about 1.7 KB of each idle device's ~8 KB.</item>
/// <item>One receive frames every packet it brought in (MQTTnet read the fixed header, the length and the body with
/// a system call each), and a device's alerts that arrived together are handed to <see cref="IReadAheadSink"/> at
/// once, so they share a group commit, while MQTTnet still handles them, and acknowledges each after its own commit,
/// one by one and in order.</item>
/// <item>A packet's size is checked before its body is read: 64 KiB until the device has authenticated, 4 MiB after
/// (MQTTnet's adapter allocated whatever a remaining length claimed, up to 256 MiB, before any authentication).</item>
/// <item>A packet whose first byte MQTT forbids from a client (<see cref="PacketViolation"/>: a PUBLISH with QoS 3, or with
/// QoS 0 and DUP; reserved flags that are not as they must be; a second CONNECT; a packet only a server sends) ends the
/// connection as its header is read, before it is decoded: MQTTnet checks no flags, and stored a QoS 0 alert with DUP,
/// answered a SUBSCRIBE with wrong flags, and ran the publish check (storing the alert) on QoS 3. An authenticated
/// device's refusal is logged, at most one line a minute per device, and an MQTT 5 device is told why in a
/// DISCONNECT.</item>
/// <item>A TLS handshake must finish within the broker's communication timeout.</item>
/// <item>A connection is let in only while its address, and all addresses together, hold few enough connections that
/// have not yet authenticated (<see cref="Security.MqttGuard.AdmitConnection"/>); over that it is closed as accepted,
/// unread. Its slot is returned once it authenticates, is refused, or closes.</item>
/// </list>
/// </summary>
internal sealed partial class DeviceListener : IMqttServerAdapter
{
    private readonly IReadAheadSink _sink;
    private readonly Func<EndPoint?, IDisposable?> _admit;
    private readonly ILogger _logger;
    private readonly Security.LogBudget? _refusedLog;
    private readonly List<Socket> _listeners = [];
    private readonly CancellationTokenSource _stop = new();
    private MqttServerOptions? _options;

    /// <param name="sink">Where authenticated devices' alerts are handed as they are framed.</param>
    /// <param name="admit">Asked for each accepted connection before anything is read from it: its slot among the
    /// connections not yet authenticated, or null to close it at once (the caller counts and logs the refusal).</param>
    /// <param name="logger">Where connection failures go.</param>
    /// <param name="refusedLog">Bounds the lines about devices' refused packets (one a minute per device); null: every one.</param>
    public DeviceListener(IReadAheadSink sink, Func<EndPoint?, IDisposable?> admit, ILogger logger, Security.LogBudget? refusedLog = null)
    {
        _sink = sink;
        _admit = admit;
        _logger = logger;
        _refusedLog = refusedLog;
    }

    public Func<IMqttChannelAdapter, Task>? ClientHandler { get; set; }

    public Task StartAsync(MqttServerOptions options, IMqttNetLogger logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options;
        if (options.DefaultEndpointOptions.IsEnabled)
        {
            Listen(options.DefaultEndpointOptions, tls: null);
        }

        if (options.TlsEndpointOptions is { IsEnabled: true } tls)
        {
            if (tls.CertificateProvider is null)
            {
                throw new ArgumentException("The MQTT TLS endpoint has no certificate.", nameof(options));
            }

            Listen(tls, tls);
        }

        return Task.CompletedTask;
    }

    public Task StopAsync()
    {
        Close();
        return Task.CompletedTask;
    }

    public void Dispose()
    {
        Close();
        _stop.Dispose();
    }

    private void Close()
    {
        if (!_stop.IsCancellationRequested)
        {
            _stop.Cancel();
        }

        foreach (var listener in _listeners)
        {
            listener.Dispose();
        }

        _listeners.Clear();
    }

    private void Listen(MqttServerTcpEndpointBaseOptions endpoint, MqttServerTlsTcpEndpointOptions? tls)
    {
        foreach (var address in new[] { endpoint.BoundInterNetworkAddress, endpoint.BoundInterNetworkV6Address })
        {
            if (address.Equals(IPAddress.None) || address.Equals(IPAddress.IPv6None))
            {
                continue;
            }

            var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                if (endpoint.ReuseAddress)
                {
                    socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
                }

                socket.Bind(new IPEndPoint(address, endpoint.Port));
                socket.Listen(endpoint.ConnectionBacklog);
            }
            catch (SocketException ex)
            {
                // The run command prints this one line: the operator learns which key holds the port another process has.
                socket.Dispose();
                string key = tls is null ? "Mqtt:Port" : "Mqtt:TlsPort";
                throw new InvalidOperationException(
                    $"The MQTT listener cannot listen on {new IPEndPoint(address, endpoint.Port)} ({key}): {ex.Message}. Fix: free the port or change {key} (0 lets the OS choose).", ex);
            }
            catch
            {
                socket.Dispose();
                throw;
            }

            _listeners.Add(socket);
            _ = Task.Run(() => AcceptAsync(socket, endpoint, tls));
        }
    }

    private async Task AcceptAsync(Socket listener, MqttServerTcpEndpointBaseOptions endpoint, MqttServerTlsTcpEndpointOptions? tls)
    {
        var stop = _stop.Token;
        while (!stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(stop).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException ex) when (ex.SocketErrorCode is SocketError.ConnectionAborted or SocketError.ConnectionReset or SocketError.OperationAborted)
            {
                continue; // the client gave up before it was accepted
            }
            catch (Exception ex)
            {
                // Out of file descriptors, or anything unforeseen: say so, and try again shortly rather than spin or stop
                // accepting devices.
                LogAcceptFailed(ex, listener.LocalEndPoint?.ToString() ?? "?");
                try
                {
                    await Task.Delay(TimeSpan.FromSeconds(1), stop).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                continue;
            }

            // Here, in accept order and before any work is queued for it: a flood of connections that never send CONNECT
            // costs an accept and a close each, and the ones let in are the first ones.
            if (Admit(client) is not { } pending)
            {
                continue;
            }

            // Not awaited: each connection is served on its own, and ServeAsync handles every failure of its own.
            ThreadPool.QueueUserWorkItem(static s => _ = s.Self.ServeAsync(s.Client, s.Pending, s.Endpoint, s.Tls), (Self: this, Client: client, Pending: pending, Endpoint: endpoint, Tls: tls), preferLocal: false);
        }
    }

    // The accepted connection's slot among those not yet authenticated; null when it was closed instead.
    private IDisposable? Admit(Socket client)
    {
        EndPoint? remote = null;
        try
        {
            remote = client.RemoteEndPoint;
            if (_admit(remote) is { } pending)
            {
                return pending;
            }
        }
        catch (Exception ex) when (PeerGone(ex))
        {
            LogConnectionEnded(remote?.ToString() ?? "?", ex.Message);
        }
        catch (Exception ex)
        {
            LogConnectionFailed(ex, remote?.ToString() ?? "?");
        }

        client.Dispose();
        return null;
    }

    private async Task ServeAsync(Socket client, IDisposable pending, MqttServerTcpEndpointBaseOptions endpoint, MqttServerTlsTcpEndpointOptions? tls)
    {
        // This box lives as long as the connection: it keeps only the channel and what it awaits.
        var channel = await OpenAsync(client, pending, endpoint, tls).ConfigureAwait(false);
        if (channel is null)
        {
            return;
        }

        try
        {
            await ClientHandler!(channel).ConfigureAwait(false);
        }
        catch (Exception ex) when (PeerGone(ex))
        {
            LogConnectionEnded(channel.RemoteEndPoint?.ToString() ?? "?", ex.Message);
        }
        catch (Exception ex)
        {
            LogConnectionFailed(ex, channel.RemoteEndPoint?.ToString() ?? "?");
        }
        finally
        {
            channel.Dispose();
        }
    }

    // The channel for an accepted socket, after its TLS handshake on the TLS endpoint, holding the connection's pending
    // slot from here on; null (the socket closed, the slot returned) when the handshake fails or nobody handles connections.
    private async Task<DeviceChannel?> OpenAsync(Socket client, IDisposable pending, MqttServerTcpEndpointBaseOptions endpoint, MqttServerTlsTcpEndpointOptions? tls)
    {
        EndPoint? remote = null;
        try
        {
            remote = client.RemoteEndPoint;
            client.NoDelay = endpoint.NoDelay;
            client.Blocking = tls is not null; // plain: sends never block a thread (DeviceChannel.WriteAsync); SslStream needs a blocking socket
            var (ssl, clientCertificate) = tls is null ? (null, null) : await HandshakeAsync(client, tls).ConfigureAwait(false);
            if (ClientHandler is null)
            {
                ssl?.Dispose();
                client.Dispose();
                pending.Dispose();
                return null;
            }

            var formatter = new MqttPacketFormatterAdapter(new MqttBufferWriter(_options!.WriterBufferSize, _options.WriterBufferSizeMax));
            return new DeviceChannel(client, ssl, remote, clientCertificate, formatter, _sink, pending, _logger, _refusedLog);
        }
        catch (Exception ex) when (PeerGone(ex))
        {
            LogConnectionEnded(remote?.ToString() ?? "?", ex.Message); // a peer that left or failed its TLS handshake
            client.Dispose();
            pending.Dispose();
            return null;
        }
        catch (Exception ex)
        {
            LogConnectionFailed(ex, remote?.ToString() ?? "?");
            client.Dispose();
            pending.Dispose();
            return null;
        }
    }

    private async Task<(SslStream Stream, X509Certificate2? ClientCertificate)> HandshakeAsync(Socket client, MqttServerTlsTcpEndpointOptions tls)
    {
        var certificate = tls.CertificateProvider.GetCertificate();
        if (!certificate.HasPrivateKey)
        {
            throw new InvalidOperationException("The MQTT TLS certificate has no private key.");
        }

        var ssl = new SslStream(new NetworkStream(client, ownsSocket: false), leaveInnerStreamOpen: false, tls.RemoteCertificateValidationCallback);
        try
        {
            // A client that opens the port and never finishes its handshake must not hold a connection forever.
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            timeout.CancelAfter(_options!.DefaultCommunicationTimeout);
            await ssl.AuthenticateAsServerAsync(
                new SslServerAuthenticationOptions
                {
                    ServerCertificate = certificate,
                    ClientCertificateRequired = tls.ClientCertificateRequired,
                    EnabledSslProtocols = tls.SslProtocol,
                    CertificateRevocationCheckMode = tls.CheckCertificateRevocation ? X509RevocationMode.Online : X509RevocationMode.NoCheck,
                    EncryptionPolicy = EncryptionPolicy.RequireEncryption,
                    CipherSuitesPolicy = tls.CipherSuitesPolicy,
                },
                timeout.Token).ConfigureAwait(false);
            var remoteCertificate = ssl.RemoteCertificate switch
            {
                null => null,
                X509Certificate2 c => c,
                var c => X509CertificateLoader.LoadCertificate(c.Export(X509ContentType.Cert)),
            };
            return (ssl, remoteCertificate);
        }
        catch
        {
            await ssl.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    // A peer that left, reset or failed its TLS handshake, or a connection ended by the broker's stop: not a fault here.
    private static bool PeerGone(Exception ex) =>
        ex is IOException or SocketException or AuthenticationException or OperationCanceledException or ObjectDisposedException;

    [LoggerMessage(Level = LogLevel.Warning, Message = "MQTT listener {Endpoint} could not accept a connection; trying again in a second")]
    private partial void LogAcceptFailed(Exception ex, string endpoint);

    [LoggerMessage(Level = LogLevel.Debug, Message = "MQTT connection from {Peer} ended: {Reason}")]
    private partial void LogConnectionEnded(string peer, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "MQTT connection from {Peer} failed")]
    private partial void LogConnectionFailed(Exception ex, string peer);
}

/// <summary>Where a connection hands the PUBLISH packets of its authenticated device, before MQTTnet handles them.</summary>
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
/// One device connection as MQTTnet's broker sees it (see <see cref="DeviceListener"/>): packets framed from pooled
/// receive buffers, the ones that arrived together queued in order and their alerts' stores begun, sends serialised.
/// </summary>
internal sealed partial class DeviceChannel : IMqttChannelAdapter
{
    internal const int MaxPacketBeforeAuthentication = 64 * 1024;
    internal const int MaxPacket = 4 * 1024 * 1024;

    // Packets framed and not yet taken by MQTTnet, at most (the device's own in-flight window bounds this as well),
    // and at most this many payload bytes among them.
    internal const int Depth = 16;
    private const int AheadBytes = 64 * 1024;
    private const int ReceiveSize = 4096;

    private readonly Socket _socket;
    private readonly SslStream? _ssl;
    private readonly IReadAheadSink _sink;
    private readonly ILogger _logger;
    private readonly Security.LogBudget? _refusedLog;
    private readonly SemaphoreSlim _sending = new(1, 1);
    private byte[]? _buffer; // held only while it has bytes not yet framed; pooled
    private int _start;
    private int _end;
    private int _needed; // bytes the packet at _start needs in all, once its header is known
    private Queue<(MqttPacket Packet, object? Key)>? _ahead;
    private int _aheadBytes;
    private object? _handed; // the store begun for the packet MQTTnet took last
    private Exception? _failed; // framing a packet ahead failed: MQTTnet meets it after the packets before it
    private string? _device;
    private IDisposable? _pending; // the connection's slot among those not yet authenticated (DeviceListener), until it is settled
    private MqttConnectPacket? _connect; // until the broker has checked it
    private string? _peer;
    private long _received;
    private long _sent;
    private int _disposed;

    public DeviceChannel(Socket socket, SslStream? ssl, EndPoint? remote, X509Certificate2? clientCertificate, MqttPacketFormatterAdapter formatter, IReadAheadSink sink,
        IDisposable? pending = null, ILogger? logger = null, Security.LogBudget? refusedLog = null)
    {
        _pending = pending;
        _logger = logger ?? NullLogger.Instance;
        _refusedLog = refusedLog;
        _socket = socket;
        _ssl = ssl;
        _sink = sink;
        RemoteEndPoint = remote!;
        ClientCertificate = clientCertificate!;
        PacketFormatterAdapter = formatter;
    }

    public long BytesReceived => Interlocked.Read(ref _received);

    public long BytesSent => Interlocked.Read(ref _sent);

    public X509Certificate2 ClientCertificate { get; }

    public EndPoint RemoteEndPoint { get; }

    // Asked for rarely, so not kept per connection.
    public EndPoint LocalEndPoint
    {
        get
        {
            try
            {
                return _socket.LocalEndPoint!;
            }
            catch (ObjectDisposedException)
            {
                return null!;
            }
        }
    }

    public bool IsSecureConnection => _ssl is not null;

    public MqttPacketFormatterAdapter PacketFormatterAdapter { get; }

    /// <summary>
    /// The connection authenticated as <paramref name="deviceId"/> (the broker's CONNECT check passed): from the next
    /// packet on, its alerts are stored as they are framed, and packets may be up to <see cref="MaxPacket"/>.
    /// </summary>
    /// <param name="deviceId">The device, as the registry holds its id.</param>
    public void Authenticated(string deviceId)
    {
        // MQTTnet keeps the CONNECT packet for the connection's life. The device's secret is not needed past this check
        // (nor kept in memory for as long), and the id it names twice can be the registry's string instead of two more
        // copies: about 130 bytes per connected device.
        if (Interlocked.Exchange(ref _connect, null) is { } connect)
        {
            connect.Password = null;
            if (string.Equals(connect.ClientId, deviceId, StringComparison.Ordinal) && string.Equals(connect.Username, deviceId, StringComparison.Ordinal))
            {
                connect.ClientId = deviceId;
                connect.Username = deviceId;
            }
        }

        Volatile.Write(ref _device, deviceId);
        Settled();
    }

    /// <summary>
    /// The connection is past its CONNECT check, authenticated or refused: it no longer counts against the limit of
    /// connections not yet authenticated (a refused one is closed by the broker right after its CONNACK).
    /// </summary>
    public void Settled() => Interlocked.Exchange(ref _pending, null)?.Dispose();

    public Task ConnectAsync(CancellationToken cancellationToken) => Task.CompletedTask; // accepted: connected already

    public Task DisconnectAsync(CancellationToken cancellationToken)
    {
        Shutdown();
        return Task.CompletedTask;
    }

    public void ResetStatistics()
    {
        Interlocked.Exchange(ref _received, 0);
        Interlocked.Exchange(ref _sent, 0);
    }

    // MQTTnet's receive loop is the only caller, one call at a time.
    public async Task<MqttPacket> ReceivePacketAsync(CancellationToken cancellationToken)
    {
        // MQTTnet asks for a packet only once it has handled the one before: a store begun for that one and not taken
        // by the publish interceptor (MQTTnet dropped the packet without asking it) is forgotten now, not kept forever.
        if (_handed is { } previous)
        {
            _handed = null;
            _sink.Forget(previous);
        }

        if (_ahead is { Count: > 0 })
        {
            var (queued, key) = _ahead.Dequeue();
            _aheadBytes -= Size(queued);
            _handed = key;
            return queued;
        }

        try
        {
            if (_failed is { } failed)
            {
                throw failed;
            }

            // One async method from MQTTnet's call to the socket: an idle connection's pending read is this one box.
            MqttPacket? packet;
            while ((packet = Frame()) is null)
            {
                if (_ssl is null && ReceiveNow() is int now and not -1)
                {
                    if (now == 0)
                    {
                        return null!; // the peer closed the connection (MQTTnet's "closed" answer)
                    }

                    _end += now;
                    continue;
                }

                var into = FreeSpace();
                int read = _ssl is null
                    ? await _socket.ReceiveAsync(into, SocketFlags.None, cancellationToken).ConfigureAwait(false)
                    : await _ssl.ReadAsync(into, cancellationToken).ConfigureAwait(false);
                if (into.IsEmpty)
                {
                    // The zero-byte wait is over: bytes (or the end of the stream, which the next read tells) are there.
                    TakeBuffer();
                }
                else if (read == 0)
                {
                    return null!; // the peer closed the connection (MQTTnet's "closed" answer)
                }
                else
                {
                    _end += read;
                }
            }

            var device = Volatile.Read(ref _device);
            if (device is null && packet is MqttConnectPacket connect)
            {
                _connect = connect;
            }

            _handed = Begin(device, packet, cancellationToken);
            if (device is not null && packet is not MqttDisconnectPacket)
            {
                FrameAhead(device, cancellationToken);
            }

            return packet;
        }
        catch (MalformedPacketException refused)
        {
            await TellAsync(refused.Violation, cancellationToken).ConfigureAwait(false);
            throw;
        }
        catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
        {
            return null!;
        }
        catch (Exception ex) when (ex is not (MqttProtocolViolationException or MqttCommunicationException))
        {
            throw new MqttCommunicationException(ex);
        }
    }

    // The packets after the one MQTTnet takes now, already received: framed and their stores begun, in order. Stops at
    // a packet that ends the connection, and at a packet that fails to decode (it fails in its turn, in MQTTnet's loop).
    private void FrameAhead(string device, CancellationToken cancellationToken)
    {
        while ((_ahead?.Count ?? 0) < Depth && _aheadBytes <= AheadBytes && _buffer is not null)
        {
            MqttPacket? packet;
            try
            {
                packet = Frame();
            }
            catch (Exception ex)
            {
                _failed = ex is MqttProtocolViolationException or MqttCommunicationException ? ex : new MqttCommunicationException(ex);
                return;
            }

            if (packet is null)
            {
                return;
            }

            _ahead ??= new Queue<(MqttPacket, object?)>(Depth);
            _ahead.Enqueue((packet, Begin(device, packet, cancellationToken)));
            _aheadBytes += Size(packet);
            if (packet is MqttDisconnectPacket)
            {
                return;
            }
        }
    }

    private object? Begin(string? device, MqttPacket packet, CancellationToken cancellationToken) =>
        device is not null && packet is MqttPublishPacket publish ? _sink.Prestore(device, _peer ??= RemoteEndPoint?.ToString(), publish, cancellationToken) : null;

    private static int Size(MqttPacket packet) => packet is MqttPublishPacket publish ? (int)Math.Min(publish.Payload.Length, int.MaxValue / 2) : 0;

    // The next whole packet in the buffer, decoded, or null when more bytes are needed (_needed says how many in all).
    private MqttPacket? Frame()
    {
        int available = _end - _start;
        if (_buffer is null || available < 2)
        {
            _needed = 2;
            return null;
        }

        var bytes = _buffer.AsSpan(_start, available);
        int length = 0;
        int headerLength = 1;
        for (int shift = 0; ; shift += 7)
        {
            if (headerLength > 4)
            {
                throw new MqttProtocolViolationException("Remaining length is longer than 4 bytes.");
            }

            if (headerLength == bytes.Length)
            {
                _needed = headerLength + 1;
                return null;
            }

            byte b = bytes[headerLength++];
            length |= (b & 0x7F) << shift;
            if ((b & 0x80) == 0)
            {
                break;
            }
        }

        int limit = Volatile.Read(ref _device) is null ? MaxPacketBeforeAuthentication : MaxPacket;
        if (length > limit - headerLength)
        {
            throw new MqttProtocolViolationException($"Packet of {headerLength + length} bytes is over the limit of {limit} bytes{(limit == MaxPacket ? string.Empty : " before authentication")}.");
        }

        byte flags = bytes[0];
        if (PacketViolation.Of(flags, Volatile.Read(ref _device) is not null) is { } violation)
        {
            throw Refuse(violation);
        }

        int total = headerLength + length;
        if (available < total)
        {
            _needed = total;
            return null;
        }

        // MQTTnet keeps slices of the body (a PUBLISH's payload is one): each packet has its own array.
        var body = length == 0 ? ArraySegment<byte>.Empty : new ArraySegment<byte>(bytes.Slice(headerLength, length).ToArray());
        _start += total;
        _needed = 0;
        if (_start == _end)
        {
            Release();
        }

        Interlocked.Add(ref _received, total);
        var received = new ReceivedMqttPacket(flags, body, total);
        if (PacketFormatterAdapter.ProtocolVersion == MqttProtocolVersion.Unknown)
        {
            PacketFormatterAdapter.DetectProtocolVersion(received);
        }

        MqttPacket? packet;
        try
        {
            packet = PacketFormatterAdapter.Decode(received);
        }
        catch (Exception ex) when (Volatile.Read(ref _device) is not null && ex is not OperationCanceledException)
        {
            throw Refuse(PacketViolation.Undecodable(flags, ex.Message));
        }

        return packet ?? throw (Volatile.Read(ref _device) is null ? new MqttProtocolViolationException("Received malformed packet.") : Refuse(PacketViolation.Undecodable(flags, "nothing decoded")));
    }

    // Only an authenticated device's refusal is logged: before the CONNECT check anyone can send anything, as often as they
    // connect, and the connection ends all the same. A device that sends it at every connection gets one line a minute.
    private MalformedPacketException Refuse(PacketViolation violation)
    {
        if (Volatile.Read(ref _device) is { } device)
        {
            long skipped = 0;
            if (_refusedLog?.TryLog(device, out skipped) ?? true)
            {
                LogMalformed(_logger, device, _peer ?? RemoteEndPoint?.ToString() ?? "?", violation.Reason, skipped);
            }
        }

        return new MalformedPacketException(violation);
    }

    // MQTT 5 lets the server say why it closes (section 3.14: DISCONNECT with a reason code, and here the reason as its
    // reason string); MQTT 3.1.1 has no DISCONNECT from a server, and before the CONNACK there is none in either.
    private async Task TellAsync(PacketViolation violation, CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _device) is null || PacketFormatterAdapter.ProtocolVersion != MqttProtocolVersion.V500)
        {
            return;
        }

        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(TimeSpan.FromSeconds(1));
            await SendPacketAsync(new MqttDisconnectPacket { ReasonCode = violation.Code, ReasonString = violation.Reason }, timeout.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is MqttCommunicationException or OperationCanceledException)
        {
            // The device is gone or not reading: the close is all it gets.
        }
    }

    // A busy device's next packets are usually in the socket already: a non-blocking receive takes them on this thread
    // (a zero-byte wait would go through epoll and the thread pool even then). -1 when nothing is there (and no bytes
    // are pending, the buffer goes back to the pool, so that the wait holds none); 0 at the end of the stream.
    private int ReceiveNow()
    {
        if (_buffer is null)
        {
            TakeBuffer();
        }

        int read = _socket.Receive(FreeSpace().Span, SocketFlags.None, out var error);
        if (error == SocketError.Success)
        {
            return read;
        }

        if (error != SocketError.WouldBlock)
        {
            throw new SocketException((int)error);
        }

        if (_start == _end)
        {
            Release();
        }

        return -1;
    }

    // Where the next receive goes. With no bytes pending there is no buffer, and the answer is empty: an idle connection
    // waits on a zero-byte receive and holds no buffer. Otherwise room for the packet being framed (_needed in all).
    private Memory<byte> FreeSpace()
    {
        if (_buffer is null)
        {
            return Memory<byte>.Empty;
        }

        int pending = _end - _start;
        if (_buffer.Length < _needed)
        {
            var larger = ArrayPool<byte>.Shared.Rent(_needed);
            _buffer.AsSpan(_start, pending).CopyTo(larger);
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = larger;
            (_start, _end) = (0, pending);
        }
        else if (_buffer.Length - _start < _needed)
        {
            _buffer.AsSpan(_start, pending).CopyTo(_buffer);
            (_start, _end) = (0, pending);
        }

        return _buffer.AsMemory(_end);
    }

    public async Task SendPacketAsync(MqttPacket packet, CancellationToken cancellationToken)
    {
        // MQTTnet's send loop writes most packets, but a DISCONNECT or a CONNACK may come from another task.
        await _sending.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            var buffer = PacketFormatterAdapter.Encode(packet);
            if (buffer.Payload.IsEmpty)
            {
                await WriteAsync(buffer.Packet, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                // Header and payload in one write: with Nagle off, two writes are two segments on the wire.
                var joined = ArrayPool<byte>.Shared.Rent(buffer.Length);
                try
                {
                    buffer.Packet.AsSpan().CopyTo(joined);
                    buffer.Payload.CopyTo(joined.AsSpan(buffer.Packet.Count));
                    await WriteAsync(joined.AsMemory(0, buffer.Length), cancellationToken).ConfigureAwait(false);
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(joined);
                }
            }

            Interlocked.Add(ref _sent, buffer.Length);
        }
        catch (Exception ex) when (ex is SocketException or IOException or ObjectDisposedException)
        {
            throw new MqttCommunicationException(ex);
        }
        finally
        {
            PacketFormatterAdapter.Cleanup();
            _sending.Release();
        }
    }

    private async ValueTask WriteAsync(ReadOnlyMemory<byte> bytes, CancellationToken cancellationToken)
    {
        if (_ssl is not null)
        {
            await _ssl.WriteAsync(bytes, cancellationToken).ConfigureAwait(false);
            return;
        }

        // What the broker sends a device (CONNACK, PUBACKs, a receipt) nearly always fits the socket's buffer at once: a
        // non-blocking send takes it without the async machinery, and without the ~300-byte send state a socket keeps
        // from its first asynchronous send on. Only what does not fit waits.
        int written = _socket.Send(bytes.Span, SocketFlags.None, out var error);
        if (error is not (SocketError.Success or SocketError.WouldBlock))
        {
            throw new SocketException((int)error);
        }

        bytes = bytes[(error == SocketError.Success ? written : 0)..];
        while (!bytes.IsEmpty)
        {
            int sent = await _socket.SendAsync(bytes, SocketFlags.None, cancellationToken).ConfigureAwait(false);
            bytes = bytes[sent..];
        }
    }

    private void Shutdown()
    {
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // already gone
        }

        _socket.Close();
        try
        {
            _ssl?.Dispose();
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            // its socket is closed already
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Device {Device} ({Peer}) sent {Reason}; its connection is closed and nothing in that packet is handled, stored or acknowledged (at most one such line a minute per device, {Skipped} more since the last)")]
    private static partial void LogMalformed(ILogger logger, string device, string peer, string reason, long skipped);

    private void TakeBuffer()
    {
        _buffer = ArrayPool<byte>.Shared.Rent(Math.Max(ReceiveSize, _needed));
        _start = _end = 0;
    }

    private void Release()
    {
        if (_buffer is { } buffer)
        {
            _buffer = null;
            _start = _end = 0;
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        Settled(); // first: nothing below may keep the slot taken

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

        Shutdown();
        // Not returned to the pool: a receive still pending when the connection was torn down may yet write into it.
        _buffer = null;

        // The send lock is not disposed: a send still writing when MQTTnet tears the connection down releases it on its
        // way out (with a communication failure from the closed socket), and a disposed lock would throw instead. It
        // holds no wait handle, so there is nothing to free.
    }
}
