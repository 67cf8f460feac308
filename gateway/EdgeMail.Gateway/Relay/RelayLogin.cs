using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay.OAuth2;
using Microsoft.Identity.Client;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// <c>edgemail relay login</c>: the one-time delegated sign-in of <c>Relay:Auth = OAuth2RefreshToken</c>. Microsoft 365
/// uses the device-code flow (MSAL): open a URL on any device, enter the code. Google does not allow its device flow
/// for the Gmail scope, so Gmail uses the desktop-app flow with PKCE and a loopback redirect: open the URL; a browser on
/// this machine lands on the gateway's listener, a browser elsewhere shows a page that fails to load — paste its
/// address here. Either way the refresh token goes encrypted into the <see cref="TokenStore"/>, never to the screen.
/// </summary>
public static class RelayLogin
{
    /// <summary>How long a sign-in may take.</summary>
    public static readonly TimeSpan Patience = TimeSpan.FromMinutes(15);

    /// <summary>Runs the sign-in, printing what to do.</summary>
    /// <param name="options">Gateway options (<c>Relay:*</c>, <c>DataDirectory</c>).</param>
    /// <param name="output">Where instructions go.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>0 signed in and stored; 1 the sign-in failed; 2 the configuration does not call for it.</returns>
    public static Task<int> RunAsync(GatewayOptions options, TextWriter output, CancellationToken cancellationToken) =>
        RunAsync(options, null, output, cancellationToken);

