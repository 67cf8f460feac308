namespace EdgeMail.Gateway.Configuration;

/// <summary>The values of <c>Relay:Auth</c>.</summary>
public static class RelayAuthModes
{
    /// <summary>AUTH PLAIN or LOGIN with <c>Relay:User</c> and <c>Relay:Password</c>.</summary>
    public const string Password = "Password";

    /// <summary>Exchange Online app-only: the OAuth2 client-credentials grant (MSAL), certificate or client secret.</summary>
    public const string OAuth2ClientCredentials = "OAuth2ClientCredentials";

    /// <summary>Delegated sign-in (Microsoft 365 or Gmail): a refresh token from <c>edgemail relay login</c>, kept encrypted.</summary>
    public const string OAuth2RefreshToken = "OAuth2RefreshToken";

    /// <summary>Google Workspace domain-wide delegation: a service account's signed JWT exchanged for a token.</summary>
    public const string GoogleServiceAccount = "GoogleServiceAccount";

    /// <summary>Every mode.</summary>
    public static readonly IReadOnlyList<string> All = [Password, OAuth2ClientCredentials, OAuth2RefreshToken, GoogleServiceAccount];

    /// <summary>Whether <paramref name="mode"/> sends an OAuth2 bearer token (XOAUTH2) instead of a password.</summary>
    /// <param name="mode">A value of <c>Relay:Auth</c>.</param>
    /// <returns>True for the OAuth2 modes.</returns>
    public static bool IsOAuth2(string mode) => All.Contains(mode, StringComparer.OrdinalIgnoreCase) && !Password.Equals(mode, StringComparison.OrdinalIgnoreCase);
}

/// <summary>Identity providers for <c>Relay:OAuth2:Provider</c>.</summary>
public static class OAuth2Providers
{
    /// <summary>Microsoft Entra ID (Exchange Online, Microsoft 365).</summary>
    public const string Microsoft = "Microsoft";

    /// <summary>Google (Gmail, Google Workspace).</summary>
    public const string Google = "Google";
}

/// <summary>
/// Token settings for the OAuth2 relay modes (configuration section <c>Relay:OAuth2</c>). Endpoints default to the
/// providers' public ones; point them elsewhere for a sovereign cloud (or a test server).
/// </summary>
public sealed class RelayOAuth2Options
{
    /// <summary>Public Microsoft authority host.</summary>
    public const string MicrosoftAuthority = "https://login.microsoftonline.com";

    /// <summary>Google's token endpoint.</summary>
    public const string GoogleTokenEndpoint = "https://oauth2.googleapis.com/token";

    /// <summary>Google's authorization endpoint (the browser sign-in of <c>edgemail relay login</c>).</summary>
    public const string GoogleAuthorizationEndpoint = "https://accounts.google.com/o/oauth2/v2/auth";

    /// <summary>Scope of Exchange Online's app-only SMTP token.</summary>
    public const string ExchangeAppScope = "https://outlook.office365.com/.default";

    /// <summary>Scope of Microsoft's delegated SMTP token.</summary>
    public const string ExchangeDelegatedScope = "https://outlook.office.com/SMTP.Send";

    /// <summary>Scope Gmail requires for SMTP (also the one to allow for domain-wide delegation).</summary>
    public const string GmailScope = "https://mail.google.com/";

    /// <summary><c>Microsoft</c> or <c>Google</c>: whose sign-in <c>OAuth2RefreshToken</c> uses (the other modes imply it).</summary>
    public string Provider { get; set; } = OAuth2Providers.Microsoft;

    /// <summary>Microsoft: the directory (tenant) id or a verified domain of the tenant.</summary>
    public string TenantId { get; set; } = string.Empty;

    /// <summary>The application (client) id (Microsoft) or the OAuth client id (Google).</summary>
    public string ClientId { get; set; } = string.Empty;

    /// <summary>The client secret; prefer a certificate (Microsoft) or <see cref="ClientSecretFile"/>.</summary>
    public string ClientSecret { get; set; } = string.Empty;

    /// <summary>A file holding the client secret (e.g. a systemd credential), read at start.</summary>
    public string ClientSecretFile { get; set; } = string.Empty;

    /// <summary>Microsoft client credentials: a PKCS#12 file, or a PEM certificate with <see cref="CertificateKeyPath"/>.</summary>
    public string CertificatePath { get; set; } = string.Empty;

    /// <summary>Password of the PKCS#12 file.</summary>
    public string CertificatePassword { get; set; } = string.Empty;

    /// <summary>PEM private key of a PEM <see cref="CertificatePath"/>.</summary>
    public string CertificateKeyPath { get; set; } = string.Empty;

    /// <summary>Google service account: the JSON key file downloaded from the Cloud console.</summary>
    public string ServiceAccountKeyFile { get; set; } = string.Empty;

