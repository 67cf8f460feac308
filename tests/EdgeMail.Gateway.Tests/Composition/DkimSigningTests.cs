using System.Security.Cryptography;
using System.Text;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using MimeKit;
using MimeKit.Cryptography;
using MQTTnet;
using MQTTnet.Protocol;
using Org.BouncyCastle.Crypto;
using Org.BouncyCastle.Security;
using Xunit;

namespace EdgeMail.Gateway.Tests.Composition;

public sealed class DkimSigningTests : IDisposable
{
    private static readonly DateTimeOffset Now = new(2026, 11, 28, 10, 0, 5, TimeSpan.Zero);
    private readonly RSA _key = RSA.Create(2048);
    private readonly string _keyFile = Path.Combine(Path.GetTempPath(), "edgemail-dkim-" + Guid.NewGuid().ToString("N") + ".pem");

    public DkimSigningTests() => File.WriteAllText(_keyFile, _key.ExportRSAPrivateKeyPem());

    public void Dispose()
    {
        _key.Dispose();
        File.Delete(_keyFile);
    }

    private DkimOptions Options() => new() { KeyFile = _keyFile, Domain = "example.com", Selector = "edge2026" };

    /// <summary>Answers the public key for edge2026._domainkey.example.com, as DNS would.</summary>
    private sealed class Locator(AsymmetricKeyParameter key) : IDkimPublicKeyLocator
    {
        public AsymmetricKeyParameter LocatePublicKey(string methods, string domain, string selector, CancellationToken cancellationToken = default) =>
            domain == "example.com" && selector == "edge2026" ? key : throw new InvalidOperationException($"no key for {selector}._domainkey.{domain}");

        public Task<AsymmetricKeyParameter> LocatePublicKeyAsync(string methods, string domain, string selector, CancellationToken cancellationToken = default) =>
            Task.FromResult(LocatePublicKey(methods, domain, selector, cancellationToken));
    }

    private Task<bool> VerifyAsync(MimeMessage message)
    {
        int index = message.Headers.IndexOf(HeaderId.DkimSignature);
        Assert.True(index >= 0, "no DKIM-Signature header");
        var verifier = new DkimVerifier(new Locator(PublicKeyFactory.CreateKey(_key.ExportSubjectPublicKeyInfo())));
        return verifier.VerifyAsync(message, message.Headers[index]);
    }

    private static AlertMail Mail() => new(
        new DeviceInfo("freezer-2", "Freezer 2", "Hall 3"),
        AlertParser.Parse(Encoding.UTF8.GetBytes(Alerts.Json("a-1", text: "Température critique «T7»"))).Alert!,
        Now, "192.0.2.7:50123", 42, [new MailboxAddress("Alice Ärger", "alice@example.com")], "default", null);

    private static MimeMessage RoundTrip(ComposedMail mail) => MimeMessage.Load(new MemoryStream(mail.Wire));

    [Fact]
    public async Task ComposeAlert_WithDkimKey_SignatureVerifiesOnTheWireBytes()
    {
        var composer = new MailComposer(new SenderOptions { Address = "alerts@example.com", Hostname = "gw1.example.com" }, TemplateSet.Load(string.Empty), DkimSigning.Create(Options()));

        var wire = RoundTrip(composer.ComposeAlert(Mail(), Now));

        Assert.True(await VerifyAsync(wire));
        string signature = wire.Headers[HeaderId.DkimSignature] ?? string.Empty;
        Assert.Contains("d=example.com", signature, StringComparison.Ordinal);
        Assert.Contains("s=edge2026", signature, StringComparison.Ordinal);
        Assert.Contains("c=relaxed/relaxed", signature, StringComparison.Ordinal);
    }

    // MimeKit's own signer (BouncyCastle's RSA) at a fixed time: the reference the platform-RSA signer must equal.
    private sealed class ReferenceSigner(string keyFile) : DkimSigner(keyFile, "example.com", "edge2026", DkimSignatureAlgorithm.RsaSha256)
    {
        protected override long GetTimestamp() => Now.ToUnixTimeSeconds();
    }

