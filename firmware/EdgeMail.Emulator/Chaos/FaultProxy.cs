using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;

namespace EdgeMail.Emulator.Chaos;

/// <summary>
/// A TCP proxy between the devices and the gateway that breaks links on command: resets every connection (RST),
/// stalls all traffic for a while, turns a share of the connections half-open (the proxy keeps both sockets open and
/// silently stops forwarding, as a NAT that lost its mapping does), refuses new connections, or limits bandwidth.
/// The upstream port is asked for at every connection, so the gateway may come back on another port after a restart;
/// while it is down, connections are accepted and closed at once.
/// </summary>
internal sealed class FaultProxy : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly Func<int?> _upstreamPort;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentDictionary<long, Link> _links = new();
    private readonly Random _random;
    private readonly Lock _randomLock = new();
    private readonly Task _accept;
    private long _nextId;
    private volatile bool _refusing;
    private long _stallUntilTicks;
    private volatile int _bytesPerSecond;

    public FaultProxy(Func<int?> upstreamPort, int seed)
    {
        _upstreamPort = upstreamPort;
        _random = new Random(seed);
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start(512);
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        _accept = AcceptLoop();
    }

    public int Port { get; }

    public int OpenLinks => _links.Count;

    public long Accepted;

    /// <summary>Resets every open connection (both sides get an RST); returns how many.</summary>
    public int ResetAll()
    {
        int n = 0;
        foreach (Link link in _links.Values)
        {
            link.Abort();
            n++;
        }

        return n;
    }

    /// <summary>Holds every byte in both directions for <paramref name="duration"/>.</summary>
    public void Stall(TimeSpan duration) => Interlocked.Exchange(ref _stallUntilTicks, Environment.TickCount64 + (long)duration.TotalMilliseconds);

    /// <summary>Makes about <paramref name="share"/> of the open connections half-open; returns how many.</summary>
    public int HalfOpen(double share)
    {
        int n = 0;
        foreach (Link link in _links.Values)
        {
            bool pick;
            lock (_randomLock)
            {
                pick = _random.NextDouble() < share;
            }

            if (pick)
            {
                link.Silenced = true;
                n++;
            }
        }

        return n;
    }

    /// <summary>Refuses (accepts and resets) new connections until called with false.</summary>
    public bool Refusing
    {
        get => _refusing;
        set => _refusing = value;
    }

    /// <summary>Bandwidth per connection and direction in bytes per second; 0 for none.</summary>
    public int BytesPerSecond
    {
        get => _bytesPerSecond;
        set => _bytesPerSecond = value;
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        _listener.Stop();
        foreach (Link link in _links.Values)
        {
            link.Abort();
        }

        try
        {
            await _accept.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // stopping
        }

        _stop.Dispose();
    }

    private async Task AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptSocketAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }

            Interlocked.Increment(ref Accepted);
            _ = Task.Run(() => Connect(client));
        }
    }

    private async Task Connect(Socket client)
    {
        int? port = _upstreamPort();
        if (_refusing || port is null)
        {
            Reset(client);
            return;
        }

        var upstream = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            timeout.CancelAfter(TimeSpan.FromSeconds(5));
            await upstream.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port.Value), timeout.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is SocketException or OperationCanceledException)
        {
            Reset(upstream);
            Reset(client);
            return;
        }

        client.NoDelay = true;
        long id = Interlocked.Increment(ref _nextId);
        var link = new Link(client, upstream);
        _links[id] = link;
        try
        {
            await Task.WhenAll(Pump(link, client, upstream), Pump(link, upstream, client)).ConfigureAwait(false);
        }
        finally
        {
            _links.TryRemove(id, out _);
            link.Close();
        }
    }

    private async Task Pump(Link link, Socket from, Socket to)
    {
        byte[] buffer = new byte[16 * 1024];
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                int n = await from.ReceiveAsync(buffer, SocketFlags.None, _stop.Token).ConfigureAwait(false);
                if (n == 0)
                {
                    to.Shutdown(SocketShutdown.Send);
                    return;
                }

                long stall = Interlocked.Read(ref _stallUntilTicks) - Environment.TickCount64;
                if (stall > 0)
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(stall), _stop.Token).ConfigureAwait(false);
                }

                if (link.Silenced)
                {
                    continue; // half-open: swallowed, nothing closes
                }

                int rate = _bytesPerSecond;
                if (rate > 0)
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(n * 1000.0 / rate), _stop.Token).ConfigureAwait(false);
                }

                await to.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, _stop.Token).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            link.Abort();
        }
    }

    private static void Reset(Socket socket)
    {
        try
        {
            socket.LingerState = new LingerOption(true, 0);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // already gone
        }

        socket.Dispose();
    }

    private sealed class Link(Socket client, Socket upstream)
    {
        private int _closed;

        public volatile bool Silenced;

        public void Abort()
        {
            if (Interlocked.Exchange(ref _closed, 1) == 0)
            {
                Reset(client);
                Reset(upstream);
            }
        }

        public void Close()
        {
            if (Interlocked.Exchange(ref _closed, 1) == 0)
            {
                client.Dispose();
                upstream.Dispose();
            }
        }
    }
}
