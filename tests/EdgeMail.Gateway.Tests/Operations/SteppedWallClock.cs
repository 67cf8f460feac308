using Microsoft.Extensions.Time.Testing;

namespace EdgeMail.Gateway.Tests.Operations;

/// <summary>
/// A clock whose wall time can be stepped (NTP, an operator setting the date) while its monotonic timestamp and timers
/// go on as <paramref name="time"/> advances.
/// </summary>
/// <param name="time">The time that passes.</param>
internal sealed class SteppedWallClock(FakeTimeProvider time) : TimeProvider
{
    public TimeSpan Step { get; set; }

    public override DateTimeOffset GetUtcNow() => time.GetUtcNow() + Step;

    public override long GetTimestamp() => time.GetTimestamp();

    public override long TimestampFrequency => time.TimestampFrequency;

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period) =>
        time.CreateTimer(callback, state, dueTime, period);
}
