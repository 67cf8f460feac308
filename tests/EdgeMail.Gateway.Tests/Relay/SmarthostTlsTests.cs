using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>The smarthost relay against a real SMTP server with STARTTLS, implicit TLS and AUTH PLAIN/LOGIN.</summary>
public sealed class SmarthostTlsTests
{
    private const string RelayUser = "gw-relay";
    private const string RelayPassword = "relay-pw-7f3a";

    /// <summary>A self-signed certificate for 127.0.0.1 and localhost, shared by the relay tests' servers.</summary>
    internal static readonly Lazy<X509Certificate2> Certificate = new(CreateCertificate);

    /// <summary>The smarthost: STARTTLS (or implicit TLS) with the relay's login.</summary>
    private static Task<SmtpTestServer> StartSmarthostAsync(bool implicitTls = false) => SmtpTestServer.StartAsync(new()
    {
        Certificate = Certificate.Value,
        ImplicitTls = implicitTls,
        Users = new Dictionary<string, string> { [RelayUser] = RelayPassword },
    });

    /// <summary>Whether a message came under TLS, and who had authenticated.</summary>
    private static (bool Secure, string? User) Transport(ReceivedMail mail) => (mail.Secure, mail.User);

    /// <summary>The AUTH mechanisms the client used, in order.</summary>
    private static IEnumerable<string> AuthMethods(SmtpTestServer sink) => sink.Commands.Where(c => c.Verb == "AUTH").Select(c => c.Argument);

    private static X509Certificate2 CreateCertificate()
    {
        using var rsa = RSA.Create(2048);
        var request = new CertificateRequest("CN=sink.test", rsa, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName("localhost");
        san.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        var now = DateTimeOffset.UtcNow;
        using var ephemeral = request.CreateSelfSigned(now.AddMinutes(-5), now.AddDays(1));
        return X509CertificateLoader.LoadPkcs12(ephemeral.Export(X509ContentType.Pfx, "pw"), "pw");
    }

    private static Task<TestGateway> StartGatewayAsync(int port, string security, string password = RelayPassword, string mechanism = "", bool acceptAny = true,
        string host = "127.0.0.1") =>
        TestGateway.StartAsync(c =>
        {
            c["Relay"] = new
            {
                Mode = "Smarthost", Host = host, Port = port, Security = security, User = RelayUser, Password = password,
                AuthMechanism = mechanism, AcceptAnyCertificate = acceptAny, Backoff = new[] { "00:10:00" }, Concurrency = 1, Timeout = "00:00:05",
            };
            c["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "alice" } } };
        });

    /// <summary>Publishes an alert from a device subscribed to its receipts; returns the first receipt in <paramref name="state"/>.</summary>
    private static async Task<string> PublishAndAwaitReceiptAsync(TestGateway gw, string alertId, string state)
    {
        using var device = await gw.ConnectAsync("dev-1");
        var receipt = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        device.ApplicationMessageReceivedAsync += e =>
        {
            string json = e.ApplicationMessage.ConvertPayloadToString();
            if (json.Contains($"\"state\":\"{state}\"", StringComparison.Ordinal))
            {
                receipt.TrySetResult(json);
            }

            return Task.CompletedTask;
        };
        await device.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);
        var ack = await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
            .WithPayload(Alerts.Json(alertId)).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess);
        return await Await.Within(receipt.Task, $"the '{state}' receipt for {alertId}");
    }

    [Fact]
    public async Task Relay_StartTlsWithAuthPlain_SendsOverTlsAsTheConfiguredUser()
    {
        await using var sink = await StartSmarthostAsync();
        await using var gw = await StartGatewayAsync(sink.Port, "StartTls", mechanism: "PLAIN");

        await PublishAndAwaitReceiptAsync(gw, "tls-1", "relayed");
        var (message, to) = await sink.NextAsync();

        Assert.Equal("dev-1.tls-1.alert@gw.test", message.MessageId);
        Assert.Equal(["alice@example.com"], to);
        Assert.Equal((true, RelayUser), Transport(Assert.Single(sink.Messages)));
        Assert.Equal(["PLAIN"], AuthMethods(sink));
    }

    [Fact]
    public async Task Relay_StartTlsWithDefaultMechanism_PicksPlainAndAuthenticates()
    {
        await using var sink = await StartSmarthostAsync();
        await using var gw = await StartGatewayAsync(sink.Port, "StartTls");

        await PublishAndAwaitReceiptAsync(gw, "tls-default-1", "relayed");
        await sink.NextAsync();

        Assert.Equal((true, RelayUser), Transport(Assert.Single(sink.Messages)));
        Assert.Single(AuthMethods(sink));
    }

    [Fact]
    public async Task Relay_ImplicitTlsWithAuthLogin_SendsOverTlsWithLogin()
    {
        await using var sink = await StartSmarthostAsync(implicitTls: true);
        await using var gw = await StartGatewayAsync(sink.Port, "Tls", mechanism: "LOGIN");

        await PublishAndAwaitReceiptAsync(gw, "implicit-1", "relayed");
        var (message, _) = await sink.NextAsync();

        Assert.Equal("dev-1.implicit-1.alert@gw.test", message.MessageId);
        Assert.Equal((true, RelayUser), Transport(Assert.Single(sink.Messages)));
        Assert.Equal(["LOGIN"], AuthMethods(sink));
    }

