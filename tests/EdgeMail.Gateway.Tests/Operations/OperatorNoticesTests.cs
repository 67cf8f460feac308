using EdgeMail.Gateway.Operations;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Operations;

public sealed class OperatorNoticesTests
{
    // The next notice was due at the last one's wall time plus the interval: after the wall clock was set back an hour,
    // the operator heard of nothing for that hour more.
    [Fact]
    public async Task WallClockSetBack_TheNextNoticeIsStillDueOneIntervalAfterTheLast()
    {
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var clock = new SteppedWallClock(time);
        await using var gw = await TestGateway.StartAsync(
            c => c["Sender"] = new { Address = "alerts@example.com", DisplayName = "EdgeMail", Hostname = "gw1.example.com", Operator = "ops@example.com", OperatorNoticeInterval = "00:10:00" },
            s => s.AddSingleton<TimeProvider>(clock));
        var notices = gw.Host.Services.GetRequiredService<OperatorNotices>();

        notices.Report("first event", "one");
        await notices.FlushedAsync();
        Assert.Equal(1, notices.Sent);

        clock.Step = -TimeSpan.FromHours(1);
        time.Advance(TimeSpan.FromMinutes(10));
        notices.Report("second event", "two");
        await notices.FlushedAsync();

        Assert.Equal(2, notices.Sent);
    }
}
