using System.Security.Claims;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Devices;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Web;
using EdgeMail.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Spool;

/// <summary>
/// What an operator changes on one instance of a shared spool (API keys, devices) holds on the others: a revoked key at
/// once, a device change within <c>Spool:PollInterval</c>, ending the sessions it must end there too.
/// </summary>
[RequiresPostgres]
public sealed class SharedConsoleStateTests : IAsyncLifetime
{
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(200);
    private TestDatabase? _db;
    private PostgresSpool? _a;
    private PostgresSpool? _b;

    public async Task InitializeAsync()
    {
        _db = await TestPostgres.CreateDatabaseAsync();
        _a = PostgresSpool.Open(_db.ConnectionString, fsync: true, maxBatch: 64, TimeSpan.FromMinutes(2), Poll, NullLogger.Instance);
        _b = PostgresSpool.Open(_db.ConnectionString, fsync: true, maxBatch: 64, TimeSpan.FromMinutes(2), Poll, NullLogger.Instance);
    }

    [PostgresFact]
    public async Task AnApiKeyCreatedOnOneInstance_WorksOnAnother_AndItsRevocationHoldsThereAtOnce()
    {
        var a = new ConsoleAuth(_a!, TimeProvider.System, NullLogger<ConsoleAuth>.Instance);
        var b = new ConsoleAuth(_b!, TimeProvider.System, NullLogger<ConsoleAuth>.Instance);
        string dir = Directory.CreateTempSubdirectory("edgemail-auth-").FullName;
        try
        {
            await a.InitializeAsync(Path.Combine(dir, "a"), default);
            await b.InitializeAsync(Path.Combine(dir, "b"), default);

            var (record, key) = await a.CreateApiKeyAsync("made on a", ApiKeyScope.Read, default);
            Assert.Equal(record.Id, (await b.VerifyApiKeyAsync(key, default))?.Id);
            Assert.Contains(await b.ApiKeysAsync(default), k => k.Id == record.Id);

            Assert.True(await a.RevokeApiKeyAsync(record.Id, default));
            Assert.Null(await b.VerifyApiKeyAsync(key, default));
            Assert.False(await b.RevokeApiKeyAsync(record.Id, default)); // already revoked, as b now knows
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [PostgresFact]
    public async Task AStreamOpenWithAKeyOnOneInstance_EndsWithinSeconds_WhenAnotherRevokesIt()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UnixEpoch.AddYears(56));
        var a = new ConsoleAuth(_a!, TimeProvider.System, NullLogger<ConsoleAuth>.Instance);
        var b = new ConsoleAuth(_b!, clock, NullLogger<ConsoleAuth>.Instance);
        string dir = Directory.CreateTempSubdirectory("edgemail-auth-").FullName;
        try
        {
            await a.InitializeAsync(Path.Combine(dir, "a"), default);
            await b.InitializeAsync(Path.Combine(dir, "b"), default);
            var (record, key) = await a.CreateApiKeyAsync("wall screen", ApiKeyScope.Read, default);
            Assert.NotNull(await b.VerifyApiKeyAsync(key, default));

            // The principal b's API key handler makes for it, holding b's live feed open.
            var user = new ClaimsPrincipal(new ClaimsIdentity([new Claim(ConsoleAuth.ApiKeyClaim, record.Id), new Claim(ConsoleAuth.ScopeClaim, "read")], "api-key"));
            using var watch = b.Watch(user);
            var ended = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            using var registration = watch.Ended.Register(() => ended.TrySetResult(true));

            Assert.True(await a.RevokeApiKeyAsync(record.Id, default));
            Assert.False(watch.Ended.IsCancellationRequested); // b cannot know yet
            clock.Advance(TimeSpan.FromSeconds(6)); // b's look
            Assert.True(await Await.Within(ended.Task, "b's stream to end after a revoked the key"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [PostgresFact]
    public async Task ADeviceAddedThenDisabledOnOneInstance_IsKnownThenRefusedOnAnother()
    {
        var options = Options.Create(new GatewayOptions());
        var a = new DeviceRegistry(options, _a!, TimeProvider.System, NullLogger<DeviceRegistry>.Instance);
        var b = new DeviceRegistry(options, _b!, TimeProvider.System, NullLogger<DeviceRegistry>.Instance);
        await a.StartAsync(default);
        await b.StartAsync(default);
        try
        {
            var added = NextChange(b);
            await a.AddAsync("van-7", "Van 7", "Depot", [], default);
            Assert.Equal(new DeviceChange("van-7", false), await Await.Within(added, "b to learn of the new device"));
            Assert.NotNull(b.FindEnabled("van-7"));

            var disabled = NextChange(b);
            await a.SetDisabledAsync("van-7", true, default);
            Assert.Equal(new DeviceChange("van-7", true), await Await.Within(disabled, "b to learn that the device was disabled"));
            Assert.Null(b.FindEnabled("van-7"));
        }
        finally
        {
            await b.StopAsync(default);
            await a.StopAsync(default);
        }
    }

    [PostgresFact]
    public async Task ADeviceAddedOnOneInstance_IsFoundOnAnotherAtItsFirstAlert_BeforeThatOnePollsAgain()
    {
        // External mode: the device's alert reaches whichever instance the broker hands it to, maybe before its poll.
        await using var slowA = PostgresSpool.Open(_db!.ConnectionString, fsync: true, maxBatch: 64, TimeSpan.FromMinutes(2), TimeSpan.FromHours(1), NullLogger.Instance);
        await using var slowB = PostgresSpool.Open(_db.ConnectionString, fsync: true, maxBatch: 64, TimeSpan.FromMinutes(2), TimeSpan.FromHours(1), NullLogger.Instance);
        var options = Options.Create(new GatewayOptions());
        var a = new DeviceRegistry(options, slowA, TimeProvider.System, NullLogger<DeviceRegistry>.Instance);
        var b = new DeviceRegistry(options, slowB, TimeProvider.System, NullLogger<DeviceRegistry>.Instance);
        await a.StartAsync(default);
        await b.StartAsync(default);
        try
        {
            await a.AddAsync("van-8", "Van 8", "Depot", [], default);
            Assert.Null(b.Find("van-8")); // b polls once an hour

            Assert.Equal("Van 8", (await b.FindFreshAsync("van-8", default))?.Name);
            Assert.Null(await b.FindFreshAsync("van-9", default)); // still unknown: nobody added it
        }
        finally
        {
            await b.StopAsync(default);
            await a.StopAsync(default);
        }
    }

    private static Task<DeviceChange> NextChange(DeviceRegistry registry)
    {
        var next = new TaskCompletionSource<DeviceChange>(TaskCreationOptions.RunContinuationsAsynchronously);
        registry.Changed += c => next.TrySetResult(c);
        return next.Task;
    }

    public async Task DisposeAsync()
    {
        await (_a?.DisposeAsync() ?? ValueTask.CompletedTask);
        await (_b?.DisposeAsync() ?? ValueTask.CompletedTask);
        await (_db?.DisposeAsync() ?? ValueTask.CompletedTask);
    }
}
