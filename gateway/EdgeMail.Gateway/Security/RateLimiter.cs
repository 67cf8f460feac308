using System.Collections.Concurrent;

namespace EdgeMail.Gateway.Security;

/// <summary>
/// Token buckets by key (a device id, a source address): each key may spend <c>burst</c> tokens at once and
/// regains <c>perMinute</c> tokens a minute. Time comes from the injected <see cref="TimeProvider"/>. The table
/// forgets full buckets when it grows past a bound, so a flood of distinct keys cannot grow memory without limit.
/// </summary>
public sealed class RateLimiter
{
    private const int MaxKeys = 20_000;
    private readonly ConcurrentDictionary<string, Bucket> _buckets = new(StringComparer.Ordinal);
    private readonly TimeProvider _clock;
    private readonly double _perMinute;
    private readonly double _burst;

    /// <summary>Creates a limiter.</summary>
    /// <param name="perMinute">Tokens regained per minute; 0 or less disables the limit.</param>
    /// <param name="burst">Bucket size (at least 1).</param>
    /// <param name="clock">Clock.</param>
    public RateLimiter(double perMinute, double burst, TimeProvider clock)
    {
        _perMinute = perMinute;
        _burst = Math.Max(1, burst);
        _clock = clock ?? throw new ArgumentNullException(nameof(clock));
    }

    /// <summary>Takes one token for <paramref name="key"/>.</summary>
    /// <param name="key">Who spends it.</param>
    /// <returns>True when allowed; false when the key is over its rate.</returns>
    public bool TryAcquire(string key)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (_perMinute <= 0)
        {
            return true;
        }

        long now = _clock.GetTimestamp();
        if (_buckets.Count > MaxKeys)
        {
            Prune(now);
        }

        var bucket = _buckets.GetOrAdd(key, _ => new Bucket(_burst, now));
        lock (bucket)
        {
            Refill(bucket, now);
            if (bucket.Tokens < 1)
            {
                return false;
            }

            bucket.Tokens -= 1;
            return true;
        }
    }

    /// <summary>
    /// Takes one token for <paramref name="key"/> even when none is left, and says how long the caller must wait
    /// until that token would have been regained: a rate limit by delay (back-pressure) instead of by refusal.
    /// </summary>
    /// <param name="key">Who spends it.</param>
    /// <returns>Zero when a token was there; otherwise the wait.</returns>
    public TimeSpan Reserve(string key)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (_perMinute <= 0)
        {
            return TimeSpan.Zero;
        }

        long now = _clock.GetTimestamp();
        if (_buckets.Count > MaxKeys)
        {
            Prune(now);
        }

        var bucket = _buckets.GetOrAdd(key, _ => new Bucket(_burst, now));
        lock (bucket)
        {
            Refill(bucket, now);
            bucket.Tokens -= 1;
            return bucket.Tokens >= 0 ? TimeSpan.Zero : TimeSpan.FromMinutes(-bucket.Tokens / _perMinute);
        }
    }

    private void Refill(Bucket bucket, long now)
    {
        double minutes = _clock.GetElapsedTime(bucket.Stamp, now).TotalMinutes;
        bucket.Tokens = Math.Min(_burst, bucket.Tokens + (minutes * _perMinute));
        bucket.Stamp = now;
    }

    private void Prune(long now)
    {
        foreach (var (key, bucket) in _buckets)
        {
            lock (bucket)
            {
                Refill(bucket, now);
                if (bucket.Tokens >= _burst)
                {
                    _buckets.TryRemove(key, out _);
                }
            }
        }
    }

    private sealed class Bucket(double tokens, long stamp)
    {
        public double Tokens { get; set; } = tokens;

        public long Stamp { get; set; } = stamp;
    }
}