    [Fact]
    public async Task Relay_WrongPassword_DefersWithTheAuthenticationFailureAndSendsNothing()
    {
        await using var sink = await StartSmarthostAsync();
        await using var gw = await StartGatewayAsync(sink.Port, "StartTls", password: "wrong", mechanism: "PLAIN");

        string receipt = await PublishAndAwaitReceiptAsync(gw, "badauth-1", "deferred");

        Assert.Contains("535", receipt, StringComparison.Ordinal);
        Assert.Contains(new SmtpAuthAttempt(RelayUser, "PLAIN", Accepted: false), sink.AuthAttempts);
        Assert.Empty(sink.Messages);
    }

    [Fact]
    public async Task Relay_WrongPassword_IsTriedOnceForAllTheMailWaiting_NotOncePerMail()
    {
        await using var sink = await StartSmarthostAsync();
        await using var gw = await StartGatewayAsync(sink.Port, "StartTls", password: "wrong", mechanism: "PLAIN");
        using var device = await gw.ConnectAsync("dev-1");
        string[] ids = ["burst-1", "burst-2", "burst-3"];
        foreach (string id in ids)
        {
            var ack = await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
                .WithPayload(Alerts.Json(id)).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
            Assert.True(ack.IsSuccess);
        }

        await gw.UntilAsync(async () =>
        {
            foreach (string id in ids)
            {
                if ((await gw.Spool.GetMessageAsync($"dev-1.{id}.alert@gw.test", default))?.Attempts is not > 0)
                {
                    return false;
                }
            }

            return true;
        }, "every mail's first attempt recorded");

        // A relay that counts failed logins (fail2ban, a provider's lockout) sees one per Relay:Backoff step, not a burst
        // of one per mail queued; each mail is deferred with the refusal all the same.
        Assert.Equal([new SmtpAuthAttempt(RelayUser, "PLAIN", Accepted: false)], sink.AuthAttempts);
        foreach (string id in ids)
        {
            var state = (await gw.Spool.GetMessageAsync($"dev-1.{id}.alert@gw.test", default))!;
            Assert.Equal(MessageStatus.Queued, state.Status);
            Assert.Contains("535", state.LastReply, StringComparison.Ordinal);
        }

        Assert.Empty(sink.Messages);
    }

    // RFC 4954: 454 is a temporary failure of the server's sign-in service, not a refused password; the relay is not
    // held for a Backoff step (10 min here) as it is after a 535.
    [Fact]
    public async Task Relay_Auth454_DefersWithTheServersReply_AndTheNextMailSignsInAgainAtOnce()
    {
        await using var sink = await StartSmarthostAsync();
        int auths = 0;
        sink.OnCommand = c => c.Verb == "AUTH" && Interlocked.Increment(ref auths) == 1 ? new SmtpReply(454, "4.7.0 Temporary authentication failure") : null;
        await using var gw = await StartGatewayAsync(sink.Port, "StartTls", mechanism: "PLAIN");

        string receipt = await PublishAndAwaitReceiptAsync(gw, "tempauth-1", "deferred");
        Assert.Contains($"temporary authentication failure at 127.0.0.1:{sink.Port}: 454 4.7.0 Temporary authentication failure", receipt, StringComparison.Ordinal);
        Assert.DoesNotContain("535", receipt, StringComparison.Ordinal);
        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("tempauth-2"), default);
        var (message, _) = await sink.NextAsync();

