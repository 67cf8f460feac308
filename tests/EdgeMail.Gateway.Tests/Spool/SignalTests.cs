using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Spool;

/// <summary>The wake-up flag the gateway's loops sleep on, on a test clock.</summary>
public sealed class SignalTests
{
    private static readonly DateTimeOffset Start = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000);

    // A loop works its wait out from a reading of the clock, and the clock may move on before the wait's timer exists (a
    // test advancing its clock to the time mail falls due the instant the loop says it is idle). The timer then counted
    // the whole wait from the moved clock, and the loop slept past the due time: DeliveryContainmentTests'
    // TransportThatThrows_IsDeferredOnTheBackoffSchedule_NotRetriedAtOnce timed out so on a loaded machine.
    [Fact]
    public async Task TheClockMovedPastTheDeadlineBeforeTheWaitBegan_TheWaitEndsAtOnce()
    {
        var clock = new FakeTimeProvider(Start);
        var signal = new Signal();
        var from = clock.GetUtcNow();
        clock.Advance(TimeSpan.FromSeconds(61));

        await signal.WaitAsync(TimeSpan.FromSeconds(60), from, clock, default).WaitAsync(Await.DefaultTimeout);
    }

    [Fact]
    public async Task TheDeadlineAhead_TheWaitEndsWhenTheClockReachesIt_OrWhenSet()
    {
        var clock = new FakeTimeProvider(Start);
        var signal = new Signal();

        var timed = signal.WaitAsync(TimeSpan.FromSeconds(60), clock.GetUtcNow(), clock, default);
        clock.Advance(TimeSpan.FromSeconds(59));
        Assert.False(timed.IsCompleted);
        clock.Advance(TimeSpan.FromSeconds(1));
        await timed.WaitAsync(Await.DefaultTimeout);

        var woken = signal.WaitAsync(TimeSpan.FromSeconds(60), clock.GetUtcNow(), clock, default);
        Assert.False(woken.IsCompleted);
        signal.Set();
        await woken.WaitAsync(Await.DefaultTimeout);
    }
}
