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
    public void MailToAFullDomain_Waits_UntilADeliveryToThatDomainEnds()
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
        Assert.False(first);
        Assert.Null(limit.Full(5, other, out _));
        limit.Start(other);
        Assert.Equal([3L, 4L], limit.Waiting.Order());

        Assert.False(limit.End(other)); // nobody waited for other.test
        Assert.Equal([3L, 4L], limit.Waiting.Order());
        Assert.True(limit.End(slow));
        Assert.Empty(limit.Waiting);
        Assert.Null(limit.Full(3, slow, out _)); // looked at again: room for one
        limit.Start(slow);
        Assert.Equal("slow.test", limit.Full(4, slow, out _));
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
    [InlineData(4, 2)]
    [InlineData(5, 3)]
    [InlineData(100, 50)]
    public void ByDefault_ADomainGetsHalfTheSlots_RoundedUp(int concurrency, int perDomain) =>
        Assert.Equal(perDomain, new RelayOptions { Concurrency = concurrency }.EffectiveDomainConcurrency());
}
