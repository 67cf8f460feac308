using System.Collections.Concurrent;

namespace EdgeMail.Gateway.Security;

/// <summary>
/// Counts failures (wrong passwords) per key within a sliding window and blocks the key once it reaches the
/// limit, until the window has passed since its first counted failure. Against password guessing across
/// connections: a session limit alone lets a client reconnect and guess again.
/// </summary>
public sealed class FailureThrottle
{
    private const int MaxKeys = 20_000;
    private readonly ConcurrentDictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly int _limit;
    private readonly TimeSpan _window;
    private readonly TimeProvider _clock;

    /// <summary>Creates a throttle.</summary>
    /// <param name="limit">Failures allowed in the window; 0 or less disables it.</param>
    /// <param name="window">The window.</param>
    /// <param name="clock">Clock.</param>
    public FailureThrottle(int limit, TimeSpan window, TimeProvider clock)
    {
        _limit = limit;
        _window = window;
        _clock = clock ?? throw new ArgumentNullException(nameof(clock));
    }

    /// <summary>Whether <paramref name="key"/> is blocked now.</summary>
    /// <param name="key">Source or account.</param>
    /// <returns>True when it has used up its failures.</returns>
    public bool IsBlocked(string key)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (_limit <= 0 || !_entries.TryGetValue(key, out var entry))
        {
            return false;
        }

        lock (entry)
        {
            if (_clock.GetElapsedTime(entry.Since) >= _window)
            {
                _entries.TryRemove(key, out _);
                return false;
            }

            return entry.Count >= _limit;
        }
    }

    /// <summary>Counts one failure.</summary>
    /// <param name="key">Source or account.</param>
    public void Fail(string key) => Count(key, unlessBlocked: false);

    /// <summary>
    /// Counts an attempt before it is checked, unless <paramref name="key"/> is blocked; <see cref="Return"/> gives it
    /// back when it was right. For a check slow enough (a password hash) that attempts made in parallel would all pass
    /// <see cref="IsBlocked"/> before the first one is counted.
    /// </summary>
    /// <param name="key">Source or account.</param>
    /// <returns>False when blocked (nothing counted).</returns>
    public bool TryReserve(string key) => Count(key, unlessBlocked: true);

    private bool Count(string key, bool unlessBlocked)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (_limit <= 0)
        {
            return true;
        }

        long now = _clock.GetTimestamp();
        if (_entries.Count > MaxKeys)
        {
            foreach (var (k, e) in _entries)
            {
                if (_clock.GetElapsedTime(e.Since, now) >= _window)
                {
                    _entries.TryRemove(k, out _);
                }
            }
        }

        while (true)
        {
            var entry = _entries.GetOrAdd(key, _ => new Entry(now));
            lock (entry)
            {
                // IsBlocked or the pruning above may have dropped this entry: count in the one the dictionary holds.
                if (!_entries.TryGetValue(key, out var current) || !ReferenceEquals(current, entry))
                {
                    continue;
                }

                if (_clock.GetElapsedTime(entry.Since, now) >= _window)
                {
                    entry.Since = now;
                    entry.Count = 0;
                }

                if (unlessBlocked && entry.Count >= _limit)
                {
                    return false;
                }

                entry.Count++;
                return true;
            }
        }
    }

    /// <summary>Gives back an attempt <see cref="TryReserve"/> counted, because it was right.</summary>
    /// <param name="key">Source or account.</param>
    public void Return(string key)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (_entries.TryGetValue(key, out var entry))
        {
            lock (entry)
            {
                entry.Count = Math.Max(0, entry.Count - 1);
            }
        }
    }

    private sealed class Entry(long since)
    {
        public long Since { get; set; } = since;

        public int Count { get; set; }
    }
}
