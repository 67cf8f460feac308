using System.Net;
using System.Net.Sockets;

namespace EdgeMail.Firmware.Tests.Uplink;

/// <summary>
/// A loopback TCP proxy between a device and its broker that breaks the link at chosen byte counts: it forwards
/// up to a limit and then closes both sides (a cut), or keeps the link open but drops everything further (a black
/// hole, like a radio that stopped hearing). Limits count per connection and apply to the next one accepted.
/// </summary>
internal sealed class LinkCutProxy : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly int _upstreamPort;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Socket> _open = [];

    public LinkCutProxy(int upstreamPort)
    {
        _upstreamPort = upstreamPort;
        _listener.Start();
        _ = AcceptLoopAsync();
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    /// <summary>Device → broker bytes forwarded before the link is cut; null for no limit.</summary>
    public int? CutUpstreamAfter { get; set; }

    /// <summary>Broker → device bytes forwarded before the link is cut; null for no limit.</summary>
    public int? CutDownstreamAfter { get; set; }

    /// <summary>Broker → device bytes forwarded before the rest is silently dropped; null for no limit.</summary>
    public int? SwallowDownstreamAfter { get; set; }

    /// <summary>Completes when a connection was cut.</summary>
    public TaskCompletionSource Cut { get; private set; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Stop();
        lock (_open)
        {
            foreach (Socket s in _open)
            {
                s.Dispose();
            }
        }

        _stop.Dispose();
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket device;
            try
            {
                device = await _listener.AcceptSocketAsync(_stop.Token);
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }

            var broker = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            device.NoDelay = true;
            await broker.ConnectAsync(IPAddress.Loopback, _upstreamPort);
            lock (_open)
            {
                _open.Add(device);
                _open.Add(broker);
            }

            Cut = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var link = new Link(device, broker, Cut);
            _ = PumpAsync(device, broker, CutUpstreamAfter, null, link);
            _ = PumpAsync(broker, device, CutDownstreamAfter, SwallowDownstreamAfter, link);
        }
    }

    private async Task PumpAsync(Socket from, Socket to, int? cutAfter, int? swallowAfter, Link link)
    {
        var buffer = new byte[8192];
        long forwarded = 0;
        try
        {
            while (true)
            {
                int n = await from.ReceiveAsync(buffer, SocketFlags.None, _stop.Token);
                if (n == 0)
                {
                    link.Close();
                    return;
                }

                int allowed = n;
                if (cutAfter is int cut)
                {
                    allowed = (int)Math.Min(n, Math.Max(0, cut - forwarded));
                }

                if (swallowAfter is int swallow)
                {
                    allowed = (int)Math.Min(allowed, Math.Max(0, swallow - forwarded));
                }

                if (allowed > 0)
                {
                    await to.SendAsync(buffer.AsMemory(0, allowed), SocketFlags.None, _stop.Token);
                    forwarded += allowed;
                }

                if (cutAfter is int limit && forwarded >= limit && allowed < n)
                {
                    link.Close();
                    link.Cut.TrySetResult();
                    return;
                }
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
        {
            link.Close();
        }
    }

    private sealed class Link(Socket device, Socket broker, TaskCompletionSource cut)
    {
        public TaskCompletionSource Cut { get; } = cut;

        public void Close()
        {
            device.Dispose();
            broker.Dispose();
        }
    }
}
