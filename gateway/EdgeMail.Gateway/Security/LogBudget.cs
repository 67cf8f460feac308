using System.Collections.Concurrent;

namespace EdgeMail.Gateway.Security;

/// <summary>
/// At most one log line per key (a source address) and period, with the count of those left out: a reconnect storm
/// refused by a rate limit would otherwise write a warning for every attempt (tens of thousands after a restart).
/// </summary>
public sealed class LogBudget
{
    private const int MaxKeys = 10_000;
    private readonly ConcurrentDictionary<string, Entry> _keys = new(StringComparer.Ordinal);
    private readonly TimeSpan _period;
    private readonly TimeProvider _clock;

    /// <summary>Creates a budget of one line per key and <paramref name="period"/>.</summary>
    /// <param name="period">How long a key stays quiet after a line.</param>
    /// <param name="clock">Clock.</param>
    public LogBudget(TimeSpan period, TimeProvider clock)
    {
        _period = period;
        _clock = clock ?? throw new ArgumentNullException(nameof(clock));
    }

    /// <summary>Whether to log this event of <paramref name="key"/>; if not, it is counted for the next line.</summary>
    /// <param name="key">Whose event.</param>
    /// <param name="skipped">When logging: how many events of this key were left out since its last line.</param>
    /// <returns>True when the line is to be written.</returns>
    public bool TryLog(string key, out long skipped)
    {
        ArgumentNullException.ThrowIfNull(key);
        var now = _clock.GetUtcNow();
        if (_keys.Count > MaxKeys)
        {
            foreach (var (k, e) in _keys)
            {
                if (e.QuietUntil <= now)
                {
                    _keys.TryRemove(k, out _);
                }
            }
        }

        var entry = _keys.GetOrAdd(key, _ => new Entry());
        lock (entry)
        {
            if (now < entry.QuietUntil)
            {
                entry.Skipped++;
                skipped = 0;
                return false;
            }

            skipped = entry.Skipped;
            entry.Skipped = 0;
            entry.QuietUntil = now + _period;
            return true;
        }
    }

    private sealed class Entry
    {
        public DateTimeOffset QuietUntil { get; set; }

        public long Skipped { get; set; }
    }
}
