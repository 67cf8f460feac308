using System.Net;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using EdgeMail.Firmware.Tests.Uplink.Mqtt;
using EdgeMail.Firmware.Uplink;
using EdgeMail.Firmware.Uplink.Mqtt;
using EdgeMail.Simulation.Network;
using MQTTnet.Server;
using Xunit;

namespace EdgeMail.Firmware.Tests.Uplink;

public sealed class TlsTransportTests : IAsyncLifetime
{
    private readonly X509Certificate2 _certificate = SelfSigned();
    private MqttServer? _server;
    private int _port;

    public async Task InitializeAsync()
    {
        _port = Loopback.FreePort();
        var factory = new MqttServerFactory();
        _server = factory.CreateMqttServer(factory.CreateServerOptionsBuilder()
            .WithoutDefaultEndpoint()
            .WithEncryptedEndpoint().WithEncryptedEndpointBoundIPAddress(IPAddress.Loopback)
            .WithEncryptedEndpointBoundIPV6Address(IPAddress.None).WithEncryptedEndpointPort(_port)
            .WithEncryptionCertificate(_certificate).WithEncryptionSslProtocol(SslProtocols.Tls12 | SslProtocols.Tls13)
            .Build());
        await _server.StartAsync();
    }

    public async Task DisposeAsync()
    {
        await _server!.StopAsync();
        _server!.Dispose();
        _certificate.Dispose();
    }

    [Fact]
    public void MqttClient_OverTls_WithThePinnedCertificate_PublishesAndGetsPuback()
    {
        string pin = _certificate.Thumbprint;
        using var transport = new TlsTransport((_, cert, _, _) => cert is not null && cert.GetCertHashString() == pin);
        var handler = new RecordingHandler();
        var client = new MqttClient(transport, new StopwatchClock(), new MqttClientOptions { ClientId = "dev-1", UserName = "dev-1", Password = "s3cret" }, handler);

        client.Connect("127.0.0.1", _port);
        byte[] payload = "{\"v\":1}"u8.ToArray();
        Assert.True(client.Publish("edgemail/v1/dev-1/alert", payload, 0, payload.Length, tag: 42, retain: false, dup: false));
        for (int i = 0; i < 100 && handler.Acknowledged.Count == 0; i++)
        {
            client.Poll(100);
        }

        Assert.Equal([42L], handler.Acknowledged);
        client.Disconnect();
    }

    [Fact]
    public void Open_AgainstAnUntrustedCertificate_FailsNamingTheServer_AndSendsNothing()
    {
        using var transport = new TlsTransport(); // platform validation: a self-signed certificate is refused

        var ex = Assert.Throws<TransportException>(() => transport.Open("127.0.0.1", _port, 5000));

        Assert.Contains($"127.0.0.1:{_port}", ex.Message, StringComparison.Ordinal);
        Assert.Equal(-1, transport.Send([1], 0, 1, 100));
    }

    private static X509Certificate2 SelfSigned()
    {
        using var rsa = RSA.Create(2048);
        var request = new CertificateRequest("CN=localhost", rsa, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        san.AddDnsName("localhost");
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        var now = DateTimeOffset.UtcNow;
        using var ephemeral = request.CreateSelfSigned(now.AddMinutes(-5), now.AddDays(1));
        return X509CertificateLoader.LoadPkcs12(ephemeral.Export(X509ContentType.Pfx, "pw"), "pw");
    }
}
