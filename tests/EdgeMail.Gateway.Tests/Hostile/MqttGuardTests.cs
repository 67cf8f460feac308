using System.Net;
using System.Text;
using EdgeMail.Gateway.Security;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Hostile;

public sealed class MqttGuardTests
{
    private static MqttClientOptions Options(TestGateway gw, string device, string secret, IPEndPoint server, bool tls = false, IPAddress? from = null)
    {
        var builder = new MqttClientOptionsBuilder()
            .WithEndPoint(server)
            .WithTcpServer(o =>
            {
                o.RemoteEndpoint = server;
                if (from is not null)
                {
                    o.LocalEndpoint = new IPEndPoint(from, 0);
                }
            })
            .WithClientId(device).WithCredentials(device, secret).WithProtocolVersion(MqttProtocolVersion.V500).WithTimeout(TimeSpan.FromSeconds(10));
        if (tls)
        {
            builder.WithTlsOptions(o => o.UseTls().WithCertificateValidationHandler(_ => true).WithTargetHost("localhost"));
        }

        _ = gw;
        return builder.Build();
    }

    [Fact]
    public async Task Tls_EnabledWithTheOlderMqttGuardKeysOnAnOsChosenPort_AcceptsADeviceAndItsAlert()
    {
        await using var gw = await TestGateway.StartAsync(c => c["MqttGuard"] = new { TlsEnabled = true, TlsPort = 0 });
        var tls = gw.Host.Services.GetRequiredService<MqttGuard>().TlsEndpoint!;
        using var client = new MqttClientFactory().CreateMqttClient();

        var connected = await client.ConnectAsync(Options(gw, "dev-1", TestGateway.Secret, tls, tls: true));
        var ack = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
            .WithPayload(Encoding.UTF8.GetBytes(Alerts.Json("tls-1"))).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build(),
            new CancellationTokenSource(Await.DefaultTimeout).Token);