    /// <summary>Microsoft authority host; the tenant is appended.</summary>
    public string Authority { get; set; } = MicrosoftAuthority;

    /// <summary>Google token endpoint; empty for the public one (or the service account key's <c>token_uri</c>).</summary>
    public string TokenEndpoint { get; set; } = string.Empty;

    /// <summary>Google authorization endpoint for the browser sign-in; empty for the public one.</summary>
    public string AuthorizationEndpoint { get; set; } = string.Empty;

    /// <summary>Token scope; empty for the mode's default.</summary>
    public string Scope { get; set; } = string.Empty;

    /// <summary>Where the encrypted refresh token lives; empty for <c>DataDirectory/relay-oauth2.token</c>.</summary>
    public string TokenStore { get; set; } = string.Empty;

    /// <summary>
    /// The 256-bit key that encrypts the token store; empty for the systemd credential <c>edgemail-relay-key</c>
    /// when the service has one, else <c>DataDirectory/relay-oauth2.key</c> (created with mode 600).
    /// </summary>
    public string KeyFile { get; set; } = string.Empty;

    /// <summary>A token is renewed this long before it expires.</summary>
    public TimeSpan RefreshBefore { get; set; } = TimeSpan.FromMinutes(5);

    /// <summary>
    /// After the provider refused the grant (revoked, misconfigured), it is asked again at most this often; the mail
    /// waits meanwhile (deferred, never failed for it).
    /// </summary>
    public TimeSpan GrantRetryInterval { get; set; } = TimeSpan.FromMinutes(1);

    /// <summary>The scope actually requested.</summary>
    /// <param name="mode">The value of <c>Relay:Auth</c>.</param>
    /// <returns>The configured scope, or the mode's default.</returns>
    public string EffectiveScope(string mode)
    {
        if (Scope.Length > 0)
        {
            return Scope;
        }

        if (RelayAuthModes.OAuth2ClientCredentials.Equals(mode, StringComparison.OrdinalIgnoreCase))
        {
            return ExchangeAppScope;
        }

        return IsGoogle(mode) ? GmailScope : ExchangeDelegatedScope;
    }

    /// <summary>Whether the mode talks to Google.</summary>
    /// <param name="mode">The value of <c>Relay:Auth</c>.</param>
    /// <returns>True for Google.</returns>
    public bool IsGoogle(string mode) => RelayAuthModes.GoogleServiceAccount.Equals(mode, StringComparison.OrdinalIgnoreCase)
        || (RelayAuthModes.OAuth2RefreshToken.Equals(mode, StringComparison.OrdinalIgnoreCase) && OAuth2Providers.Google.Equals(Provider, StringComparison.OrdinalIgnoreCase));
}

/// <summary>
/// A provider's sending limits (configuration section <c>Relay:Limits</c>): mail past them waits in the spool until
/// the window allows it, and is never failed for it. A value left empty comes from the preset; 0 means no limit.
/// </summary>
public sealed class RelayLimitsOptions
{
    /// <summary>Preset names.</summary>
    public static readonly IReadOnlyList<string> Presets = ["None", "ExchangeOnline", "Google"];

    /// <summary><c>None</c>, <c>ExchangeOnline</c> (30 messages a minute, 10,000 recipients a day, 500 recipients a message) or <c>Google</c> (2,000 messages and 10,000 recipients a day, 100 recipients a message).</summary>
    public string Preset { get; set; } = "None";

    /// <summary>Messages a minute (sliding window).</summary>
    public int? MessagesPerMinute { get; set; }

    /// <summary>Messages in any 24 hours.</summary>
    public int? MessagesPerDay { get; set; }

    /// <summary>Recipients in any 24 hours.</summary>
    public int? RecipientsPerDay { get; set; }

    /// <summary>Recipients in one SMTP transaction; a mail to more goes out in several.</summary>
    public int? RecipientsPerMessage { get; set; }

    /// <summary>While mail is held back by a limit, the storm window (<c>Storm:Window</c>) is this many times longer, so repeats become fewer, larger digests.</summary>
    public double StormWindowFactor { get; set; } = 6;

    /// <summary>The limits in force.</summary>
    /// <returns>Each limit, 0 for none.</returns>
    public (int MessagesPerMinute, int MessagesPerDay, int RecipientsPerDay, int RecipientsPerMessage) Effective()
    {
        var preset = Preset.ToUpperInvariant() switch
        {
            "EXCHANGEONLINE" => (30, 0, 10_000, 500),
            "GOOGLE" => (0, 2_000, 10_000, 100),
            _ => (0, 0, 0, 0),
        };
        return (MessagesPerMinute ?? preset.Item1, MessagesPerDay ?? preset.Item2, RecipientsPerDay ?? preset.Item3, RecipientsPerMessage ?? preset.Item4);
    }
}
