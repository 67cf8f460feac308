using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Spool;

public sealed class IngestPressureTests
{
    private readonly FakeTimeProvider _clock = new(DateTimeOffset.FromUnixTimeSeconds(1_800_000_000));

    private IngestPressure Create(int burstAbove = 1000, double prioritySeconds = 10) =>
        new(Options.Create(new GatewayOptions { Spool = new SpoolOptions { BurstAbove = burstAbove, BurstPriority = TimeSpan.FromSeconds(prioritySeconds) } }), _clock);

    // `perSecond` alerts a second for `ms` milliseconds, in 10 ms steps, asking the gauge after each step as the
    // background loops do.
    private static bool Feed(IngestPressure pressure, FakeTimeProvider clock, int perSecond, int ms)
    {
        bool first = false;
        for (int t = 0; t < ms; t += 10)
        {
            for (int i = 0; i < perSecond / 100; i++)
            {
                pressure.Accepted();
            }

            clock.Advance(TimeSpan.FromMilliseconds(10));
            first = pressure.IngestFirst;
        }

        return first;
    }

    [Fact]
    public void IngestFirst_SteadyLoadBelowTheBurstRate_NeverHoldsBackgroundWork()
    {
        var pressure = Create();

        bool first = Feed(pressure, _clock, perSecond: 900, ms: 3000);

        Assert.False(first);
        Assert.InRange(pressure.Rate, 850, 950);
    }

    [Fact]
    public void IngestFirst_InABurst_HoldsBackgroundWorkOnlyForThePriorityWindow()
    {
        var pressure = Create(prioritySeconds: 2);

        Assert.True(Feed(pressure, _clock, perSecond: 5000, ms: 500));
        Assert.True(Feed(pressure, _clock, perSecond: 5000, ms: 1300));

        // The burst goes on past the window: routing and delivery run alongside ingest again.
        Assert.False(Feed(pressure, _clock, perSecond: 5000, ms: 400));
        Assert.False(Feed(pressure, _clock, perSecond: 5000, ms: 3000));
    }

    [Fact]
    public void IngestFirst_ShortDipInsideABurst_DoesNotOpenANewWindow()
    {
        var pressure = Create(prioritySeconds: 1);
        Feed(pressure, _clock, perSecond: 5000, ms: 1200);

        Feed(pressure, _clock, perSecond: 700, ms: 200); // below the burst rate, above half of it
        bool first = Feed(pressure, _clock, perSecond: 5000, ms: 300);

        Assert.False(first);
    }

    [Fact]
    public void IngestFirst_NewBurstAfterACalmSpell_GetsANewWindow()
    {
        var pressure = Create(prioritySeconds: 1);
        Feed(pressure, _clock, perSecond: 5000, ms: 1500);

        Feed(pressure, _clock, perSecond: 100, ms: 500);
        bool first = Feed(pressure, _clock, perSecond: 5000, ms: 300);

        Assert.True(first);
    }

    [Theory]
    [InlineData(0, 10)]
    [InlineData(1000, 0)]
    public void IngestFirst_TurnedOff_NeverHolds(int burstAbove, double prioritySeconds)
    {
        var pressure = Create(burstAbove, prioritySeconds);

        Assert.False(Feed(pressure, _clock, perSecond: 20_000, ms: 500));
    }

    [Fact]
    public async Task YieldAsync_InABurst_WaitsUntilTheWindowEndsAndCountsTheWait()
    {
        var clock = new TimerSignallingClock(_clock.GetUtcNow());
        var pressure = new IngestPressure(Options.Create(new GatewayOptions { Spool = new SpoolOptions { BurstAbove = 1000, BurstPriority = TimeSpan.FromSeconds(1) } }), clock);
        Feed(pressure, clock, perSecond: 5000, ms: 200);

        var yielding = pressure.YieldAsync(CancellationToken.None);
        Assert.False(yielding.IsCompleted);
        Feed(pressure, clock, perSecond: 5000, ms: 790);
        Assert.False(yielding.IsCompleted);
        Feed(pressure, clock, perSecond: 5000, ms: 40);
        Assert.False(yielding.IsCompleted); // 1,030 ms: the window opened at 100 ms and ends at 1,100 ms

        // The wait re-checks every 20 ms of the clock, continuing on the thread pool: advance past each re-check only
        // once it has set its next timer, until the wait ends.
        for (int i = 0; i < 50 && !yielding.IsCompleted; i++)
        {
            await Task.WhenAny(yielding, clock.TimerCreated.WaitAsync(EdgeMail.Testing.Await.DefaultTimeout));
            clock.Advance(TimeSpan.FromMilliseconds(20));
        }

        Assert.True(yielding.IsCompleted, "the yield did not end with the priority window");
        await yielding;
        Assert.InRange(pressure.Yielded, TimeSpan.FromMilliseconds(880), TimeSpan.FromMilliseconds(1100)); // from 200 ms to the window's end at 1,100 ms
    }

    [Fact]
    public async Task YieldAsync_NoBurst_ReturnsAtOnce()
    {
        var pressure = Create();

        await pressure.YieldAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5));

        Assert.Equal(TimeSpan.Zero, pressure.Yielded);
    }

    // A fake clock that says when a timer is set (Task.Delay on it sets one).
    private sealed class TimerSignallingClock(DateTimeOffset start) : FakeTimeProvider(start)
    {
        public SemaphoreSlim TimerCreated { get; } = new(0);

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            var timer = base.CreateTimer(callback, state, dueTime, period);
            TimerCreated.Release();
            return timer;
        }
    }
}