    /// <summary>Runs the sign-in, printing what to do and reading a pasted redirect address (Gmail) from <paramref name="input"/>.</summary>
    /// <param name="options">Gateway options.</param>
    /// <param name="input">Where a pasted address comes from (standard input); null when there is none.</param>
    /// <param name="output">Where instructions go.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>0 signed in and stored; 1 the sign-in failed; 2 the configuration does not call for it.</returns>
    public static async Task<int> RunAsync(GatewayOptions options, TextReader? input, TextWriter output, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(output);
        var relay = options.Relay;
        if (!RelayAuthModes.OAuth2RefreshToken.Equals(relay.Auth, StringComparison.OrdinalIgnoreCase))
        {
            await output.WriteLineAsync($"Relay:Auth is {relay.Auth}; 'relay login' is for OAuth2RefreshToken (a delegated sign-in). {ModeHint(relay.Auth)}").ConfigureAwait(false);
            return 2;
        }

        var problems = GatewayOptionsValidator.Check(options).Where(p => p.StartsWith("Relay:", StringComparison.Ordinal)).ToList();
        if (problems.Count > 0)
        {
            await output.WriteLineAsync("The relay configuration is invalid:" + Environment.NewLine + string.Join(Environment.NewLine, problems.Select(p => "  - " + p))).ConfigureAwait(false);
            return 2;
        }

        using var patience = new CancellationTokenSource(Patience, TimeProvider.System);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, patience.Token);
        using var http = new RelayHttp(relay);
        var store = TokenStore.For(options);
        try
        {
            string who = relay.OAuth2.IsGoogle(relay.Auth)
                ? await GoogleAsync(options, http, store, input, output, linked.Token).ConfigureAwait(false)
                : await MicrosoftAsync(relay, http, store, output, linked.Token).ConfigureAwait(false);
            await output.WriteLineAsync($"Signed in as {who}. The refresh token is stored encrypted in {store.Path}; the gateway uses it from its next delivery attempt.").ConfigureAwait(false);
            if (!string.Equals(who, relay.User, StringComparison.OrdinalIgnoreCase))
            {
                await output.WriteLineAsync($"Note: Relay:User is {relay.User}. The provider lets the signed-in account send only as itself (or where it has Send As rights): sign in as {relay.User}, or set Relay:User to {who}.").ConfigureAwait(false);
            }

            return 0;
        }
        catch (OperationCanceledException) when (patience.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            await output.WriteLineAsync($"No sign-in within {Patience.TotalMinutes:0} minutes; run 'edgemail relay login' again.").ConfigureAwait(false);
            return 1;
        }
        catch (TokenException ex)
        {
            await output.WriteLineAsync("Sign-in failed: " + ex.Message).ConfigureAwait(false);
            return 1;
        }
    }

    private static string ModeHint(string mode) => mode.ToUpperInvariant() switch
    {
        "OAUTH2CLIENTCREDENTIALS" or "GOOGLESERVICEACCOUNT" => "This mode needs no sign-in; check it with 'edgemail doctor relay'.",
        _ => "Set Relay:Auth to OAuth2RefreshToken with Relay:OAuth2:Provider Microsoft or Google (docs/relay-oauth2.md).",
    };

    private static async Task<string> MicrosoftAsync(RelayOptions relay, RelayHttp http, TokenStore store, TextWriter output, CancellationToken cancellationToken)
    {
        using var grant = new MsalDelegatedGrant(relay, http, store);
        try
        {
            var result = await grant.App.AcquireTokenWithDeviceCode(grant.Scopes, async code =>
            {
                await output.WriteLineAsync($"To sign in as {relay.User}, open {code.VerificationUrl} in any browser and enter the code {code.UserCode}").ConfigureAwait(false);
                await output.FlushAsync(cancellationToken).ConfigureAwait(false);
            }).ExecuteAsync(cancellationToken).ConfigureAwait(false);
            return result.Account?.Username ?? relay.User;
        }
        catch (MsalException ex)
        {
            throw Msal.Map(ex, "The device-code sign-in", cancellationToken);
        }
    }

    private static async Task<string> GoogleAsync(GatewayOptions options, RelayHttp http, TokenStore store, TextReader? input, TextWriter output, CancellationToken cancellationToken)
    {
        var relay = options.Relay;
        var o = relay.OAuth2;
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        string redirect = $"http://127.0.0.1:{((IPEndPoint)listener.LocalEndpoint).Port}/";
        string verifier = Base64Url(RandomNumberGenerator.GetBytes(32));
        string state = Base64Url(RandomNumberGenerator.GetBytes(16));
        string challenge = Base64Url(SHA256.HashData(Encoding.ASCII.GetBytes(verifier)));
        string endpoint = o.AuthorizationEndpoint.Length > 0 ? o.AuthorizationEndpoint : RelayOAuth2Options.GoogleAuthorizationEndpoint;
        string url = endpoint + "?" + string.Join('&', new Dictionary<string, string>
        {
            ["client_id"] = o.ClientId, ["redirect_uri"] = redirect, ["response_type"] = "code", ["scope"] = o.EffectiveScope(relay.Auth),
            ["code_challenge"] = challenge, ["code_challenge_method"] = "S256", ["state"] = state, ["access_type"] = "offline",
            ["prompt"] = "consent", ["login_hint"] = relay.User,
        }.Select(kv => kv.Key + "=" + Uri.EscapeDataString(kv.Value)));
        await output.WriteLineAsync($"To sign in as {relay.User}, open this address in a browser:{Environment.NewLine}{Environment.NewLine}  {url}{Environment.NewLine}").ConfigureAwait(false);
        await output.WriteLineAsync($"A browser on this machine comes back here by itself. On another machine the last page will not load: copy its address ({redirect}?state=...) and paste it here.").ConfigureAwait(false);
        await output.FlushAsync(cancellationToken).ConfigureAwait(false);

        string query = await RedirectAsync(listener, input, cancellationToken).ConfigureAwait(false);
        var parameters = Query(query);
        if (parameters.TryGetValue("error", out string? error))
        {
            throw new TokenException($"Google answered {error}. Fix: {AuthErrors.TokenFix(true, false, error, string.Empty)}", refused: true);
        }

        if (!parameters.TryGetValue("state", out string? returned) || returned != state || !parameters.TryGetValue("code", out string? code))
        {
            throw new TokenException("the address is not the answer to this sign-in (state or code missing or different); run 'edgemail relay login' again", refused: true);
        }

        var json = await TokenEndpoint.PostAsync(http.Client, TokenEndpoint.GoogleEndpoint(o),
        [
            new("grant_type", "authorization_code"), new("code", code), new("client_id", o.ClientId), new("client_secret", ClientSecrets.Read(o)),
            new("redirect_uri", redirect), new("code_verifier", verifier),
        ], "The Google sign-in", false, cancellationToken).ConfigureAwait(false);
        string refresh = TokenEndpoint.Text(json, "refresh_token");
        if (refresh.Length == 0)
        {
            throw new TokenException("Google issued no refresh token: remove the app's access at https://myaccount.google.com/permissions and sign in again", refused: true);
        }

        new StoredSignIn(OAuth2Providers.Google, o.ClientId, relay.User, refresh, null).Write(store);
        return relay.User;
    }

    // The query of the redirect: from the browser hitting the listener, or from an address pasted on input.
    private static async Task<string> RedirectAsync(TcpListener listener, TextReader? input, CancellationToken cancellationToken)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var browser = BrowserAsync(listener, stop.Token);
        var pasted = input is null ? Task.Delay(Timeout.Infinite, stop.Token).ContinueWith(_ => string.Empty, TaskScheduler.Default) : PastedAsync(input, stop.Token);
        var first = await Task.WhenAny(browser, pasted).ConfigureAwait(false);
        cancellationToken.ThrowIfCancellationRequested();
        string query = await first.ConfigureAwait(false);
        await stop.CancelAsync().ConfigureAwait(false);
        return query;
    }

    private static async Task<string> BrowserAsync(TcpListener listener, CancellationToken cancellationToken)
    {
        while (true)
        {
            using var client = await listener.AcceptTcpClientAsync(cancellationToken).ConfigureAwait(false);
            var stream = client.GetStream();
            using var reader = new StreamReader(stream, Encoding.ASCII, leaveOpen: true);
            string? requestLine = await reader.ReadLineAsync(cancellationToken).ConfigureAwait(false);
            string[] parts = requestLine?.Split(' ') ?? [];
            bool answer = parts.Length >= 2 && parts[0] == "GET" && parts[1].Contains('?', StringComparison.Ordinal);
            string body = answer ? "EdgeMail: sign-in received. You can close this page." : "EdgeMail: waiting for the sign-in.";
            byte[] response = Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n{body}");
            await stream.WriteAsync(response, cancellationToken).ConfigureAwait(false);
            if (answer)
            {
                return parts[1][(parts[1].IndexOf('?', StringComparison.Ordinal) + 1)..];
            }
        }
    }

    private static async Task<string> PastedAsync(TextReader input, CancellationToken cancellationToken)
    {
        while (true)
        {
            string? line = await input.ReadLineAsync(cancellationToken).ConfigureAwait(false);
            if (line is null)
            {
                await Task.Delay(Timeout.Infinite, cancellationToken).ConfigureAwait(false); // no more input: wait for the browser
            }
            else if (line.Trim() is { Length: > 0 } address && address.Contains('?', StringComparison.Ordinal))
            {
                return address[(address.IndexOf('?', StringComparison.Ordinal) + 1)..];
            }
        }
    }

    private static Dictionary<string, string> Query(string query) =>
        query.Split('&', StringSplitOptions.RemoveEmptyEntries)
            .Select(p => p.Split('=', 2))
            .GroupBy(p => Uri.UnescapeDataString(p[0]))
            .ToDictionary(g => g.Key, g => Uri.UnescapeDataString((g.First().Length > 1 ? g.First()[1] : string.Empty).Replace('+', ' ')));

    private static string Base64Url(byte[] bytes) => TokenEndpoint.Base64Url(bytes);
}
