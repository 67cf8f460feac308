using System.Collections.Concurrent;
using System.Globalization;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Ingest;

/// <summary>
/// External mode (Debian's mosquitto) when the spool refuses a message: the gateway drops its connection without
/// PUBACK, the broker redelivers, and ingest goes on. When handling one alert throws for a reason of its own, it is
/// kept as rejected and acknowledged instead, and every device's alerts behind it go on.
/// </summary>
public sealed class ExternalStoreFailureTests : IDisposable
{
    private readonly string _dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));

    private static readonly string[] Devices = ["dev-1", "dev-2", "dev-3"];

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_StoreFailsWhileTheAckQueueIsFull_GatewayReconnectsAndStoresEveryAlertOnce()
    {
        const int Count = 5;
        await using var broker = await ExternalMosquitto.StartAsync(Devices);

        // Receive Maximum 1 holds back the QoS 1 alerts, not QoS 0 status heartbeats: those fill the queue of 1.
        await using var gateway = await ExternalGateway.StartAsync(ExternalGateway.WriteConfig(_dataDir, broker.Port, external: e => e["MaxInFlight"] = 1));
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thirdReceived = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int stores = 0;
        gateway.Client.BeforeStore = async (_, ct) =>
        {
            int n = Interlocked.Increment(ref stores);
            if (n == 3)
            {
                thirdReceived.TrySetResult(); // the alert is being stored, one heartbeat queued, the next waits for room
            }

            if (n == 1)
            {
                await release.Task.WaitAsync(ct);
                throw new SpoolFullException("only 10 MiB free (test)");
            }
        };

        using var device = await ExternalGateway.DeviceAsync(broker.Port, "dev-1");
        await device.PublishAsync(ExternalGateway.Alert("dev-1", "full-0"));
        for (int i = 0; i < 3; i++)
        {
            await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/status").WithPayload("{\"battery\":90}")
                .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtMostOnce).Build());
        }

        for (int i = 1; i < Count; i++)
        {
            await device.PublishAsync(ExternalGateway.Alert("dev-1", "full-" + i.ToString(CultureInfo.InvariantCulture)));
        }

        await Await.Within(thirdReceived.Task.ContinueWith(_ => true, TaskScheduler.Default), "the gateway to receive the alert and two heartbeats");
        release.SetResult();
        await ExternalGateway.MailAsync(_dataDir, Count);

        for (int i = 0; i < Count; i++)
        {
            Assert.NotNull(await gateway.Spool.GetAlertAsync("dev-1", "full-" + i.ToString(CultureInfo.InvariantCulture), default));
        }

        Assert.Equal(Count, await gateway.QueuedMailAsync()); // the redelivered ones were duplicates: one mail each
        await gateway.Client.Connected.WaitAsync(Await.DefaultTimeout); // connected again
        await device.PublishAsync(ExternalGateway.Alert("dev-1", "after"));
        await ExternalGateway.MailAsync(_dataDir, Count + 1);
        Assert.NotNull(await gateway.Spool.GetAlertAsync("dev-1", "after", default));
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_StoreFailsEveryTime_ReconnectsOnlyAfterAGrowingBackoff()
    {
        var clock = new TimerRecordingClock(DateTimeOffset.FromUnixTimeSeconds(1_800_000_000));
        await using var broker = await ExternalMosquitto.StartAsync(Devices);
        await using var gateway = await ExternalGateway.StartAsync(ExternalGateway.WriteConfig(_dataDir, broker.Port), s => s.AddSingleton<TimeProvider>(clock));
        int stores = 0;
        gateway.Client.BeforeStore = (_, _) =>
        {
            Interlocked.Increment(ref stores);
            clock.Changed.Release();
            throw new SpoolFullException("only 10 MiB free (test)"); // the disk stays low
        };

        using var device = await ExternalGateway.DeviceAsync(broker.Port, "dev-1");
        await device.PublishAsync(ExternalGateway.Alert("dev-1", "low-disk"));

        // The test configuration's schedule (ExternalGateway.WriteConfig): 0.2 s doubling up to 2 s. Each wait is one
        // step on it; under load one reconnect may also fail on its own (MQTTnet still closing the dropped connection),
        // which is a step without a store, so the test counts waits and stores rather than expecting them in lockstep.
        var schedule = new ExternalBrokerOptions { ClientId = ExternalMosquitto.GatewayUser, ReconnectDelay = TimeSpan.FromMilliseconds(200), MaxReconnectDelay = TimeSpan.FromSeconds(2) };
        var steps = Enumerable.Range(1, 8).Select(n => ExternalBrokerConnection.ReconnectDelay(schedule, n)).ToList();
        var waits = new List<TimeSpan>();
        while (waits.Count < 3)
        {
            TimeSpan? next;
            while ((next = clock.SetSince(waits.Count, steps)) is null && Volatile.Read(ref stores) <= waits.Count + 1)
            {
                Assert.True(await clock.Changed.WaitAsync(Await.DefaultTimeout), $"no backoff after {waits.Count + 1} store failure(s)");
            }

            Assert.True(Volatile.Read(ref stores) <= waits.Count + 1, $"{stores} store failures after only {waits.Count} backoff wait(s): the redelivery did not wait");
            waits.Add(next!.Value);
            clock.Advance(next.Value);
        }

        Assert.True(waits[0] < waits[1] && waits[1] < waits[2], $"the waits do not grow: {string.Join(", ", waits)}");
        Assert.InRange(Volatile.Read(ref stores), 2, 4); // it does retry, once per wait
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_HandlingAnAlertThrows_ItIsKeptRejectedAndAcknowledgedAndEveryOtherAlertIsMailed()
    {
        await using var broker = await ExternalMosquitto.StartAsync(Devices);

        // Receive Maximum 1: an alert never acknowledged holds the broker's only slot, and nothing after it arrives.
        await using var gateway = await ExternalGateway.StartAsync(ExternalGateway.WriteConfig(_dataDir, broker.Port, external: e => e["MaxInFlight"] = 1));
        var fault = IngestFault.Arm(gateway.Host.Services, "dev-1");
        await PoisonThenOthersAsync(broker, gateway, "dev-1", fault.Disarm);
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_ClientStepThrowsBeforeIngest_AlertIsKeptRejectedAndAcknowledgedAndEveryOtherAlertIsMailed()
    {
        await using var broker = await ExternalMosquitto.StartAsync(Devices);
        await using var gateway = await ExternalGateway.StartAsync(ExternalGateway.WriteConfig(_dataDir, broker.Port, external: e => e["MaxInFlight"] = 1));
        bool armed = true;
        gateway.Client.BeforeStore = (topic, _) => Volatile.Read(ref armed) && topic == "edgemail/v1/dev-3/alert"
            ? throw new InvalidOperationException(IngestFault.Message)
            : Task.CompletedTask;
        await PoisonThenOthersAsync(broker, gateway, "dev-3", () => Volatile.Write(ref armed, false));
    }

    // The poisoned device's alert, then one of each other device: all mailed but the poisoned one, which is kept as
    // rejected with its reason and answered with a rejected receipt; then the poisoned device's next alert, mailed.
    private async Task PoisonThenOthersAsync(ExternalMosquitto broker, ExternalGateway gateway, string poisoned, Action disarm)
    {
        using var device = await ExternalGateway.DeviceAsync(broker.Port, poisoned);
        var receipts = await ReceiptInbox.SubscribeAsync(device, poisoned);
        await device.PublishAsync(ExternalGateway.Alert(poisoned, "poison-1"));
        string[] others = Devices.Where(d => d != poisoned).ToArray();
        foreach (string other in others)
        {
            using var sender = await ExternalGateway.DeviceAsync(broker.Port, other);
            await sender.PublishAsync(ExternalGateway.Alert(other, "after-" + other));
        }

        await ExternalGateway.MailAsync(_dataDir, others.Length);
        Assert.Equal((AlertStatus.Rejected, IngestFault.Reason), (await gateway.Spool.GetAlertAsync(poisoned, "poison-1", default))!.Value);
        Assert.Equal(IngestFault.Reason, (await receipts.WaitForAsync("poison-1", "rejected")).GetProperty("detail").GetString());
        foreach (string other in others)
        {
            Assert.Equal(AlertStatus.Routed, (await gateway.Spool.GetAlertAsync(other, "after-" + other, default))?.Status);
        }

        disarm();
        await device.PublishAsync(ExternalGateway.Alert(poisoned, "next-1"));
        await ExternalGateway.MailAsync(_dataDir, others.Length + 1);
        Assert.Equal(AlertStatus.Routed, (await gateway.Spool.GetAlertAsync(poisoned, "next-1", default))?.Status);
        Assert.Equal(others.Length + 1, await gateway.QueuedMailAsync());
    }

    // A fake clock that records the due time of every timer set on it (Task.Delay on it sets one).
    private sealed class TimerRecordingClock(DateTimeOffset start) : FakeTimeProvider(start)
    {
        private readonly ConcurrentQueue<TimeSpan> _due = new();

        public SemaphoreSlim Changed { get; } = new(0);

        // The due time of the (skip+1)th timer set on the backoff schedule, if there is one yet (Task.Delay sets its
        // timer in whole milliseconds).
        public TimeSpan? SetSince(int skip, IReadOnlyList<TimeSpan> schedule)
        {
            var onSchedule = _due.Where(d => schedule.Any(s => (d - s).Duration() < TimeSpan.FromMilliseconds(1))).Skip(skip);
            return onSchedule.Any() ? onSchedule.First() : null;
        }

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            var timer = base.CreateTimer(callback, state, dueTime, period);
            _due.Enqueue(dueTime);
            Changed.Release();
            return timer;
        }
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(_dataDir, true);
        }
        catch (IOException)
        {
        }
    }
}
