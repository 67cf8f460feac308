using System.Security.Cryptography.X509Certificates;
using EdgeMail.Gateway.Configuration;
using Microsoft.Identity.Client;

namespace EdgeMail.Gateway.Relay.OAuth2;

/// <summary>Microsoft's grants through MSAL: the authority is <c>Relay:OAuth2:Authority</c>/<c>TenantId</c>, used as given.</summary>
internal static class Msal
{
    public static string Authority(RelayOAuth2Options o) =>
        (o.Authority.Length > 0 ? o.Authority : RelayOAuth2Options.MicrosoftAuthority).TrimEnd('/') + "/" + o.TenantId;

    // Instance discovery is off: MSAL would otherwise ask login.microsoftonline.com about an authority it does not
    // know (a sovereign cloud, a test server); the configured authority is used as given, with the same endpoints.
    public static T Configure<T>(AbstractApplicationBuilder<T> builder, RelayOAuth2Options o, RelayHttp http)
        where T : AbstractApplicationBuilder<T> =>
        builder.WithAuthority(Authority(o), validateAuthority: false)
            .WithInstanceDiscovery(false)
            .WithHttpClientFactory(http, retryOnceOn5xx: false); // the spool's backoff is the retry

    /// <summary>Maps MSAL's failures to <see cref="TokenException"/>.</summary>
    public static TokenException Map(Exception ex, string what, CancellationToken cancellationToken)
    {
        switch (ex)
        {
            case MsalServiceException service when service.StatusCode is 0 or 408 or 429 or >= 500:
                return new TokenException($"{what}: the token endpoint is unavailable ({service.StatusCode} {service.ErrorCode}: {AuthErrors.Short(service.Message)}); mail waits and is retried", service);
            case MsalServiceException service:
                string description = Description(service);
                return new TokenException($"{what} was refused: {service.ErrorCode}: {AuthErrors.Short(description)}. Fix: {AuthErrors.TokenFix(false, false, service.ErrorCode ?? string.Empty, description)}", true, service);
            case MsalClientException client when client.InnerException is HttpRequestException or TaskCanceledException || client.ErrorCode is "request_timeout" or "service_not_available":
                return new TokenException($"{what}: the token endpoint cannot be reached ({AuthErrors.Short(client.Message)}); mail waits and is retried", client);
            case MsalClientException client:
                return new TokenException($"{what} failed: {client.ErrorCode}: {AuthErrors.Short(client.Message)}", true, client);
            case HttpRequestException:
                return new TokenException($"{what}: the token endpoint cannot be reached ({ex.Message}); mail waits and is retried", ex);
            case TaskCanceledException when !cancellationToken.IsCancellationRequested:
                return new TokenException($"{what}: the token endpoint did not answer within Relay:Timeout; mail waits and is retried", ex);
            default:
                return new TokenException($"{what} failed: {ex.GetType().Name}: {ex.Message}", ex);
        }
    }

    // The endpoint's own words (AADSTS code and text) rather than MSAL's paragraph around them.
    private static string Description(MsalServiceException service)
    {
        try
        {
            if (service.ResponseBody is { Length: > 0 } body)
            {
                using var doc = System.Text.Json.JsonDocument.Parse(body);
                if (doc.RootElement.ValueKind == System.Text.Json.JsonValueKind.Object && doc.RootElement.TryGetProperty("error_description", out var d) && d.GetString() is { Length: > 0 } text)
                {
                    return text;
                }
            }
        }
        catch (System.Text.Json.JsonException)
        {
            // Not JSON: MSAL's message has the text too.
        }

        return service.Message ?? string.Empty;
    }

    // MSAL says when a token expires by the system clock; the relay keeps its own cache by the injected clock.
    public static AccessToken ToToken(AuthenticationResult result) => new(result.AccessToken, result.ExpiresOn - TimeProvider.System.GetUtcNow());
}

/// <summary>Exchange Online app-only: the client-credentials grant with a certificate or a client secret.</summary>
internal sealed class MsalClientCredentialsGrant : ITokenGrant
{
    private readonly IConfidentialClientApplication _app;
    private readonly string[] _scopes;
    private readonly X509Certificate2? _certificate;

    public MsalClientCredentialsGrant(RelayOptions relay, RelayHttp http)
    {
        var o = relay.OAuth2;
        var builder = Msal.Configure(ConfidentialClientApplicationBuilder.Create(o.ClientId), o, http);
        if (o.CertificatePath.Length > 0)
        {
            _certificate = ClientCertificate.Load(o);
            builder = builder.WithCertificate(_certificate, sendX5C: true);
            Describe = $"the client-credentials grant of app {o.ClientId} (certificate {_certificate.Thumbprint}) in tenant {o.TenantId}";
        }
        else
        {
            builder = builder.WithClientSecret(ClientSecrets.Read(o));
            Describe = $"the client-credentials grant of app {o.ClientId} (client secret) in tenant {o.TenantId}";
        }

        _app = builder.Build();
        _scopes = [o.EffectiveScope(relay.Auth)];
    }

