using System.Text.Json;
using EdgeMail.Gateway.Devices;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.Spool;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using MimeKit;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Operations;

/// <summary>
/// A device that goes quiet is an alert to its people (DEVICE_SILENT), and another when it is back (DEVICE_BACK);
/// a restart in between sends nothing twice. Time is a fake clock; the mail is real.
/// </summary>
public sealed class SilenceTests
{
    [Fact]
    public void HeartbeatInterval_SeededFromTheSpool_IsKeptByTheFirstHeartbeatAfterARestart_ThenObserved()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var presence = new DevicePresence(clock);
        presence.SeedHeartbeatInterval("dev-1", TimeSpan.FromHours(1));

        // No heartbeat time came with the seed: the first one since start has nothing to measure from.
        presence.HeartbeatSeen("dev-1");
        Assert.Equal(TimeSpan.FromHours(1), presence.HeartbeatInterval("dev-1"));

        clock.Advance(TimeSpan.FromMinutes(10));
        presence.HeartbeatSeen("dev-1");
        Assert.Equal(TimeSpan.FromMinutes(10), presence.HeartbeatInterval("dev-1"));
    }

    [Fact]
    public async Task QuietDevice_RaisesSilentOnce_AcrossARestart_AndBackWhenHeardAgain()
    {
        // Near the real time: the mailbox's files carry real times, and the housekeeper compares them with the clock.
        var start = DateTimeOffset.UtcNow;
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        var clock = new FakeTimeProvider(start);
        var gw = await StartWatchedAsync(clock, dataDir);
        try
        {
            using var device = await gw.ConnectAsync("dev-1");
            await HeartbeatAsync(device);
            clock.Advance(TimeSpan.FromMinutes(1));
            await HeartbeatAsync(device); // heartbeats a minute apart: silent after max(3 min, 5 min)
            var watch = gw.Host.Services.GetRequiredService<SilenceWatch>();
            Assert.Equal(TimeSpan.FromMinutes(5), watch.LimitFor(gw.Host.Services.GetRequiredService<DeviceRegistry>().Find("dev-1")!));

            clock.Advance(TimeSpan.FromMinutes(4)); // 4 min quiet: not yet
            await CheckedAsync(watch);
            Assert.False(watch.IsSilent("dev-1"));

            clock.Advance(TimeSpan.FromMinutes(2)); // 6 min quiet
            await CheckedAsync(watch);
            Assert.True(watch.IsSilent("dev-1"));
            var silent = MimeMessage.Load(Assert.Single(await gw.MailAsync(1)));
            Assert.Equal("alice@example.com", silent.To.Mailboxes.Single().Address);
            Assert.Contains("DEVICE_SILENT", silent.TextBody, StringComparison.Ordinal);
            Assert.Contains("No heartbeat or alert from Device 1 (dev-1)", silent.TextBody, StringComparison.Ordinal);
            Assert.False(watch.IsSilent("dev-2")); // never heard from: not installed yet, nothing to miss
            await device.DisconnectAsync();
        }
        finally
        {
            await gw.StopAsync();
        }

        // Restarted while the device is still quiet: the episode is found again, and no second mail is sent.
        var later = new FakeTimeProvider(start + TimeSpan.FromMinutes(8));
        await using var again = await StartWatchedAsync(later, dataDir);
        var watch2 = again.Host.Services.GetRequiredService<SilenceWatch>();
        await CheckedAsync(watch2);
        Assert.True(watch2.IsSilent("dev-1"));
        Assert.Equal(1, (await again.Spool.CountsAsync(default)).Messages.Values.Sum());

        using var back = await again.ConnectAsync("dev-1");
        await HeartbeatAsync(back);
        var mail = await again.MailAsync(2);
        var returned = MimeMessage.Load(Assert.Single(mail, f => (MimeMessage.Load(f).TextBody ?? string.Empty).Contains("DEVICE_BACK", StringComparison.Ordinal)));
        Assert.Contains("is back", returned.TextBody, StringComparison.Ordinal);
        await again.UntilAsync(() => Task.FromResult(!watch2.IsSilent("dev-1")), "dev-1 no longer silent");
    }

    // A restart knows a silence was announced by its DEVICE_SILENT in the spool, and the device's last-heard time is never
    // pruned: once Spool:Retention pruned the alert with its mail, each restart mailed DEVICE_SILENT again for the episode.
    [Fact]
    public async Task QuietDevice_LongerThanTheRetention_IsNotMailedSilentAgainAfterARestart()
    {
        var start = DateTimeOffset.UtcNow;
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        var clock = new FakeTimeProvider(start);
        var gw = await StartWatchedAsync(clock, dataDir);
        try
        {
            await HeardTwiceAMinuteApartAsync(gw, clock);
            var watch = gw.Host.Services.GetRequiredService<SilenceWatch>();
            clock.Advance(TimeSpan.FromMinutes(6));
            await CheckedAsync(watch);
            Assert.True(watch.IsSilent("dev-1"));
            await gw.MailAsync(1);
            await gw.UntilAsync(async () => (await gw.Spool.CountsAsync(default)).Messages.GetValueOrDefault("sent") == 1, "the DEVICE_SILENT mail sent");

            // The device stays quiet past Spool:Retention (30 days): the housekeeper's next pass removes the mail, not the
            // open silence. Its own pass, not one beside it: two at once race for the same mailbox files.
            var passed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            gw.Host.Services.GetRequiredService<Housekeeper>().PassCompleted += () => passed.TrySetResult();
            clock.Advance(TimeSpan.FromDays(31));
            await Await.Within(passed.Task.ContinueWith(_ => true, TaskScheduler.Default), "a housekeeping pass");
            var counts = await gw.Spool.CountsAsync(default);
            Assert.Equal((1, 0), (counts.Alerts.Values.Sum(), counts.Messages.Values.Sum()));
        }
        finally
        {
            await gw.StopAsync();
        }

        var later = new FakeTimeProvider(start + TimeSpan.FromDays(31) + TimeSpan.FromMinutes(10));
        await using var again = await StartWatchedAsync(later, dataDir);
        var watch2 = again.Host.Services.GetRequiredService<SilenceWatch>();
        await CheckedAsync(watch2);
        Assert.True(watch2.IsSilent("dev-1"));
        Assert.Equal(1, (await again.Spool.CountsAsync(default)).Alerts.Values.Sum()); // no second DEVICE_SILENT
    }

    // The check skipped disabled devices before it looked at their open silence: one disabled while silent was counted
    // silent for good (IsSilent, SilentCount, the console, edgemail.devices.silent), and meanwhile every alert or
    // heartbeat of any device woke a check of the whole fleet.
    [Fact]
    public async Task SilentDevice_DisabledByTheOperator_IsNoLongerSilent_AndEnabledAgainHasItsWholeLimit()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var gw = await StartWatchedAsync(clock);
        await HeardTwiceAMinuteApartAsync(gw, clock);

        var watch = gw.Host.Services.GetRequiredService<SilenceWatch>();
        var registry = gw.Host.Services.GetRequiredService<DeviceRegistry>();
        clock.Advance(TimeSpan.FromMinutes(6));
        await CheckedAsync(watch);
        Assert.True(watch.IsSilent("dev-1"));

        await registry.SetDisabledAsync("dev-1", true, default);
        clock.Advance(TimeSpan.FromMinutes(1));
        await CheckedAsync(watch);
        Assert.Equal(0, watch.SilentCount);
        Assert.False(watch.IsSilent("dev-1"));
        // No DEVICE_BACK mailed: it was not heard. Its silence is recorded as ended by one stored cancelled.
        await gw.UntilAsync(async () => (await gw.Spool.CountsAsync(default)).Alerts.GetValueOrDefault("cancelled") == 1, "the silence recorded as ended");
        Assert.Equal(2, (await gw.Spool.CountsAsync(default)).Alerts.Values.Sum());

        // Enabled again: its limit runs from now, not from when it was last heard, and a new silence is a new episode.
        await registry.SetDisabledAsync("dev-1", false, default);
        clock.Advance(TimeSpan.FromMinutes(4));
        await CheckedAsync(watch);
        Assert.False(watch.IsSilent("dev-1"));
        clock.Advance(TimeSpan.FromMinutes(2));
        await CheckedAsync(watch);
        Assert.True(watch.IsSilent("dev-1"));
        Assert.Equal(3, (await gw.Spool.CountsAsync(default)).Alerts.Values.Sum());
    }

    // Disabling a silent device ended its silence in memory only: its DEVICE_SILENT stayed open in the spool (kept from
    // the prune for good), so a restart after it was enabled again took the episode up, counted the device silent at once
    // and, when it was next heard, mailed DEVICE_BACK for a silence the operator had ended long before.
    [Fact]
    public async Task SilentDevice_DisabledThenEnabledAgain_IsNotSilentAfterARestart_AndMailsNoReturnWhenHeard()
    {
        var start = DateTimeOffset.UtcNow;
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        var clock = new FakeTimeProvider(start);
        var gw = await StartWatchedAsync(clock, dataDir);
        try
        {
            await HeardTwiceAMinuteApartAsync(gw, clock);
            var watch = gw.Host.Services.GetRequiredService<SilenceWatch>();
            var registry = gw.Host.Services.GetRequiredService<DeviceRegistry>();
            clock.Advance(TimeSpan.FromMinutes(6));
            await CheckedAsync(watch);
            Assert.True(watch.IsSilent("dev-1"));
            await gw.MailAsync(1);

            await registry.SetDisabledAsync("dev-1", true, default);
            await CheckedAsync(watch);
            await registry.SetDisabledAsync("dev-1", false, default);
        }
        finally
        {
            await gw.StopAsync();
        }

        // Restarted two minutes after it was enabled again: it has the rest of its limit, and nothing of the old episode.
        var later = new FakeTimeProvider(start + TimeSpan.FromMinutes(9));
        await using var again = await StartWatchedAsync(later, dataDir);
        var watch2 = again.Host.Services.GetRequiredService<SilenceWatch>();
        await CheckedAsync(watch2);
        Assert.False(watch2.IsSilent("dev-1"));

        using (var back = await again.ConnectAsync("dev-1"))
        {
            await HeartbeatAsync(back);
            await back.DisconnectAsync();
        }

        await CheckedAsync(watch2);
        Assert.False(watch2.IsSilent("dev-1"));
        var counts = await again.Spool.CountsAsync(default);
        Assert.Equal(1, counts.Messages.Values.Sum()); // the DEVICE_SILENT only
        Assert.Equal(2, counts.Alerts.Values.Sum());
    }

    // A silent device taken out of the configuration and put back (each a restart): its silence is over (ended by the
    // removal, not mailed), so its next silence is a new incident. Before, it was measured again from when the device was
    // last heard, which named the old incident: the new DEVICE_SILENT was a duplicate of the old one and mailed nobody,
    // and when the device came back its DEVICE_BACK was a duplicate of the removal's record and mailed nobody either.
    [Fact]
    public async Task SilentDevice_RemovedFromTheConfigurationAndAddedAgain_IsSilentAgainAsANewIncident_MailedWithItsReturn()
    {
        var start = DateTimeOffset.UtcNow;
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));

        // Silent after 5 minutes after a restart too (the heartbeat history kept is too sparse to give an interval).
        Action<Dictionary<string, object>> Config(bool configured) => c =>
        {
            c["Silence"] = new { DefaultAfter = "00:05:00", MinimumAfter = "00:05:00", CheckInterval = "00:00:30" };
            if (!configured)
            {
                ((Dictionary<string, object>)c["Devices"]).Remove("dev-1");
            }
        };

        var clock = new FakeTimeProvider(start);
        var gw = await TestGateway.StartAsync(Config(true), s => s.AddSingleton<TimeProvider>(clock), dataDir: dataDir);
        try
        {
            await HeardTwiceAMinuteApartAsync(gw, clock);
            var watch = gw.Host.Services.GetRequiredService<SilenceWatch>();
            clock.Advance(TimeSpan.FromMinutes(6));
            await CheckedAsync(watch);
            Assert.True(watch.IsSilent("dev-1"));
            await gw.MailAsync(1);
        }
        finally
        {
            await gw.StopAsync();
        }

        var removed = await TestGateway.StartAsync(Config(false), s => s.AddSingleton<TimeProvider>(new FakeTimeProvider(start + TimeSpan.FromMinutes(8))),
            dataDir: dataDir);
        try
        {
            await CheckedAsync(removed.Host.Services.GetRequiredService<SilenceWatch>());
            Assert.Equal(AlertStatus.Cancelled, (await removed.Spool.GetAlertAsync("dev-1", (await SilenceIdsAsync(removed.Spool))[1], default))?.Status);
        }
        finally
        {
            await removed.StopAsync();
        }

        // Added again two minutes after its silence was recorded ended: it has its whole limit from the start that put it
        // back (not the rest of it from the end, the best a start could do while it did not know when the device came back).
        var later = new FakeTimeProvider(start + TimeSpan.FromMinutes(10));
        await using var again = await StartAsyncOn(later);
        var watch2 = again.Host.Services.GetRequiredService<SilenceWatch>();
        await CheckedAsync(watch2);
        bool silentAtOnce = watch2.IsSilent("dev-1");
        later.Advance(TimeSpan.FromMinutes(4));
        await CheckedAsync(watch2);
        Assert.False(watch2.IsSilent("dev-1"));
        later.Advance(TimeSpan.FromMinutes(2));
        await CheckedAsync(watch2);

        Assert.True(watch2.IsSilent("dev-1"));
        string[] ids = await SilenceIdsAsync(again.Spool);
        Assert.Equal(3, ids.Length); // the first silence, its end, and the new one
        Assert.StartsWith("gw-silent-", ids[2], StringComparison.Ordinal);
        Assert.NotEqual(ids[0], ids[2]);
        var silent = MimeMessage.Load(Assert.Single(await again.MailAsync(2), f => MimeMessage.Load(f).Headers["X-EdgeMail-Alert"] == ids[2]));
        Assert.Contains("DEVICE_SILENT", silent.TextBody, StringComparison.Ordinal);
        Assert.False(silentAtOnce); // its limit ran from the restart, not from when it was last heard

        using (var back = await again.ConnectAsync("dev-1"))
        {
            await HeartbeatAsync(back);
            await back.DisconnectAsync();
        }

        var mail = await again.MailAsync(3);
        var returned = MimeMessage.Load(Assert.Single(mail, f => (MimeMessage.Load(f).TextBody ?? string.Empty).Contains("DEVICE_BACK", StringComparison.Ordinal)));
        Assert.Equal("gw-back-" + ids[2]["gw-silent-".Length..], returned.Headers["X-EdgeMail-Alert"]);

        Task<TestGateway> StartAsyncOn(TimeProvider time) => TestGateway.StartAsync(Config(true), s => s.AddSingleton(time), dataDir: dataDir);
    }

    // A device taken out of the configuration and put back days later (each a restart), not heard from since: its limit
    // runs from the start that put it back. Before, it ran from when its silence was recorded ended (the removal) or from
    // when it was last heard, days ago, and the device was silent at once after the restart: a false alarm, mailed.
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Device_RemovedFromTheConfigurationAndAddedAgainDaysLater_HasItsWholeLimitFromTheRestart(bool silentWhenRemoved)
    {
        var start = DateTimeOffset.UtcNow;
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        await HeardThenRemovedAsync(dataDir, start, silentWhenRemoved);

        var later = new FakeTimeProvider(start + TimeSpan.FromDays(3));
        await using var again = await TestGateway.StartAsync(FiveMinutes(configured: true), s => s.AddSingleton<TimeProvider>(later), dataDir: dataDir);
        var watch = again.Host.Services.GetRequiredService<SilenceWatch>();
        await CheckedAsync(watch);
        Assert.False(watch.IsSilent("dev-1"));
        later.Advance(TimeSpan.FromMinutes(4));
        await CheckedAsync(watch);
        Assert.False(watch.IsSilent("dev-1"));

        later.Advance(TimeSpan.FromMinutes(2));
        await CheckedAsync(watch);
        Assert.True(watch.IsSilent("dev-1")); // a new incident, mailed
        string silentId = (await SilenceIdsAsync(again.Spool))[^1];
        Assert.Equal("gw-silent-" + (start + TimeSpan.FromDays(3)).ToUnixTimeMilliseconds(), silentId);
        var mail = await again.MailAsync(silentWhenRemoved ? 2 : 1);
        Assert.Single(mail, f => MimeMessage.Load(f).Headers["X-EdgeMail-Alert"] == silentId);
    }

    // A start without the device that could not record the end of its silence (the spool failed, or it stopped first)
    // left the silence open: the start that put the device back took it up and counted the device silent at once.
    [Fact]
    public async Task SilentDevice_RemovedWithoutItsEndRecordedAndAddedAgain_IsNotSilentAtOnce_AndItsNextSilenceIsANewIncident()
    {
        var start = DateTimeOffset.UtcNow;
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        await HeardThenRemovedAsync(dataDir, start, silent: true, endRecorded: false);
        await using (var spool = SqliteSpool.Open(Path.Combine(dataDir, "spool.db"), fsync: true, maxBatch: 64, NullLogger.Instance))
        {
            Assert.Single(await SilenceIdsAsync(spool)); // still open
        }

        var later = new FakeTimeProvider(start + TimeSpan.FromDays(3));
        await using var again = await TestGateway.StartAsync(FiveMinutes(configured: true), s => s.AddSingleton<TimeProvider>(later), dataDir: dataDir);
        var watch = again.Host.Services.GetRequiredService<SilenceWatch>();
        await CheckedAsync(watch);
        Assert.False(watch.IsSilent("dev-1"));
        string endId = (await SilenceIdsAsync(again.Spool))[1];
        Assert.Equal(AlertStatus.Cancelled, (await again.Spool.GetAlertAsync("dev-1", endId, default))?.Status);

        // It ended when it was taken out, days before; the record said it ended when it was recorded.
        Assert.Equal("The silence of Device 1 (dev-1) ended because it was taken out of the configuration (it is configured again now); it was not heard from"
            + $" (recorded at {later.GetUtcNow().UtcDateTime:yyyy-MM-dd HH:mm:ss} UTC).", await TextAsync(again.Spool, endId));

        later.Advance(TimeSpan.FromMinutes(6));
        await CheckedAsync(watch);
        Assert.True(watch.IsSilent("dev-1"));
        string silentId = (await SilenceIdsAsync(again.Spool))[^1];
        Assert.Equal("gw-silent-" + (start + TimeSpan.FromDays(3)).ToUnixTimeMilliseconds(), silentId);
        Assert.Single(await again.MailAsync(2), f => MimeMessage.Load(f).Headers["X-EdgeMail-Alert"] == silentId);
    }

    // The start that put the device back could not record the end of its old silence either (the spool failed, or it
    // stopped first; or another instance sharing the spool recorded the device back a moment before this one started):
    // the next start, the device watched since before it, took that silence up and counted the device silent at once,
    // and mailed a DEVICE_BACK for a silence that ended days ago when the device was next heard.
    [Fact]
    public async Task SilentDevice_PutBackByAStartThatCouldNotRecordItsEnd_IsNotSilentAtOnceAtTheNextStart()
    {
        var start = DateTimeOffset.UtcNow;
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        await HeardThenRemovedAsync(dataDir, start, silent: true, endRecorded: false);
        var back = start + TimeSpan.FromDays(3);
        await CheckOnceAsync(dataDir, configured: true, back, raisesFail: true);

        var later = new FakeTimeProvider(back + TimeSpan.FromMinutes(2));
        await using var again = await TestGateway.StartAsync(FiveMinutes(configured: true), s => s.AddSingleton<TimeProvider>(later), dataDir: dataDir);
        var watch = again.Host.Services.GetRequiredService<SilenceWatch>();
        await CheckedAsync(watch);
        Assert.False(watch.IsSilent("dev-1"));
        Assert.Equal(AlertStatus.Cancelled, (await again.Spool.GetAlertAsync("dev-1", (await SilenceIdsAsync(again.Spool))[1], default))?.Status);

        // Its limit runs from the start that put it back.
        later.Advance(TimeSpan.FromMinutes(4));
        await CheckedAsync(watch);
        Assert.True(watch.IsSilent("dev-1"));
        string silentId = (await SilenceIdsAsync(again.Spool))[^1];
        Assert.Equal("gw-silent-" + back.ToUnixTimeMilliseconds(), silentId);
        Assert.Single(await again.MailAsync(2), f => MimeMessage.Load(f).Headers["X-EdgeMail-Alert"] == silentId);
    }

    // The loop restarted after an unexpected fault seeds again with the time of the process's start: every device first
    // watched since then (configured anew at this start, or added at run time) counted as put back, and a silence it was
    // in, announced by this very process, was recorded ended (cancelled): its DEVICE_BACK, when the device was heard
    // again, was a duplicate of that record and mailed nobody.
    [Fact]
    public async Task SilentDevice_WatchedSinceThisStart_StaysSilentAcrossARestartOfTheLoop_AndItsReturnIsMailed()
    {
        var clock = new BackoffSignallingClock(DateTimeOffset.UtcNow);
        FaultingSpool? faults = null;
        await using var gw = await TestGateway.StartAsync(FiveMinutes(configured: true), s =>
        {
            s.AddSingleton<TimeProvider>(clock);
            FaultingSpool.Add<SilenceWatch>(s, f => faults = f);
        });
        gw.Logs.Expect(e => e.Message.StartsWith("The silence loop failed unexpectedly", StringComparison.Ordinal) && e.Exception is InvalidOperationException);
        var watch = gw.Host.Services.GetRequiredService<SilenceWatch>();
        await HeardTwiceAMinuteApartAsync(gw, clock);
        clock.Advance(TimeSpan.FromMinutes(6));
        await CheckedAsync(watch);
        Assert.True(watch.IsSilent("dev-1"));
        string silentId = Assert.Single(await SilenceIdsAsync(gw.Spool));
        await gw.MailAsync(1);

        // A device added at run time has the check record it, and that fails as nothing should: the loop restarts.
        faults!.FailUnexpectedly(nameof(ISpool.WatchDevicesAsync));
        var backoff = clock.NextBackoff();
        await gw.Host.Services.GetRequiredService<DeviceRegistry>().AddAsync("dev-9", "Device 9", "Hall 3", ["alice"], default);
        watch.Wake();
        await Await.Within(backoff, "the silence loop's backoff");
        Assert.Equal(1, watch.Restarts);
        var rechecked = CheckedAsync(watch);
        clock.Advance(TimeSpan.FromSeconds(1));
        await rechecked;

        Assert.True(watch.IsSilent("dev-1"));
        Assert.Null(await gw.Spool.GetAlertAsync("dev-1", "gw-back-" + silentId["gw-silent-".Length..], default)); // not recorded ended

        using (var device = await gw.ConnectAsync("dev-1"))
        {
            await HeartbeatAsync(device);
            await device.DisconnectAsync();
        }

        await CheckedAsync(watch);
        Assert.False(watch.IsSilent("dev-1"));
        Assert.Single(await gw.MailAsync(2), f => MimeMessage.Load(f).Headers["X-EdgeMail-Alert"] == "gw-back-" + silentId["gw-silent-".Length..]);
    }

    // The same, put back at run time through the console: the spool still says when the device was last heard, days ago,
    // and the first check after the addition found it silent at once.
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Device_RemovedFromTheConfigurationAndAddedAgainAtRunTime_HasItsWholeLimitFromTheAddition(bool silentWhenRemoved)
    {
        var start = DateTimeOffset.UtcNow;
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        await HeardThenRemovedAsync(dataDir, start, silentWhenRemoved);

        var later = new FakeTimeProvider(start + TimeSpan.FromDays(3));
        await using var gw = await TestGateway.StartAsync(FiveMinutes(configured: false), s => s.AddSingleton<TimeProvider>(later), dataDir: dataDir);
        var watch = gw.Host.Services.GetRequiredService<SilenceWatch>();
        await CheckedAsync(watch);
        later.Advance(TimeSpan.FromHours(1));
        var added = later.GetUtcNow();
        await gw.Host.Services.GetRequiredService<DeviceRegistry>().AddAsync("dev-1", "Device 1", "Hall 3", ["alice"], default);
        await CheckedAsync(watch);
        Assert.False(watch.IsSilent("dev-1"));
        later.Advance(TimeSpan.FromMinutes(4));
        await CheckedAsync(watch);
        Assert.False(watch.IsSilent("dev-1"));

        later.Advance(TimeSpan.FromMinutes(2));
        await CheckedAsync(watch);
        Assert.True(watch.IsSilent("dev-1"));
        string silentId = (await SilenceIdsAsync(gw.Spool))[^1];
        Assert.Equal("gw-silent-" + added.ToUnixTimeMilliseconds(), silentId);
        var mail = await gw.MailAsync(silentWhenRemoved ? 2 : 1);
        Assert.Single(mail, f => MimeMessage.Load(f).Headers["X-EdgeMail-Alert"] == silentId);
    }

    // Taken out of the configuration and put back while the watch was off (each a restart), and the watch turned on again:
    // its limit runs from the start that put it back, and a silence it was in when taken out is over. Before, the watch
    // kept no record of the devices configured while it was off: the device counted as configured all along, took its
    // old silence up (mailing a DEVICE_BACK for it when next heard), or was silent at once, measured from when it was
    // last heard days before: a false alarm, mailed.
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Device_RemovedAndAddedAgainWhileTheWatchWasOff_HasItsWholeLimitFromTheStartThatPutItBack(bool silentWhenRemoved)
    {
        var start = DateTimeOffset.UtcNow;
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        await HeardThenRemovedAsync(dataDir, start, silentWhenRemoved, thenOn: false);
        var back = start + TimeSpan.FromDays(3);
        await CheckOnceAsync(dataDir, configured: true, back, raisesFail: false, on: false);

        var later = new FakeTimeProvider(back + TimeSpan.FromMinutes(2));
        await using var on = await TestGateway.StartAsync(FiveMinutes(configured: true), s => s.AddSingleton<TimeProvider>(later), dataDir: dataDir);
        var watch = on.Host.Services.GetRequiredService<SilenceWatch>();
        await CheckedAsync(watch);
        Assert.False(watch.IsSilent("dev-1"));
        if (silentWhenRemoved)
        {
            Assert.Equal(AlertStatus.Cancelled, (await on.Spool.GetAlertAsync("dev-1", (await SilenceIdsAsync(on.Spool))[1], default))?.Status);
        }

        later.Advance(TimeSpan.FromMinutes(4));
        await CheckedAsync(watch);
        Assert.True(watch.IsSilent("dev-1"));
        string silentId = (await SilenceIdsAsync(on.Spool))[^1];
        Assert.Equal("gw-silent-" + back.ToUnixTimeMilliseconds(), silentId);
        Assert.Single(await on.MailAsync(silentWhenRemoved ? 2 : 1), f => MimeMessage.Load(f).Headers["X-EdgeMail-Alert"] == silentId);
    }

    // What the fixes above must not break: a device configured all along that fell silent while the gateway was down is
    // silent as soon as the gateway is back, measured from when it was last heard, not given a new limit by the restart.
    [Fact]
    public async Task QuietDevice_SilentWhileTheGatewayWasDown_IsSilentAtOnceAfterTheRestart()
    {
        var start = DateTimeOffset.UtcNow;
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        var clock = new FakeTimeProvider(start);
        var gw = await TestGateway.StartAsync(FiveMinutes(configured: true), s => s.AddSingleton<TimeProvider>(clock), dataDir: dataDir);
        try
        {
            await HeardTwiceAMinuteApartAsync(gw, clock);
            clock.Advance(TimeSpan.FromMinutes(3));
            await CheckedAsync(gw.Host.Services.GetRequiredService<SilenceWatch>());
        }
        finally
        {
            await gw.StopAsync();
        }

        var later = new FakeTimeProvider(start + TimeSpan.FromMinutes(10));
        await using var again = await TestGateway.StartAsync(FiveMinutes(configured: true), s => s.AddSingleton<TimeProvider>(later), dataDir: dataDir);
        var watch = again.Host.Services.GetRequiredService<SilenceWatch>();
        await CheckedAsync(watch);
        Assert.True(watch.IsSilent("dev-1"));
        Assert.Equal("gw-silent-" + (start + TimeSpan.FromMinutes(1)).ToUnixTimeMilliseconds(), Assert.Single(await SilenceIdsAsync(again.Spool)));
    }

    // Silence was measured on the wall clock: a forward step of it (NTP after a long drift, an operator setting the
    // date) at least the limit made every device silent at once, a DEVICE_SILENT and then a DEVICE_BACK mail each.
    [Fact]
    public async Task WallClockSteppedForward_MakesNoDeviceSilent_WhileARealSilenceIsStillFound()
    {
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var clock = new SteppedWallClock(time);
        await using var gw = await StartWatchedAsync(clock);
        await HeardTwiceAMinuteApartAsync(gw, time);

        var watch = gw.Host.Services.GetRequiredService<SilenceWatch>();
        clock.Step = TimeSpan.FromHours(1);
        await CheckedAsync(watch);
        Assert.False(watch.IsSilent("dev-1"));

        time.Advance(TimeSpan.FromMinutes(6));
        await CheckedAsync(watch);
        Assert.True(watch.IsSilent("dev-1"));
        var silent = MimeMessage.Load(Assert.Single(await gw.MailAsync(1)));
        Assert.Contains("DEVICE_SILENT", silent.TextBody, StringComparison.Ordinal);
    }

    // A wall clock that can be stepped while the monotonic one (GetTimestamp) goes on as before, as NTP steps a real one.
    // Silent after 5 minutes (or three heartbeat intervals, if longer), checked every 30 seconds.
    // A silence that cannot be stored for a reason nobody expected (not the spool's own failure, which ends the check)
    // stopped the check at that device: the loop restarted and stopped there again, and every device after it went
    // unwatched. Now that device is tried again at the next check and the others are announced meanwhile.
    [Fact]
    public async Task SilenceThatFailsToStoreUnexpectedly_LeavesTheOtherDevicesWatched_AndIsStoredAtTheNextCheck()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        FaultingSpool? faults = null;
        await using var gw = await TestGateway.StartAsync(
            c => c["Silence"] = new { MinimumAfter = "00:05:00", CheckInterval = "00:00:30" },
            s =>
            {
                s.AddSingleton<TimeProvider>(clock);
                FaultingSpool.Add<SilenceWatch>(s, f => faults = f);
            });
        gw.Logs.Expect(e => e.Message.StartsWith("Storing gw-silent-", StringComparison.Ordinal) && e.Exception is InvalidOperationException);
        using (var one = await gw.ConnectAsync("dev-1"))
        using (var two = await gw.ConnectAsync("dev-2"))
        {
            await HeartbeatAsync(one);
            await HeartbeatAsync(two, "dev-2");
            clock.Advance(TimeSpan.FromMinutes(1));
            await HeartbeatAsync(one);
            await HeartbeatAsync(two, "dev-2"); // heartbeats a minute apart: silent after 5 min
        }

        var watch = gw.Host.Services.GetRequiredService<SilenceWatch>();
        clock.Advance(TimeSpan.FromMinutes(6));
        faults!.FailUnexpectedly(nameof(ISpool.AcceptAlertAsync));
        await CheckedAsync(watch);
        Assert.Equal(1, faults.Failed(nameof(ISpool.AcceptAlertAsync)));
        Assert.Equal(1, watch.SilentCount); // the device after the one that failed is announced

        await CheckedAsync(watch);
        Assert.True(watch.IsSilent("dev-1"));
        Assert.True(watch.IsSilent("dev-2"));
        Assert.Equal(2, (await gw.MailAsync(2)).Length);
    }

    private static Task<TestGateway> StartWatchedAsync(TimeProvider clock, string? dataDir = null) =>
        TestGateway.StartAsync(c => c["Silence"] = new { MinimumAfter = "00:05:00", CheckInterval = "00:00:30" },
            s => s.AddSingleton<TimeProvider>(clock), dataDir: dataDir);

    // Silent after 5 minutes after a restart too (the heartbeat history kept is too sparse to give an interval); dev-1
    // configured or not; the watch on, or off.
    private static Action<Dictionary<string, object>> FiveMinutes(bool configured, bool on = true) => c =>
    {
        c["Silence"] = new { Enabled = on, DefaultAfter = "00:05:00", MinimumAfter = "00:05:00", CheckInterval = "00:00:30" };
        if (!configured)
        {
            ((Dictionary<string, object>)c["Devices"]).Remove("dev-1");
        }
    };

    // dev-1 heard (and silent, mailed, if asked), then a restart an hour later without it in the configuration (whose
    // spool, if asked, fails to record that the silence ended; whose watch is off, if asked).
    private static async Task HeardThenRemovedAsync(string dataDir, DateTimeOffset start, bool silent, bool endRecorded = true, bool thenOn = true)
    {
        var clock = new FakeTimeProvider(start);
        var gw = await TestGateway.StartAsync(FiveMinutes(configured: true), s => s.AddSingleton<TimeProvider>(clock), dataDir: dataDir);
        try
        {
            await HeardTwiceAMinuteApartAsync(gw, clock);
            if (silent)
            {
                clock.Advance(TimeSpan.FromMinutes(6));
                await CheckedAsync(gw.Host.Services.GetRequiredService<SilenceWatch>());
                Assert.True(gw.Host.Services.GetRequiredService<SilenceWatch>().IsSilent("dev-1"));
                await gw.MailAsync(1);
            }
        }
        finally
        {
            await gw.StopAsync();
        }

        await CheckOnceAsync(dataDir, configured: false, start + TimeSpan.FromHours(1), raisesFail: !endRecorded, on: thenOn);
    }

    // A gateway on the spool in dataDir, at the given time, with dev-1 configured or not, runs one silence check (or, the
    // watch off, one look for devices added) and stops; with raisesFail, nothing the watch raises (a silence's end among
    // them) is stored.
    private static async Task CheckOnceAsync(string dataDir, bool configured, DateTimeOffset at, bool raisesFail, bool on = true)
    {
        var gw = await TestGateway.StartAsync(FiveMinutes(configured, on), s =>
        {
            s.AddSingleton<TimeProvider>(new FakeTimeProvider(at));
            if (raisesFail)
            {
                s.AddSingleton(sp =>
                {
                    var faults = FaultingSpool.Wrap(sp.GetRequiredService<ISpool>());
                    faults.Fail(nameof(ISpool.AcceptAlertAsync), times: 100);
                    return ActivatorUtilities.CreateInstance<SilenceWatch>(sp, faults.Spool);
                });
            }
        }, dataDir: dataDir);
        try
        {
            await CheckedAsync(gw.Host.Services.GetRequiredService<SilenceWatch>());
        }
        finally
        {
            await gw.StopAsync();
        }
    }

    // dev-1 connects, sends two heartbeats a minute apart (its interval: silent after max(3 min, 5 min)) and goes away.
    private static async Task HeardTwiceAMinuteApartAsync(TestGateway gw, FakeTimeProvider time)
    {
        using var device = await gw.ConnectAsync("dev-1");
        await HeartbeatAsync(device);
        time.Advance(TimeSpan.FromMinutes(1));
        await HeartbeatAsync(device);
        await device.DisconnectAsync();
    }

    // The text of one of dev-1's alerts, as stored.
    private static async Task<string?> TextAsync(ISpool spool, string alertId)
    {
        var alert = (await spool.QueryAlertsAsync(new AlertQuery(Device: "dev-1"), default)).Single(a => a.AlertId == alertId);
        using var json = JsonDocument.Parse((await spool.AlertJourneyAsync(alert.RowId, default))!.Payload);
        return json.RootElement.GetProperty("text").GetString();
    }

    // dev-1's DEVICE_SILENT and DEVICE_BACK alerts, oldest first.
    private static async Task<string[]> SilenceIdsAsync(ISpool spool) =>
        [.. (await spool.QueryAlertsAsync(new AlertQuery(Device: "dev-1"), default))
            .Where(a => a.Code is SilenceWatch.SilentCode or SilenceWatch.BackCode).OrderBy(a => a.RowId).Select(a => a.AlertId)];

    private static async Task HeartbeatAsync(IMqttClient device, string id = "dev-1")
    {
        string status = "{\"v\":1,\"fw\":\"1.4.2\",\"boot\":3,\"uptime_ms\":60000,\"queue_depth\":0,\"oldest_age_ms\":null,\"dropped\":0,\"battery_pct\":87,\"rssi_dbm\":-67}";
        var ack = await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic($"edgemail/v1/{id}/status").WithPayload(status)
            .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess);
    }

    // A fake clock that tells the test when a supervised loop begins its first backoff (a one-second timer), so the test
    // moves time only once the loop waits.
    private sealed class BackoffSignallingClock(DateTimeOffset start) : FakeTimeProvider(start)
    {
        private readonly TaskCompletionSource<bool> _backoff = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private volatile bool _armed;

        public Task<bool> NextBackoff()
        {
            _armed = true;
            return _backoff.Task;
        }

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            var timer = base.CreateTimer(callback, state, dueTime, period);
            if (_armed && dueTime == TimeSpan.FromSeconds(1))
            {
                _backoff.TrySetResult(true);
            }

            return timer;
        }
    }

    /// <summary>Has the watch check now, and waits until that check is done.</summary>
    internal static async Task CheckedAsync(SilenceWatch watch)
    {
        var checkedOnce = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnChecked() => checkedOnce.TrySetResult();
        watch.Checked += OnChecked;
        try
        {
            watch.Wake();
            await Await.Within(checkedOnce.Task.ContinueWith(_ => true, TaskScheduler.Default), "a silence check");
        }
        finally
        {
            watch.Checked -= OnChecked;
        }
    }
}
