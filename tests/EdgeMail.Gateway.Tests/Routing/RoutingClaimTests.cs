using System.Text;
using EdgeMail.Gateway.Routing;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using Xunit;
using static EdgeMail.Gateway.Tests.Routing.StormControlTests;

namespace EdgeMail.Gateway.Tests.Routing;

/// <summary>
/// Routing and storm digests on a shared PostgreSQL spool keep their claims while the work is under way (renewed every
/// third of <c>Spool:ClaimLease</c>), and what an instance decided on a claim another instance took over is left to
/// that instance: no receipt, no notice from the old holder. The router's clock is a fake one that the storm window's
/// look-up (asked after the claim, before the commit) moves on; the lease (10 s) is on that clock.
/// </summary>
public sealed class RoutingClaimTests
{
    private static readonly TimeSpan Lease = TimeSpan.FromSeconds(10);

    // A batch held past its lease (a slow database, a long pause): at each third of the lease the other instance looks
    // for new alerts, as its poll would. Without renewals it would take the batch over, and the two would route it twice.
    [PostgresFact]
    public async Task SharedSpool_ARoutingBatchOutlastingItsLease_KeepsItsClaims_AnotherInstancePollingMeanwhileTakesNothing()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        var start = TimeProvider.System.GetUtcNow();
        var clock = new FakeTimeProvider(start);
        await using var gw = await StartAsync();
        await using var spool = OpenShared(db, clock, Lease);
        await using var other = OpenShared(db, clock, Lease);
        foreach (string code in new[] { "PUMP_CYCLING", "TEMP_HIGH" })
        {
            await AcceptAsync(spool, "r-" + code, code, start);
        }

