using System.Net;
using System.Text;
using System.Text.RegularExpressions;
using System.Threading.Channels;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Relay.OAuth2;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>'edgemail relay login' against the loopback token endpoint: Microsoft's device code, Gmail's browser sign-in.</summary>
public sealed partial class RelayLoginTests
{
    private static GatewayOptions Options(TokenServer server, string provider, string clientId, string secret = "")
    {
        var options = new GatewayOptions { DataDirectory = Directory.CreateTempSubdirectory("edgemail-login").FullName };
        options.Relay.Mode = "Smarthost";
        options.Relay.Host = "127.0.0.1";
        options.Relay.Auth = RelayAuthModes.OAuth2RefreshToken;
        options.Relay.User = OAuth2Kit.Mailbox;
        options.Relay.AcceptAnyCertificate = true;
        options.Relay.OAuth2 = new RelayOAuth2Options
        {
            Provider = provider, TenantId = TokenServer.Tenant, ClientId = clientId, ClientSecret = secret, Authority = server.Authority,
            TokenEndpoint = server.GoogleTokenEndpoint, AuthorizationEndpoint = server.GoogleAuthorizationEndpoint,
        };
        return options;
    }

    [Fact]
    public async Task Microsoft_DeviceCodeSignIn_StoresTheRefreshTokenEncryptedAndKeepsRotatedOnes()
    {
        await using var server = await TokenServer.StartAsync();
        server.AddApp("public-app"); // a public client: no secret, no certificate
        var options = Options(server, OAuth2Providers.Microsoft, "public-app");
        var output = new Watcher(line =>
        {
            var code = UserCode().Match(line);
            if (code.Success)
            {
                server.ApproveDevice(code.Groups[1].Value, OAuth2Kit.Mailbox); // the person signs in on their phone
            }
        });

        int exit = await RelayLogin.RunAsync(options, output, default);

        Assert.True(exit == 0, output.Text);
        Assert.Contains($"open {server.Authority}/devicelogin", output.Text);
        Assert.Contains("Signed in as " + OAuth2Kit.Mailbox, output.Text);
        var store = TokenStore.For(options);
        Assert.DoesNotContain("rt.", Encoding.Latin1.GetString(await File.ReadAllBytesAsync(store.Path)));
        Assert.DoesNotContain("rt.", output.Text);

        server.RotateRefreshTokens = true;
        using (var tokens = RelayTokens.Create(options, TimeProvider.System, NullLogger.Instance)!)
        {
            string first = await tokens.GetAsync(default);
            Assert.Null(server.Check(first, OAuth2Kit.Mailbox));
            string renewed = await tokens.RenewAsync(first, default); // the refresh token is used, and replaced
            Assert.Null(server.Check(renewed, OAuth2Kit.Mailbox));
        }

        using var restarted = RelayTokens.Create(options, TimeProvider.System, NullLogger.Instance)!; // a new process reads the store
        string afterRestart = await restarted.RenewAsync("none", default);
        Assert.Null(server.Check(afterRestart, OAuth2Kit.Mailbox)); // it could only refresh with the rotated refresh token
    }

    [Fact]
    public async Task Gmail_BrowserOnThisMachine_ComesBackToTheLoopbackListener()
    {
        await using var server = await TokenServer.StartAsync();
        server.AddGoogleClient("gmail-client", "gmail-secret");
        var options = Options(server, OAuth2Providers.Google, "gmail-client", "gmail-secret");
        Task? browsing = null;
        var output = new Watcher(line =>
        {
            if (line.StartsWith("  https://", StringComparison.Ordinal))
            {
                browsing = BrowseAsync(line.Trim(), follow: true);
            }
        });

        int exit = await RelayLogin.RunAsync(options, output, default);

        Assert.True(exit == 0, output.Text);
        await browsing!;
        using var tokens = RelayTokens.Create(options, TimeProvider.System, NullLogger.Instance)!;
        Assert.Null(server.Check(await tokens.GetAsync(default), OAuth2Kit.Mailbox));
    }

    [Fact]
    public async Task Gmail_BrowserElsewhere_TheOperatorPastesTheAddress()
    {
        await using var server = await TokenServer.StartAsync();
        server.AddGoogleClient("gmail-client", "gmail-secret");
        server.RotateRefreshTokens = true;
        var options = Options(server, OAuth2Providers.Google, "gmail-client", "gmail-secret");
        var input = new LineInput();
        var output = new Watcher(line =>
        {
            if (line.StartsWith("  https://", StringComparison.Ordinal))
            {
                _ = PasteAsync(line.Trim(), input);
            }
        });

        int exit = await RelayLogin.RunAsync(options, input, output, default);

        Assert.True(exit == 0, output.Text);
        using var tokens = RelayTokens.Create(options, TimeProvider.System, NullLogger.Instance)!;
        string token = await tokens.GetAsync(default);
        Assert.Null(server.Check(token, OAuth2Kit.Mailbox));
        using var again = RelayTokens.Create(options, TimeProvider.System, NullLogger.Instance)!;
        Assert.Null(server.Check(await again.GetAsync(default), OAuth2Kit.Mailbox)); // the rotated refresh token was stored
    }

    [Fact]
    public async Task NotADelegatedMode_SaysWhatToDoInstead()
    {
        await using var server = await TokenServer.StartAsync();
        var options = Options(server, OAuth2Providers.Microsoft, "app");
        options.Relay.Auth = RelayAuthModes.OAuth2ClientCredentials;
        var output = new Watcher(_ => { });

        Assert.Equal(2, await RelayLogin.RunAsync(options, output, default));
        Assert.Contains("doctor relay", output.Text);
    }

    // The browser: the sign-in page consents at once and redirects to the gateway's loopback listener.
    private static async Task<string> BrowseAsync(string url, bool follow)
    {
        using var https = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false, ServerCertificateCustomValidationCallback = HttpClientHandler.DangerousAcceptAnyServerCertificateValidator });
        using var consent = await https.GetAsync(new Uri(url));
        Assert.Equal(HttpStatusCode.Redirect, consent.StatusCode);
        var back = consent.Headers.Location!;
        if (follow)
        {
            using var http = new HttpClient();
            using var landed = await http.GetAsync(back);
            Assert.Contains("sign-in received", await landed.Content.ReadAsStringAsync());
        }

        return back.ToString();
    }

    private static async Task PasteAsync(string url, LineInput input) => input.Type(await BrowseAsync(url, follow: false));

    [GeneratedRegex("enter the code ([A-Z0-9]+)")]
    private static partial Regex UserCode();

    /// <summary>A terminal: records what is written and reacts to each line as a person reading it would.</summary>
    private sealed class Watcher(Action<string> onLine) : StringWriter
    {
        public string Text => ToString();

        public override void WriteLine(string? value)
        {
            base.WriteLine(value);
            foreach (string line in (value ?? string.Empty).Split(Environment.NewLine))
            {
                onLine(line);
            }
        }

        public override Task WriteLineAsync(string? value)
        {
            WriteLine(value);
            return Task.CompletedTask;
        }
    }

    /// <summary>Standard input that a person types into later.</summary>
    private sealed class LineInput : TextReader
    {
        private readonly Channel<string> _lines = Channel.CreateUnbounded<string>();

        public void Type(string line) => _lines.Writer.TryWrite(line);

        public override async ValueTask<string?> ReadLineAsync(CancellationToken cancellationToken) => await _lines.Reader.ReadAsync(cancellationToken);
    }
}
