using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay;
using EdgeMail.Testing;
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

    // A server with PIPELINING that refuses the sender answers the RCPT sent with it "bad sequence": the sender's
    // refusal is the one that says why, not the recipient's.
    [Fact]
    public async Task APipeliningServerRefusesTheSender_TheDoctorPrintsTheSendersRefusal()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        var served = ServeAsync(listener);
        var options = new GatewayOptions { DataDirectory = Path.GetTempPath() };
        options.Sender.Address = "alerts@contoso.test";
        options.Relay.Mode = "Smarthost";
        options.Relay.Host = "127.0.0.1";
        options.Relay.Port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        options.Relay.Security = "None";
        options.Relay.Timeout = TimeSpan.FromSeconds(5);
        using var output = new StringWriter();

        int exit = await RelayDoctor.RunAsync(options, output, sendTest: true, to: "ops@example.com", default);
        listener.Stop();
        await served.WaitAsync(Await.DefaultTimeout);

        string text = output.ToString();
        Assert.Equal(1, exit);
        Assert.True(text.Contains("FAIL  test mail     550 5.7.60 SendAsDenied", StringComparison.Ordinal), text);

        // The doctor's connect step opens (and resets) a connection of its own first: serves each until stopped.
        static async Task ServeAsync(System.Net.Sockets.TcpListener listener)
        {
            while (true)
            {
                System.Net.Sockets.TcpClient client;
                try
                {
                    client = await listener.AcceptTcpClientAsync();
                }
                catch (Exception ex) when (ex is ObjectDisposedException or System.Net.Sockets.SocketException)
                {
                    return; // stopped
                }

                using (client)
                {
                    try
                    {
                        var stream = client.GetStream();
                        using var reader = new StreamReader(stream, System.Text.Encoding.ASCII);
                        async Task ReplyAsync(string line) => await stream.WriteAsync(System.Text.Encoding.ASCII.GetBytes(line + "\r\n"));
                        await ReplyAsync("220 pipelining.test ESMTP");
                        while (await reader.ReadLineAsync() is { } line)
                        {
                            switch ((line.Length >= 4 ? line[..4] : line).ToUpperInvariant())
                            {
                                case "EHLO": await ReplyAsync("250-pipelining.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES"); break;
                                case "MAIL": await ReplyAsync("550 5.7.60 SendAsDenied; alerts@contoso.test not allowed to send as this sender"); break;
                                case "RCPT": await ReplyAsync("503 5.5.1 bad sequence of commands"); break;
                                default: await ReplyAsync("250 ok"); break;
                            }
                        }
                    }
                    catch (IOException)
                    {
                        // The connect step's reset.
                    }
                }
            }
        }
    }

    // Each configuration problem on a line of its own, as the fix ("the keys above") reads them.
    [Fact]
    public async Task SeveralConfigurationProblems_EachOnALineOfItsOwn()
    {
        var options = new GatewayOptions { DataDirectory = Path.GetTempPath() };
        options.Sender.Address = "alerts@contoso.test";
        options.Relay.Mode = "Smarthost";
        options.Relay.Host = string.Empty;
        options.Relay.Port = 0;
        using var output = new StringWriter();

        int exit = await RelayDoctor.RunAsync(options, output, sendTest: false, to: null, default);

        string[] lines = output.ToString().Split(Environment.NewLine);
        Assert.Equal(2, exit);
        Assert.StartsWith("  FAIL  configuration Relay:", lines[0], StringComparison.Ordinal);
        Assert.StartsWith("         Relay:", lines[1], StringComparison.Ordinal);
        Assert.DoesNotContain(" / ", lines[0], StringComparison.Ordinal);
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
