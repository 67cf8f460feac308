using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Security;
using EdgeMail.Testing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using MimeKit;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Ingest;

/// <summary>The embedded broker's listeners: plain, TLS, or TLS only (<c>Mqtt:PlainEnabled</c>, <c>Mqtt:TlsEnabled</c>, <c>Mqtt:TlsPort</c>).</summary>
public sealed class MqttListenerTests
{
    /// <summary>
    /// Accepts exactly the gateway's certificate: a chain built with it as the only trust anchor, and the name the
    /// client asked for (<c>localhost</c>) in it. No "accept any certificate".
    /// </summary>
    internal static bool IsGatewayCertificate(X509Certificate? presented, SslPolicyErrors errors, X509Certificate2 gateway)
    {
        if (presented is null || (errors & ~SslPolicyErrors.RemoteCertificateChainErrors) != SslPolicyErrors.None)
        {
            return false; // no certificate, or one that does not name the host
        }

        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(gateway);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        using var certificate = X509CertificateLoader.LoadCertificate(presented.GetRawCertData());
        return chain.Build(certificate);
    }

    internal static X509Certificate2 GeneratedCertificate(TestGateway gw) =>
        X509CertificateLoader.LoadCertificate(X509CertificateLoader.LoadPkcs12FromFile(Path.Combine(gw.DataDir, TlsCertificates.GeneratedFileName), null).RawData);

    internal static MqttClientOptions TlsOptions(IPEndPoint server, string device, X509Certificate2 trusted) =>
        new MqttClientOptionsBuilder()
            .WithTcpServer(server.Address.ToString(), server.Port)
            .WithClientId(device).WithCredentials(device, TestGateway.Secret)
            .WithProtocolVersion(MqttProtocolVersion.V311)
            .WithTimeout(TimeSpan.FromSeconds(10))
            .WithTlsOptions(o => o.UseTls().WithTargetHost("localhost")
                .WithCertificateValidationHandler(e => IsGatewayCertificate(e.Certificate, e.SslPolicyErrors, trusted)))
            .Build();

    [Fact]
    public async Task PlainDisabled_PlainConnectIsRefusedAtTheSocket_AndAnAlertOverTlsWithTheGatewaysCertificateIsMailed()
    {
        int plainPort = Loopback.FreePort();
        await using var gw = await TestGateway.StartAsync(c => c["Mqtt"] = new { Port = plainPort, PlainEnabled = false, TlsEnabled = true, TlsPort = 0 });
        var tls = gw.Broker.TlsEndpoint!;

        using (var plain = new TcpClient())
        {
            var refused = await Assert.ThrowsAsync<SocketException>(() => plain.ConnectAsync(IPAddress.Loopback, plainPort));
            Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
        }

        Assert.Null(gw.Broker.Endpoint);
        using var gatewayCertificate = GeneratedCertificate(gw);
        using var client = new MqttClientFactory().CreateMqttClient();
        var connected = await client.ConnectAsync(TlsOptions(tls, "dev-1", gatewayCertificate));
        var ack = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
            .WithPayload(Alerts.Json("tls-only-1", code: "DOOR_OPEN")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());

        Assert.Equal(MqttClientConnectResultCode.Success, connected.ResultCode);
        Assert.True(ack.IsSuccess);
        using var mail = await MimeMessage.LoadAsync(Assert.Single(await gw.MailAsync(1)));
        Assert.Equal("tls-only-1", mail.Headers["X-EdgeMail-Alert"]);
        Assert.Equal("alice@example.com", Assert.Single(mail.To.Mailboxes).Address);
        Assert.Contains("DOOR_OPEN", mail.TextBody, StringComparison.Ordinal);
    }

