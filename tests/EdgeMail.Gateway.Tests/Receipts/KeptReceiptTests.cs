using System.Buffers;
using EdgeMail.Gateway.Devices;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
using Microsoft.Extensions.DependencyInjection;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Receipts;

/// <summary>
/// Final receipts reach the device even when it is away when they are given: kept in the spool, handed to the device
/// when it subscribes again after its session was lost (a gateway restart, a clean session), removed on its PUBACK.
/// A real embedded broker, a real SMTP relay that refuses one recipient, MQTTnet clients as devices.
/// </summary>
public sealed class KeptReceiptTests
{
    private const string Refused = "bob@example.com";

    internal static Action<Dictionary<string, object>> Relay(int port) => c =>
    {
        c["Relay"] = new { Mode = "Smarthost", Host = "127.0.0.1", Port = port, Security = "None", Backoff = new[] { "00:00:00.200" }, Concurrency = 2, Timeout = "00:00:05" };
        c["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "oncall" } } }; // alice and bob
    };

    // As the firmware connects: its device id, a persistent session (Clean Session 0).
    internal static MqttClientOptions Persistent(TestGateway gw, string device, bool clean = false)
    {
        var options = gw.ClientOptions(device);
        options.CleanSession = clean;
        return options;
    }

    private static async Task RaiseAsync(IMqttClient device, string deviceId, string alertId)
    {
        var ack = await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic($"edgemail/v1/{deviceId}/alert")
            .WithPayload(Alerts.Json(alertId)).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess, ack.ReasonString);
    }

    // The relay refuses bob, but only once the test says the device is gone: the failure happens while it is away.
    private static ManualResetEventSlim RefuseBobAfterTheDeviceLeft(SmtpTestServer sink)
    {
        var deviceGone = new ManualResetEventSlim();
        sink.Recipients[Refused] = new SmtpReply(550, "5.1.1 no such user");
        sink.OnCommand = c =>
        {
            if (c.Verb == "RCPT" && string.Equals(c.Argument, Refused, StringComparison.OrdinalIgnoreCase) && !deviceGone.Wait(Await.DefaultTimeout))
            {
                throw new TimeoutException("the test never let the relay answer");
            }

            return null;
        };
        return deviceGone;
    }

    private static async Task NoticeToTheOperatorAsync(SmtpTestServer sink)
    {
        while (true)
        {
            var (_, to) = await sink.NextAsync();
            if (to.Contains("ops@example.com"))
            {
                return;
            }
        }
    }

    private static Task<bool> KeptAsync(TestGateway gw, string device, string alertId, string state) =>
        gw.Spool.KeptReceiptsAsync(device, 0, null, 100, default).ContinueWith(t => t.Result.Any(r => r.Receipt.AlertId == alertId && r.Receipt.State == state),
            TaskScheduler.Default);

    [Fact]
    public async Task FailedReceipt_DeviceAwayAcrossAGatewayRestart_ArrivesOnceWhenItSubscribesAgain()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        using var deviceGone = RefuseBobAfterTheDeviceLeft(sink);
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        var first = await TestGateway.StartAsync(Relay(sink.Port), null, 3, dataDir);

        // The device subscribes to its receipts, raises an alert, has its PUBACK, and goes away (its session stays).
        using var device = new MqttClientFactory().CreateMqttClient();
        await device.ConnectAsync(Persistent(first, "dev-1"));
        var inbox = await ReceiptInbox.SubscribeAsync(device, "dev-1");
        await RaiseAsync(device, "dev-1", "k-1");
        await inbox.WaitForAsync("k-1", ReceiptState.Accepted); // nothing in flight to it as it leaves
        await device.DisconnectAsync();
        deviceGone.Set();

        // While it is away the relay refuses bob: the operator is told and the 'failed' receipt is kept (and queued in the
        // session the broker holds in memory, which the restart below loses).
        await NoticeToTheOperatorAsync(sink);
        await first.UntilAsync(() => KeptAsync(first, "dev-1", "k-1", ReceiptState.Failed), "the failed receipt kept in the spool");
        Assert.Equal(0, inbox.Count("k-1", ReceiptState.Failed));
        await first.StopAsync();