        Assert.Equal(MqttClientConnectResultCode.Success, connected.ResultCode);
        Assert.True(client.IsConnected);
        Assert.True(ack.IsSuccess);
        Assert.NotNull(await gw.Spool.GetAlertAsync("dev-1", "tls-1", default));
        Assert.True(File.Exists(Path.Combine(gw.DataDir, TlsCertificates.GeneratedFileName)));
    }

    [Fact]
    public async Task Connect_AfterTooManyWrongSecretsFromOneAddress_IsRefusedEvenWithTheRightOne()
    {
        await using var gw = await TestGateway.StartAsync(c => c["MqttGuard"] = new { AuthFailuresPerSource = 3 });
        for (int i = 0; i < 3; i++)
        {
            using var guess = new MqttClientFactory().CreateMqttClient();
            Assert.Equal(MqttClientConnectResultCode.BadUserNameOrPassword, (await guess.ConnectAsync(Options(gw, "dev-1", "guess" + i, gw.Broker.Endpoint!))).ResultCode);
        }

        using var right = new MqttClientFactory().CreateMqttClient();
        Assert.Equal(MqttClientConnectResultCode.ServerBusy, (await right.ConnectAsync(Options(gw, "dev-1", TestGateway.Secret, gw.Broker.Endpoint!))).ResultCode);

        using var other = new MqttClientFactory().CreateMqttClient(); // another address is not affected
        Assert.Equal(MqttClientConnectResultCode.Success, (await other.ConnectAsync(Options(gw, "dev-2", TestGateway.Secret, gw.Broker.Endpoint!, from: IPAddress.Parse("127.0.0.3")))).ResultCode);
    }

    [Fact]
    public async Task Connect_ADeviceWithAStaleSecretRetrying_LocksOutOnlyItself_NotTheOtherDevicesAtItsAddress()
    {
        // A site's devices share one address; one of them was re-keyed on the gateway but not on the device.
        await using var gw = await TestGateway.StartAsync(c => c["MqttGuard"] = new { AuthFailuresPerDevice = 3 });
        for (int i = 0; i < 3; i++)
        {
            using var stale = new MqttClientFactory().CreateMqttClient();
            Assert.Equal(MqttClientConnectResultCode.BadUserNameOrPassword, (await stale.ConnectAsync(Options(gw, "dev-1", "old-secret", gw.Broker.Endpoint!))).ResultCode);
        }

        for (int i = 0; i < 12; i++) // it keeps retrying: refused unverified, and no longer counted against the address
        {
            using var stale = new MqttClientFactory().CreateMqttClient();
            Assert.Equal(MqttClientConnectResultCode.ServerBusy, (await stale.ConnectAsync(Options(gw, "dev-1", "old-secret", gw.Broker.Endpoint!))).ResultCode);
        }

        using var right = new MqttClientFactory().CreateMqttClient(); // the locked-out device id, even with the right secret
        Assert.Equal(MqttClientConnectResultCode.ServerBusy, (await right.ConnectAsync(Options(gw, "dev-1", TestGateway.Secret, gw.Broker.Endpoint!))).ResultCode);

        using var neighbour = new MqttClientFactory().CreateMqttClient(); // same address, another device: still served
        Assert.Equal(MqttClientConnectResultCode.Success, (await neighbour.ConnectAsync(Options(gw, "dev-2", TestGateway.Secret, gw.Broker.Endpoint!))).ResultCode);
        var ack = await neighbour.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-2/alert")
            .WithPayload(Encoding.UTF8.GetBytes(Alerts.Json("after-lockout"))).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess);
        Assert.NotNull(await gw.Spool.GetAlertAsync("dev-2", "after-lockout", default));
    }

    [Fact]
    public async Task Connect_OverThePerSourceRate_IsRefusedAsServerBusy()
    {
        await using var gw = await TestGateway.StartAsync(c => c["MqttGuard"] = new { ConnectsPerMinutePerSource = 3 }, devices: 4);
        for (int i = 1; i <= 3; i++)
        {
            Assert.Equal(MqttClientConnectResultCode.Success, await ConnectOnceAsync(gw, $"dev-{i}"));
        }

        Assert.Equal(MqttClientConnectResultCode.ServerBusy, await ConnectOnceAsync(gw, "dev-4"));
    }

    // A site whose devices share one address (NAT) and whose link just came back: the devices whose secrets the gateway
    // has verified connect at once, past the per-source limit, which only bounds the key derivations of new ones.
    [Fact]
    public async Task Connect_DevicesWithAlreadyVerifiedSecrets_AreNotCountedAgainstTheirAddress()
    {
        await using var gw = await TestGateway.StartAsync(c => c["MqttGuard"] = new { ConnectsPerMinutePerSource = 3 }, devices: 5);
        for (int i = 1; i <= 3; i++)
        {
            Assert.Equal(MqttClientConnectResultCode.Success, await ConnectOnceAsync(gw, $"dev-{i}"));
        }

        for (int round = 0; round < 3; round++)
        {
            for (int i = 1; i <= 3; i++)
            {
                Assert.Equal(MqttClientConnectResultCode.Success, await ConnectOnceAsync(gw, $"dev-{i}"));
            }
        }

        Assert.Equal(MqttClientConnectResultCode.ServerBusy, await ConnectOnceAsync(gw, "dev-4")); // its secret was never verified
        Assert.Equal(MqttClientConnectResultCode.ServerBusy, await ConnectOnceAsync(gw, "dev-1", "guessed")); // not the verified secret
    }

    [Fact]
    public async Task Connect_AVerifiedDeviceOverItsOwnRate_IsRefusedAsServerBusyAndTheOthersAreNot()
    {
        await using var gw = await TestGateway.StartAsync(c => c["MqttGuard"] = new { ConnectsPerMinutePerDevice = 2 });
        Assert.Equal(MqttClientConnectResultCode.Success, await ConnectOnceAsync(gw, "dev-1")); // verified: counted per source
        Assert.Equal(MqttClientConnectResultCode.Success, await ConnectOnceAsync(gw, "dev-1"));
        Assert.Equal(MqttClientConnectResultCode.Success, await ConnectOnceAsync(gw, "dev-1"));

        Assert.Equal(MqttClientConnectResultCode.ServerBusy, await ConnectOnceAsync(gw, "dev-1"));
        Assert.Equal(MqttClientConnectResultCode.Success, await ConnectOnceAsync(gw, "dev-2"));
    }

    // The log keeps one refusal line a minute per address; the count of every refusal, by reason, is the metric's.
    [Fact]
    public async Task Connect_Refusals_AreEachCountedByReason()
    {
        await using var gw = await TestGateway.StartAsync(c => c["MqttGuard"] = new { ConnectsPerMinutePerSource = 2 });
        var meter = gw.Host.Services.GetRequiredService<EdgeMail.Gateway.Operations.GatewayMetrics>().Meter;
        var counted = new System.Collections.Concurrent.ConcurrentDictionary<string, long>();
        using var listener = new System.Diagnostics.Metrics.MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (ReferenceEquals(instrument.Meter, meter) && instrument.Name == "edgemail.mqtt.connects.refused")
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        listener.SetMeasurementEventCallback<long>((_, value, tags, _) => counted.AddOrUpdate((string)tags[0].Value!, value, (_, v) => v + value));
        listener.Start();

        Assert.Equal(MqttClientConnectResultCode.BadUserNameOrPassword, await ConnectOnceAsync(gw, "dev-3", "guessed"));
        Assert.Equal(MqttClientConnectResultCode.Success, await ConnectOnceAsync(gw, "dev-1"));
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(MqttClientConnectResultCode.ServerBusy, await ConnectOnceAsync(gw, "dev-2"));
        }

        Assert.Equal(new Dictionary<string, long> { ["credentials"] = 1, ["rate"] = 3 }, counted.ToDictionary());
    }

    private static async Task<MqttClientConnectResultCode> ConnectOnceAsync(TestGateway gw, string device, string? secret = null)
    {
        using var client = new MqttClientFactory().CreateMqttClient();
        var result = await client.ConnectAsync(Options(gw, device, secret ?? TestGateway.Secret, gw.Broker.Endpoint!));
        if (result.ResultCode == MqttClientConnectResultCode.Success)
        {
            await client.DisconnectAsync();
        }

        return result.ResultCode;
    }
}