    [PeerFact("mosquitto_pub:mosquitto-clients")]
    public async Task TlsOnly_MosquittoPubWithTheGatewaysCertificateAsItsCa_GetsItsAlertMailed_AndThePlainPortRefusesIt()
    {
        int plainPort = Loopback.FreePort();
        await using var gw = await TestGateway.StartAsync(c => c["Mqtt"] = new { Port = plainPort, PlainEnabled = false, TlsEnabled = true, TlsPort = 0 });
        string caFile = Path.Combine(gw.DataDir, "gateway.crt"); // what `openssl pkcs12 -in tls-selfsigned.pfx -nokeys -passin pass:` gives an operator
        using (var certificate = GeneratedCertificate(gw))
        {
            await File.WriteAllTextAsync(caFile, certificate.ExportCertificatePem());
        }

        string[] Args(int port, string id) =>
            ["-h", "localhost", "-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-i", "dev-2", "-u", "dev-2", "-P", TestGateway.Secret,
             "-q", "1", "-t", "edgemail/v1/dev-2/alert", "-m", Alerts.Json(id)];

        var (plainCode, plainOutput) = await Smtp.PeerProcess.RunAsync("mosquitto_pub", "mosquitto-clients", Args(plainPort, "mp-plain"));
        var (code, output) = await Smtp.PeerProcess.RunAsync("mosquitto_pub", "mosquitto-clients", [.. Args(gw.Broker.TlsEndpoint!.Port, "mp-tls"), "--cafile", caFile]);

        Assert.NotEqual(0, plainCode);
        Assert.Contains("refused", plainOutput, StringComparison.OrdinalIgnoreCase);
        Assert.True(code == 0, output);
        using var mail = await MimeMessage.LoadAsync(Assert.Single(await gw.MailAsync(1)));
        Assert.Equal("mp-tls", mail.Headers["X-EdgeMail-Alert"]);
        Assert.Null(await gw.Spool.GetAlertAsync("dev-2", "mp-plain", default));
    }

    [Fact]
    public async Task TlsOnly_ACertificateOtherThanTheGatewaysIsNotTrusted()
    {
        await using var gw = await TestGateway.StartAsync(c => c["Mqtt"] = new { PlainEnabled = false, TlsEnabled = true, TlsPort = 0 });
        using var key = System.Security.Cryptography.RSA.Create(2048);
        using var stranger = new CertificateRequest("CN=localhost", key, System.Security.Cryptography.HashAlgorithmName.SHA256, System.Security.Cryptography.RSASignaturePadding.Pkcs1)
            .CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        using var client = new MqttClientFactory().CreateMqttClient();

        var ex = await Assert.ThrowsAnyAsync<Exception>(() => client.ConnectAsync(TlsOptions(gw.Broker.TlsEndpoint!, "dev-1", stranger)));

        Assert.False(client.IsConnected);
        Assert.Contains(Chain(ex), e => e is System.Security.Authentication.AuthenticationException); // refused in the TLS handshake
        Assert.Null(await gw.Spool.GetAlertAsync("dev-1", "never", default));
    }

    private static IEnumerable<Exception> Chain(Exception? e)
    {
        for (; e is not null; e = e.InnerException)
        {
            yield return e;
        }
    }