        // A real restart of the host on the same spool; the device comes back and subscribes, as the firmware does.
        await using var second = await TestGateway.StartAsync(Relay(sink.Port), null, 3, dataDir);
        var receipts = second.Host.Services.GetRequiredService<ReceiptPublisher>();
        var removed = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        receipts.Removed += n => removed.TrySetResult(n);
        var replays = new List<int>();
        var secondReplay = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        receipts.ReplayFinished += (d, n) =>
        {
            lock (replays)
            {
                replays.Add(n);
                if (replays.Count == 2)
                {
                    secondReplay.TrySetResult(n);
                }
            }
        };
        await device.ConnectAsync(Persistent(second, "dev-1"));
        await device.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);

        var failed = await inbox.WaitForAsync("k-1", ReceiptState.Failed);
        Assert.Contains("550", failed.GetProperty("detail").GetString(), StringComparison.Ordinal);
        Assert.Equal(1, await Await.Within(removed.Task, "the receipt removed from the spool after the device's PUBACK"));
        Assert.Empty(await second.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default));

        // Exactly once: the device coming back again (a new connection, a new subscription) gets nothing more.
        await device.DisconnectAsync();
        await device.ConnectAsync(Persistent(second, "dev-1"));
        await device.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);
        Assert.Equal(0, await Await.Within(secondReplay.Task, "the replay at the second subscription"));
        Assert.Equal(1, inbox.Count("k-1", ReceiptState.Failed));
        await device.DisconnectAsync();
    }

    [Fact]
    public void KeptReceiptsPayload_NamesTheCopyItWasMadeFrom_AndNotALaterReceiptForTheSameAlertAndState()
    {
        var kept = new KeptReceipt("dev-1", "k-1", ReceiptState.Failed, DateTimeOffset.FromUnixTimeMilliseconds(1_800_000_000_123).AddTicks(4_567),
            "parked: \"quoted\" \u00e9 <b>\u0000 " + new string('x', 600));
        var later = kept with { At = kept.At.AddSeconds(1), Detail = "cancelled by the operator: template retired" };

        Assert.True(ReceiptPublisher.TryReadCopy("dev-1", new ReadOnlySequence<byte>(ReceiptPublisher.Format(kept.AlertId, kept.State, kept.At, kept.StoredDetail)), out var copy));

        Assert.Equal(kept.Copy, copy);
        Assert.NotEqual(later.Copy, copy);
        Assert.False(ReceiptPublisher.TryReadCopy("dev-1", new ReadOnlySequence<byte>("{\"id\":\"k-1\",\"state\":\"failed\"}"u8.ToArray()), out _));
    }

    [Fact]
    public async Task RelayedReceipt_DeviceConnected_ArrivesOnce_AndItsPubAckRemovesItFromTheSpool()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        await using var gw = await TestGateway.StartAsync(Relay(sink.Port));
        var removed = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        gw.Host.Services.GetRequiredService<ReceiptPublisher>().Removed += n => removed.TrySetResult(n);
        using var device = new MqttClientFactory().CreateMqttClient();
        await device.ConnectAsync(Persistent(gw, "dev-2"));
        var inbox = await ReceiptInbox.SubscribeAsync(device, "dev-2");

        await RaiseAsync(device, "dev-2", "k-2");

        var relayed = await inbox.WaitForAsync("k-2", ReceiptState.Relayed);
        Assert.StartsWith("250", relayed.GetProperty("detail").GetString(), StringComparison.Ordinal);
        Assert.Equal(1, await Await.Within(removed.Task, "the receipt removed after the device's PUBACK"));
        Assert.Empty(await gw.Spool.KeptReceiptsAsync(null, 0, null, 10, default));
        Assert.Equal(0, gw.Host.Services.GetRequiredService<ReceiptPublisher>().InFlight());
        Assert.Equal(1, inbox.Count("k-2", ReceiptState.Relayed));
        await device.DisconnectAsync();
    }

    // A device subscribed at QoS 0 never acknowledges: each kept receipt waited for a PUBACK in the publisher's record
    // for as long as the persistent session lived, long after the spool trimmed its row (Receipts:MaxPerDevice).
    [Fact]
    public async Task KeptReceipts_ToADeviceConnectedAtQos0_AreDeliveredOnceHanded_AndNeitherKeptNorHeldInMemory()
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
        await device.ConnectAsync(Persistent(gw, "dev-1"));
        await device.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtMostOnce);

        for (int i = 0; i < count; i++)
        {
            await receipts.KeepAndPublishAsync(new KeptReceipt("dev-1", $"q-{i}", ReceiptState.Relayed, DateTimeOffset.UtcNow, "250 2.0.0 queued as X"));
        }

        await Await.Within(all.Task.ContinueWith(_ => true, TaskScheduler.Default), "every receipt at the device");
        await gw.UntilAsync(() => Task.FromResult(receipts.InFlight() == 0), "no receipt held for a PUBACK that never comes");
        await gw.UntilAsync(async () => (await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 1000, default)).Count == 0, "the receipts removed once handed over");
        Assert.Equal(count, Volatile.Read(ref got));
        await device.DisconnectAsync();
    }

    // MQTTnet empties a session's QoS 0 queue when its device resumes it: a kept receipt put there while the device was
    // away was lost at its return, and, still counted as handed over, not handed again for the session's life.
    [Fact]
    public async Task KeptReceipt_ToAQos0DeviceAwayInItsPersistentSession_ArrivesWhenItResumesTheSession()
    {
        await using var gw = await TestGateway.StartAsync(c => { });
        var receipts = gw.Host.Services.GetRequiredService<ReceiptPublisher>();
        var presence = gw.Host.Services.GetRequiredService<DevicePresence>();
        using var device = new MqttClientFactory().CreateMqttClient();
        await device.ConnectAsync(Persistent(gw, "dev-1"));
        var inbox = await ReceiptInbox.SubscribeAsync(device, "dev-1", MqttQualityOfServiceLevel.AtMostOnce);
        await device.DisconnectAsync();
        await gw.UntilAsync(() => Task.FromResult(!presence.IsConnected("dev-1")), "the broker done with the connection");

        await receipts.KeepAndPublishAsync(new KeptReceipt("dev-1", "q-away", ReceiptState.Failed, DateTimeOffset.UtcNow, "550 5.1.1 no such user"));
        await gw.UntilAsync(() => Task.FromResult(receipts.InFlight() == 0), "the receipt left to the spool");
        Assert.True(await KeptAsync(gw, "dev-1", "q-away", ReceiptState.Failed));

        await device.ConnectAsync(Persistent(gw, "dev-1")); // resumes its session, subscription and all: no SUBSCRIBE

        await inbox.WaitForAsync("q-away", ReceiptState.Failed);
        await gw.UntilAsync(async () => !await KeptAsync(gw, "dev-1", "q-away", ReceiptState.Failed), "the receipt removed once handed over");
        Assert.Equal(1, inbox.Count("q-away", ReceiptState.Failed));
        await device.DisconnectAsync();
    }

    // A device away in its persistent session at QoS 1 acknowledges nothing until it is back: the publisher's record of
    // copies handed to its session grew by one per receipt for the session's life, though the spool keeps only the
    // newest Receipts:MaxPerDevice.
    [Fact]
    public async Task KeptReceipts_ToAQos1DeviceAwayInItsPersistentSession_AreHeldInMemoryAtMostMaxPerDevice_AndArriveWhenItResumes()
    {
        await using var gw = await TestGateway.StartAsync(c => c["Receipts"] = new { MaxPerDevice = 10 });
        var receipts = gw.Host.Services.GetRequiredService<ReceiptPublisher>();
        var presence = gw.Host.Services.GetRequiredService<DevicePresence>();
        using var device = new MqttClientFactory().CreateMqttClient();
        await device.ConnectAsync(Persistent(gw, "dev-1"));
        var inbox = await ReceiptInbox.SubscribeAsync(device, "dev-1", MqttQualityOfServiceLevel.AtLeastOnce);
        await device.DisconnectAsync();
        await gw.UntilAsync(() => Task.FromResult(!presence.IsConnected("dev-1")), "the broker done with the connection");

        const int count = 50;
        for (int i = 0; i < count; i++)
        {
            await receipts.KeepAndPublishAsync(new KeptReceipt("dev-1", $"q-{i}", ReceiptState.Relayed, DateTimeOffset.UtcNow, "250 2.0.0 queued as X"));
        }

        Assert.InRange(receipts.InFlight(), 1, 10);

        await device.ConnectAsync(Persistent(gw, "dev-1")); // resumes its session: MQTTnet sends what it queued
        for (int i = 0; i < count; i++)
        {
            await inbox.WaitForAsync($"q-{i}", ReceiptState.Relayed); // those pushed out of the record too
        }

        await gw.UntilAsync(async () => (await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 1000, default)).Count == 0, "the kept ones removed by their PUBACKs");
        await gw.UntilAsync(() => Task.FromResult(receipts.InFlight() == 0), "nothing held any more");
        await device.DisconnectAsync();
    }

    // A copy pushed out of the publisher's record by newer ones is acknowledged by the device and removes nothing: its row
    // (a 'failed' one, which the cap trims after the 'relayed' ones) is handed over once more at the next subscription,
    // and that copy's PUBACK removes it. Once, not at every subscription.
    [Fact]
    public async Task KeptReceipt_PushedOutOfTheRecordAndAcknowledged_IsHandedOverAgainOnce_NotAtEverySubscription()
    {
        await using var gw = await TestGateway.StartAsync(c => c["Receipts"] = new { MaxPerDevice = 10 });
        var receipts = gw.Host.Services.GetRequiredService<ReceiptPublisher>();
        var presence = gw.Host.Services.GetRequiredService<DevicePresence>();
        var replays = System.Threading.Channels.Channel.CreateUnbounded<int>();
        receipts.ReplayFinished += (_, n) => replays.Writer.TryWrite(n);
        using var device = new MqttClientFactory().CreateMqttClient();
        await device.ConnectAsync(Persistent(gw, "dev-1"));
        var inbox = await ReceiptInbox.SubscribeAsync(device, "dev-1", MqttQualityOfServiceLevel.AtLeastOnce);
        Assert.Equal(0, await Await.Within(replays.Reader.ReadAsync().AsTask(), "the replay at the first subscription"));
        await device.DisconnectAsync();
        await gw.UntilAsync(() => Task.FromResult(!presence.IsConnected("dev-1")), "the broker done with the connection");

        await receipts.KeepAndPublishAsync(new KeptReceipt("dev-1", "f-0", ReceiptState.Failed, DateTimeOffset.UtcNow, "550 5.1.1 no such user"));
        for (int i = 1; i <= 20; i++)
        {
            await receipts.KeepAndPublishAsync(new KeptReceipt("dev-1", $"q-{i}", ReceiptState.Relayed, DateTimeOffset.UtcNow, "250 2.0.0 queued as X"));
        }

        await device.ConnectAsync(Persistent(gw, "dev-1")); // resumes its session: MQTTnet sends what it queued
        await inbox.WaitForAsync("f-0", ReceiptState.Failed);
        await inbox.WaitForAsync("q-20", ReceiptState.Relayed);
        await gw.UntilAsync(() => Task.FromResult(receipts.InFlight() == 0), "every copy counted on acknowledged");
        await gw.UntilAsync(async () => (await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 1000, default)).Count == 1, "their rows removed");
        var left = await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 1000, default);
        Assert.Equal("f-0", Assert.Single(left).Receipt.AlertId); // acknowledged, pushed out of the record: not removed

        for (int subscription = 2; subscription <= 4; subscription++)
        {
            await device.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);
            int handed = await Await.Within(replays.Reader.ReadAsync().AsTask(), "the replay at the subscription");
            Assert.Equal(subscription == 2 ? 1 : 0, handed);
            await gw.UntilAsync(async () => (await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 1000, default)).Count == 0, "the copy handed again removed by its PUBACK");
        }

        Assert.Equal(2, inbox.Count("f-0", ReceiptState.Failed));
        await device.DisconnectAsync();
    }

    [Fact]
    public async Task FailedReceipt_QueuedInASessionTheDeviceThenDropsWithACleanSession_IsHandedToItsNewSession()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        using var deviceGone = RefuseBobAfterTheDeviceLeft(sink);
        await using var gw = await TestGateway.StartAsync(Relay(sink.Port));
        using var device = new MqttClientFactory().CreateMqttClient();
        await device.ConnectAsync(Persistent(gw, "dev-3"));
        var inbox = await ReceiptInbox.SubscribeAsync(device, "dev-3");
        await RaiseAsync(device, "dev-3", "k-3");
        await inbox.WaitForAsync("k-3", ReceiptState.Accepted);
        await device.DisconnectAsync();
        deviceGone.Set();
        await NoticeToTheOperatorAsync(sink);
        await gw.UntilAsync(() => KeptAsync(gw, "dev-3", "k-3", ReceiptState.Failed), "the failed receipt kept in the spool");

        // Back with a clean session (a device that lost its state, say): the old session and what it queued are gone.
        await device.ConnectAsync(Persistent(gw, "dev-3", clean: true));
        await device.SubscribeAsync("edgemail/v1/dev-3/receipt", MqttQualityOfServiceLevel.AtLeastOnce);

        await inbox.WaitForAsync("k-3", ReceiptState.Failed);
        await gw.UntilAsync(async () => !await KeptAsync(gw, "dev-3", "k-3", ReceiptState.Failed), "the receipt removed after the device's PUBACK");
        Assert.Equal(1, inbox.Count("k-3", ReceiptState.Failed));
        await device.DisconnectAsync();
    }

    [Fact]
    public async Task FailedReceipt_StillOnItsWayToTheBrokerWhenTheDeviceComesBackWithACleanSession_ArrivesOnce()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        using var deviceGone = RefuseBobAfterTheDeviceLeft(sink);
        var held = new HeldReceipt(ReceiptState.Failed);
        await using var gw = await TestGateway.StartAsync(Relay(sink.Port),
            s => s.AddSingleton(sp => new Lazy<IReceiptSink>(() => held.Around(sp.GetRequiredService<EdgeMail.Gateway.Ingest.EmbeddedBroker>()))));
        var receipts = gw.Host.Services.GetRequiredService<ReceiptPublisher>();
        var replayed = new[] { new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously), new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously) };
        int replays = 0;
        receipts.ReplayFinished += (_, n) =>
        {
            int i = Interlocked.Increment(ref replays);
            if (i <= replayed.Length)
            {
                replayed[i - 1].TrySetResult(n);
            }
        };
        using var device = new MqttClientFactory().CreateMqttClient();
        await device.ConnectAsync(Persistent(gw, "dev-3"));
        var inbox = await ReceiptInbox.SubscribeAsync(device, "dev-3");
        Assert.Equal(0, await Await.Within(replayed[0].Task, "the replay at the first subscription"));
        await RaiseAsync(device, "dev-3", "k-3");
        await inbox.WaitForAsync("k-3", ReceiptState.Accepted);
        await device.DisconnectAsync();
        deviceGone.Set();

        // The relay refuses bob while the device is away; its persistent session holds the subscription, so the 'failed'
        // receipt is handed over at once -- and held here on its way to the broker, as a busy machine may hold it.
        await Await.Within(held.Reached.Task.ContinueWith(_ => true, TaskScheduler.Default), "the failed receipt on its way to the broker");

        // Meanwhile the device comes back with a clean session and subscribes: the replay hands the kept receipt over.
        await device.ConnectAsync(Persistent(gw, "dev-3", clean: true));
        await device.SubscribeAsync("edgemail/v1/dev-3/receipt", MqttQualityOfServiceLevel.AtLeastOnce);
        await Await.Within(replayed[1].Task, "the replay at the new session's subscription");
        held.Release.TrySetResult();

        await inbox.WaitForAsync("k-3", ReceiptState.Failed);
        await gw.UntilAsync(async () => !await KeptAsync(gw, "dev-3", "k-3", ReceiptState.Failed), "the receipt removed after the device's PUBACK");
        Assert.Equal(0, receipts.InFlight());
        await RaiseAsync(device, "dev-3", "k-4"); // its 'accepted' comes after every receipt handed over before it
        await inbox.WaitForAsync("k-4", ReceiptState.Accepted);
        Assert.Equal(1, inbox.Count("k-3", ReceiptState.Failed));
        await device.DisconnectAsync();
    }

    [Fact]
    public async Task Receipts_GoOnlyToTheirOwnDevice_AtTheQosItSubscribedWith()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        await using var gw = await TestGateway.StartAsync(Relay(sink.Port));
        var got = new System.Collections.Concurrent.ConcurrentQueue<(string Device, string Topic, MqttQualityOfServiceLevel Qos, string Payload)>();
        var relayed = new Dictionary<string, TaskCompletionSource>
        {
            ["dev-1"] = new(TaskCreationOptions.RunContinuationsAsynchronously),
            ["dev-2"] = new(TaskCreationOptions.RunContinuationsAsynchronously),
        };
        async Task<IMqttClient> ConnectAsync(string id, MqttQualityOfServiceLevel qos)
        {
            var client = new MqttClientFactory().CreateMqttClient();
            client.ApplicationMessageReceivedAsync += e =>
            {
                string payload = e.ApplicationMessage.ConvertPayloadToString();
                got.Enqueue((id, e.ApplicationMessage.Topic, e.ApplicationMessage.QualityOfServiceLevel, payload));
                if (payload.Contains("\"relayed\"", StringComparison.Ordinal))
                {
                    relayed[id].TrySetResult();
                }

                return Task.CompletedTask;
            };
            await client.ConnectAsync(Persistent(gw, id));
            await client.SubscribeAsync($"edgemail/v1/{id}/receipt", qos);
            return client;
        }

        using var one = await ConnectAsync("dev-1", MqttQualityOfServiceLevel.AtMostOnce);
        using var two = await ConnectAsync("dev-2", MqttQualityOfServiceLevel.ExactlyOnce);
        await RaiseAsync(one, "dev-1", "q-1");
        await Await.Within(relayed["dev-1"].Task.ContinueWith(_ => true, TaskScheduler.Default), "dev-1's relayed receipt");
        await RaiseAsync(two, "dev-2", "q-2"); // after dev-1's last receipt: a copy of it for dev-2 would arrive before these
        await Await.Within(relayed["dev-2"].Task.ContinueWith(_ => true, TaskScheduler.Default), "dev-2's relayed receipt");

        var ofOne = got.Where(r => r.Device == "dev-1").ToList();
        var ofTwo = got.Where(r => r.Device == "dev-2").ToList();
        Assert.All(ofOne, r => Assert.Equal(("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtMostOnce), (r.Topic, r.Qos)));
        Assert.All(ofTwo, r => Assert.Equal(("edgemail/v1/dev-2/receipt", MqttQualityOfServiceLevel.AtLeastOnce), (r.Topic, r.Qos))); // receipts are QoS 1 at most
        Assert.All(ofOne, r => Assert.Contains("\"q-1\"", r.Payload, StringComparison.Ordinal));
        Assert.All(ofTwo, r => Assert.Contains("\"q-2\"", r.Payload, StringComparison.Ordinal));
        Assert.Contains(ofOne, r => r.Payload.Contains("\"accepted\"", StringComparison.Ordinal));
        Assert.Contains(ofTwo, r => r.Payload.Contains("\"accepted\"", StringComparison.Ordinal));
        await one.DisconnectAsync();
        await two.DisconnectAsync();
    }

    [Theory]
    [InlineData(MQTTnet.Formatter.MqttProtocolVersion.V311)] // Clean Session 1
    [InlineData(MQTTnet.Formatter.MqttProtocolVersion.V500)] // Clean Start 1, Session Expiry 0: the session ends with the connection
    public async Task SessionEndingWithItsConnection_TakesItsReceiptSubscription_WhileAPersistentOneKeepsIt(MQTTnet.Formatter.MqttProtocolVersion version)
    {
        await using var gw = await TestGateway.StartAsync(c => { });
        var deleted = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        gw.Broker.SessionDeleted += id => deleted.TrySetResult(id);
        using var passing = new MqttClientFactory().CreateMqttClient();
        using var staying = new MqttClientFactory().CreateMqttClient();
        var passingOptions = gw.ClientOptions("dev-1", version: version);
        passingOptions.CleanSession = true;
        await passing.ConnectAsync(passingOptions);
        await passing.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);
        await staying.ConnectAsync(Persistent(gw, "dev-2"));
        await staying.SubscribeAsync("edgemail/v1/dev-2/receipt", MqttQualityOfServiceLevel.AtLeastOnce);
        Assert.True(gw.Broker.IsListening("dev-1"));

        await staying.DisconnectAsync();
        await passing.DisconnectAsync();

        Assert.Equal("dev-1", await Await.Within(deleted.Task, "the broker deleting dev-1's session"));
        Assert.False(gw.Broker.IsListening("dev-1"));
        Assert.True(gw.Broker.IsListening("dev-2")); // its session, and what it subscribed to, wait for it
    }

    [Fact]
    public async Task Unsubscribing_FromReceipts_IsAcknowledgedAsSuccess_AndTheDeviceNoLongerListens()
    {
        await using var gw = await TestGateway.StartAsync(c => { });
        using var device = new MqttClientFactory().CreateMqttClient();
        await device.ConnectAsync(gw.ClientOptions("dev-1", version: MQTTnet.Formatter.MqttProtocolVersion.V500));

        var granted = await device.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);
        Assert.True(gw.Broker.IsListening("dev-1"));
        var removed = await device.UnsubscribeAsync("edgemail/v1/dev-1/receipt");
        var again = await device.UnsubscribeAsync("edgemail/v1/dev-1/receipt");

        Assert.Equal(MqttClientSubscribeResultCode.GrantedQoS1, Assert.Single(granted.Items).ResultCode);
        Assert.Equal(MqttClientUnsubscribeResultCode.Success, Assert.Single(removed.Items).ResultCode);
        Assert.Equal(MqttClientUnsubscribeResultCode.NoSubscriptionExisted, Assert.Single(again.Items).ResultCode);
        Assert.False(gw.Broker.IsListening("dev-1")); // its receipts wait in the spool for its next subscription
        await device.DisconnectAsync();
    }

    [Fact]
    public async Task DisablingADevice_EndsItsConnectionAndPersistentSession_WhileABystandersStay()
    {
        await using var gw = await TestGateway.StartAsync(c => { });
        var deleted = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var disconnected = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        gw.Broker.SessionDeleted += id => deleted.TrySetResult(id);
        gw.Broker.DeviceDisconnected += id => disconnected.TrySetResult(id);
        using var leaving = new MqttClientFactory().CreateMqttClient();
        using var staying = new MqttClientFactory().CreateMqttClient();
        var dropped = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        leaving.DisconnectedAsync += _ =>
        {
            dropped.TrySetResult(true);
            return Task.CompletedTask;
        };
        await leaving.ConnectAsync(Persistent(gw, "dev-1"));
        await leaving.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);
        await staying.ConnectAsync(Persistent(gw, "dev-2"));
        await staying.SubscribeAsync("edgemail/v1/dev-2/receipt", MqttQualityOfServiceLevel.AtLeastOnce);

        await gw.Host.Services.GetRequiredService<EdgeMail.Gateway.Devices.DeviceRegistry>().SetDisabledAsync("dev-1", true, default);

        Assert.Equal("dev-1", await Await.Within(disconnected.Task, "the disabled device's connection and session to end"));
        Assert.Equal("dev-1", await Await.Within(deleted.Task, "the broker deleting the disabled device's persistent session"));
        Assert.True(await Await.Within(dropped.Task, "the disabled device to see its connection closed"));
        Assert.False(gw.Broker.IsListening("dev-1"));
        Assert.True(staying.IsConnected);
        Assert.True(gw.Broker.IsListening("dev-2"));
        await staying.DisconnectAsync();
    }

    // Between the publisher and the real broker: holds the first receipt in one state on its way to the broker until the
    // test releases it, so the test can order that hand-over after what it does meanwhile.
    private sealed class HeldReceipt(string state)
    {
        private int _taken;

        public string State { get; } = state;

        public TaskCompletionSource Reached { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Release { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public IReceiptSink Around(IReceiptSink broker) => new Sink(broker, this);

        private sealed class Sink(IReceiptSink broker, HeldReceipt gate) : IReceiptSink
        {
            public async Task PublishAsync(string deviceId, byte[] payload, ReceiptHand? kept)
            {
                if (System.Text.Encoding.UTF8.GetString(payload).Contains($"\"state\":\"{gate.State}\"", StringComparison.Ordinal)
                    && Interlocked.Exchange(ref gate._taken, 1) == 0)
                {
                    gate.Reached.TrySetResult();
                    await gate.Release.Task.WaitAsync(Await.DefaultTimeout);
                }

                await broker.PublishAsync(deviceId, payload, kept);
            }

            public bool IsListening(string deviceId) => broker.IsListening(deviceId);
        }
    }
}
