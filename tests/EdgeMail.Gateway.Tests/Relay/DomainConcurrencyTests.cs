using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// The per-domain limit's bookkeeping (<see cref="DomainConcurrency"/>); against real exchangers:
/// <c>UnreachableDomainTests.Gateway_DirectMx_ADomainThatAnswersSlowly_*</c>.
/// </summary>
public sealed class DomainConcurrencyTests
{
    [Fact]
    public void MailToAFullDomain_Waits_AndEachEndingDeliveryLetsTheOldestGo()
    {
        var limit = new DomainConcurrency(2);
        string[] slow = ["slow.test"];
        string[] other = ["other.test"];

        Assert.Null(limit.Full(1, slow, out _));
        limit.Start(slow);
        Assert.Null(limit.Full(2, slow, out _));
        limit.Start(slow);
        Assert.Equal("slow.test", limit.Full(3, slow, out bool first));
        Assert.True(first);
        Assert.Equal("slow.test", limit.Full(4, slow, out first));
        Assert.False(first); // one word per domain while mail waits for it
        Assert.Equal("slow.test", limit.Full(5, slow, out _));
        Assert.Null(limit.Full(6, other, out _));
        limit.Start(other);
        Assert.Equal([3L, 4L, 5L], limit.Waiting.Order());

        Assert.False(limit.End(other)); // nobody waited for other.test
        Assert.True(limit.End(slow)); // room for one: the oldest goes back, the rest are not read again for nothing
        Assert.Equal([4L, 5L], limit.Waiting.Order());
        Assert.Null(limit.Full(3, slow, out _));
        limit.Start(slow);

        Assert.True(limit.End(slow)); // room for one again: 4
        Assert.Equal([5L], limit.Waiting.Order());
        Assert.True(limit.End(slow)); // nothing under way any more: everything waiting goes (no later end would let it)
        Assert.Empty(limit.Waiting);
        Assert.Equal("slow.test", Assert.IsType<string>(Full(limit, 7, slow, 2)));
    }

    // Mail let go that does not start (sent meanwhile by another instance, cancelled) leaves room. Where something is
    // still under way to the domain, its end lets the next go; where nothing is, the worker's look after each round does.
    [Fact]
    public void RoomLeftByMailThatDidNotStart_GoesToTheNextWaiting()
    {
        var limit = new DomainConcurrency(1);
        limit.Start(["b.test"]);
        Assert.Equal("b.test", limit.Full(1, ["b.test"], out _));
        Assert.Equal("b.test", limit.Full(2, ["b.test"], out _));
        limit.Start(["c.test"]);
        Assert.Equal("c.test", limit.Full(3, ["c.test"], out _));

        Assert.True(limit.End(["b.test"])); // room for one: 1 goes back ... and turns out sent elsewhere
        Assert.Equal([2L, 3L], limit.Waiting.Order());
        Assert.True(limit.ReleaseIdle()); // nothing under way to b.test: 2 goes; c.test is busy, 3 stays
        Assert.Equal([3L], limit.Waiting.Order());
        limit.Start(["b.test"]);
        Assert.False(limit.ReleaseIdle());

        var two = new DomainConcurrency(2);
        two.Start(["b.test"]);
        two.Start(["b.test"]);
        Assert.Equal("b.test", two.Full(1, ["b.test"], out _));
        Assert.Equal("b.test", two.Full(2, ["b.test"], out _));
        Assert.True(two.End(["b.test"])); // 1 goes back, and never starts
        Assert.False(two.ReleaseIdle()); // one still under way: its end lets 2 go
        Assert.Equal([2L], two.Waiting.Order());
        Assert.True(two.End(["b.test"]));
        Assert.Empty(two.Waiting);
    }

    // A mail to two domains waits while either is full, and takes a place at both once it goes.
    [Fact]
    public void MailToSeveralDomains_WaitsForAnyFullOne_AndCountsAtEach()
    {
        var limit = new DomainConcurrency(1);
        limit.Start(["b.test"]);

        Assert.Equal("b.test", limit.Full(1, ["a.test", "b.test"], out _));
        Assert.True(limit.End(["b.test"]));
        Assert.Null(limit.Full(1, ["a.test", "b.test"], out _));
        limit.Start(["a.test", "b.test"]);
        Assert.Equal("a.test", limit.Full(2, ["a.test"], out _));
        Assert.Equal("b.test", limit.Full(3, ["b.test"], out _));

        Assert.True(limit.End(["a.test", "b.test"]));
        Assert.Empty(limit.Waiting);
        Assert.Null(limit.Full(2, ["a.test"], out _));
    }

    private static string? Full(DomainConcurrency limit, long rowId, string[] domains, int started)
    {
        for (int i = 0; i < started; i++)
        {
            limit.Start(domains);
        }

        return limit.Full(rowId, domains, out _);
    }

    [Fact]
    public void Domains_AreThePendingRecipientsDomains_OnceEach_InLowerCase()
    {
        var message = new QueuedMessage(1, "alert", "dev-1", "a-1", "m@gw.test", "edgemail@gw.test",
            ["Alice@Example.COM", "bob@example.com", "carol@Other.test"], [], 0, DateTimeOffset.UnixEpoch, DateTimeOffset.UnixEpoch);

        Assert.Equal(["example.com", "other.test"], DomainConcurrency.Of(message));
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 1)]
    [InlineData(4, 3)]
    [InlineData(100, 99)]
    public void ByDefault_ADomainGetsAllTheSlotsButOne(int concurrency, int perDomain) =>
        Assert.Equal(perDomain, new RelayOptions { Concurrency = concurrency }.EffectiveDomainConcurrency());
}
