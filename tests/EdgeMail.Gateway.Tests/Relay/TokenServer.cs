using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// An OAuth2 token endpoint on loopback (ASP.NET Core, HTTPS) that speaks like Microsoft Entra ID
/// (<c>/{tenant}/oauth2/v2.0/token</c> and <c>/devicecode</c>: client credentials with a secret or a certificate
/// assertion, refresh tokens, the device-code flow) and like Google (<c>/google/token</c>: refresh tokens, the JWT bearer
/// grant of service accounts, authorization codes with PKCE; <c>/google/auth</c> consents at once). It knows every token
/// it issued, so the XOAUTH2 server can ask whether one is valid for a mailbox, and it can expire, revoke, hold or drop.
/// </summary>
public sealed class TokenServer : IAsyncDisposable
{
    public const string Tenant = "contoso-test";
    public const string ExchangeAppScope = "https://outlook.office365.com/.default";
    public const string ExchangeDelegatedScope = "https://outlook.office.com/SMTP.Send";
    public const string GmailScope = "https://mail.google.com/";

    private readonly WebApplication _app;
    private readonly TimeProvider _clock;
    private readonly ConcurrentDictionary<string, IssuedToken> _tokens = new();
    private readonly ConcurrentDictionary<string, (string ClientId, string User)> _refreshTokens = new();
    private readonly ConcurrentDictionary<string, App> _apps = new();
    private readonly ConcurrentDictionary<string, (string ClientId, string? User)> _deviceCodes = new();
    private readonly ConcurrentDictionary<string, string> _userCodes = new();
    private readonly ConcurrentDictionary<string, (string ClientId, string User, string Challenge, string Redirect)> _codes = new();
    private readonly ConcurrentDictionary<string, (RSA Key, HashSet<string> Users)> _serviceAccounts = new();
    private TaskCompletionSource? _hold;
    private int _issued;

    private TokenServer(WebApplication app, TimeProvider clock)
    {
        _app = app;
        _clock = clock;
    }

    public Uri BaseUri { get; private set; } = null!;

    /// <summary>Microsoft authority host (Relay:OAuth2:Authority).</summary>
    public string Authority => BaseUri.ToString().TrimEnd('/');

    public string GoogleTokenEndpoint => Authority + "/google/token";

    public string GoogleAuthorizationEndpoint => Authority + "/google/auth";

    /// <summary>Lifetime of issued access tokens (expires_in).</summary>
    public TimeSpan TokenLifetime { get; set; } = TimeSpan.FromHours(1);

    /// <summary>Refresh-token grants return a new refresh token and retire the old one.</summary>
    public bool RotateRefreshTokens { get; set; }

    /// <summary>Every connection is dropped without an answer, as if the endpoint were down.</summary>
    public bool Down { get; set; }

    /// <summary>Access tokens issued so far.</summary>
    public int Issued => Volatile.Read(ref _issued);

    /// <summary>Token requests received (answered or not).</summary>
    public int Requests => Volatile.Read(ref _requests);

    private int _requests;