    public string Describe { get; }

    public async Task<AccessToken> AcquireAsync(bool forceRefresh, CancellationToken cancellationToken)
    {
        try
        {
            var result = await _app.AcquireTokenForClient(_scopes).WithForceRefresh(forceRefresh).ExecuteAsync(cancellationToken).ConfigureAwait(false);
            return Msal.ToToken(result);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            throw Msal.Map(ex, "Token request (" + Describe + ")", cancellationToken);
        }
    }

    public void Dispose() => _certificate?.Dispose();
}

/// <summary>
/// A delegated Microsoft 365 sign-in: MSAL's token cache (refresh token included) lives encrypted in the
/// <see cref="TokenStore"/>, loaded before and saved after every MSAL access, so a rotated refresh token is kept.
/// </summary>
internal sealed class MsalDelegatedGrant : ITokenGrant
{
    private readonly IPublicClientApplication _app;
    private readonly string[] _scopes;
    private readonly string _user;
    private readonly TokenStore _store;
    private readonly string _clientId;

    public MsalDelegatedGrant(RelayOptions relay, RelayHttp http, TokenStore store)
    {
        var o = relay.OAuth2;
        _app = Msal.Configure(PublicClientApplicationBuilder.Create(o.ClientId), o, http).Build();
        _scopes = [o.EffectiveScope(relay.Auth)];
        _user = relay.User;
        _store = store;
        _clientId = o.ClientId;
        Describe = $"the stored Microsoft sign-in of {relay.User} (app {o.ClientId})";
        _app.UserTokenCache.SetBeforeAccess(args =>
        {
            StoredSignIn? stored;
            try
            {
                stored = StoredSignIn.Read(store, OAuth2Providers.Microsoft, o.ClientId);
            }
            catch (TokenException)
            {
                stored = null; // unusable (another client, another key): a sign-in starts afresh, AcquireAsync says why
            }

            args.TokenCache.DeserializeMsalV3(stored?.Msal is { } msal ? Convert.FromBase64String(msal) : null, shouldClearExistingCache: true);
        });
        _app.UserTokenCache.SetAfterAccess(args =>
        {
            if (args.HasStateChanged)
            {
                new StoredSignIn(OAuth2Providers.Microsoft, o.ClientId, relay.User, null, Convert.ToBase64String(args.TokenCache.SerializeMsalV3())).Write(store);
            }
        });
    }

    public string Describe { get; }

    public IPublicClientApplication App => _app;

    public IReadOnlyList<string> Scopes => _scopes;

    public async Task<AccessToken> AcquireAsync(bool forceRefresh, CancellationToken cancellationToken)
    {
        if (StoredSignIn.Read(_store, OAuth2Providers.Microsoft, _clientId) is null)
        {
            throw new TokenException($"no Microsoft sign-in is stored in {_store.Path}: run 'edgemail relay login' and sign in as {_user} (docs/relay-oauth2.md)", refused: true);
        }

        try
        {
            var accounts = (await _app.GetAccountsAsync().ConfigureAwait(false)).ToList();
            var account = accounts.FirstOrDefault(a => string.Equals(a.Username, _user, StringComparison.OrdinalIgnoreCase))
                ?? (accounts.Count == 1 ? accounts[0] : null)
                ?? throw new TokenException($"no Microsoft sign-in is stored for {_user}: run 'edgemail relay login' and sign in as {_user} (docs/relay-oauth2.md)", refused: true);
            var result = await _app.AcquireTokenSilent(_scopes, account).WithForceRefresh(forceRefresh).ExecuteAsync(cancellationToken).ConfigureAwait(false);
            return Msal.ToToken(result);
        }
        catch (Exception ex) when (ex is not TokenException && (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested))
        {
            throw Msal.Map(ex, "Token request (" + Describe + ")", cancellationToken);
        }
    }

    public void Dispose()
    {
    }
}

/// <summary>Reads the client secret from <c>Relay:OAuth2:ClientSecret</c> or <c>ClientSecretFile</c>.</summary>
internal static class ClientSecrets
{
    public static string Read(RelayOAuth2Options o) => o.ClientSecretFile.Length > 0 ? File.ReadAllText(o.ClientSecretFile).Trim() : o.ClientSecret;
}
