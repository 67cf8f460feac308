using EdgeMail.Firmware.Alerts;

namespace EdgeMail.Firmware;

/// <summary>
/// Wall-clock time for a device that may have no real-time clock: unknown until set from an RTC, NTP or
/// the time in a gateway receipt, then carried forward by the monotonic <see cref="IClock"/>.
/// </summary>
public sealed class WallClock
{
    private readonly IClock _clock;
    private long _offsetMs;
    private bool _known;

    /// <summary>Creates a wall clock that does not know the time yet.</summary>
    /// <param name="clock">The device's monotonic clock.</param>
    public WallClock(IClock clock)
    {
        _clock = clock;
    }

    /// <summary>Whether the time is known.</summary>
    public bool IsKnown => _known;

    /// <summary>Current Unix time in milliseconds, or <see cref="AlertRecord.UnknownTime"/>.</summary>
    public long UnixMs => _known ? _clock.UptimeMs + _offsetMs : AlertRecord.UnknownTime;

    /// <summary>Sets the time (from an RTC, NTP, or a gateway receipt's <c>at</c>).</summary>
    /// <param name="unixMs">The current Unix time in milliseconds.</param>
    public void Set(long unixMs)
    {
        _offsetMs = unixMs - _clock.UptimeMs;
        _known = true;
    }
}