        var taken = new List<SpooledAlert>();
        var slow = new RacingThrottle(async () =>
        {
            for (int step = 1; step <= 4; step++)
            {
                clock.Advance(Lease / 3 + TimeSpan.FromMilliseconds(1));
                long until = clock.GetUtcNow().ToUnixTimeMilliseconds() + (long)Lease.TotalMilliseconds;
                await SpoolWait.UntilAsync(spool, async () => await db.ScalarAsync(
                        $"SELECT COUNT(*) FROM alerts WHERE status = 'new' AND claimed_by = '{spool.Owner}' AND claim_until >= {until}") is 2L,
                    $"the batch's claims renewed at step {step}");
                taken.AddRange(await other.NewAlertsAsync(256, default));
            }
        });
        var router = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, spool, (TimeProvider)clock, slow);

        Assert.Equal(2, await router.RouteNewAsync(default));

        Assert.True(clock.GetUtcNow() > start + Lease);
        Assert.Empty(taken);
        Assert.Equal(["routed", "routed"], await StatusesAsync(spool, "r-PUMP_CYCLING", "r-TEMP_HIGH"));
        Assert.Equal(2L, (await spool.CountsAsync(default)).Messages.Values.Sum());
        Assert.Empty(await other.NewAlertsAsync(256, default));
    }

    // The same for a digest: its key's claim is renewed while it is composed, and the other instance finds no digest due.
    [PostgresFact]
    public async Task SharedSpool_ADigestOutlastingItsLease_KeepsItsClaim_AnotherInstancePollingMeanwhileTakesNothing()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        var clock = new FakeTimeProvider(TimeProvider.System.GetUtcNow());
        var start = clock.GetUtcNow();
        await using var gw = await StartAsync();
        await using var spool = OpenShared(db, clock, Lease);
        await using var other = OpenShared(db, clock, Lease);
        await HoldAsync(spool, Repeats("d-2", "d-3", "d-4"));
        var taken = new List<DueDigest>();
        var slow = new RacingThrottle(async () =>
        {
            for (int step = 1; step <= 4; step++)
            {
                clock.Advance(Lease / 3 + TimeSpan.FromMilliseconds(1));
                long until = clock.GetUtcNow().ToUnixTimeMilliseconds() + (long)Lease.TotalMilliseconds;
                await SpoolWait.UntilAsync(spool, async () => await db.ScalarAsync(
                        $"SELECT COUNT(*) FROM storm WHERE device = 'dev-1' AND code = 'PUMP_CYCLING' AND claimed_by = '{spool.Owner}' AND claim_until >= {until}") is 1L,
                    $"the key's claim renewed at step {step}");
                taken.AddRange(await other.DueDigestsAsync(clock.GetUtcNow(), 10, default));
            }
        });
        var router = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, spool, (TimeProvider)clock, slow);

        await router.DigestDueAsync(default);

        Assert.True(clock.GetUtcNow() > start + Lease);
        Assert.Empty(taken);
        Assert.Equal(["digested", "digested", "digested"], await StatusesAsync(spool, "d-2", "d-3", "d-4"));
        Assert.Equal("digest", Assert.Single(await spool.DueMessagesAsync(DateTimeOffset.MaxValue.AddDays(-1), 10, new HashSet<long>(), default)).Kind);
        Assert.Empty(await other.DueDigestsAsync(clock.GetUtcNow(), 10, default));
    }

    // The first instance stalled past its lease (its clock stands still; the other's has moved on) and the other took
    // the alert over; then the first fails to compose it (a template broken on it alone) and decides to park it. That
    // decision is fenced out, and so must be what goes with it: a 'failed' receipt for an alert the new holder mails.
    [PostgresFact]
    public async Task SharedSpool_AnAlertParkedOnAClaimTakenOverMeanwhile_GetsNoFailedReceipt_TheNewHolderRoutesIt()
    {
        await using var stalled = await Stalled.StartAsync();
        var (start, clock, later, gw, spool, other) = stalled;
        await AcceptAsync(spool, "t-1", "PUMP_CYCLING", start);
        var taken = new List<SpooledAlert>();
        var broken = new RacingThrottle(async () =>
        {
            taken.AddRange(await other.NewAlertsAsync(256, default));
            throw new InvalidOperationException("a template this instance cannot render");
        });
        var router = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, spool, (TimeProvider)clock, broken);
        var newHolder = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, other, (TimeProvider)later);

        Assert.Equal(1, await router.RouteNewAsync(default));

        Assert.Equal("t-1", Assert.Single(taken).AlertId);
        Assert.Equal(["new"], await StatusesAsync(spool, "t-1"));
        Assert.Empty(await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default));
        Assert.Equal(1, await newHolder.RouteNewAsync(default));
        Assert.Equal(["routed"], await StatusesAsync(spool, "t-1"));
        Assert.Equal("alert", Assert.Single(await spool.DueMessagesAsync(DateTimeOffset.MaxValue.AddDays(-1), 10, new HashSet<long>(), default)).Kind);
        Assert.Empty(await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default));
    }

    // A batch of a routed and an unrouted alert stalls past its lease and the other instance takes both over: the first
    // instance's word that an alert has no route would tell of a decision its fenced commit discards. Only the new
    // holder, whose decision stands, says it.
    [PostgresFact]
    public async Task SharedSpool_AnUnroutedAlertOnAClaimTakenOverMeanwhile_IsToldUnroutedByTheNewHolderAlone()
    {
        await using var stalled = await Stalled.StartAsync();
        var (start, clock, later, gw, spool, other) = stalled;
        await AcceptAsync(spool, "t-1", "PUMP_CYCLING", start);
        await spool.AcceptAlertAsync(new IncomingAlert("dev-1", "u-1", start, "127.0.0.1:1", Encoding.UTF8.GetBytes(Alerts.Json("u-1", code: "DOOR_OPEN", sev: "info")),
            null, "DOOR_OPEN", Severity: "info"), default);
        var taken = new List<SpooledAlert>();
        var racing = new RacingThrottle(async () => taken.AddRange(await other.NewAlertsAsync(256, default)));
        var firstSaid = new LineLog<AlertProcessor>();
        var newHolderSaid = new LineLog<AlertProcessor>();
        var router = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, spool, (TimeProvider)clock, racing, firstSaid);
        var newHolder = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, other, (TimeProvider)later, newHolderSaid);

        Assert.Equal(2, await router.RouteNewAsync(default));

        Assert.Equal(["t-1", "u-1"], taken.Select(a => a.AlertId));
        Assert.DoesNotContain(firstSaid.Lines, l => l.StartsWith("No route", StringComparison.Ordinal));
        Assert.Equal(2, await newHolder.RouteNewAsync(default));
        Assert.Equal(["routed", "unrouted"], await StatusesAsync(spool, "t-1", "u-1"));
        Assert.Contains("No route for alert u-1 (DOOR_OPEN) from dev-1; kept as unrouted", newHolderSaid.Lines);
    }

    // The same for a digest: the first instance parks a digest whose key the other took over; its first repeat must not
    // be told 'failed' while the new holder mails the digest.
    [PostgresFact]
    public async Task SharedSpool_ADigestParkedOnAClaimTakenOverMeanwhile_GivesNoFailedReceipt_TheNewHolderMailsIt()
    {
        await using var stalled = await Stalled.StartAsync();
        var (_, clock, later, gw, spool, other) = stalled;
        await HoldAsync(spool, Repeats("p-2", "p-3", "p-4"));
        var taken = new List<DueDigest>();
        var broken = new RacingThrottle(async () =>
        {
            taken.AddRange(await other.DueDigestsAsync(later.GetUtcNow(), 10, default));
            throw new InvalidOperationException("a template this instance cannot render");
        });
        var router = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, spool, (TimeProvider)clock, broken);
        var newHolder = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, other, (TimeProvider)later);

        await router.DigestDueAsync(default);

        Assert.Equal(("dev-1", "PUMP_CYCLING"), (Assert.Single(taken).Device, taken[0].Code));
        Assert.Equal(["held", "held", "held"], await StatusesAsync(spool, "p-2", "p-3", "p-4"));
        Assert.Empty(await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default));
        await newHolder.DigestDueAsync(default);
        Assert.Equal(["digested", "digested", "digested"], await StatusesAsync(spool, "p-2", "p-3", "p-4"));
        Assert.Equal("digest", Assert.Single(await spool.DueMessagesAsync(DateTimeOffset.MaxValue.AddDays(-1), 10, new HashSet<long>(), default)).Kind);
        Assert.Empty(await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default));
    }

    // Two instances on one spool, the first stalled past its lease: its clock stands still, the other's is a lease and a
    // second on, so the other may take over what the first has claimed.
    private sealed class Stalled : IAsyncDisposable
    {
        private TestDatabase _db = null!;
        private DateTimeOffset _start;
        private FakeTimeProvider _clock = null!, _later = null!;
        private TestGateway _gw = null!;
        private PostgresSpool _spool = null!, _other = null!;

        public static async Task<Stalled> StartAsync()
        {
            var s = new Stalled { _db = await TestPostgres.CreateDatabaseAsync(), _start = TimeProvider.System.GetUtcNow() };
            s._clock = new FakeTimeProvider(s._start);
            s._later = new FakeTimeProvider(s._start + Lease + TimeSpan.FromSeconds(1));
            s._gw = await RoutingClaimTests.StartAsync();
            s._spool = OpenShared(s._db, s._clock, Lease);
            s._other = OpenShared(s._db, s._later, Lease);
            return s;
        }

        public void Deconstruct(out DateTimeOffset start, out FakeTimeProvider clock, out FakeTimeProvider later, out TestGateway gw, out PostgresSpool spool,
            out PostgresSpool other) => (start, clock, later, gw, spool, other) = (_start, _clock, _later, _gw, _spool, _other);

        public async ValueTask DisposeAsync()
        {
            await _other.DisposeAsync();
            await _spool.DisposeAsync();
            await _gw.DisposeAsync();
            await _db.DisposeAsync();
        }
    }

    // The routers under test run on spools of their own; this gateway lends them its options (the lease), devices,
    // composer and parking lot, whose receipts it keeps in its own spool.
    private static Task<TestGateway> StartAsync() => TestGateway.StartAsync(c =>
    {
        SharedStormConfig(c);
        c["Spool"] = new { ClaimLease = "00:00:10" };
    });

    private static Task AcceptAsync(ISpool spool, string id, string code, DateTimeOffset receivedAt) =>
        spool.AcceptAlertAsync(new IncomingAlert("dev-1", id, receivedAt, "127.0.0.1:1", Encoding.UTF8.GetBytes(Alerts.Json(id, code: code)), null, code,
            Severity: "critical"), default);

    private static (string Id, string Payload)[] Repeats(params string[] ids) =>
        [.. ids.Select(id => (id, Alerts.Json(id, code: "PUMP_CYCLING", text: "repeat " + id)))];
}
