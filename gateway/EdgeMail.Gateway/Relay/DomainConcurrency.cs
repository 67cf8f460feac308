using EdgeMail.Gateway.Spool;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// Direct MX's limit on deliveries under way to one domain (<c>Relay:DomainConcurrency</c>). An exchanger that takes
/// connections and answers slowly (a tarpit, an overloaded server) keeps each attempt to it for up to
/// <c>Relay:AttemptTimeout</c>; without a limit its mail could take every delivery slot and hold up mail to every other
/// domain for that long. Mail over the limit is not attempted, nor deferred: it waits in a queue of its domain, left out
/// of the due mail, and each delivery to the domain that ends lets the oldest waiting go back, as many as there is room
/// for. The delivery worker's loop alone starts deliveries; they end on any thread.
/// </summary>
public sealed class DomainConcurrency
{
    private readonly object _lock = new();
    private readonly Dictionary<string, int> _underWay = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Queue<long>> _queues = new(StringComparer.Ordinal);
    private readonly HashSet<long> _waiting = [];

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
                return [.. _waiting];
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
    /// deliveries under way, in whose queue it then waits. <paramref name="first"/>: the domain had nobody waiting.
    /// </summary>
    public string? Full(long rowId, IReadOnlyList<string> domains, out bool first)
    {
        ArgumentNullException.ThrowIfNull(domains);
        lock (_lock)
        {
            // Checked and queued under the lock an ending delivery takes: an end either came first (and left room) or
            // comes after, and lets this message go.
            foreach (string domain in domains)
            {
                if (_underWay.GetValueOrDefault(domain) >= Limit)
                {
                    if (!_queues.TryGetValue(domain, out var queue))
                    {
                        _queues[domain] = queue = new Queue<long>();
                    }

                    first = queue.Count == 0;
                    queue.Enqueue(rowId);
                    _waiting.Add(rowId);
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
    /// Ends a delivery started with <see cref="Start"/>: of each domain's waiting mail, the oldest go back to the due mail,
    /// as many as there is room for. Returns whether any did (the worker looks again).
    /// </summary>
    public bool End(IReadOnlyList<string> domains)
    {
        ArgumentNullException.ThrowIfNull(domains);
        lock (_lock)
        {
            bool released = false;
            foreach (string domain in domains)
            {
                int left = _underWay.GetValueOrDefault(domain) - 1;
                if (left <= 0)
                {
                    _underWay.Remove(domain);
                }
                else
                {
                    _underWay[domain] = left;
                }

                released |= Release(domain);
            }

            return released;
        }
    }

    /// <summary>
    /// Lets waiting mail go to domains nothing is under way to: mail let go that did not start (sent meanwhile by another
    /// instance, cancelled, parked) leaves room that no ending delivery will give. The worker calls it after each round,
    /// once the mail let go before it has been read. Returns whether any went.
    /// </summary>
    public bool ReleaseIdle()
    {
        lock (_lock)
        {
            bool released = false;
            foreach (string domain in _queues.Keys.ToList())
            {
                if (!_underWay.ContainsKey(domain))
                {
                    released |= Release(domain);
                }
            }

            return released;
        }
    }

    // Under the lock: as many as there is room for, so that a backlog is read again one place at a time, not whole.
    private bool Release(string domain)
    {
        if (!_queues.TryGetValue(domain, out var queue))
        {
            return false;
        }

        int room = Limit - _underWay.GetValueOrDefault(domain);
        bool released = false;
        while (room-- > 0 && queue.TryDequeue(out long rowId))
        {
            _waiting.Remove(rowId);
            released = true;
        }

        if (queue.Count == 0)
        {
            _queues.Remove(domain);
        }

        return released;
    }
}
