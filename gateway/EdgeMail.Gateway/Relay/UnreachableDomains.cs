using System.Globalization;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// Direct MX's memory of recipient domains whose exchangers could not be reached, as Postfix's dead destinations: after
/// an attempt found none of a domain's addresses answering (nothing listening, the connection closed or nothing said
/// within <c>Relay:Timeout</c>), that domain's recipients in every other attempt are deferred at once, without
/// a connection, for the first <c>Relay:Backoff</c> step; then one attempt looks again (the probe) while the others are
/// still deferred, and its outcome ends or renews the hold. Without it each message to a black-holed domain held a
/// delivery slot for as long as its connections took to time out, and a few such messages took every slot from the mail
/// to everyone else. Attempts already under way when a domain is found unreachable stop before their next connection to
/// it. A hold that nobody looked at again for as long again as it lasted is forgotten (the domain's mail has bounced or
/// gone elsewhere). Kept in memory only: after a restart the first attempts find out again.
/// </summary>
public sealed partial class UnreachableDomains
{
    private readonly Dictionary<string, Hold> _holds = new(StringComparer.OrdinalIgnoreCase);
    private readonly TimeProvider _clock;
    private readonly TimeSpan _hold;
    private readonly ILogger _logger;
    private long _marks;

    /// <summary>Creates the memory.</summary>
    /// <param name="hold">How long a domain found unreachable is left alone before one attempt looks again.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="logger">Where a domain found unreachable, and reached again, is told; none when null.</param>
    public UnreachableDomains(TimeSpan hold, TimeProvider? clock = null, ILogger? logger = null)
    {
        _hold = hold;
        _clock = clock ?? TimeProvider.System;
        _logger = logger ?? NullLogger.Instance;
    }

    /// <summary>Domains held now: their hold has not passed, or an attempt is looking again.</summary>
    public int Count
    {
        get
        {
            var now = _clock.GetUtcNow();
            lock (_holds)
            {
                Forget(now);
                return _holds.Values.Count(h => h.Probing || now < h.Until);
            }
        }
    }

    /// <summary>
    /// Asks whether an attempt may connect to <paramref name="domain"/>'s exchangers. A pass that is a probe must end with
    /// <see cref="Reached"/>, <see cref="Unreachable"/> or <see cref="Abandon"/>.
    /// </summary>
    /// <param name="domain">Recipient domain.</param>
    /// <returns>The pass; its <see cref="Pass.NotTried"/> is the reply to defer the domain's recipients with when it may not.</returns>
    public Pass Enter(string domain)
    {
        var now = _clock.GetUtcNow();
        lock (_holds)
        {
            if (!_holds.TryGetValue(domain, out var hold) || Stale(hold, now))
            {
                _holds.Remove(domain);
                return new Pass(domain, null, false, _marks);
            }

            if (hold.Probing || now < hold.Until)
            {
                return new Pass(domain, NotTriedReply(domain, hold), false, _marks);
            }

            hold.Probing = true;
            return new Pass(domain, null, true, hold.Mark);
        }
    }

    /// <summary>
    /// The reply to stop an attempt with before its next connection to the domain: another attempt found it unreachable
    /// since this one's pass was given; null otherwise.
    /// </summary>
    /// <param name="pass">The attempt's pass.</param>
    /// <returns>The reply, or null.</returns>
    public string? FoundUnreachableSince(Pass pass)
    {
        ArgumentNullException.ThrowIfNull(pass);
        lock (_holds)
        {
            return !pass.Probe && _holds.TryGetValue(pass.Domain, out var hold) && hold.Mark > pass.Mark ? NotTriedReply(pass.Domain, hold) : null;
        }
    }

    /// <summary>An exchanger of the domain gave a session: the hold, if any, ends.</summary>
    /// <param name="pass">The attempt's pass.</param>
    public void Reached(Pass pass)
    {
        ArgumentNullException.ThrowIfNull(pass);
        bool ended;
        lock (_holds)
        {
            ended = _holds.Remove(pass.Domain);
        }

        if (ended)
        {
            LogReachedAgain(pass.Domain);
        }
    }

