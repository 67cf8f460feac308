using EdgeMail.Gateway.Spool;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// Direct MX's limit on deliveries under way to one domain (<c>Relay:DomainConcurrency</c>). An exchanger that takes
/// connections and answers slowly (a tarpit, an overloaded server) keeps each attempt to it for up to
/// <c>Relay:AttemptTimeout</c>; without a limit its mail could take every delivery slot and hold up mail to every other
/// domain for that long. Mail over the limit is not attempted, nor deferred: it waits, left out of the due mail, until
/// an attempt to its domain ends, and is then looked at again in its turn. The delivery worker's loop is the only one
/// to start deliveries; attempts end on any thread.
/// </summary>
public sealed class DomainConcurrency
{
    private readonly object _lock = new();
    private readonly Dictionary<string, int> _underWay = new(StringComparer.Ordinal);
    private readonly Dictionary<long, string> _waiting = [];

    /// <summary>Creates the limit.</summary>
    /// <param name="limit">Deliveries under way to one domain at most.</param>
    public DomainConcurrency(int limit)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(limit, 1);
        Limit = limit;
    }

    /// <summary>Deliveries under way to one domain at most.</summary>
    public int Limit { get; }

    /// <summary>The messages waiting for a delivery to their domain to end, to leave out of the due mail.</summary>
    public IReadOnlyCollection<long> Waiting
    {
        get
        {
            lock (_lock)
            {
                return [.. _waiting.Keys];
            }
        }
    }

    /// <summary>The domains of a message's pending recipients, each once, in lower case.</summary>
    public static string[] Of(QueuedMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        return [.. message.PendingRecipients.Select(r => r[(r.LastIndexOf('@') + 1)..].ToLowerInvariant()).Distinct(StringComparer.Ordinal)];
    }

    /// <summary>
    /// Whether the message must wait: null when it may start now, or the first of its domains with <see cref="Limit"/>
    /// deliveries under way, in which case it waits until one of them ends. <paramref name="first"/>: no other message
    /// waited for that domain.
    /// </summary>
    public string? Full(long rowId, IReadOnlyList<string> domains, out bool first)
    {
        ArgumentNullException.ThrowIfNull(domains);
        lock (_lock)
        {
            // Checked and entered under the lock an ending attempt takes: an end either came first (and left room) or
            // comes after, and lets this message go.
            foreach (string domain in domains)
            {
                if (_underWay.GetValueOrDefault(domain) >= Limit)
                {
                    first = !_waiting.ContainsValue(domain);
                    _waiting[rowId] = domain;
                    return domain;
                }
            }

            first = false;
            return null;
        }
    }

    /// <summary>Counts a delivery under way to each of <paramref name="domains"/> (checked with <see cref="Full"/>).</summary>
    public void Start(IReadOnlyList<string> domains)
    {
        ArgumentNullException.ThrowIfNull(domains);
        lock (_lock)
        {
            foreach (string domain in domains)
            {
                _underWay[domain] = _underWay.GetValueOrDefault(domain) + 1;
            }
        }
    }

    /// <summary>
    /// Ends a delivery started with <see cref="Start"/>; the messages waiting for one of its domains go back to the due
    /// mail. Returns whether any did (the worker looks again).
    /// </summary>
    public bool End(IReadOnlyList<string> domains)
    {
        ArgumentNullException.ThrowIfNull(domains);
        lock (_lock)
        {
            foreach (string domain in domains)
            {
                if (_underWay.GetValueOrDefault(domain) <= 1)
                {
                    _underWay.Remove(domain);
                }
                else
                {
                    _underWay[domain]--;
                }
            }

            var released = _waiting.Where(w => domains.Contains(w.Value, StringComparer.Ordinal)).Select(w => w.Key).ToList();
            foreach (long rowId in released)
            {
                _waiting.Remove(rowId);
            }

            return released.Count > 0;
        }
    }
}
