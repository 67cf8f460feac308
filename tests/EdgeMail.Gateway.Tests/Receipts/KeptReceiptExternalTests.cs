using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Tests.Ingest;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
using Microsoft.Extensions.DependencyInjection;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Receipts;

/// <summary>
/// Kept receipts with an external broker (Debian's mosquitto, with persistence): the broker's PUBACK hands a final
/// receipt over; one given while the broker is down is kept and published when the gateway's link is back, and the
/// device, away meanwhile, gets it from its persistent session at the broker.
/// </summary>
public sealed class KeptReceiptExternalTests : IDisposable
{
    private const string Refused = "bob@example.com";
    private readonly string _dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        try
        {
            Directory.Delete(_dataDir, true);
        }
        catch (IOException)
        {
            // a file still open; the temp folder is cleaned some other day
        }
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task RelayedReceipt_ToADeviceNobodySubscribedFor_StaysKeptWhileOneThatReachesItsDeviceIsRemoved()
    {
        await using var broker = await ExternalMosquitto.StartAsync(["dev-1", "dev-2"]);
        await using var gateway = await ExternalGateway.StartAsync(ExternalGateway.WriteConfig(_dataDir, broker.Port)); // MQTT 5
        var receipts = gateway.Host.Services.GetRequiredService<ReceiptPublisher>();

        // dev-1 holds no subscription: mosquitto answers its receipts' publish with NoMatchingSubscribers.
        using (var device = await ExternalGateway.DeviceAsync(broker.Port, "dev-1"))
        {
            await device.PublishAsync(ExternalGateway.Alert("dev-1", "unheard"));
            await device.DisconnectAsync();
        }

        await ExternalGateway.MailAsync(_dataDir, 1);
        await SpoolWait.UntilAsync(gateway.Spool, async () => (await gateway.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Count == 1 && receipts.InFlight() == 0,
            "dev-1's relayed receipt kept and handed to the broker");

        // dev-2 listens: its receipt reaches it, and the broker's PUBACK removes it (after dev-1's answer, in order).
        var relayed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var listener = await ExternalGateway.DeviceAsync(broker.Port, "dev-2", "edgemail/v1/dev-2/receipt", r =>
        {
            if (r.Contains("\"state\":\"relayed\"", StringComparison.Ordinal))
            {
                relayed.TrySetResult();
            }
        });
        await listener.PublishAsync(ExternalGateway.Alert("dev-2", "heard"));
        await Await.Within(relayed.Task.ContinueWith(_ => true, TaskScheduler.Default), "dev-2's relayed receipt");
        await SpoolWait.UntilAsync(gateway.Spool, async () => (await gateway.Spool.KeptReceiptsAsync("dev-2", 0, null, 10, default)).Count == 0,
            "dev-2's receipt removed after the broker's PUBACK");

        var kept = Assert.Single(await gateway.Spool.KeptReceiptsAsync(null, 0, null, 10, default));
        Assert.Equal(("dev-1", "unheard", ReceiptState.Relayed), (kept.Receipt.Device, kept.Receipt.AlertId, kept.Receipt.State));
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task FailedReceipt_GivenWhileTheBrokerIsDown_IsPublishedWhenTheLinkIsBack_AndTheAwayDeviceGetsItOnce()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        sink.Recipients[Refused] = new SmtpReply(550, "5.1.1 no such user");
        using var brokerDown = new ManualResetEventSlim();
        sink.OnCommand = c =>
        {
            if (c.Verb == "RCPT" && string.Equals(c.Argument, Refused, StringComparison.OrdinalIgnoreCase) && !brokerDown.Wait(Await.DefaultTimeout))
            {
                throw new TimeoutException("the test never let the relay answer");
            }

            return null;
        };
        await using var broker = await ExternalMosquitto.StartAsync(["dev-1"]);
        await using var gateway = await ExternalGateway.StartAsync(ExternalGateway.WriteConfig(_dataDir, broker.Port, tweak: c =>
        {
            c["Relay"] = new { Mode = "Smarthost", Host = "127.0.0.1", Port = sink.Port, Security = "None", Backoff = new[] { "00:00:00.200" }, Timeout = "00:00:05" };
            c["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "oncall" } } };
        }));

        // The device: a persistent session at the broker (clean start off, a session that outlives the connection).
        var receipts = new List<string>();
        var failed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var device = new MqttClientFactory().CreateMqttClient();
        device.ApplicationMessageReceivedAsync += e =>
        {
            string json = e.ApplicationMessage.ConvertPayloadToString();
            lock (receipts)
            {
                receipts.Add(json);
            }

            if (json.Contains("\"state\":\"failed\"", StringComparison.Ordinal))
            {
                failed.TrySetResult();
            }

            return Task.CompletedTask;
        };
        var options = new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", broker.Port).WithClientId("dev-1")
            .WithCredentials("dev-1", ExternalMosquitto.DevicePassword).WithProtocolVersion(MqttProtocolVersion.V500)
            .WithCleanStart(false).WithSessionExpiryInterval(3600).WithTimeout(TimeSpan.FromSeconds(10)).Build();
        await device.ConnectAsync(options);
        await device.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);
        await device.PublishAsync(ExternalGateway.Alert("dev-1", "x-1"));
        await SpoolWait.UntilAsync(gateway.Spool, async () => await gateway.Spool.GetAlertAsync("dev-1", "x-1", default) is not null, "the alert stored");
        await device.DisconnectAsync();

        // The broker goes down; then the relay refuses bob: the receipt cannot be published, and is kept.
        await broker.StopAsync();
        brokerDown.Set();
        await SpoolWait.UntilAsync(gateway.Spool, async () => (await gateway.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Any(r => r.Receipt.State == ReceiptState.Failed),
            "the failed receipt kept while the broker is down");

        // The broker is back: the gateway's link subscribes again and hands the receipt over; the broker's PUBACK removes it.
        await broker.StartAgainAsync();
        await SpoolWait.UntilAsync(gateway.Spool, async () => (await gateway.Spool.KeptReceiptsAsync(null, 0, null, 10, default)).Count == 0,
            "the receipt handed to the broker and removed", TimeSpan.FromSeconds(30));

        // The device comes back to its session and finds it there.
        await device.ConnectAsync(options);
        await Await.Within(failed.Task.ContinueWith(_ => true, TaskScheduler.Default), "the failed receipt from the device's session");
        lock (receipts)
        {
            Assert.Single(receipts, r => r.Contains("\"id\":\"x-1\",\"state\":\"failed\"", StringComparison.Ordinal));
        }

        await device.DisconnectAsync();
    }
}
