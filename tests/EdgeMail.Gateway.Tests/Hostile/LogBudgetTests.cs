using EdgeMail.Gateway.Security;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Hostile;

public sealed class LogBudgetTests
{
    [Fact]
    public void TryLog_ARefusalStormFromOneAddress_LogsOneLineAMinuteWithTheCountLeftOut()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.FromUnixTimeSeconds(1_800_000_000));
        var budget = new LogBudget(TimeSpan.FromMinutes(1), clock);

        Assert.True(budget.TryLog("10.0.0.5", out long first));
        int logged = 0;
        for (int i = 0; i < 500; i++)
        {
            clock.Advance(TimeSpan.FromMilliseconds(100)); // 50 s of refusals
            logged += budget.TryLog("10.0.0.5", out _) ? 1 : 0;
        }

        Assert.True(budget.TryLog("10.0.0.6", out long other)); // another address has its own line
        clock.Advance(TimeSpan.FromSeconds(10));
        Assert.True(budget.TryLog("10.0.0.5", out long next));

        Assert.Equal((0, 0, 0, 500), (first, logged, other, next));
    }
}
