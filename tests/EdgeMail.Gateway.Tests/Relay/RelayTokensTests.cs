using System.Runtime.Versioning;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay.OAuth2;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>The token cache against the loopback token endpoint, on a fake clock; the token store at rest; the error mapping.</summary>
[SupportedOSPlatform("linux")]
public sealed class RelayTokensTests
{
    private static GatewayOptions Options(TokenServer tokens, string dataDir)
    {
        var options = new GatewayOptions { DataDirectory = dataDir };
        options.Relay.Mode = "Smarthost";
        options.Relay.Auth = RelayAuthModes.OAuth2ClientCredentials;
        options.Relay.User = OAuth2Kit.Mailbox;
        options.Relay.AcceptAnyCertificate = true;
        options.Relay.OAuth2 = new RelayOAuth2Options
        {
            TenantId = TokenServer.Tenant, ClientId = OAuth2Kit.AppId, ClientSecret = OAuth2Kit.AppSecret, Authority = tokens.Authority,
            TokenEndpoint = tokens.GoogleTokenEndpoint, GrantRetryInterval = TimeSpan.FromMinutes(1),
        };
        return options;
    }

    [Fact]
    public async Task Token_IsCachedAndRenewedAheadOfExpiry_AndAFailedRenewalKeepsTheValidOne()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.Parse("2026-11-28T10:00:00Z", System.Globalization.CultureInfo.InvariantCulture));
        await using var server = await OAuth2Kit.ExchangeAsync();
        var options = Options(server, Path.GetTempPath());
        using var tokens = RelayTokens.Create(options, clock, NullLogger.Instance)!;

        string first = await tokens.GetAsync(default);
        clock.Advance(TimeSpan.FromMinutes(54)); // 6 minutes left: more than RefreshBefore (5)
        Assert.Equal(first, await tokens.GetAsync(default));
        Assert.Equal(1, server.Issued);

        clock.Advance(TimeSpan.FromMinutes(2)); // 4 minutes left: renewed ahead of expiry
        string second = await tokens.GetAsync(default);
        Assert.NotEqual(first, second);
        Assert.Equal(2, server.Issued);

        clock.Advance(TimeSpan.FromMinutes(56));
        server.Down = true;
        Assert.Equal(second, await tokens.GetAsync(default)); // renewal failed, but it still works for 4 minutes
        int asked = server.Requests;
        Assert.Equal(second, await tokens.GetAsync(default));
        Assert.Equal(asked, server.Requests); // and the endpoint is not asked again at once
        clock.Advance(TimeSpan.FromMinutes(5));
        var ex = await Assert.ThrowsAsync<TokenException>(() => tokens.GetAsync(default));
        Assert.False(ex.Refused);
        Assert.Contains("cannot be reached", ex.Message);
    }

    [Fact]
    public async Task Renew_AfterARefusal_AsksOnceForManyConcurrentSenders()
    {
        await using var server = await OAuth2Kit.ExchangeAsync();
        using var tokens = RelayTokens.Create(Options(server, Path.GetTempPath()), TimeProvider.System, NullLogger.Instance)!;
        string refused = await tokens.GetAsync(default);

        string[] renewed = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => tokens.RenewAsync(refused, default)));

        Assert.Single(renewed.Distinct());
        Assert.NotEqual(refused, renewed[0]);
        Assert.Equal(2, server.Issued);
    }

    [Fact]
    public async Task RefusedGrant_IsRememberedForTheRetryIntervalAndNotifiedOnce()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.Parse("2026-11-28T10:00:00Z", System.Globalization.CultureInfo.InvariantCulture));
        await using var server = await TokenServer.StartAsync();
        server.AddApp(OAuth2Kit.AppId, "another-secret", null, OAuth2Kit.Mailbox);
        var notices = new List<string>();
        using var tokens = RelayTokens.Create(Options(server, Path.GetTempPath()), clock, NullLogger.Instance, (topic, detail) => notices.Add(topic + ": " + detail))!;

        for (int i = 0; i < 5; i++)
        {
            var ex = await Assert.ThrowsAsync<TokenException>(() => tokens.GetAsync(default));
            Assert.True(ex.Refused);
        }

        int asked = server.Requests;
        clock.Advance(TimeSpan.FromMinutes(1));
        await Assert.ThrowsAsync<TokenException>(() => tokens.GetAsync(default));
        Assert.Equal(asked + 1, server.Requests);
        Assert.Equal(1, asked);
        string notice = Assert.Single(notices);
        Assert.Contains("AADSTS7000215", notice);
        Assert.DoesNotContain(OAuth2Kit.AppSecret, notice);
    }

    // A server that refuses a fresh token explains in its own words: the log line and the operator's notice carry them
    // as one clean line (continuation lines joined, an escape sequence defused), as a delivery result keeps a reply.
    [Fact]
    public async Task RefusedByTheServer_TheOperatorIsToldItsReplyAsOneCleanLine()
    {
        await using var server = await TokenServer.StartAsync();
        var notices = new List<string>();
        using var tokens = RelayTokens.Create(Options(server, Path.GetTempPath()), TimeProvider.System, NullLogger.Instance, (topic, detail) => notices.Add(detail))!;

        tokens.Refused("535-5.7.3 Authentication unsuccessful\n535 5.7.3 \u001b[2J\u202Eylno", "give the app the mailbox's SMTP.Send right");

        string notice = Assert.Single(notices);
        Assert.EndsWith("535-5.7.3 Authentication unsuccessful / 535 5.7.3 \uFFFD[2J\uFFFDylno. Fix: give the app the mailbox's SMTP.Send right", notice, StringComparison.Ordinal);
    }

    [Fact]
    public void TokenStore_IsEncryptedWithAPrivateKeyFile_AndAnotherKeyIsAClearError()
    {
        string dir = Directory.CreateTempSubdirectory("edgemail-store").FullName;
        var store = new TokenStore(Path.Combine(dir, "relay.token"), Path.Combine(dir, "relay.key"));
        byte[] secret = "refresh-token-0123456789-abcdefghij"u8.ToArray();

        store.Write(secret);

        Assert.Equal(secret, store.Read());
        byte[] onDisk = File.ReadAllBytes(store.Path);
        Assert.Equal(-1, onDisk.AsSpan().IndexOf("refresh-token"u8));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(store.Path));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(dir, "relay.key")));
        Assert.Equal(32, new FileInfo(Path.Combine(dir, "relay.key")).Length);

        File.WriteAllText(Path.Combine(dir, "other.key"), Convert.ToBase64String(new byte[32]));
        var other = new TokenStore(store.Path, Path.Combine(dir, "other.key"));
        var ex = Assert.Throws<TokenException>(other.Read);
        Assert.True(ex.Refused);
        Assert.Contains("relay login", ex.Message);
    }

    [Theory]
    [InlineData("535 5.7.3 Authentication unsuccessful", false, true, true, "Add-MailboxPermission")]
    [InlineData("535 5.7.3 Authentication unsuccessful", false, true, true, "New-ServicePrincipal")]
    [InlineData("535 5.7.3 Authentication unsuccessful", false, false, true, "relay login")]
    [InlineData("550 5.7.30 Basic authentication is not supported for Client Submission", false, false, false, "OAuth2ClientCredentials")]
    [InlineData("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox", false, true, true, "Set-CASMailbox")]
    [InlineData("530 5.7.57 Client not authenticated to send mail", false, true, true, "SMTP.SendAsApp")]
    [InlineData("554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied", false, true, true, "Add-RecipientPermission")]
    [InlineData("535 5.7.8 Username and Password not accepted", true, false, true, "Domain-wide delegation")]
    [InlineData("534 5.7.9 Application-specific password required", true, false, false, "GoogleServiceAccount")]
    public void SmtpRefusals_AreMappedToWhatToFix(string reply, bool google, bool appOnly, bool oauth2, string expected) =>
        Assert.Contains(expected, AuthErrors.SmtpFix(reply, google, appOnly, oauth2), StringComparison.OrdinalIgnoreCase);

    [Theory]
    [InlineData(false, false, "invalid_client", "AADSTS7000222: The provided client secret keys for app are expired.", "expired")]
    [InlineData(false, false, "invalid_client", "AADSTS700027: Client assertion failed signature validation.", "Certificates & secrets")]
    [InlineData(false, false, "unauthorized_client", "AADSTS700016: Application with identifier 'x' was not found in the directory 'y'.", "Relay:OAuth2:ClientId")]
    [InlineData(false, false, "invalid_grant", "AADSTS700082: The refresh token has expired due to inactivity.", "relay login")]
    [InlineData(false, false, "invalid_client", "something new", "Certificates & secrets")]
    [InlineData(true, true, "unauthorized_client", "Client is unauthorized to retrieve access tokens using this method", "https://mail.google.com/")]
    [InlineData(true, false, "invalid_grant", "Token has been expired or revoked.", "Testing status")]
    [InlineData(true, false, "invalid_client", "The OAuth client was not found.", "Relay:OAuth2:ClientId")]
    public void TokenErrors_AreMappedToWhatToFix(bool google, bool serviceAccount, string error, string description, string expected) =>
        Assert.Contains(expected, AuthErrors.TokenFix(google, serviceAccount, error, description), StringComparison.Ordinal);

    [Fact]
    public void SenderSideRefusals_AreToldApartFromRecipientRefusals()
    {
        Assert.True(AuthErrors.IsSenderSide("530 5.7.57 Client not authenticated to send mail"));
        Assert.True(AuthErrors.IsSenderSide("550 5.4.5 Daily user sending limit exceeded"));
        Assert.False(AuthErrors.IsSenderSide("550 5.1.1 User unknown"));
        Assert.False(AuthErrors.IsSenderSide("554 5.7.1 Message rejected as spam"));
    }
}