        Assert.Equal("tempauth-2@gw.test", message.MessageId);
        var first = (await gw.Spool.GetMessageAsync("dev-1.tempauth-1.alert@gw.test", default))!;
        Assert.Equal((MessageStatus.Queued, 1), (first.Status, first.Attempts));
        Assert.Single(sink.Received);
        Assert.Equal(["PLAIN", "PLAIN"], AuthMethods(sink));
        Assert.Equal([new SmtpAuthAttempt(RelayUser, "PLAIN", Accepted: true)], sink.AuthAttempts);
    }

    // MailKit tries the server's mechanisms in turn (PLAIN, then LOGIN) and throws the last one's reply only: a 454 to
    // PLAIN (the server cannot check passwords just now) followed by a 535 to LOGIN is still a temporary failure, not a
    // refused password that holds the relay for a Backoff step and tells the operator to fix it.
    [Fact]
    public async Task Relay_Auth454ToTheFirstMechanismThen535ToTheNext_DefersAsTemporary_AndTheNextMailSignsInAgainAtOnce()
    {
        await using var sink = await StartSmarthostAsync();
        int auths = 0;
        sink.OnCommand = c => c.Verb != "AUTH" ? null : Interlocked.Increment(ref auths) switch
        {
            1 => new SmtpReply(454, "4.7.0 Temporary authentication failure"),
            2 => new SmtpReply(535, "5.7.8 Authentication credentials invalid"),
            _ => null,
        };
        await using var gw = await StartGatewayAsync(sink.Port, "StartTls");

        string receipt = await PublishAndAwaitReceiptAsync(gw, "tempauth-3", "deferred");
        Assert.Contains($"temporary authentication failure at 127.0.0.1:{sink.Port}: 454 4.7.0 Temporary authentication failure", receipt, StringComparison.Ordinal);
        Assert.DoesNotContain("535", receipt, StringComparison.Ordinal);
        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("tempauth-4"), default);
        var (message, _) = await sink.NextAsync();

        Assert.Equal("tempauth-4@gw.test", message.MessageId);
        Assert.Equal(["PLAIN", "LOGIN", "PLAIN"], AuthMethods(sink));
        Assert.Equal([new SmtpAuthAttempt(RelayUser, "PLAIN", Accepted: true)], sink.AuthAttempts);
    }

    [Fact]
    public async Task Relay_StartTlsRequiredButNotOffered_DefersInsteadOfSendingInClear()
    {
        await using var sink = await SmtpTestServer.StartAsync(); // plain server: no STARTTLS in EHLO
        await using var gw = await StartGatewayAsync(sink.Port, "StartTls");

        string receipt = await PublishAndAwaitReceiptAsync(gw, "cleartext-1", "deferred");

        Assert.Contains("STARTTLS", receipt, StringComparison.OrdinalIgnoreCase);
        Assert.Empty(sink.Messages);
    }

    [Fact]
    public async Task Relay_StartTlsWhenAvailable_RemoteRelayWithoutStartTls_DefersWithoutSendingThePassword()
    {
        // The machine's own network address: the same server, but not loopback to the gateway.
        var remote = Loopback.OwnNetworkAddress();
        Assert.True(remote is not null, "this test needs a non-loopback IPv4 address on the machine for a server that looks remote");
        await using var sink = await SmtpTestServer.StartAsync(new() { Address = remote, Users = new Dictionary<string, string> { [RelayUser] = RelayPassword } });
        await using var gw = await StartGatewayAsync(sink.Port, "StartTlsWhenAvailable", host: remote.ToString());

        string receipt = await PublishAndAwaitReceiptAsync(gw, "stripped-1", "deferred");

        Assert.Contains($"{remote}:{sink.Port} did not offer TLS (no STARTTLS), so the password was not sent", receipt, StringComparison.Ordinal);
        Assert.DoesNotContain(RelayPassword, receipt, StringComparison.Ordinal);
        Assert.Empty(AuthMethods(sink));
        Assert.Empty(sink.AuthAttempts);
        Assert.Empty(sink.Messages);
    }

    [Fact]
    public async Task Relay_LoopbackRelayWithoutTls_StillSignsInWithThePassword()
    {
        await using var sink = await SmtpTestServer.StartAsync(new() { Users = new Dictionary<string, string> { [RelayUser] = RelayPassword } });
        await using var gw = await StartGatewayAsync(sink.Port, "None");

        await PublishAndAwaitReceiptAsync(gw, "local-postfix-1", "relayed");
        await sink.NextAsync();

        Assert.Equal((false, RelayUser), Transport(Assert.Single(sink.Messages)));
    }

    // A relay on this machine under a name of its own (in /etc/hosts) is as local as 127.0.0.1: the address the session
    // is connected to decides, not how Relay:Host is spelt. None is let through at start (the name resolves to loopback),
    // StartTlsWhenAvailable at the connection.
    [Theory]
    [InlineData("None")]
    [InlineData("StartTlsWhenAvailable")]
    public async Task Relay_HostNameThatResolvesToLoopback_WithoutTls_StillSignsInWithThePassword(string security)
    {
        var local = Loopback.OwnLoopbackName();
        Assert.True(local is not null, "this test needs a host name other than localhost that resolves to a loopback address first (the machine's own name in /etc/hosts)");
        await using var sink = await SmtpTestServer.StartAsync(new() { Address = local.Value.Address, Users = new Dictionary<string, string> { [RelayUser] = RelayPassword } });
        await using var gw = await StartGatewayAsync(sink.Port, security, host: local.Value.Name);

        await PublishAndAwaitReceiptAsync(gw, "named-local-1", "relayed");
        await sink.NextAsync();

        Assert.Equal((false, RelayUser), Transport(Assert.Single(sink.Messages)));
    }

    [Fact]
    public async Task Relay_UntrustedCertificate_DefersUnlessAcceptAnyCertificateIsSet()
    {
        await using var sink = await StartSmarthostAsync();
        await using var gw = await StartGatewayAsync(sink.Port, "StartTls", acceptAny: false);

        string receipt = await PublishAndAwaitReceiptAsync(gw, "untrusted-1", "deferred");

        Assert.Contains("certificate", receipt, StringComparison.OrdinalIgnoreCase);
        Assert.Empty(sink.AuthAttempts); // the password never went to a server we could not verify
        Assert.Empty(sink.Messages);
    }
}
