using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.Smtp;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>The gateway relaying through an XOAUTH2-only smarthost with tokens from a real (loopback) token endpoint.</summary>
public sealed class OAuth2RelayTests(ITestOutputHelper output)
{
    private static Task<TestGateway> StartAsync(Dictionary<string, object> relay, Action<IServiceCollection>? services = null) =>
        TestGateway.StartAsync(c => c["Relay"] = relay, services);

    private static async Task<MessageState> StateAsync(TestGateway gw, string id) => (await gw.Spool.GetMessageAsync(id + "@gw.test", default))!;

    [Fact]
    public async Task ClientCredentialsWithSecret_SendsAsTheMailboxWithXOAuth2()
    {
        await using var tokens = await OAuth2Kit.ExchangeAsync();
        await using var smtp = new XOAuth2SmtpServer(tokens.Check);
        await using var gw = await StartAsync(OAuth2Kit.Relay(smtp, OAuth2Kit.OAuth2(tokens)));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("cc-secret-1"), default);
        var (user, to, message) = await smtp.NextAsync();

        Assert.Equal(OAuth2Kit.Mailbox, user);
        Assert.Equal(["alice@example.com"], to);
        Assert.Equal("cc-secret-1@gw.test", message.MessageId);
        Assert.Equal(1, tokens.Issued);
        await gw.UntilAsync(async () => (await StateAsync(gw, "cc-secret-1")).Status == MessageStatus.Sent, "the mail recorded as sent");
        Assert.Contains("queued as Q1", (await StateAsync(gw, "cc-secret-1")).LastReply);
    }

    [Fact]
    public async Task ClientCredentialsWithCertificate_SignsAnAssertionTheEndpointVerifies()
    {
        using var rsa = System.Security.Cryptography.RSA.Create(2048);
        var request = new System.Security.Cryptography.X509Certificates.CertificateRequest("CN=edgemail-app", rsa, System.Security.Cryptography.HashAlgorithmName.SHA256, System.Security.Cryptography.RSASignaturePadding.Pkcs1);
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        string dir = Directory.CreateTempSubdirectory("edgemail-cert").FullName;
        string pfx = Path.Combine(dir, "app.pfx");
        await File.WriteAllBytesAsync(pfx, certificate.Export(System.Security.Cryptography.X509Certificates.X509ContentType.Pfx, "pfx-pw"));
        await using var tokens = await TokenServer.StartAsync();
        tokens.AddApp(OAuth2Kit.AppId, null, System.Security.Cryptography.X509Certificates.X509CertificateLoader.LoadCertificate(certificate.RawData), OAuth2Kit.Mailbox);
        await using var smtp = new XOAuth2SmtpServer(tokens.Check);
        var oauth2 = OAuth2Kit.OAuth2(tokens, secret: null);
        oauth2["CertificatePath"] = pfx;
        oauth2["CertificatePassword"] = "pfx-pw";
        await using var gw = await StartAsync(OAuth2Kit.Relay(smtp, oauth2));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("cc-cert-1"), default);
        var (user, _, message) = await smtp.NextAsync();

        Assert.Equal(OAuth2Kit.Mailbox, user);
        Assert.Equal("cc-cert-1@gw.test", message.MessageId);
        Assert.Equal(1, tokens.Issued);
    }

    [Fact]
    public async Task TokenExpiresInTheMiddleOfAThousandMails_EveryMailIsDeliveredExactlyOnce()
    {
        await using var tokens = await OAuth2Kit.ExchangeAsync();
        await using var smtp = new XOAuth2SmtpServer(tokens.Check) { MessagesPerSession = 100 };
        smtp.Accepted = n =>
        {
            if (n == 300)
            {
                tokens.ExpireAllTokens(); // sessions that end from now on must sign in again, with a token the server no longer takes
            }
        };
        await using var gw = await StartAsync(OAuth2Kit.Relay(smtp, OAuth2Kit.OAuth2(tokens), concurrency: 4));
        var watch = System.Diagnostics.Stopwatch.StartNew();

        const int count = 1000;
        for (int i = 0; i < count; i++)
        {
            await gw.Spool.QueueMailAsync(OAuth2Kit.Mail($"bulk-{i:D4}"), default);
        }

        var seen = new Dictionary<string, int>();
        for (int i = 0; i < count; i++)
        {
            var (_, _, message) = await smtp.NextAsync();
            seen[message.MessageId!] = seen.GetValueOrDefault(message.MessageId!) + 1;
        }

        output.WriteLine($"{count} mails through XOAUTH2 in {watch.ElapsedMilliseconds} ms; tokens issued: {tokens.Issued}; AUTH attempts: {smtp.AuthAttempts.Count}");
        Assert.Equal(count, seen.Count);
        Assert.All(seen.Values, n => Assert.Equal(1, n));
        Assert.Equal(2, tokens.Issued); // the first token, and one renewal after the server refused it
        Assert.Contains(smtp.AuthAttempts, a => !a.Ok);
        await gw.UntilAsync(async () => (await gw.Spool.CountsAsync(default)).Messages.GetValueOrDefault(MessageStatus.Queued) == 0, "every mail recorded");
        Assert.False(smtp.Received.Reader.TryRead(out _)); // nothing sent twice
        Assert.Equal(0, gw.Host.Services.GetRequiredService<OperatorNotices>().Sent);
    }

    [Fact]
    public async Task RevokedGrant_MailIsDeferredTheOperatorToldOnceAndItIsDeliveredAfterTheFix()
    {
        await using var tokens = await OAuth2Kit.ExchangeAsync();
        tokens.Revoke(OAuth2Kit.AppId);
        await using var smtp = new XOAuth2SmtpServer(tokens.Check);
        await using var gw = await StartAsync(OAuth2Kit.Relay(smtp, OAuth2Kit.OAuth2(tokens), backoff: ["00:00:00.100", "00:00:00.300"]));
        gw.Logs.Expect(e => e.Message.Contains("Relay sign-in refused", StringComparison.Ordinal));

        for (int i = 0; i < 3; i++)
        {
            await gw.Spool.QueueMailAsync(OAuth2Kit.Mail($"revoked-{i}"), default);
        }

        await gw.UntilAsync(async () => (await StateAsync(gw, "revoked-2")).Attempts >= 2, "attempts against the revoked grant");
        var state = await StateAsync(gw, "revoked-0");
        Assert.Equal(MessageStatus.Queued, state.Status);
        Assert.Contains("AADSTS7000215", state.LastReply);
        Assert.Contains("Fix:", state.LastReply);
        Assert.DoesNotContain(OAuth2Kit.AppSecret, state.LastReply);
        Assert.Equal(0, smtp.Messages);
        var notices = gw.Host.Services.GetRequiredService<OperatorNotices>();
        await notices.FlushedAsync();
        Assert.Equal(1, notices.Sent);

        tokens.Restore(OAuth2Kit.AppId); // the operator put the right secret back
        var delivered = new List<string>();
        for (int i = 0; i < 4; i++)
        {
            var (_, to, message) = await smtp.NextAsync();
            delivered.Add(message.MessageId!.StartsWith("edgemail.notice", StringComparison.Ordinal) ? "notice to " + to[0] + ": " + message.TextBody : message.MessageId);
        }

        Assert.Equal(["revoked-0@gw.test", "revoked-1@gw.test", "revoked-2@gw.test"], delivered.Where(d => !d.StartsWith("notice", StringComparison.Ordinal)).Order());
        string notice = Assert.Single(delivered, d => d.StartsWith("notice", StringComparison.Ordinal));
        Assert.Contains("ops@example.com", notice);
        Assert.Contains("AADSTS7000215", notice);
        Assert.Contains("secret's Value", notice);
        Assert.Equal(1, notices.Sent);
    }

    [Fact]
    public async Task TokenEndpointDown_MailIsDeferredOnTheBackoffScheduleAndGoesWhenItIsBack()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.Parse("2026-11-28T10:00:00Z", System.Globalization.CultureInfo.InvariantCulture));
        await using var tokens = await OAuth2Kit.ExchangeAsync();
        tokens.Down = true;
        await using var smtp = new XOAuth2SmtpServer(tokens.Check);
        await using var gw = await StartAsync(OAuth2Kit.Relay(smtp, OAuth2Kit.OAuth2(tokens), backoff: ["00:01:00", "00:05:00"]),
            s => s.AddSingleton<TimeProvider>(clock));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("down-1"), default);
        await gw.UntilAsync(async () => (await StateAsync(gw, "down-1")).Attempts == 1, "the first attempt");
        var first = await StateAsync(gw, "down-1");
        Assert.Equal(MessageStatus.Queued, first.Status);
        Assert.Contains("cannot be reached", first.LastReply);
        Assert.Equal(clock.GetUtcNow() + TimeSpan.FromMinutes(1), first.NextAttemptAt);
        int requests = tokens.Requests;

        var worker = gw.Host.Services.GetRequiredService<DeliveryWorker>();
        clock.Advance(TimeSpan.FromMinutes(1));
        worker.Wake(); // in case it computed its wait before the clock moved
        await gw.UntilAsync(async () => (await StateAsync(gw, "down-1")).Attempts == 2, "the second attempt, a minute later");
        Assert.Equal(clock.GetUtcNow() + TimeSpan.FromMinutes(5), (await StateAsync(gw, "down-1")).NextAttemptAt);
        Assert.Equal(requests + 1, tokens.Requests); // one token request per attempt, not a storm

        tokens.Down = false;
        clock.Advance(TimeSpan.FromMinutes(5));
        worker.Wake();
        var (user, _, message) = await smtp.NextAsync();
        Assert.Equal("down-1@gw.test", message.MessageId);
        Assert.Equal(OAuth2Kit.Mailbox, user);
        Assert.Equal(0, gw.Host.Services.GetRequiredService<OperatorNotices>().Sent); // an outage is not the operator's to fix
    }

    // RFC 4954: a 454 to AUTH is the provider's sign-in service failing for now; the token was not refused, so it is not
    // renewed, the grant is not marked refused and the operator is not told: the mail waits as for any 4xx.
    [Fact]
    public async Task Smarthost454ToXOAuth2_TheMailWaitsForTheBackoffStep_TheTokenIsNeitherRenewedNorTheGrantRefused()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.Parse("2026-11-28T10:00:00Z", System.Globalization.CultureInfo.InvariantCulture));
        await using var tokens = await OAuth2Kit.ExchangeAsync();
        await using var smtp = new XOAuth2SmtpServer(tokens.Check);
        bool down = true;
        smtp.AuthReply = () => Volatile.Read(ref down) ? "454 4.7.0 Temporary authentication failure" : null;
        await using var gw = await StartAsync(OAuth2Kit.Relay(smtp, OAuth2Kit.OAuth2(tokens), backoff: ["00:01:00"]), s => s.AddSingleton<TimeProvider>(clock));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("tempauth-1"), default);
        await gw.UntilAsync(async () => (await StateAsync(gw, "tempauth-1")).Attempts == 1, "the first attempt");
        var first = await StateAsync(gw, "tempauth-1");
        Assert.Equal((MessageStatus.Queued, clock.GetUtcNow() + TimeSpan.FromMinutes(1)), (first.Status, first.NextAttemptAt));
        Assert.Contains($"temporary authentication failure at 127.0.0.1:{smtp.Port}: 454 4.7.0 Temporary authentication failure", first.LastReply);
        Assert.Equal(1, tokens.Issued);

        Volatile.Write(ref down, false);
        clock.Advance(TimeSpan.FromMinutes(1));
        gw.Host.Services.GetRequiredService<DeliveryWorker>().Wake();
        var (_, _, message) = await smtp.NextAsync();
        Assert.Equal("tempauth-1@gw.test", message.MessageId);
        Assert.Equal(1, tokens.Issued);
        var notices = gw.Host.Services.GetRequiredService<OperatorNotices>();
        await notices.FlushedAsync();
        Assert.Equal(0, notices.Sent);
    }

    [Fact]
    public async Task MailboxPermissionMissing_TheFreshTokenIsRefusedAndTheMailWaitsWithTheFix()
    {
        await using var tokens = await OAuth2Kit.ExchangeAsync(mailboxPermission: false); // no Add-MailboxPermission yet
        await using var smtp = new XOAuth2SmtpServer(tokens.Check);
        await using var gw = await StartAsync(OAuth2Kit.Relay(smtp, OAuth2Kit.OAuth2(tokens)));
        gw.Logs.Expect(e => e.Message.Contains("Relay sign-in refused", StringComparison.Ordinal));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("perm-1"), default);
        await gw.UntilAsync(async () => (await StateAsync(gw, "perm-1")).Attempts >= 1, "the first attempt");
        var state = await StateAsync(gw, "perm-1");

        Assert.Equal(MessageStatus.Queued, state.Status);
        Assert.Contains("535 5.7.3", state.LastReply);
        Assert.Contains("Add-MailboxPermission", state.LastReply);
        Assert.Contains("SMTP.SendAsApp", state.LastReply);
        Assert.Equal(2, tokens.Issued); // renewed once, then it is the mailbox, not the token

        tokens.SetMailboxPermission(OAuth2Kit.AppId, OAuth2Kit.Mailbox, granted: true);
        var delivered = new HashSet<string>();
        while (!delivered.Contains("perm-1@gw.test"))
        {
            delivered.Add((await smtp.NextAsync()).Message.MessageId!);
        }
    }

    [Fact]
    public async Task GoogleServiceAccount_JwtAssertionIsExchangedAndGmailStyleRefusalIsExplained()
    {
        using var key = System.Security.Cryptography.RSA.Create(2048);
        string dir = Directory.CreateTempSubdirectory("edgemail-sa").FullName;
        string keyFile = Path.Combine(dir, "sa.json");
        await File.WriteAllTextAsync(keyFile, System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, string>
        {
            ["type"] = "service_account", ["client_email"] = "relay@edgemail-test.iam.gserviceaccount.com", ["private_key_id"] = "k1",
            ["private_key"] = key.ExportPkcs8PrivateKeyPem(), ["token_uri"] = "https://oauth2.googleapis.com/token",
        }));
        await using var tokens = await TokenServer.StartAsync();
        tokens.AddServiceAccount("relay@edgemail-test.iam.gserviceaccount.com", key, OAuth2Kit.Mailbox);
        await using var smtp = new XOAuth2SmtpServer(tokens.Check, googleStyle: true) { MessagesPerSession = 1 };
        var oauth2 = OAuth2Kit.OAuth2(tokens, clientId: string.Empty, secret: null);
        oauth2["ServiceAccountKeyFile"] = keyFile;
        await using var gw = await StartAsync(OAuth2Kit.Relay(smtp, oauth2, auth: "GoogleServiceAccount"));
        gw.Logs.Expect(e => e.Message.Contains("Relay sign-in refused", StringComparison.Ordinal));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("sa-1"), default);
        var (user, _, message) = await smtp.NextAsync();
        Assert.Equal(OAuth2Kit.Mailbox, user);
        Assert.Equal("sa-1@gw.test", message.MessageId);

        tokens.RemoveDelegation("relay@edgemail-test.iam.gserviceaccount.com");
        tokens.ExpireAllTokens();
        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("sa-2"), default);
        await gw.UntilAsync(async () => (await StateAsync(gw, "sa-2")).Attempts >= 1, "an attempt without delegation");
        string reply = (await StateAsync(gw, "sa-2")).LastReply!;
        Assert.Contains("unauthorized_client", reply);
        Assert.Contains("Domain-wide delegation", reply);
        Assert.Contains("https://mail.google.com/", reply);
    }

    [PeerFact("swaks:swaks")]
    public async Task LegacyDevice_PlainSmtpWithAuthPlainFromSwaks_IsRelayedWithXOAuth2()
    {
        await using var tokens = await OAuth2Kit.ExchangeAsync();
        await using var smtp = new XOAuth2SmtpServer(tokens.Check);
        await using var gw = await SmtpGateway.StartAsync(tweak: c => c["Relay"] = OAuth2Kit.Relay(smtp, OAuth2Kit.OAuth2(tokens)));

        var (code, swaks) = await PeerProcess.RunAsync("swaks", "swaks",
        [
            "--server", "127.0.0.1", "--port", gw.StartTls().Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--helo", "ups.lan",
            "--tls", "--auth", "PLAIN", "--auth-user", "dev-1", "--auth-password", TestGateway.Secret,
            "--from", "ups1@lan.test", "--to", "alice@example.com", "--header", "Subject: UPS on battery", "--body", "Input power lost at 09:58.",
        ]);
        Assert.True(code == 0, swaks);
        Assert.Contains("250 2.0.0 queued as", swaks);

        var (user, to, message) = await smtp.NextAsync();
        Assert.Equal(OAuth2Kit.Mailbox, user); // the provider saw XOAUTH2 as the mailbox, not the device's password
        Assert.Equal(["alice@example.com"], to);
        Assert.Equal("UPS on battery", message.Subject);
        Assert.Contains("Input power lost", message.TextBody);
        Assert.Contains(smtp.AuthAttempts, a => a.Ok && a.User == OAuth2Kit.Mailbox);
    }
}
