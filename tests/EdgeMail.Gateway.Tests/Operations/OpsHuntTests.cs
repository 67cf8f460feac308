using EdgeMail.Gateway.Devices;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.Receipts;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Operations;

/// <summary>Review (opshunt): defects found in receipts, silence watch and housekeeping. Each test fails on main.</summary>
public sealed class OpsHuntTests
{
    // Housekeeper.PassAsync repeats PruneAsync only while messages or alerts fill a chunk; heartbeats are deleted at most
    // 1000 per call. A fleet that writes more than 1000 heartbeat rows an hour (84 devices at one per 5 minutes) grows the
    // table without end.
    [Fact]
    public async Task OpsHunt_HousekeepingPass_RemovesEveryExpiredHeartbeat_NotOnlyTheFirstThousand()
    {
        await using var gw = await TestGateway.StartAsync(c => { });
        var old = DateTimeOffset.UtcNow - TimeSpan.FromDays(8); // past the 7 days heartbeats are kept
        byte[] status = "{\"v\":1,\"fw\":\"1.0\"}"u8.ToArray();
        const int devices = 2500;
        await Task.WhenAll(Enumerable.Range(0, devices).Select(i => gw.Spool.RecordStatusAsync($"fleet-{i}", old, status, default)));

        await gw.Host.Services.GetRequiredService<Housekeeper>().PassAsync(default);

        int left = 0;
        for (int i = 0; i < devices; i++)
        {
            left += (await gw.Spool.HeartbeatsAsync($"fleet-{i}", old - TimeSpan.FromDays(1), default)).Count;
        }

        Assert.Equal(0, left);
    }

    // A device subscribed at QoS 0 never acknowledges; each kept receipt handed to it stays in _handed for as long as its
    // persistent session lives, long after the spool trimmed the row (Receipts:MaxPerDevice): memory without bound.
    [Fact]
    public async Task OpsHunt_Qos0Subscriber_KeptReceiptsInCustody_StayWithinWhatTheSpoolKeeps()
    {
        await using var gw = await TestGateway.StartAsync(c => c["Receipts"] = new { MaxPerDevice = 10 });
        var receipts = gw.Host.Services.GetRequiredService<ReceiptPublisher>();
        using var device = new MqttClientFactory().CreateMqttClient();
        int got = 0;
        var all = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        const int count = 200;
        device.ApplicationMessageReceivedAsync += _ =>
        {
            if (Interlocked.Increment(ref got) == count)
            {
                all.TrySetResult();
            }

            return Task.CompletedTask;
        };
        await device.ConnectAsync(KeptReceiptTests.Persistent(gw, "dev-1"));
        await device.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtMostOnce);

        for (int i = 0; i < count; i++)
        {
            await receipts.KeepAndPublishAsync(new KeptReceipt("dev-1", $"q-{i}", ReceiptState.Relayed, DateTimeOffset.UtcNow, "250 2.0.0 queued as X"));
        }

        await Await.Within(all.Task.ContinueWith(_ => true, TaskScheduler.Default), "every receipt at the device");
        int kept = (await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 1000, default)).Count;
        Assert.True(kept <= 10, $"the spool keeps {kept}");
        Assert.True(receipts.InFlight() <= kept, $"{receipts.InFlight()} receipts held in custody for a device whose spool keeps {kept}");
        await device.DisconnectAsync();
    }

    // The silence watch de-duplicates DEVICE_SILENT across restarts by its stored alert id; the housekeeper prunes that
    // alert after Spool:Retention while device_status (the device's last-heard time) is never pruned. A restart after that
    // raises and mails DEVICE_SILENT for the same episode again (and after every later restart once it is pruned again).
    [Fact]
    public async Task OpsHunt_SilenceAlertPrunedWhileTheDeviceStaysQuiet_IsNotRaisedAgainAfterARestart()
    {
        var start = DateTimeOffset.UtcNow;
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        void Config(Dictionary<string, object> c) => c["Silence"] = new { MinimumAfter = "00:05:00", CheckInterval = "00:00:30" };

        var clock = new FakeTimeProvider(start);
        var gw = await TestGateway.StartAsync(Config, s => s.AddSingleton<TimeProvider>(clock), dataDir: dataDir);
        try
        {
            using var device = await gw.ConnectAsync("dev-1");
            await HeartbeatAsync(device);
            clock.Advance(TimeSpan.FromMinutes(1));
            await HeartbeatAsync(device);
            await device.DisconnectAsync();
            var watch = gw.Host.Services.GetRequiredService<SilenceWatch>();
            clock.Advance(TimeSpan.FromMinutes(6));
            await SilenceTests.CheckedAsync(watch);
            Assert.True(watch.IsSilent("dev-1"));
            await gw.MailAsync(1);
            await gw.UntilAsync(async () => (await gw.Spool.CountsAsync(default)).Messages.GetValueOrDefault("sent") == 1, "the DEVICE_SILENT mail sent");

            // The device stays quiet; past Spool:Retention (30 days) the housekeeper removes the finished alert and mail.
            clock.Advance(TimeSpan.FromDays(31));
            await gw.Host.Services.GetRequiredService<Housekeeper>().PassAsync(default);
            Assert.Equal(0, (await gw.Spool.CountsAsync(default)).Alerts.Values.Sum());
        }
        finally
        {
            await gw.StopAsync();
        }

        var later = new FakeTimeProvider(start + TimeSpan.FromDays(31) + TimeSpan.FromMinutes(10));
        await using var again = await TestGateway.StartAsync(Config, s => s.AddSingleton<TimeProvider>(later), dataDir: dataDir);
        var watch2 = again.Host.Services.GetRequiredService<SilenceWatch>();
        await SilenceTests.CheckedAsync(watch2);
        Assert.True(watch2.IsSilent("dev-1"));
        Assert.Equal(0, (await again.Spool.CountsAsync(default)).Alerts.Values.Sum()); // fails: a second DEVICE_SILENT for the same episode
    }

    private static async Task HeartbeatAsync(IMqttClient device)
    {
        var ack = await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/status").WithPayload("{\"v\":1,\"fw\":\"1.4.2\"}")
            .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess);
    }

    // A device disabled while it is silent stays silent for good: CheckAsync skips disabled devices before it looks at
    // the open episode, so IsSilent, SilentCount and the edgemail.devices.silent gauge keep counting it (a restart seeds
    // the episode again), and every alert or heartbeat of any other device wakes a full check of the fleet meanwhile.
    [Fact]
    public async Task OpsHunt_SilentDeviceDisabledByTheOperator_IsNoLongerCountedSilent()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var gw = await TestGateway.StartAsync(c => c["Silence"] = new { MinimumAfter = "00:05:00", CheckInterval = "00:00:30" },
            s => s.AddSingleton<TimeProvider>(clock));
        using (var device = await gw.ConnectAsync("dev-1"))
        {
            await HeartbeatAsync(device);
            clock.Advance(TimeSpan.FromMinutes(1));
            await HeartbeatAsync(device);
            await device.DisconnectAsync();
        }

        var watch = gw.Host.Services.GetRequiredService<SilenceWatch>();
        clock.Advance(TimeSpan.FromMinutes(6));
        await SilenceTests.CheckedAsync(watch);
        Assert.True(watch.IsSilent("dev-1"));

        await gw.Host.Services.GetRequiredService<DeviceRegistry>().SetDisabledAsync("dev-1", true, default);
        clock.Advance(TimeSpan.FromMinutes(1));
        await SilenceTests.CheckedAsync(watch);

        Assert.Equal(0, watch.SilentCount); // fails: 1, for as long as the device stays disabled
    }
}
