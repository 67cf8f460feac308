using System.Collections.Concurrent;
using System.Net;

namespace EdgeMail.Gateway.Security;

/// <summary>
/// Counts open connections in total and per source address, and refuses a new one over either limit. A slot is
/// returned by disposing the lease, exactly once.
/// </summary>
public sealed class ConnectionLimiter
{
    private readonly ConcurrentDictionary<IPAddress, int> _perSource = new();
    private readonly int _maxTotal;
    private readonly int _maxPerSource;
    private int _total;

    /// <summary>Creates a limiter.</summary>
    /// <param name="maxTotal">Most open connections in total.</param>
    /// <param name="maxPerSource">Most open connections from one address.</param>
    public ConnectionLimiter(int maxTotal, int maxPerSource)
    {
        _maxTotal = maxTotal;
        _maxPerSource = maxPerSource;
    }

    /// <summary>Connections open now.</summary>
    public int Open => Volatile.Read(ref _total);

    /// <summary>Raised after a connection was let in or its slot returned (tests wait on it instead of polling <see cref="Open"/>).</summary>
    public event Action? Changed;

    /// <summary>Tries to open a connection from <paramref name="source"/>.</summary>
    /// <param name="source">Remote address.</param>
    /// <param name="reason">Why not, when refused.</param>
    /// <returns>A lease to dispose when the connection closes, or null when refused.</returns>
    public IDisposable? TryOpen(IPAddress source, out string reason)
    {
        ArgumentNullException.ThrowIfNull(source);
        reason = string.Empty;
        if (Interlocked.Increment(ref _total) > _maxTotal)
        {
            Interlocked.Decrement(ref _total);
            reason = $"too many connections in total (limit {_maxTotal})";
            return null;
        }

        int mine = _perSource.AddOrUpdate(source, 1, (_, n) => n + 1);
        if (mine > _maxPerSource)
        {
            Release(source);
            reason = $"too many connections from {source} (limit {_maxPerSource})";
            return null;
        }

        Changed?.Invoke();
        return new Lease(this, source);
    }

    private void Release(IPAddress source)
    {
        Interlocked.Decrement(ref _total);
        while (true)
        {
            if (!_perSource.TryGetValue(source, out int n))
            {
                break;
            }

            if (n <= 1 ? _perSource.TryRemove(new KeyValuePair<IPAddress, int>(source, n)) : _perSource.TryUpdate(source, n - 1, n))
            {
                break;
            }
        }

        Changed?.Invoke();
    }

    private sealed class Lease(ConnectionLimiter owner, IPAddress source) : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                owner.Release(source);
            }
        }
    }
}
