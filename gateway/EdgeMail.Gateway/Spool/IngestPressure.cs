using EdgeMail.Gateway.Configuration;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Spool;

/// <summary>
/// Burst priority. Accepting an alert is what a device waits for (its PUBACK or 250), with the alert held in its
/// small flash; routing, composition and delivery only move work the spool already keeps safe. On a small
/// appliance they share the same cores. So when alerts start arriving faster than
/// <see cref="SpoolOptions.BurstAbove"/> a second, routing and delivery rounds wait, for at most
/// <see cref="SpoolOptions.BurstPriority"/> from the start of the burst: a burst is taken at the speed of the
/// spool and relayed right after it, and under sustained load everything runs side by side again, so mail never
/// lags by more than that window plus the backlog.
/// </summary>
public sealed class IngestPressure
{
    private static readonly TimeSpan Window = TimeSpan.FromMilliseconds(100);
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(20);
    private readonly TimeProvider _clock;
    private readonly int _burstAbove;
    private readonly TimeSpan _priority;
    private readonly Lock _lock = new();
    private long _accepted;
    private long _windowStart;
    private long _windowStartCount;
    private double _rate;
    private long _burstStart;
    private long _yieldedTicks;

    /// <summary>Creates the gauge from the spool options.</summary>
    /// <param name="options">Gateway options (<c>Spool:BurstAbove</c>, <c>Spool:BurstPriority</c>).</param>
    /// <param name="clock">Clock.</param>
    public IngestPressure(IOptions<GatewayOptions> options, TimeProvider clock)
    {
        ArgumentNullException.ThrowIfNull(options);
        _clock = clock ?? throw new ArgumentNullException(nameof(clock));
        _burstAbove = options.Value.Spool.BurstAbove;
        _priority = options.Value.Spool.BurstPriority;
        _windowStart = clock.GetTimestamp();
    }

    /// <summary>Counts one accepted alert (stored or duplicate: either way a device was answered).</summary>
    public void Accepted() => Interlocked.Increment(ref _accepted);

    /// <summary>Alerts accepted per second over the last completed window of about 100 ms.</summary>
    public double Rate
    {
        get
        {
            lock (_lock)
            {
                Update();
                return _rate;
            }
        }
    }

    /// <summary>Whether routing and delivery should wait now: in a burst, and within its priority window.</summary>
    public bool IngestFirst
    {
        get
        {
            if (_burstAbove == 0 || _priority == TimeSpan.Zero)
            {
                return false;
            }

            lock (_lock)
            {
                Update();
                return _burstStart != 0 && _clock.GetElapsedTime(_burstStart) < _priority;
            }
        }
    }

    /// <summary>Total time routing and delivery rounds have waited for ingest.</summary>
    public TimeSpan Yielded => TimeSpan.FromTicks(Interlocked.Read(ref _yieldedTicks));

    /// <summary>Waits while <see cref="IngestFirst"/>; returns at once otherwise.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task completing when background work may go on.</returns>
    public async Task YieldAsync(CancellationToken cancellationToken)
    {
        if (!IngestFirst)
        {
            return;
        }

        long start = _clock.GetTimestamp();
        do
        {
            await Task.Delay(Poll, _clock, cancellationToken).ConfigureAwait(false);
        }
        while (IngestFirst);

        Interlocked.Add(ref _yieldedTicks, _clock.GetElapsedTime(start).Ticks);
    }

    // Under the lock: closes the rate window when it is over, and starts or ends the burst (with hysteresis, so a
    // short dip inside a burst does not open a new priority window).
    private void Update()
    {
        long now = _clock.GetTimestamp();
        var elapsed = _clock.GetElapsedTime(_windowStart, now);
        if (elapsed < Window)
        {
            return;
        }

        long count = Interlocked.Read(ref _accepted);
        _rate = (count - _windowStartCount) / elapsed.TotalSeconds;
        _windowStart = now;
        _windowStartCount = count;
        if (_burstAbove == 0)
        {
            return;
        }

        if (_burstStart == 0 && _rate >= _burstAbove)
        {
            _burstStart = now;
        }
        else if (_burstStart != 0 && _rate < _burstAbove / 2.0)
        {
            _burstStart = 0;
        }
    }
}