    [Fact]
    public async Task Start_PlainAndTlsBothOff_FailsNamingTheKeyAndTheFix()
    {
        var ex = await Assert.ThrowsAsync<OptionsValidationException>(() => TestGateway.StartAsync(c => c["Mqtt"] = new { Port = 0, PlainEnabled = false }));

        string failure = Assert.Single(ex.Failures, f => f.StartsWith("Mqtt:PlainEnabled:", StringComparison.Ordinal));
        Assert.Contains("Mqtt:TlsEnabled", failure, StringComparison.Ordinal);
        Assert.Contains("Fix:", failure, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ConnectTimeout_ClientsThatNeverSendConnectOrFinishTls_AreClosed_AndDevicesStillGetIn()
    {
        await using var gw = await TestGateway.StartAsync(c => c["Mqtt"] = new { Port = 0, TlsEnabled = true, TlsPort = 0, ConnectTimeout = "00:00:01" });
        using var silent = new TcpClient();
        using var stalledTls = new TcpClient(); // opens the TLS port and never sends a ClientHello
        await silent.ConnectAsync(gw.Broker.Endpoint!);
        await stalledTls.ConnectAsync(gw.Broker.TlsEndpoint!);

        Assert.True(await Hostile.MqttHostileTests.ClosedByPeerAsync(silent.Client), "the plain listener kept a client that never sent CONNECT");
        Assert.True(await Hostile.MqttHostileTests.ClosedByPeerAsync(stalledTls.Client), "the TLS listener kept a client that never began its handshake");
        using var device = new MqttClientFactory().CreateMqttClient();
        await device.ConnectAsync(gw.ClientOptions("dev-1"));
        var ack = await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
            .WithPayload(Alerts.Json("after-idle-1")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess);
    }

    [Theory]
    [InlineData("00:00:00.500")]
    [InlineData("00:11:00")]
    public void Check_ConnectTimeoutOutsideOneSecondToTenMinutes_IsRefused(string timeout)
    {
        var o = new GatewayOptions();
        o.Mqtt.ConnectTimeout = TimeSpan.Parse(timeout, System.Globalization.CultureInfo.InvariantCulture);

        Assert.Contains(GatewayOptionsValidator.Check(o), e => e.StartsWith("Mqtt:ConnectTimeout:", StringComparison.Ordinal));
        o.Mqtt.ConnectTimeout = TimeSpan.FromSeconds(20);
        Assert.DoesNotContain(GatewayOptionsValidator.Check(o), e => e.StartsWith("Mqtt:ConnectTimeout:", StringComparison.Ordinal));
    }

    [Fact]
    public void Check_ExternalModeWithoutEmbeddedListeners_IsValid()
    {
        var o = new GatewayOptions();
        o.Mqtt.Mode = MqttModes.External;
        o.Mqtt.External.Host = "mqtt.example.com";
        o.Mqtt.PlainEnabled = false;

        Assert.DoesNotContain(GatewayOptionsValidator.Check(o), e => e.StartsWith("Mqtt:PlainEnabled", StringComparison.Ordinal));
    }

    [Fact]
    public void Check_TlsPortEqualToThePlainPort_IsRefused()
    {
        var o = new GatewayOptions();
        o.Mqtt.TlsEnabled = true;
        o.Mqtt.TlsPort = 1883;

        Assert.Contains(GatewayOptionsValidator.Check(o), e => e.StartsWith("Mqtt:TlsPort:", StringComparison.Ordinal));
        o.Mqtt.PlainEnabled = false;
        Assert.DoesNotContain(GatewayOptionsValidator.Check(o), e => e.StartsWith("Mqtt:TlsPort:", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("00:00:30", 90)]
    [InlineData("00:02:00", 270)]
    public void Host_GracefulStop_WaitsForRelayAttemptsUnderWay(string relayTimeout, int seconds)
    {
        // The delivery worker lets an attempt under way finish and record its result for up to twice Relay:Timeout; the
        // host's default 30 s would dispose the spool under it, and the mail would go again after the restart.
        string config = TestGateway.WriteConfig(Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N")));
        try
        {
            using var host = GatewayHost.CreateBuilder(["--config", config, "--Relay:Timeout=" + relayTimeout]).Build();

            Assert.Equal(TimeSpan.FromSeconds(seconds), host.Services.GetRequiredService<IOptions<HostOptions>>().Value.ShutdownTimeout);
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(config)!, recursive: true);
        }
    }

    [Theory]
    [InlineData(new[] { "--MqttGuard:TlsEnabled=true", "--MqttGuard:TlsPort=8884" }, true, 8884)] // the older keys still work
    [InlineData(new[] { "--Mqtt:TlsEnabled=true" }, true, 8883)]
    [InlineData(new[] { "--Mqtt:TlsEnabled=false", "--MqttGuard:TlsEnabled=true", "--Mqtt:TlsPort=9883", "--MqttGuard:TlsPort=8884" }, false, 9883)] // the new keys win
    [InlineData(new[] { "--Mqtt:Port=1884" }, false, 8883)]
    public void Options_TlsKeys_NewOnesWinOverTheOlderMqttGuardOnes(string[] args, bool tlsEnabled, int tlsPort)
    {
        string config = TestGateway.WriteConfig(Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N")));
        try
        {
            using var host = GatewayHost.CreateBuilder(["--config", config, .. args]).Build();

            var mqtt = host.Services.GetRequiredService<IOptions<GatewayOptions>>().Value.Mqtt;

            Assert.Equal(tlsEnabled, mqtt.TlsEnabled);
            Assert.Equal(tlsPort, mqtt.TlsPort);
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(config)!, recursive: true);
        }
    }

    [Fact]
    public void Options_MqttCertificate_DefaultsToTheSmtpOneButItsOwnWins()
    {
        string config = TestGateway.WriteConfig(Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N")));
        try
        {
            using var shared = GatewayHost.CreateBuilder(["--config", config, "--Smtp:CertificatePath=/etc/edgemail/smtp.pfx", "--Smtp:CertificatePassword=p1"]).Build();
            using var own = GatewayHost.CreateBuilder(["--config", config, "--Smtp:CertificatePath=/etc/edgemail/smtp.pfx", "--Mqtt:CertificatePath=/etc/edgemail/mqtt.pfx", "--Mqtt:CertificatePassword=p2"]).Build();

            var a = shared.Services.GetRequiredService<IOptions<GatewayOptions>>().Value.Mqtt;
            var b = own.Services.GetRequiredService<IOptions<GatewayOptions>>().Value.Mqtt;

            Assert.Equal(("/etc/edgemail/smtp.pfx", "p1"), (a.CertificatePath, a.CertificatePassword));
            Assert.Equal(("/etc/edgemail/mqtt.pfx", "p2"), (b.CertificatePath, b.CertificatePassword));
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(config)!, recursive: true);
        }
    }

    [Fact]
    public void AddMqttIngest_WithoutSmtpIngest_RegistersTheGuardWithItsOptionsAndTheTlsSettings()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["MqttGuard:AuthFailuresPerSource"] = "2",
            ["MqttGuard:TlsEnabled"] = "true",
            ["Smtp:CertificatePath"] = "/etc/edgemail/gateway.pfx",
        }).Build();
        var services = new ServiceCollection();
        services.AddSingleton(TimeProvider.System);
        services.AddOptions<GatewayOptions>().Bind(configuration);
        services.AddMqttIngest(configuration); // and no AddSmtpIngest
        using var provider = services.BuildServiceProvider();

        var guard = provider.GetRequiredService<MqttGuard>();
        var mqtt = provider.GetRequiredService<IOptions<GatewayOptions>>().Value.Mqtt;
        guard.AuthFailed(new IPEndPoint(IPAddress.Parse("192.0.2.9"), 1), "dev-1");
        guard.AuthFailed(new IPEndPoint(IPAddress.Parse("192.0.2.9"), 2), "dev-2");

        Assert.NotNull(guard.Refuse(new IPEndPoint(IPAddress.Parse("192.0.2.9"), 3), "dev-3")); // the MqttGuard section was bound
        Assert.Null(guard.Refuse(new IPEndPoint(IPAddress.Parse("192.0.2.10"), 3), "dev-3"));
        Assert.True(mqtt.TlsEnabled);
        Assert.Equal("/etc/edgemail/gateway.pfx", mqtt.CertificatePath);
        Assert.Contains(services, d => d.ServiceType == typeof(Microsoft.Extensions.Hosting.IHostedService));
    }
}
