using System.Net;
using System.Net.Sockets;
using System.Text;
using EdgeMail.Gateway.Security;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
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

    // One address opening connections and never sending CONNECT: past the cap each new one is closed as accepted, while
    // the ones before it are held for the (long) connect timeout; a slot freed lets a real device in.
    [Fact]
    public async Task Connect_IdleSocketsFillingThePendingCapOfTheirAddress_TheNextIsClosedAtOnce_AndADeviceGetsInWhenOneCloses()
    {
        await using var gw = await TestGateway.StartAsync(c =>
        {
            c["Mqtt"] = new { Port = 0, ConnectTimeout = "00:01:00" }; // a close seen now is the cap's, not the timeout's
            c["MqttGuard"] = new { MaxPendingConnectionsPerSource = 3 };
        });
        var guard = gw.Host.Services.GetRequiredService<MqttGuard>();
        using var refusals = new Refusals(gw);
        var idle = new List<Socket>();
        try
        {
            // One accept loop takes connections in order and admits each as it takes it: these three hold the slots.
            for (int i = 0; i < 3; i++)
            {
                idle.Add(await RawConnectAsync(gw.Broker.Endpoint!));
            }

            using (var over = await RawConnectAsync(gw.Broker.Endpoint!))
            {
                Assert.Equal(0, await ReadAsync(over, "the broker to close the connection over the cap"));
            }

            Assert.Equal(1, refusals.Of("pending"));
            Assert.Equal(3, guard.PendingConnections);

            idle[0].Dispose();
            await UntilPendingAsync(guard, 2);
            using var device = await gw.ConnectAsync("dev-1");
            var ack = await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
                .WithPayload(Encoding.UTF8.GetBytes(Alerts.Json("past-idle-1"))).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build(),
                new CancellationTokenSource(Await.DefaultTimeout).Token);

            Assert.True(ack.IsSuccess);
            Assert.NotNull(await gw.Spool.GetAlertAsync("dev-1", "past-idle-1", default));
            Assert.Equal(2, guard.PendingConnections); // the device's slot was returned when it authenticated
            Assert.Equal(1, refusals.Of("pending"));
        }
        finally
        {
            idle.ForEach(s => s.Dispose());
        }
    }

    // A NAT'd site: many devices connected from one address are not capped, only connections not yet authenticated are.
    [Fact]
    public async Task Connect_AuthenticatedDevicesBeyondThePendingCap_AllGetIn_AndDoNotCountAgainstIt()
    {
        await using var gw = await TestGateway.StartAsync(c =>
        {
            c["Mqtt"] = new { Port = 0, ConnectTimeout = "00:01:00" };
            c["MqttGuard"] = new { MaxPendingConnectionsPerSource = 2 };
        }, devices: 5);
        var guard = gw.Host.Services.GetRequiredService<MqttGuard>();
        using var refusals = new Refusals(gw);
        var devices = new List<IMqttClient>();
        var idle = new List<Socket>();
        try
        {
            for (int i = 1; i <= 5; i++)
            {
                devices.Add(await gw.ConnectAsync($"dev-{i}"));
            }

            Assert.All(devices, d => Assert.True(d.IsConnected));
            Assert.Equal(0, guard.PendingConnections);

            idle.Add(await RawConnectAsync(gw.Broker.Endpoint!));
            idle.Add(await RawConnectAsync(gw.Broker.Endpoint!));
            using (var over = await RawConnectAsync(gw.Broker.Endpoint!))
            {
                Assert.Equal(0, await ReadAsync(over, "the broker to close the connection over the cap"));
            }

            Assert.Equal(2, guard.PendingConnections);
            Assert.Equal(1, refusals.Of("pending"));
            Assert.All(devices, d => Assert.True(d.IsConnected));
        }
        finally
        {
            idle.ForEach(s => s.Dispose());
            devices.ForEach(d => d.Dispose());
        }
    }

    // A client still in (or not yet begun) its TLS handshake holds a slot too; the caps are per address across both
    // listeners, and in total.
    [Fact]
    public async Task Connect_ConnectionsInTheirTlsHandshake_CountAgainstThePendingCaps_PerAddressAndInTotal()
    {
        await using var gw = await TestGateway.StartAsync(c =>
        {
            c["Mqtt"] = new { Port = 0, TlsEnabled = true, TlsPort = 0, ConnectTimeout = "00:01:00" };
            c["MqttGuard"] = new { MaxPendingConnectionsPerSource = 2, MaxPendingConnections = 3 };
        });
        var guard = gw.Host.Services.GetRequiredService<MqttGuard>();
        using var refusals = new Refusals(gw);
        var a = IPAddress.Parse("127.0.0.2");
        var idle = new List<Socket>();
        try
        {
            idle.Add(await RawConnectAsync(gw.Broker.TlsEndpoint!, a)); // never sends a ClientHello
            idle.Add(await RawConnectAsync(gw.Broker.TlsEndpoint!, a));
            await UntilPendingAsync(guard, 2);
            using (var overSource = await RawConnectAsync(gw.Broker.Endpoint!, a))
            {
                Assert.Equal(0, await ReadAsync(overSource, "the plain listener to close a third connection of an address holding two TLS handshakes"));
            }

            idle.Add(await RawConnectAsync(gw.Broker.TlsEndpoint!, IPAddress.Parse("127.0.0.3")));
            await UntilPendingAsync(guard, 3);
            using (var overTotal = await RawConnectAsync(gw.Broker.Endpoint!, IPAddress.Parse("127.0.0.4")))
            {
                Assert.Equal(0, await ReadAsync(overTotal, "the broker to close a connection over the total cap"));
            }

            Assert.Equal(2, refusals.Of("pending"));
            idle[0].Dispose(); // the handshake fails on the closed socket: its slot is returned
            await UntilPendingAsync(guard, 2);
        }
        finally
        {
            idle.ForEach(s => s.Dispose());
        }

        await UntilPendingAsync(guard, 0);
    }

    // What the pending caps hold back, as an operator sees it: edgemail.mqtt.connections.pending reads the guard's count of
    // connections not yet authenticated, which a connected device is not.
    [Fact]
    public async Task PendingGauge_RisesWithSocketsThatSendNoConnect_AndFallsWhenTheyClose()
    {
        await using var gw = await TestGateway.StartAsync(c => c["Mqtt"] = new { Port = 0, ConnectTimeout = "00:01:00" });
        var guard = gw.Host.Services.GetRequiredService<MqttGuard>();
        using var device = await gw.ConnectAsync("dev-1");
        Assert.Equal(0, PendingGauge(gw));
        var idle = new List<Socket>();
        try
        {
            for (int i = 0; i < 3; i++)
            {
                idle.Add(await RawConnectAsync(gw.Broker.Endpoint!));
            }

            await UntilPendingAsync(guard, 3);
            Assert.Equal(3, PendingGauge(gw));

            idle.ForEach(s => s.Dispose());
            await UntilPendingAsync(guard, 0);
            Assert.Equal(0, PendingGauge(gw));
        }
        finally
        {
            idle.ForEach(s => s.Dispose());
        }
    }

    private static int PendingGauge(TestGateway gw)
    {
        var meter = gw.Host.Services.GetRequiredService<EdgeMail.Gateway.Operations.GatewayMetrics>().Meter;
        int? value = null;
        using var listener = new System.Diagnostics.Metrics.MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (ReferenceEquals(instrument.Meter, meter) && instrument.Name == "edgemail.mqtt.connections.pending")
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        listener.SetMeasurementEventCallback<int>((_, measured, _, _) => value = measured);
        listener.Start();
        listener.RecordObservableInstruments();
        return value ?? throw new Xunit.Sdk.XunitException("no edgemail.mqtt.connections.pending gauge on the gateway's meter");
    }

    [Theory]
    [InlineData("MaxPendingConnectionsPerSource")]
    [InlineData("MaxPendingConnections")]
    [InlineData("ConnectsPerMinutePerSource")]
    public async Task Start_ANegativeMqttGuardLimit_FailsNamingTheKeyAndTheFix(string key)
    {
        var ex = await Assert.ThrowsAsync<OptionsValidationException>(() => TestGateway.StartAsync(c => c["MqttGuard"] = new Dictionary<string, object> { [key] = -1 }));

        string failure = Assert.Single(ex.Failures, f => f.StartsWith($"MqttGuard:{key}:", StringComparison.Ordinal));
        Assert.Contains("Fix:", failure, StringComparison.Ordinal);
        Assert.Empty(MqttGuardOptionsValidator.Check(new MqttGuardOptions { MaxPendingConnections = 0, MaxPendingConnectionsPerSource = 0 })); // 0 turns a cap off
    }

    private static async Task<Socket> RawConnectAsync(IPEndPoint server, IPAddress? from = null)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        if (from is not null)
        {
            socket.Bind(new IPEndPoint(from, 0));
        }

        await socket.ConnectAsync(server);
        return socket;
    }

    // What one read returns: 0 once the broker closed the connection without sending anything.
    private static Task<int> ReadAsync(Socket socket, string what) =>
        Await.Within(socket.ReceiveAsync(new byte[64], SocketFlags.None), what);

    private static async Task UntilPendingAsync(MqttGuard guard, int count)
    {
        var reached = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        Action check = () =>
        {
            if (guard.PendingConnections == count)
            {
                reached.TrySetResult(true);
            }
        };
        guard.PendingConnectionsChanged += check;
        try
        {
            check();
            await Await.Within(reached.Task, $"{count} connection(s) not yet authenticated (now {guard.PendingConnections})");
        }
        finally
        {
            guard.PendingConnectionsChanged -= check;
        }
    }

    // edgemail.mqtt.connects.refused, by reason, as the gateway counts them.
    private sealed class Refusals : IDisposable
    {
        private readonly System.Collections.Concurrent.ConcurrentDictionary<string, long> _counted = new();
        private readonly System.Diagnostics.Metrics.MeterListener _listener;

        public Refusals(TestGateway gw)
        {
            var meter = gw.Host.Services.GetRequiredService<EdgeMail.Gateway.Operations.GatewayMetrics>().Meter;
            _listener = new System.Diagnostics.Metrics.MeterListener
            {
                InstrumentPublished = (instrument, l) =>
                {
                    if (ReferenceEquals(instrument.Meter, meter) && instrument.Name == "edgemail.mqtt.connects.refused")
                    {
                        l.EnableMeasurementEvents(instrument);
                    }
                },
            };
            _listener.SetMeasurementEventCallback<long>((_, value, tags, _) => _counted.AddOrUpdate((string)tags[0].Value!, value, (_, v) => v + value));
            _listener.Start();
        }

        public long Of(string reason) => _counted.GetValueOrDefault(reason);

        public void Dispose() => _listener.Dispose();
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
