using System.Diagnostics.Metrics;
using System.Globalization;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Operations;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Relay;

/// <summary>What routing asks of the relay's sending limits.</summary>
public interface IRelayThrottle
{
    /// <summary>The storm window to apply now: <paramref name="configured"/>, widened while the limits hold mail back.</summary>
    /// <param name="configured">The configured window (<c>Storm:Window</c>).</param>
    /// <returns>The window in force.</returns>
    TimeSpan StormWindow(TimeSpan configured);
}

/// <summary>
/// Keeps delivery within the provider's sending limits (<c>Relay:Limits</c>): sliding windows of a minute and of 24
/// hours over the messages and recipients handed to the relay. The delivery worker reserves each message before it
/// sends it; a message that does not fit waits in the spool, due, and goes when the window has room — nothing is
/// deferred or failed for it. While mail is held back the storm window widens by <c>StormWindowFactor</c>, so repeats
/// collect into fewer digests. Each episode is logged once and counted (<c>edgemail.relay.throttled</c>), and the gauge
/// <c>edgemail.relay.throttle.active</c> shows it while it lasts. The windows are kept in memory: after a restart they
/// start empty.
/// </summary>
public sealed partial class RelayThrottle : IRelayThrottle
{
    private static readonly TimeSpan Minute = TimeSpan.FromMinutes(1);
    private static readonly TimeSpan Day = TimeSpan.FromDays(1);
    private readonly TimeProvider _clock;
    private readonly ILogger<RelayThrottle> _logger;
    private readonly GatewayMetrics _metrics;
    private readonly Lock _lock = new();
    private readonly Queue<DateTimeOffset> _minute = new();
    private readonly Queue<(DateTimeOffset At, int Recipients)> _day = new();
    private readonly int _perMinute;
    private readonly int _perDay;
    private readonly int _recipientsPerDay;
    private readonly double _widen;
    private long _dayRecipients;
    private DateTimeOffset _heldUntil = DateTimeOffset.MinValue;

    /// <summary>Creates the throttle.</summary>
    /// <param name="options">Options (<c>Relay:Limits</c>).</param>
    /// <param name="clock">Clock.</param>
    /// <param name="metrics">Where episodes and window use are published.</param>
    /// <param name="logger">Logger.</param>
    public RelayThrottle(IOptions<GatewayOptions> options, TimeProvider clock, GatewayMetrics metrics, ILogger<RelayThrottle> logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(metrics);
        var limits = options.Value.Relay.Limits;
        (_perMinute, _perDay, _recipientsPerDay, _) = limits.Effective();
        _widen = limits.StormWindowFactor;
        _clock = clock;
        _logger = logger;
        _metrics = metrics;
        metrics.ObserveRelayThrottle(() => Active ? 1 : 0, Used);
    }

    /// <summary>True while a limit holds mail back (and for a minute after the held mail could go).</summary>
    public bool Active
    {
        get
        {
            lock (_lock)
            {
                return _clock.GetUtcNow() < _heldUntil;
            }
        }
    }

    /// <summary>Reserves room for one message to <paramref name="recipients"/> recipients now.</summary>
    /// <param name="recipients">Its recipients (this attempt).</param>
    /// <returns>Null when it may go (it is counted), else the earliest time it could.</returns>
    public DateTimeOffset? TryReserve(int recipients)
    {
        if (_perMinute <= 0 && _perDay <= 0 && _recipientsPerDay <= 0)
        {
            return null;
        }

        lock (_lock)
        {
            var now = _clock.GetUtcNow();
            while (_minute.Count > 0 && _minute.Peek() + Minute <= now)
            {
                _minute.Dequeue();
            }

            while (_day.Count > 0 && _day.Peek().At + Day <= now)
            {
                _dayRecipients -= _day.Dequeue().Recipients;
            }

            // A message with more recipients than a whole day allows still goes, alone in an empty window.
            int counted = _recipientsPerDay > 0 ? Math.Min(recipients, _recipientsPerDay) : recipients;
            DateTimeOffset? until = null;
            string limit = string.Empty;
            if (_perMinute > 0 && _minute.Count >= _perMinute)
            {
                (until, limit) = Later(until, limit, _minute.ElementAt(_minute.Count - _perMinute) + Minute, $"{_perMinute} messages a minute");
            }

            if (_perDay > 0 && _day.Count >= _perDay)
            {
                (until, limit) = Later(until, limit, _day.ElementAt(_day.Count - _perDay).At + Day, $"{_perDay} messages a day");
            }

            if (_recipientsPerDay > 0 && _dayRecipients + counted > _recipientsPerDay)
            {
                long excess = _dayRecipients + counted - _recipientsPerDay;
                foreach (var (at, n) in _day)
                {
                    excess -= n;
                    if (excess <= 0)
                    {
                        (until, limit) = Later(until, limit, at + Day, $"{_recipientsPerDay} recipients a day");
                        break;
                    }
                }
            }

            if (until is { } wait)
            {
                if (now >= _heldUntil)
                {
                    _metrics.RelayThrottled.Add(1, new KeyValuePair<string, object?>("limit", limit));
                    LogHeld(limit, wait);
                }

                _heldUntil = wait + Minute;
                return wait;
            }

            _minute.Enqueue(now);
            _day.Enqueue((now, counted));
            _dayRecipients += counted;
            return null;
        }
    }

    /// <inheritdoc />
    public TimeSpan StormWindow(TimeSpan configured) => Active && configured > TimeSpan.Zero ? configured * _widen : configured;

    private static (DateTimeOffset?, string) Later(DateTimeOffset? current, string currentLimit, DateTimeOffset candidate, string limit) =>
        current is null || candidate > current ? (candidate, limit) : (current, currentLimit);

    private IEnumerable<Measurement<long>> Used()
    {
        lock (_lock)
        {
            return
            [
                new(_minute.Count, new KeyValuePair<string, object?>("limit", "messages_per_minute")),
                new(_day.Count, new KeyValuePair<string, object?>("limit", "messages_per_day")),
                new(_dayRecipients, new KeyValuePair<string, object?>("limit", "recipients_per_day")),
            ];
        }
    }

    /// <inheritdoc />
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"RelayThrottle({_perMinute}/min, {_perDay}/day, {_recipientsPerDay} rcpt/day)");

    [LoggerMessage(Level = LogLevel.Warning, Message = "Relay sending limit reached ({Limit}, Relay:Limits): mail waits in the spool and goes from {Until:u}; storm digests widen meanwhile")]
    private partial void LogHeld(string limit, DateTimeOffset until);
}