    /// <summary>None of the addresses the attempt tried gave a session: the domain is held from now.</summary>
    /// <param name="pass">The attempt's pass.</param>
    /// <param name="reason">What the last connection met.</param>
    public void Unreachable(Pass pass, string reason)
    {
        ArgumentNullException.ThrowIfNull(pass);
        var now = _clock.GetUtcNow();
        bool fresh;
        lock (_holds)
        {
            _holds.TryGetValue(pass.Domain, out var hold);
            if (pass.Probe ? hold?.Mark != pass.Mark : hold is not null)
            {
                // Another attempt decided meanwhile: it found the domain unreachable (its hold stands) or, for a probe,
                // reached it (the hold this probe looked at again is gone).
                return;
            }

            fresh = hold is null;
            Forget(now);
            _holds[pass.Domain] = new Hold(now, now + _hold, reason, ++_marks);
        }

        if (fresh)
        {
            LogUnreachable(pass.Domain, reason, now + _hold);
        }
        else
        {
            LogStillUnreachable(pass.Domain, reason, now + _hold);
        }
    }

    /// <summary>The attempt ended without learning whether the domain can be reached (its deadline, a stop): a probe's turn passes to the next attempt.</summary>
    /// <param name="pass">The attempt's pass.</param>
    public void Abandon(Pass pass)
    {
        ArgumentNullException.ThrowIfNull(pass);
        if (!pass.Probe)
        {
            return;
        }

        lock (_holds)
        {
            if (_holds.TryGetValue(pass.Domain, out var hold) && hold.Mark == pass.Mark)
            {
                hold.Probing = false;
            }
        }
    }

    // A hold passed as long ago as it lasted, with no attempt since: nothing is known about the domain any more.
    private bool Stale(Hold hold, DateTimeOffset now) => !hold.Probing && now >= hold.Until + _hold;

    private void Forget(DateTimeOffset now)
    {
        foreach (var (domain, hold) in _holds)
        {
            if (Stale(hold, now))
            {
                _holds.Remove(domain);
            }
        }
    }

    private static string NotTriedReply(string domain, Hold hold)
    {
        string at = hold.At.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture);
        string next = hold.Probing
            ? "an attempt is looking again now"
            : "looked at again from " + hold.Until.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture);
        return $"451 4.4.1 not tried: the exchangers of {domain} could not be reached at {at} ({hold.Reason}); {next}";
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "The exchangers of {Domain} could not be reached ({Reason}): its mail is deferred without a connection until {Until:u}, then one attempt looks again")]
    private partial void LogUnreachable(string domain, string reason, DateTimeOffset until);

    [LoggerMessage(Level = LogLevel.Information, Message = "The exchangers of {Domain} still cannot be reached ({Reason}): held until {Until:u}")]
    private partial void LogStillUnreachable(string domain, string reason, DateTimeOffset until);

    [LoggerMessage(Level = LogLevel.Information, Message = "The exchangers of {Domain} can be reached again: its mail goes at its next attempt")]
    private partial void LogReachedAgain(string domain);

    /// <summary>An attempt's leave to connect to one domain.</summary>
    /// <param name="Domain">Recipient domain.</param>
    /// <param name="NotTried">Null when the attempt may connect; else the reply its recipients there are deferred with.</param>
    /// <param name="Probe">The attempt looks again at a domain held until now; the others are deferred meanwhile.</param>
    /// <param name="Mark">
    /// For a probe, the mark of the hold it looks at again; otherwise how many times domains had been found unreachable
    /// when it was given (a hold with a later mark was set by another attempt since).
    /// </param>
    public sealed record Pass(string Domain, string? NotTried, bool Probe, long Mark);

    private sealed class Hold(DateTimeOffset at, DateTimeOffset until, string reason, long mark)
    {
        public DateTimeOffset At { get; } = at;

        public DateTimeOffset Until { get; } = until;

        public string Reason { get; } = reason;

        public long Mark { get; } = mark;

        public bool Probing { get; set; }
    }
}
