using System.Diagnostics;
using EdgeMail.Firmware;

namespace EdgeMail.Emulator.Fleet;

/// <summary>Simulated time of the whole fleet: real elapsed time times the speed factor, in milliseconds.</summary>
internal sealed class FleetClock
{
    private readonly Stopwatch _watch = new();
    private readonly double _speed;

    public FleetClock(double speed)
    {
        _speed = speed;
    }

    public double Speed => _speed;

    /// <summary>Starts simulated time at 0 (it stands still before, while the devices are created).</summary>
    public void Start() => _watch.Start();

    public long NowMs => (long)(_watch.Elapsed.TotalMilliseconds * _speed);

    public TimeSpan RealElapsed => _watch.Elapsed;

    /// <summary>Real milliseconds for a span of simulated milliseconds.</summary>
    public double ToRealMs(long simulatedMs) => simulatedMs / _speed;
}

/// <summary>A device's uptime: fleet time since its boot.</summary>
internal sealed class DeviceClock(FleetClock fleet, long bootAtMs) : IClock
{
    public long UptimeMs => fleet.NowMs - bootAtMs + 1;
}