    [Fact]
    public void Sign_WithThePlatformsRsa_GivesMimeKitsSignatureByteForByte()
    {
        var composer = new MailComposer(new SenderOptions { Address = "alerts@example.com", Hostname = "gw1.example.com" }, TemplateSet.Load(string.Empty));
        var signers = new DkimSigner[]
        {
            new ReferenceSigner(_keyFile),
            new NativeRsaDkimSigner(_keyFile, "example.com", "edge2026", new Microsoft.Extensions.Time.Testing.FakeTimeProvider(Now)),
        };
        byte[] wire = composer.ComposeAlert(Mail(), Now).Wire; // one message: its boundaries are random
        var signatures = signers.Select(signer =>
        {
            using var message = MimeMessage.Load(new MemoryStream(wire));
            signer.HeaderCanonicalizationAlgorithm = DkimCanonicalizationAlgorithm.Relaxed;
            signer.BodyCanonicalizationAlgorithm = DkimCanonicalizationAlgorithm.Relaxed;
            signer.Sign(message, [HeaderId.From, HeaderId.To, HeaderId.Subject, HeaderId.Date, HeaderId.MessageId]);
            return message.Headers[HeaderId.DkimSignature];
        }).ToList();

        Assert.Contains("b=", signatures[0], StringComparison.Ordinal);
        Assert.Equal(signatures[0], signatures[1]);
    }

    [Fact]
    public async Task ComposeAlert_SignedThenSubjectChanged_SignatureFails()
    {
        var composer = new MailComposer(new SenderOptions { Address = "alerts@example.com", Hostname = "gw1.example.com" }, TemplateSet.Load(string.Empty), DkimSigning.Create(Options()));
        var wire = RoundTrip(composer.ComposeAlert(Mail(), Now));

        wire.Subject = "[INFO] nothing to see";

        Assert.False(await VerifyAsync(wire));
    }

    [Fact]
    public void ComposeAlert_WithoutDkim_HasNoSignature()
    {
        var composer = new MailComposer(new SenderOptions { Address = "alerts@example.com" }, TemplateSet.Load(string.Empty));

        Assert.Equal(-1, RoundTrip(composer.ComposeAlert(Mail(), Now)).Headers.IndexOf(HeaderId.DkimSignature));
    }

    [Fact]
    public void Check_DkimKeyFileMissingOrNotAKey_NamesTheKeyAndTheFix()
    {
        string notAKey = Path.Combine(Path.GetTempPath(), "edgemail-dkim-bad-" + Guid.NewGuid().ToString("N") + ".pem");
        File.WriteAllText(notAKey, "hello");
        try
        {
            var missing = new GatewayOptions { Dkim = new DkimOptions { KeyFile = "/nonexistent/dkim.pem", Domain = "example.com", Selector = "s" } };
            var bad = new GatewayOptions { Dkim = new DkimOptions { KeyFile = notAKey, Domain = string.Empty, Selector = "s" } };

            Assert.Contains(GatewayOptionsValidator.Check(missing), e => e.StartsWith("Dkim:KeyFile:", StringComparison.Ordinal) && e.Contains("does not exist", StringComparison.Ordinal));
            var errors = GatewayOptionsValidator.Check(bad);
            Assert.Contains(errors, e => e.StartsWith("Dkim:KeyFile:", StringComparison.Ordinal) && e.Contains("not a usable private key", StringComparison.Ordinal));
            Assert.Contains(errors, e => e.StartsWith("Dkim:Domain:", StringComparison.Ordinal));
        }
        finally
        {
            File.Delete(notAKey);
        }
    }

    [Fact]
    public async Task Gateway_WithDkimConfigured_MailboxMailVerifies()
    {
        await using var gw = await TestGateway.StartAsync(c => c["Dkim"] = new { KeyFile = _keyFile, Domain = "example.com", Selector = "edge2026" });
        using (var device = await gw.ConnectAsync("dev-1"))
        {
            var ack = await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
                .WithPayload(Alerts.Json("dkim-1")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
            Assert.True(ack.IsSuccess);
        }

        string file = Assert.Single(await gw.MailAsync(1));
        var message = await MimeMessage.LoadAsync(file);

        Assert.True(await VerifyAsync(message));
    }
}
