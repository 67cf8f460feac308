using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using EdgeMail.Gateway.Configuration;

namespace EdgeMail.Gateway.Relay.OAuth2;

/// <summary>An OAuth2 token endpoint spoken to directly (RFC 6749 form posts, JSON answers): Google's.</summary>
internal static class TokenEndpoint
{
    /// <summary>Posts a grant and returns the JSON answer; maps every failure to <see cref="TokenException"/>.</summary>
    public static async Task<JsonElement> PostAsync(HttpClient http, string endpoint, IEnumerable<KeyValuePair<string, string>> form, string what,
        bool serviceAccount, CancellationToken cancellationToken)
    {
        HttpResponseMessage response;
        try
        {
            using var content = new FormUrlEncodedContent(form);
            response = await http.PostAsync(new Uri(endpoint), content, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException ex)
        {
            throw new TokenException($"{what}: the token endpoint {endpoint} cannot be reached ({ex.Message}); mail waits and is retried", ex);
        }
        catch (TaskCanceledException ex) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TokenException($"{what}: the token endpoint {endpoint} did not answer within Relay:Timeout; mail waits and is retried", ex);
        }

        using (response)
        {
            string body = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
            JsonElement json;
            try
            {
                json = JsonDocument.Parse(body).RootElement.Clone();
            }
            catch (JsonException ex)
            {
                throw new TokenException($"{what}: the token endpoint answered {(int)response.StatusCode} without JSON; mail waits and is retried", ex);
            }

            int status = (int)response.StatusCode;
            if (response.IsSuccessStatusCode && json.TryGetProperty("access_token", out var token) && token.ValueKind == JsonValueKind.String)
            {
                return json;
            }

            string error = Text(json, "error");
            string description = Text(json, "error_description");
            if (status is 408 or 429 or >= 500)
            {
                throw new TokenException($"{what}: the token endpoint is unavailable ({status} {error}); mail waits and is retried");
            }

            throw new TokenException($"{what} was refused: {status} {error}: {AuthErrors.Short(description)}. Fix: {AuthErrors.TokenFix(true, serviceAccount, error, description)}", refused: true);
        }
    }

    public static AccessToken Token(JsonElement json) =>
        new(json.GetProperty("access_token").GetString()!, TimeSpan.FromSeconds(json.TryGetProperty("expires_in", out var e) && e.TryGetInt64(out long s) ? s : 3600));

    public static string Text(JsonElement json, string name) =>
        json.ValueKind == JsonValueKind.Object && json.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : string.Empty;

    public static string Base64Url(byte[] bytes) => Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    public static string GoogleEndpoint(RelayOAuth2Options o) => o.TokenEndpoint.Length > 0 ? o.TokenEndpoint : RelayOAuth2Options.GoogleTokenEndpoint;
}

/// <summary>A delegated Gmail sign-in: the refresh token in the <see cref="TokenStore"/>, replaced when Google issues a new one.</summary>
internal sealed class GoogleRefreshTokenGrant(RelayOptions relay, RelayHttp http, TokenStore store) : ITokenGrant
{
    private readonly RelayOAuth2Options _o = relay.OAuth2;

    public string Describe => $"the stored Google sign-in of {relay.User} (client {_o.ClientId})";

    public async Task<AccessToken> AcquireAsync(bool forceRefresh, CancellationToken cancellationToken)
    {
        var stored = StoredSignIn.Read(store, OAuth2Providers.Google, _o.ClientId);
        if (stored?.RefreshToken is not { Length: > 0 } refresh)
        {
            throw new TokenException($"no Google sign-in is stored in {store.Path}: run 'edgemail relay login' and sign in as {relay.User} (docs/relay-oauth2.md)", refused: true);
        }

        var json = await TokenEndpoint.PostAsync(http.Client, TokenEndpoint.GoogleEndpoint(_o),
        [
            new("grant_type", "refresh_token"), new("client_id", _o.ClientId), new("client_secret", ClientSecrets.Read(_o)), new("refresh_token", refresh),
        ], "Token request (" + Describe + ")", false, cancellationToken).ConfigureAwait(false);
        string rotated = TokenEndpoint.Text(json, "refresh_token");
        if (rotated.Length > 0 && rotated != refresh)
        {
            (stored with { RefreshToken = rotated }).Write(store);
        }

        return TokenEndpoint.Token(json);
    }

    public void Dispose()
    {
    }
}

/// <summary>
/// Google Workspace domain-wide delegation: a JWT signed with the service account's key (RS256; iss = the service
/// account, sub = <c>Relay:User</c>, scope, aud = the token endpoint, one hour) exchanged for the user's token
/// (RFC 7523 JWT bearer grant).
/// </summary>
internal sealed class GoogleServiceAccountGrant : ITokenGrant
{
    private readonly RelayOptions _relay;
    private readonly RelayHttp _http;
    private readonly TimeProvider _clock;
    private readonly GoogleServiceAccountKey _key;
    private readonly RSA _rsa = RSA.Create();
    private readonly string _endpoint;

    public GoogleServiceAccountGrant(RelayOptions relay, RelayHttp http, TimeProvider clock)
    {
        _relay = relay;
        _http = http;
        _clock = clock;
        if (!GoogleServiceAccountKey.TryLoad(relay.OAuth2.ServiceAccountKeyFile, out var key, out string problem))
        {
            throw new TokenException("Relay:OAuth2:ServiceAccountKeyFile: " + problem, refused: true);
        }

        _key = key!;
        _rsa.ImportFromPem(_key.PrivateKeyPem);
        _endpoint = relay.OAuth2.TokenEndpoint.Length > 0 ? relay.OAuth2.TokenEndpoint : _key.TokenUri.Length > 0 ? _key.TokenUri : RelayOAuth2Options.GoogleTokenEndpoint;
    }

    public string Describe => $"service account {_key.ClientEmail} acting for {_relay.User}";

    public Task<AccessToken> AcquireAsync(bool forceRefresh, CancellationToken cancellationToken) => AcquireCoreAsync(cancellationToken);

    private async Task<AccessToken> AcquireCoreAsync(CancellationToken cancellationToken)
    {
        var json = await TokenEndpoint.PostAsync(_http.Client, _endpoint,
            [new("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), new("assertion", Assertion())],
            "Token request (" + Describe + ")", true, cancellationToken).ConfigureAwait(false);
        return TokenEndpoint.Token(json);
    }

    internal string Assertion()
    {
        long now = _clock.GetUtcNow().ToUnixTimeSeconds();
        string header = JsonSerializer.Serialize(new Dictionary<string, string> { ["alg"] = "RS256", ["typ"] = "JWT", ["kid"] = _key.PrivateKeyId });
        string claims = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["iss"] = _key.ClientEmail, ["sub"] = _relay.User, ["scope"] = _relay.OAuth2.EffectiveScope(_relay.Auth), ["aud"] = _endpoint,
            ["iat"] = now, ["exp"] = now + 3600,
        });
        string signingInput = Base64Url(Encoding.UTF8.GetBytes(header)) + "." + Base64Url(Encoding.UTF8.GetBytes(claims));
        byte[] signature = _rsa.SignData(Encoding.ASCII.GetBytes(signingInput), HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        return signingInput + "." + Base64Url(signature);
    }

    private static string Base64Url(byte[] bytes) => TokenEndpoint.Base64Url(bytes);

    public void Dispose() => _rsa.Dispose();
}
