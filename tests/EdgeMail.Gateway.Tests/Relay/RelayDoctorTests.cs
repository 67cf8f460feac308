using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>'edgemail doctor relay' step by step against the loopback token endpoint and XOAUTH2 smarthost.</summary>
public sealed class RelayDoctorTests
{
    private static GatewayOptions Options(TokenServer server, int port, string secret = OAuth2Kit.AppSecret)
    {
        var options = new GatewayOptions { DataDirectory = Path.GetTempPath() };
        options.Sender.Address = "alerts@contoso.test";
        options.Relay.Mode = "Smarthost";
        options.Relay.Host = "127.0.0.1";
        options.Relay.Port = port;
        options.Relay.Auth = RelayAuthModes.OAuth2ClientCredentials;
        options.Relay.User = OAuth2Kit.Mailbox;
        options.Relay.AcceptAnyCertificate = true;
        options.Relay.Timeout = TimeSpan.FromSeconds(5);
        options.Relay.OAuth2 = new RelayOAuth2Options { TenantId = TokenServer.Tenant, ClientId = OAuth2Kit.AppId, ClientSecret = secret, Authority = server.Authority };
        return options;
    }

    [Fact]
    public async Task EverythingRight_PrintsEachStepAndSendsTheTestMail()
    {
        await using var server = await OAuth2Kit.ExchangeAsync();
        await using var smtp = new XOAuth2SmtpServer(server.Check);
        using var output = new StringWriter();

        int exit = await RelayDoctor.RunAsync(Options(server, smtp.Port), output, sendTest: true, to: "ops@example.com", default);

        string text = output.ToString();
        Assert.True(exit == 0, text);
        foreach (string step in new[] { "configuration", "resolve", "connect", "SMTP", "token", "AUTH", "test mail" })
        {
            Assert.Matches($"(?m)^  ok    {step} ", text);
        }

        Assert.Contains("AUTH offered: XOAUTH2", text);
        Assert.Contains("XOAUTH2 as " + OAuth2Kit.Mailbox, text);
        var (user, to, message) = await smtp.NextAsync();
        Assert.Equal(OAuth2Kit.Mailbox, user);
        Assert.Equal(["ops@example.com"], to);
        Assert.StartsWith("EdgeMail relay test", message.Subject, StringComparison.Ordinal);
        Assert.DoesNotContain(OAuth2Kit.AppSecret, text);
    }

    // The doctor prints what the server said to the operator's terminal: a reply with an escape sequence (here one that
    // would clear the screen) and continuation lines is printed as one clean line, as a delivery result keeps it.
    [Fact]
    public async Task TheServerRefusesTheTestMailWithControlsInItsReply_TheDoctorPrintsOneCleanLine()
    {
        using var server = HostileReplyTests.ScriptedSmtpServer.Start(to => to == "ops@example.com" ? ["550-5.1.1 no such user\r\n550 5.1.1 \u001b[2Jgone\r\n"] : null);
        var options = new GatewayOptions { DataDirectory = Path.GetTempPath() };
        options.Sender.Address = "alerts@contoso.test";
        options.Relay.Mode = "Smarthost";
        options.Relay.Host = "127.0.0.1";
        options.Relay.Port = server.Port;
        options.Relay.Security = "None";
        options.Relay.Timeout = TimeSpan.FromSeconds(5);
        using var output = new StringWriter();

        int exit = await RelayDoctor.RunAsync(options, output, sendTest: true, to: "ops@example.com", default);

        string text = output.ToString();
        Assert.Equal(1, exit);
        Assert.True(text.Contains("FAIL  test mail     ops@example.com refused: 550 5.1.1 no such user / 5.1.1 \uFFFD[2Jgone", StringComparison.Ordinal), text);
        Assert.DoesNotContain('\u001b', text);
    }

    [Fact]
    public async Task WrongSecret_StopsAtTheTokenWithTheFix()
    {
        await using var server = await OAuth2Kit.ExchangeAsync();
        await using var smtp = new XOAuth2SmtpServer(server.Check);
        using var output = new StringWriter();

        int exit = await RelayDoctor.RunAsync(Options(server, smtp.Port, secret: "the-secret-id-not-its-value"), output, sendTest: true, to: null, default);

        string text = output.ToString();
        Assert.Equal(1, exit);
        Assert.Contains("FAIL  token", text);
        Assert.Contains("AADSTS7000215", text);
        Assert.Contains("not its Secret ID", text);
        Assert.DoesNotContain("the-secret-id-not-its-value", text);
        Assert.DoesNotContain("AUTH ", text.Split("FAIL")[1]); // nothing after the first failure
        Assert.Empty(smtp.AuthAttempts);
    }

    [Fact]
    public async Task NoMailboxPermission_StopsAtAuthWithTheExchangeSteps()
    {
        await using var server = await OAuth2Kit.ExchangeAsync(mailboxPermission: false);
        await using var smtp = new XOAuth2SmtpServer(server.Check);
        using var output = new StringWriter();

        int exit = await RelayDoctor.RunAsync(Options(server, smtp.Port), output, sendTest: false, to: null, default);

        string text = output.ToString();
        Assert.Equal(1, exit);
        Assert.Contains("ok    token", text);
        Assert.Contains("FAIL  AUTH", text);
        Assert.Contains("535 5.7.3", text);
        Assert.Contains("Add-MailboxPermission", text);
    }

    [Fact]
    public async Task NothingListening_StopsAtConnect()
    {
        await using var server = await TokenServer.StartAsync();
        using var output = new StringWriter();

        int exit = await RelayDoctor.RunAsync(Options(server, EdgeMail.Testing.Loopback.FreePort()), output, sendTest: false, to: null, default);

        Assert.Equal(1, exit);
        Assert.Contains("FAIL  connect", output.ToString());
        Assert.Contains("Relay:Port", output.ToString());
    }

    [Fact]
    public async Task InvalidConfiguration_NamesTheKey()
    {
        await using var server = await TokenServer.StartAsync();
        var options = Options(server, 587);
        options.Relay.OAuth2.TenantId = string.Empty;
        options.Relay.Security = "None";
        using var output = new StringWriter();

        Assert.Equal(2, await RelayDoctor.RunAsync(options, output, sendTest: false, to: null, default));
        Assert.Contains("Relay:OAuth2:TenantId", output.ToString());
        Assert.Contains("Relay:Security", output.ToString());
    }
}
