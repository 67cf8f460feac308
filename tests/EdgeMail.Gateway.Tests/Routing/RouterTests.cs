using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Routing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Routing;

public sealed class RouterTests
{
    private static GatewayOptions Options() => new()
    {
        Users = new(StringComparer.OrdinalIgnoreCase)
        {
            ["alice"] = new UserOptions { Name = "Alice", Email = "alice@example.com" },
            ["bob"] = new UserOptions { Name = "Bob", Email = "bob@example.com" },
        },
        Groups = new(StringComparer.OrdinalIgnoreCase) { ["oncall"] = ["alice", "bob"] },
        Devices = new(StringComparer.Ordinal) { ["freezer-2"] = new DeviceOptions { Owners = ["bob"] } },
        Routes =
        [
            new RouteOptions { Devices = "freezer-*", Codes = "*", MinSeverity = "warning", To = ["oncall"], Template = "freezer" },
            new RouteOptions { Devices = "*", Codes = "BATTERY_*", MinSeverity = "info", To = ["owners", "facility@example.com"] },
        ],
    };

    private static Alert A(string code, Severity sev) => new("a", 1, AlertState.Raised, sev, code, "t", [], null, null, 0, 1, null, null);

    [Fact]
    public void Route_MatchingRoutes_CollectDistinctRecipients()
    {
        var result = new Router(Options()).Route("freezer-2", A("BATTERY_LOW", Severity.Critical));

        Assert.Equal(["alice@example.com", "bob@example.com", "facility@example.com"], result.Recipients.Select(r => r.Address));
        Assert.Equal("freezer", result.Template);
    }

    [Fact]
    public void Route_BelowMinimumSeverity_DoesNotMatch()
    {
        var result = new Router(Options()).Route("freezer-2", A("DOOR_OPEN", Severity.Info));

        Assert.Empty(result.Recipients);
    }

    [Theory]
    [InlineData("freezer-*", "freezer-2", true)]
    [InlineData("freezer-?", "freezer-12", false)]
    [InlineData("*", "", true)]
    [InlineData("a*b*c", "axxbyyc", true)]
    [InlineData("a*b*c", "axxbyy", false)]
    public void Glob_IsMatch_FollowsShellRules(string pattern, string text, bool expected)
    {
        Assert.Equal(expected, Glob.IsMatch(pattern, text));
    }
}
