using System.Collections.Concurrent;
using System.Globalization;
using System.Text.Json;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using MQTTnet;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Gateway.Tests.Ingest;

/// <summary>The gateway as a client of Debian's mosquitto (Mqtt:Mode = external), devices publishing through mosquitto.</summary>
public sealed class ExternalBrokerTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));

    private static readonly string[] Devices = ["dev-1", "dev-2", "dev-3", "stranger"];

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_DevicePublishesQos1ThroughMosquitto_OneMailAndAcceptedReceiptsEvenWhenSentTwice()
    {
        await using var broker = await ExternalMosquitto.StartAsync(Devices);
        await using var gateway = await ExternalGateway.StartAsync(ExternalGateway.WriteConfig(_dataDir, broker.Port));
        var receipts = new ConcurrentQueue<string>();
        var second = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var device = await ExternalGateway.DeviceAsync(broker.Port, "dev-1", "edgemail/v1/dev-1/receipt", r =>
        {
            if (r.Contains("\"accepted\"", StringComparison.Ordinal))
            {
                receipts.Enqueue(r); // a "relayed" receipt follows the first mail; only the acceptances matter here
            }

            if (receipts.Count >= 2)
            {
                second.TrySetResult(true);
            }
        });

        var ack = await device.PublishAsync(ExternalGateway.Alert("dev-1", "ext-1"));
        await ExternalGateway.MailAsync(_dataDir, 1);
        var again = await device.PublishAsync(ExternalGateway.Alert("dev-1", "ext-1"));
        await Await.Within(second.Task, "two receipts (accepted, then accepted as duplicate)");

        Assert.True(ack.IsSuccess, ack.ReasonCode.ToString());
        Assert.True(again.IsSuccess, again.ReasonCode.ToString());
        Assert.Equal(AlertStatus.Routed, (await gateway.Spool.GetAlertAsync("dev-1", "ext-1", default))?.Status);
        var states = receipts.Select(r => JsonDocument.Parse(r).RootElement).Select(j => (j.GetProperty("id").GetString(), j.GetProperty("state").GetString(), j.GetProperty("detail").GetString())).ToList();
        Assert.Equal([("ext-1", "accepted", ""), ("ext-1", "accepted", "duplicate")], states.Take(2));
        Assert.Equal(1, await gateway.QueuedMailAsync());
        Assert.Single(Directory.GetFiles(Path.Combine(_dataDir, "mailbox", "new"), "*.eml"));
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_Mqtt311ToMosquitto_SubscribesAndIngests()
    {
        // MQTTnet refuses an MQTT 3.1.1 SUBSCRIBE that carries MQTT 5's retain handling: the link subscribed to nothing.
        await using var broker = await ExternalMosquitto.StartAsync(Devices);
        await using var gateway = await ExternalGateway.StartAsync(ExternalGateway.WriteConfig(_dataDir, broker.Port, protocol: "3.1.1"));
        using var device = await ExternalGateway.DeviceAsync(broker.Port, "dev-1");

        var ack = await device.PublishAsync(ExternalGateway.Alert("dev-1", "v311-1"));
        await ExternalGateway.MailAsync(_dataDir, 1);

        Assert.True(ack.IsSuccess, ack.ReasonCode.ToString());
        Assert.Equal(AlertStatus.Routed, (await gateway.Spool.GetAlertAsync("dev-1", "v311-1", default))?.Status);
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_GatewayDownWhileDevicesPublish_ReceivesEveryQueuedAlertOnStart()
    {
        const int PerDevice = 40;
        await using var broker = await ExternalMosquitto.StartAsync(Devices);
        string config = ExternalGateway.WriteConfig(_dataDir, broker.Port);
        await using (await ExternalGateway.StartAsync(config))
        {
            // The first start creates the gateway's persistent session and its subscriptions at the broker.
        }

        foreach (string d in new[] { "dev-1", "dev-2", "dev-3" })
        {
            using var device = await ExternalGateway.DeviceAsync(broker.Port, d);
            for (int i = 0; i < PerDevice; i++)
            {
                var ack = await device.PublishAsync(ExternalGateway.Alert(d, "offline-" + i.ToString(CultureInfo.InvariantCulture)));
                Assert.True(ack.IsSuccess, ack.ReasonCode.ToString()); // mosquitto queued it for the absent gateway
            }

            await device.DisconnectAsync();
        }

        await using var restarted = await ExternalGateway.StartAsync(config);
        await ExternalGateway.MailAsync(_dataDir, 3 * PerDevice, TimeSpan.FromSeconds(60));

        for (int i = 0; i < PerDevice; i++)
        {
            string id = "offline-" + i.ToString(CultureInfo.InvariantCulture);
            Assert.NotNull(await restarted.Spool.GetAlertAsync("dev-2", id, default));
        }

        Assert.Equal(3 * PerDevice, await restarted.QueuedMailAsync());
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_SessionDeliversRightAfterConnect_EveryQueuedAlertIsAcknowledgedAndIngestGoesOn()
    {
        const int Count = 5;
        await using var broker = await ExternalMosquitto.StartAsync(Devices);

        // Receive Maximum 1: one alert the gateway stores and never acknowledges holds the broker's only slot.
        string config = ExternalGateway.WriteConfig(_dataDir, broker.Port, external: e => e["MaxInFlight"] = 1);
        await using (await ExternalGateway.StartAsync(config))
        {
            // The first start creates the gateway's persistent session at the broker.
        }

        using (var device = await ExternalGateway.DeviceAsync(broker.Port, "dev-1"))
        {
            for (int i = 0; i < Count; i++)
            {
                await device.PublishAsync(ExternalGateway.Alert("dev-1", "queued-" + i.ToString(CultureInfo.InvariantCulture)));
            }

            await device.DisconnectAsync();
        }

        // The broker sends the queued alerts right after CONNACK; the link is held until the first has arrived.
        var firstArrived = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var gateway = await ExternalGateway.StartAsync(config, beforeStart: client =>
        {
            client.BeforeStore = (_, _) =>
            {
                firstArrived.TrySetResult();
                return Task.CompletedTask;
            };
            client.AfterConnect = ct => firstArrived.Task.WaitAsync(ct);
        });
        await ExternalGateway.MailAsync(_dataDir, Count);

        for (int i = 0; i < Count; i++)
        {
            Assert.NotNull(await gateway.Spool.GetAlertAsync("dev-1", "queued-" + i.ToString(CultureInfo.InvariantCulture), default));
        }
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_GatewayStopsBetweenReceiptAndCommit_BrokerRedeliversAndOneMailGoesOut()
    {
        await using var broker = await ExternalMosquitto.StartAsync(Devices);
        string config = ExternalGateway.WriteConfig(_dataDir, broker.Port);
        var received = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using (var first = await ExternalGateway.StartAsync(config))
        {
            first.Client.BeforeStore = async (topic, ct) =>
            {
                received.TrySetResult(topic);
                await new TaskCompletionSource().Task.WaitAsync(ct); // held until the gateway stops: never committed
            };
            using var device = await ExternalGateway.DeviceAsync(broker.Port, "dev-2");
            var ack = await device.PublishAsync(ExternalGateway.Alert("dev-2", "in-between"));
            Assert.True(ack.IsSuccess); // the broker took it
            Assert.Equal("edgemail/v1/dev-2/alert", await Await.Within(received.Task, "the gateway to receive the alert"));
            Assert.Null(await first.Spool.GetAlertAsync("dev-2", "in-between", default));
        }

        await using var second = await ExternalGateway.StartAsync(config);
        await ExternalGateway.MailAsync(_dataDir, 1);

        Assert.Equal(AlertStatus.Routed, (await second.Spool.GetAlertAsync("dev-2", "in-between", default))?.Status);
        Assert.Equal(1, await second.QueuedMailAsync());
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_TlsBrokerWithPinnedCa_GatewayConnectsOverTlsAndIngests()
    {
        string certDir = Path.Combine(_dataDir, "tls");
        Directory.CreateDirectory(certDir);
        var (certFile, keyFile) = WriteSelfSignedPem(certDir);
        await using var broker = await ExternalMosquitto.StartAsync(Devices, (certFile, keyFile));
        await using var gateway = await ExternalGateway.StartAsync(ExternalGateway.WriteConfig(_dataDir, broker.Port, tls: new { Tls = true, CaFile = certFile }));
        using var device = await ExternalGateway.DeviceAsync(broker.Port, "dev-1", caFile: certFile);

        await device.PublishAsync(ExternalGateway.Alert("dev-1", "over-tls"));
        await ExternalGateway.MailAsync(_dataDir, 1);

        Assert.Equal(AlertStatus.Routed, (await gateway.Spool.GetAlertAsync("dev-1", "over-tls", default))?.Status);
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_TlsBrokerWithUntrustedCertificate_GatewayDoesNotConnect()
    {
        string certDir = Path.Combine(_dataDir, "tls");
        Directory.CreateDirectory(certDir);
        var (certFile, keyFile) = WriteSelfSignedPem(certDir);
        var (otherCa, _) = WriteSelfSignedPem(Directory.CreateDirectory(Path.Combine(certDir, "other")).FullName);
        await using var broker = await ExternalMosquitto.StartAsync(Devices, (certFile, keyFile));
        string config = ExternalGateway.WriteConfig(_dataDir, broker.Port, tls: new { Tls = true, CaFile = otherCa });
        using var host = GatewayHost.CreateBuilder(["--config", config]).Build();
        await host.StartAsync();
        var client = Microsoft.Extensions.DependencyInjection.ServiceProviderServiceExtensions.GetRequiredService<EdgeMail.Gateway.Ingest.ExternalBrokerClient>(host.Services);

        // The handshake fails on the pinned CA: the client never counts as connected (it keeps retrying with backoff).
        await Assert.ThrowsAsync<TimeoutException>(() => client.Connected.WaitAsync(TimeSpan.FromSeconds(3)));
        await host.StopAsync();
    }

    private static (string CertFile, string KeyFile) WriteSelfSignedPem(string dir)
    {
        using var rsa = System.Security.Cryptography.RSA.Create(2048);
        var request = new System.Security.Cryptography.X509Certificates.CertificateRequest("CN=broker.test", rsa,
            System.Security.Cryptography.HashAlgorithmName.SHA256, System.Security.Cryptography.RSASignaturePadding.Pkcs1);
        var san = new System.Security.Cryptography.X509Certificates.SubjectAlternativeNameBuilder();
        san.AddIpAddress(System.Net.IPAddress.Loopback);
        san.AddDnsName("localhost");
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new System.Security.Cryptography.X509Certificates.X509BasicConstraintsExtension(true, false, 0, true));
        var now = DateTimeOffset.UtcNow;
        using var cert = request.CreateSelfSigned(now.AddMinutes(-5), now.AddDays(1));
        string certFile = Path.Combine(dir, "broker.pem");
        string keyFile = Path.Combine(dir, "broker.key");
        File.WriteAllText(certFile, cert.ExportCertificatePem() + "\n");
        File.WriteAllText(keyFile, rsa.ExportPkcs8PrivateKeyPem() + "\n");
        return (certFile, keyFile);
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_UnknownDeviceOnItsOwnTopic_IsKeptAsRejectedWithReasonAndServiceGoesOn()
    {
        await using var broker = await ExternalMosquitto.StartAsync(Devices);
        await using var gateway = await ExternalGateway.StartAsync(ExternalGateway.WriteConfig(_dataDir, broker.Port));
        var receipt = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var stranger = await ExternalGateway.DeviceAsync(broker.Port, "stranger", "edgemail/v1/stranger/receipt", r => receipt.TrySetResult(r));

        var ack = await stranger.PublishAsync(ExternalGateway.Alert("stranger", "who-am-i"));
        using var json = JsonDocument.Parse(await Await.Within(receipt.Task, "the rejected receipt to the unknown device"));
        using var device = await ExternalGateway.DeviceAsync(broker.Port, "dev-1");
        await device.PublishAsync(ExternalGateway.Alert("dev-1", "after-stranger"));
        await ExternalGateway.MailAsync(_dataDir, 1);

        Assert.True(ack.IsSuccess); // taken and acknowledged: never retransmitted forever
        var stored = await gateway.Spool.GetAlertAsync("stranger", "who-am-i", default);
        Assert.Equal(AlertStatus.Rejected, stored?.Status);
        Assert.Contains("unknown device 'stranger'", stored?.Reason, StringComparison.Ordinal);
        Assert.Equal("rejected", json.RootElement.GetProperty("state").GetString());
        Assert.Contains("not configured under Devices", json.RootElement.GetProperty("detail").GetString(), StringComparison.Ordinal);
        Assert.Equal(AlertStatus.Routed, (await gateway.Spool.GetAlertAsync("dev-1", "after-stranger", default))?.Status);
        Assert.Equal(1, await gateway.QueuedMailAsync());
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_DevicePublishesUnderAnotherDevicesId_IsStoppedByTheDocumentedAcl()
    {
        await using var broker = await ExternalMosquitto.StartAsync(Devices);
        await using var gateway = await ExternalGateway.StartAsync(ExternalGateway.WriteConfig(_dataDir, broker.Port));
        using (var forger = await ExternalGateway.DeviceAsync(broker.Port, "dev-1"))
        {
            try
            {
                var forged = await forger.PublishAsync(ExternalGateway.Alert("dev-2", "forged"));
                output.WriteLine($"forged publish: {forged.ReasonCode}");
            }
            catch (MQTTnet.Exceptions.MqttCommunicationException ex)
            {
                output.WriteLine($"forged publish: {ex.Message}"); // mosquitto may drop the connection instead
            }
        }

        using var device = await ExternalGateway.DeviceAsync(broker.Port, "dev-1");
        await device.PublishAsync(ExternalGateway.Alert("dev-1", "genuine"));
        await ExternalGateway.MailAsync(_dataDir, 1);

        Assert.Null(await gateway.Spool.GetAlertAsync("dev-2", "forged", default));
        Assert.NotNull(await gateway.Spool.GetAlertAsync("dev-1", "genuine", default));
        Assert.Equal(1, await gateway.QueuedMailAsync());
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_BrokerRestarts_GatewayReconnectsAndGetsWhatWasPublishedMeanwhile()
    {
        await using var broker = await ExternalMosquitto.StartAsync(Devices);
        await using var gateway = await ExternalGateway.StartAsync(ExternalGateway.WriteConfig(_dataDir, broker.Port));

        await broker.RestartAsync();
        using var device = await ExternalGateway.DeviceAsync(broker.Port, "dev-3");
        var ack = await device.PublishAsync(ExternalGateway.Alert("dev-3", "after-restart"));
        await ExternalGateway.MailAsync(_dataDir, 1, TimeSpan.FromSeconds(30));

        Assert.True(ack.IsSuccess, ack.ReasonCode.ToString());
        Assert.Equal(AlertStatus.Routed, (await gateway.Spool.GetAlertAsync("dev-3", "after-restart", default))?.Status);
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