    public static async Task<TokenServer> StartAsync(TimeProvider? clock = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0, l => l.UseHttps(SmarthostTlsTests.Certificate.Value)));
        var app = builder.Build();
        var server = new TokenServer(app, clock ?? TimeProvider.System);
        app.Use(async (context, next) =>
        {
            Interlocked.Increment(ref server._requests);
            if (server.Down)
            {
                context.Abort();
                return;
            }

            if (Volatile.Read(ref server._hold) is { } hold)
            {
                await hold.Task;
            }

            await next(context);
        });
        app.MapPost("/{tenant}/oauth2/v2.0/token", (Func<HttpContext, string, Task<IResult>>)server.MicrosoftTokenAsync);
        app.MapPost("/{tenant}/oauth2/v2.0/devicecode", (Func<HttpContext, string, Task<IResult>>)server.DeviceCodeAsync);
        app.MapPost("/google/token", (Func<HttpContext, Task<IResult>>)server.GoogleTokenAsync);
        app.MapGet("/google/auth", (Func<HttpContext, IResult>)server.GoogleAuthorize);
        await app.StartAsync();
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        server.BaseUri = new Uri(address.Replace("[::]", "127.0.0.1", StringComparison.Ordinal));
        return server;
    }

    // ---- registrations and controls ----

    /// <summary>An Entra ID app (confidential: secret and/or certificate; public: neither) with the mailboxes it may send as.</summary>
    public void AddApp(string clientId, string? secret = null, X509Certificate2? certificate = null, params string[] mailboxes) =>
        _apps[clientId] = new App(secret, certificate, [.. mailboxes], Revoked: false, Google: false);

    /// <summary>A Google OAuth client (desktop app).</summary>
    public void AddGoogleClient(string clientId, string secret) => _apps[clientId] = new App(secret, null, [], Revoked: false, Google: true);

    /// <summary>A service account allowed (domain-wide delegation with the Gmail scope) to act for <paramref name="users"/>.</summary>
    public void AddServiceAccount(string clientEmail, RSA publicKey, params string[] users) => _serviceAccounts[clientEmail] = (publicKey, [.. users]);

    /// <summary>Removes a service account's delegation (as an admin would in the Admin console).</summary>
    public void RemoveDelegation(string clientEmail) => _serviceAccounts[clientEmail].Users.Clear();

    /// <summary>Grants or withdraws an app's right to send as a mailbox (Add-MailboxPermission).</summary>
    public void SetMailboxPermission(string clientId, string mailbox, bool granted)
    {
        var app = _apps[clientId];
        lock (app.Mailboxes)
        {
            if (granted)
            {
                app.Mailboxes.Add(mailbox);
            }
            else
            {
                app.Mailboxes.Remove(mailbox);
            }
        }
    }

    /// <summary>Revokes an app's credential (a deleted secret) and every refresh token issued to it; <see cref="Restore"/> undoes it.</summary>
    public void Revoke(string clientId)
    {
        _apps[clientId] = _apps[clientId] with { Revoked = true };
        foreach (var (token, owner) in _refreshTokens)
        {
            if (owner.ClientId == clientId)
            {
                _refreshTokens.TryRemove(token, out _);
            }
        }
    }

    public void Restore(string clientId) => _apps[clientId] = _apps[clientId] with { Revoked = false };

    /// <summary>Every access token issued so far stops being valid now (as if its time were up).</summary>
    public void ExpireAllTokens()
    {
        foreach (var key in _tokens.Keys)
        {
            _tokens[key] = _tokens[key] with { ExpiresAt = DateTimeOffset.MinValue };
        }
    }

    /// <summary>Token requests wait until the returned handle is disposed.</summary>
    public IDisposable Hold()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Volatile.Write(ref _hold, gate);
        return new Release(() =>
        {
            Volatile.Write(ref _hold, null);
            gate.TrySetResult();
        });
    }

    /// <summary>A refresh token for a user of a client, as a sign-in would have left.</summary>
    public string IssueRefreshToken(string clientId, string user)
    {
        string token = NewToken("rt");
        _refreshTokens[token] = (clientId, user);
        return token;
    }

    public bool IsRefreshTokenValid(string token) => _refreshTokens.ContainsKey(token);

    /// <summary>The user approves the device code shown as <paramref name="userCode"/>.</summary>
    public void ApproveDevice(string userCode, string user)
    {
        string device = _userCodes[userCode];
        _deviceCodes[device] = _deviceCodes[device] with { User = user };
    }

    /// <summary>Null when <paramref name="token"/> is a current token that may send as <paramref name="mailbox"/>; else why not.</summary>
    public string? Check(string token, string mailbox)
    {
        if (!_tokens.TryGetValue(token, out var issued))
        {
            return "unknown token";
        }

        if (_clock.GetUtcNow() >= issued.ExpiresAt)
        {
            return "token expired";
        }

        if (issued.ClientId is { } clientId && _apps.TryGetValue(clientId, out var app) && issued.User is null)
        {
            lock (app.Mailboxes)
            {
                return app.Mailboxes.Contains(mailbox) ? null : "the app has no permission on " + mailbox;
            }
        }

        return string.Equals(issued.User, mailbox, StringComparison.OrdinalIgnoreCase) ? null : $"token is for {issued.User}, not {mailbox}";
    }

    public async ValueTask DisposeAsync()
    {
        Volatile.Read(ref _hold)?.TrySetResult();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    // ---- Microsoft ----

    private async Task<IResult> MicrosoftTokenAsync(HttpContext context, string tenant)
    {
        var form = await context.Request.ReadFormAsync();
        string clientId = form["client_id"].ToString();
        if (tenant != Tenant)
        {
            return Error(400, "invalid_request", $"AADSTS90002: Tenant '{tenant}' not found. Trace ID: 0000 Correlation ID: 0000 Timestamp: 2026-01-01 00:00:00Z");
        }

        if (!_apps.TryGetValue(clientId, out var app) || app.Google)
        {
            return Error(400, "unauthorized_client", $"AADSTS700016: Application with identifier '{clientId}' was not found in the directory '{tenant}'.");
        }

        string grant = form["grant_type"].ToString();
        switch (grant)
        {
            case "client_credentials":
                string? problem = ClientAuthentication(context, form, app, clientId);
                if (problem is not null)
                {
                    return Error(401, "invalid_client", problem);
                }

                if (form["scope"].ToString() != ExchangeAppScope)
                {
                    return Error(400, "invalid_scope", "AADSTS70011: The provided value for the input parameter 'scope' is not valid.");
                }

                return Results.Json(new Dictionary<string, object> { ["token_type"] = "Bearer", ["expires_in"] = (long)TokenLifetime.TotalSeconds, ["access_token"] = Issue(clientId, null) });
            case "refresh_token":
                if (!_refreshTokens.TryGetValue(form["refresh_token"].ToString(), out var owner) || owner.ClientId != clientId)
                {
                    return Error(400, "invalid_grant", "AADSTS50173: The provided grant has expired due to it being revoked, a fresh auth token is needed.");
                }

                if (RotateRefreshTokens)
                {
                    _refreshTokens.TryRemove(form["refresh_token"].ToString(), out _);
                }

                return Results.Json(DelegatedTokens(clientId, owner.User, RotateRefreshTokens ? null : form["refresh_token"].ToString()));
            case "device_code": // what MSAL sends; Entra ID also takes the RFC 8628 name
            case "urn:ietf:params:oauth:grant-type:device_code":
                if (!_deviceCodes.TryGetValue(form["device_code"].ToString(), out var device) || device.ClientId != clientId)
                {
                    return Error(400, "expired_token", "AADSTS70019: Verification code expired.");
                }

                if (device.User is null)
                {
                    return Error(400, "authorization_pending", "AADSTS70016: OAuth 2.0 device flow error. Authorization is pending.");
                }

                _deviceCodes.TryRemove(form["device_code"].ToString(), out _);
                return Results.Json(DelegatedTokens(clientId, device.User, null));
            default:
                return Error(400, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type.");
        }
    }

    private async Task<IResult> DeviceCodeAsync(HttpContext context, string tenant)
    {
        var form = await context.Request.ReadFormAsync();
        string clientId = form["client_id"].ToString();
        if (!_apps.ContainsKey(clientId))
        {
            return Error(400, "unauthorized_client", $"AADSTS700016: Application with identifier '{clientId}' was not found in the directory '{tenant}'.");
        }

        string device = NewToken("dc");
        string user = RandomNumberGenerator.GetString("ABCDEFGHJKLMNPQRSTUVWXYZ23456789", 9);
        _deviceCodes[device] = (clientId, null);
        _userCodes[user] = device;
        return Results.Json(new Dictionary<string, object>
        {
            ["user_code"] = user, ["device_code"] = device, ["verification_uri"] = Authority + "/devicelogin", ["expires_in"] = 900, ["interval"] = 1,
            ["message"] = $"To sign in, use a web browser to open the page {Authority}/devicelogin and enter the code {user} to authenticate.",
        });
    }

    private Dictionary<string, object> DelegatedTokens(string clientId, string user, string? keepRefreshToken)
    {
        string oid = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(user)))[..32].ToLowerInvariant();
        long now = _clock.GetUtcNow().ToUnixTimeSeconds();
        string idToken = Jwt(new { typ = "JWT", alg = "none" }, new
        {
            aud = clientId, iss = $"https://login.microsoftonline.com/{Tenant}/v2.0", iat = now, nbf = now, exp = now + 3600,
            name = user, oid, preferred_username = user, sub = oid, tid = Tenant, ver = "2.0",
        }) + ".";
        string clientInfo = B64(JsonSerializer.SerializeToUtf8Bytes(new { uid = oid, utid = Tenant }));
        return new Dictionary<string, object>
        {
            ["token_type"] = "Bearer", ["scope"] = ExchangeDelegatedScope + " openid profile offline_access", ["expires_in"] = (long)TokenLifetime.TotalSeconds,
            ["access_token"] = Issue(clientId, user), ["refresh_token"] = keepRefreshToken ?? IssueRefreshToken(clientId, user), ["id_token"] = idToken,
            ["client_info"] = clientInfo,
        };
    }

    private string? ClientAuthentication(HttpContext context, IFormCollection form, App app, string clientId)
    {
        if (app.Revoked)
        {
            return "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID. Trace ID: 1 Correlation ID: 2 Timestamp: 2026-01-01 00:00:00Z";
        }

        string assertion = form["client_assertion"].ToString();
        if (assertion.Length == 0)
        {
            return app.Secret is not null && form["client_secret"].ToString() == app.Secret
                ? null
                : "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.";
        }

        if (form["client_assertion_type"].ToString() != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || app.Certificate is null)
        {
            return "AADSTS700027: Client assertion failed signature validation.";
        }

        string endpoint = $"{Authority}{context.Request.Path}";
        return VerifyJwt(assertion, app.Certificate.GetRSAPublicKey()!, out var claims)
            && Str(claims, "aud") == endpoint && Str(claims, "iss") == clientId && Str(claims, "sub") == clientId
            && Num(claims, "exp") > _clock.GetUtcNow().ToUnixTimeSeconds()
            ? null
            : "AADSTS700027: Client assertion failed signature validation.";
    }

    // ---- Google ----

    private async Task<IResult> GoogleTokenAsync(HttpContext context)
    {
        var form = await context.Request.ReadFormAsync();
        string grant = form["grant_type"].ToString();
        if (grant == "urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            return ServiceAccount(form["assertion"].ToString());
        }

        string clientId = form["client_id"].ToString();
        if (!_apps.TryGetValue(clientId, out var app) || !app.Google || app.Revoked || form["client_secret"].ToString() != app.Secret)
        {
            return Error(401, "invalid_client", "The OAuth client was not found.");
        }

        if (grant == "refresh_token")
        {
            string refresh = form["refresh_token"].ToString();
            if (!_refreshTokens.TryGetValue(refresh, out var owner) || owner.ClientId != clientId)
            {
                return Error(400, "invalid_grant", "Token has been expired or revoked.");
            }

            var answer = new Dictionary<string, object> { ["access_token"] = Issue(null, owner.User), ["expires_in"] = (long)TokenLifetime.TotalSeconds, ["scope"] = GmailScope, ["token_type"] = "Bearer" };
            if (RotateRefreshTokens)
            {
                _refreshTokens.TryRemove(refresh, out _);
                answer["refresh_token"] = IssueRefreshToken(clientId, owner.User);
            }

            return Results.Json(answer);
        }

        if (grant == "authorization_code" && _codes.TryRemove(form["code"].ToString(), out var code) && code.ClientId == clientId
            && code.Redirect == form["redirect_uri"].ToString()
            && B64(SHA256.HashData(Encoding.ASCII.GetBytes(form["code_verifier"].ToString()))) == code.Challenge)
        {
            return Results.Json(new Dictionary<string, object>
            {
                ["access_token"] = Issue(null, code.User), ["expires_in"] = (long)TokenLifetime.TotalSeconds, ["scope"] = GmailScope, ["token_type"] = "Bearer",
                ["refresh_token"] = IssueRefreshToken(clientId, code.User),
            });
        }

        return Error(400, "invalid_grant", "Bad Request");
    }

    private IResult ServiceAccount(string assertion)
    {
        string[] parts = assertion.Split('.');
        if (parts.Length != 3)
        {
            return Error(400, "invalid_grant", "Invalid JWT: malformed");
        }

        using var claimsDoc = JsonDocument.Parse(Unb64(parts[1]));
        var claims = claimsDoc.RootElement;
        string iss = Str(claims, "iss");
        if (!_serviceAccounts.TryGetValue(iss, out var account) || !VerifyJwt(assertion, account.Key, out _))
        {
            return Error(400, "invalid_grant", "Invalid JWT Signature.");
        }

        long now = _clock.GetUtcNow().ToUnixTimeSeconds();
        if (Str(claims, "aud") != GoogleTokenEndpoint || Num(claims, "exp") <= now || Num(claims, "iat") > now + 300 || Num(claims, "exp") - Num(claims, "iat") > 3600)
        {
            return Error(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.");
        }

        string user = Str(claims, "sub");
        if (Str(claims, "scope") != GmailScope || !account.Users.Contains(user))
        {
            return Error(401, "unauthorized_client", "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.");
        }

        return Results.Json(new Dictionary<string, object> { ["access_token"] = Issue(null, user), ["expires_in"] = (long)TokenLifetime.TotalSeconds, ["token_type"] = "Bearer" });
    }

    // The user consents at once, as the login_hint account.
    private IResult GoogleAuthorize(HttpContext context)
    {
        var q = context.Request.Query;
        string clientId = q["client_id"].ToString();
        string redirect = q["redirect_uri"].ToString();
        if (!_apps.TryGetValue(clientId, out var app) || !app.Google || q["code_challenge_method"] != "S256" || !redirect.StartsWith("http://127.0.0.1:", StringComparison.Ordinal))
        {
            return Results.BadRequest("invalid request");
        }

        string code = NewToken("code");
        _codes[code] = (clientId, q["login_hint"].ToString(), q["code_challenge"].ToString(), redirect);
        return Results.Redirect($"{redirect}?state={Uri.EscapeDataString(q["state"].ToString())}&code={Uri.EscapeDataString(code)}&scope={Uri.EscapeDataString(GmailScope)}");
    }

    // ---- helpers ----

    private string Issue(string? clientId, string? user)
    {
        string token = NewToken("at");
        _tokens[token] = new IssuedToken(clientId, user, _clock.GetUtcNow() + TokenLifetime);
        Interlocked.Increment(ref _issued);
        return token;
    }

    private static string NewToken(string kind) => kind + "." + B64(RandomNumberGenerator.GetBytes(24));

    private static IResult Error(int status, string error, string description) =>
        Results.Json(new Dictionary<string, string> { ["error"] = error, ["error_description"] = description }, statusCode: status);

    private static bool VerifyJwt(string jwt, RSA key, out JsonElement claims)
    {
        string[] parts = jwt.Split('.');
        claims = default;
        if (parts.Length != 3)
        {
            return false;
        }

        using var header = JsonDocument.Parse(Unb64(parts[0]));
        string alg = Str(header.RootElement, "alg");
        var padding = alg switch { "RS256" => RSASignaturePadding.Pkcs1, "PS256" => RSASignaturePadding.Pss, _ => null };
        if (padding is null || !key.VerifyData(Encoding.ASCII.GetBytes(parts[0] + "." + parts[1]), Unb64(parts[2]), HashAlgorithmName.SHA256, padding))
        {
            return false;
        }

        claims = JsonDocument.Parse(Unb64(parts[1])).RootElement.Clone();
        return true;
    }

    private static string Str(JsonElement e, string name) => e.TryGetProperty(name, out var v) ? v.ValueKind == JsonValueKind.String ? v.GetString()! : v.ToString() : string.Empty;

    // MSAL writes nbf and exp as strings.
    private static long Num(JsonElement e, string name) => long.TryParse(Str(e, name), out long n) ? n : 0;

    private static string Jwt(object header, object claims) => B64(JsonSerializer.SerializeToUtf8Bytes(header)) + "." + B64(JsonSerializer.SerializeToUtf8Bytes(claims));

    public static string B64(byte[] bytes) => Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    private static byte[] Unb64(string s)
    {
        s = s.Replace('-', '+').Replace('_', '/');
        return Convert.FromBase64String(s.PadRight(s.Length + ((4 - (s.Length % 4)) % 4), '='));
    }

    private sealed record App(string? Secret, X509Certificate2? Certificate, HashSet<string> Mailboxes, bool Revoked, bool Google);

    private sealed record IssuedToken(string? ClientId, string? User, DateTimeOffset ExpiresAt);

    private sealed class Release(Action release) : IDisposable
    {
        public void Dispose() => release();
    }
}
