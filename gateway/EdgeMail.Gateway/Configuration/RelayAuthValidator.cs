using EdgeMail.Gateway.Relay.OAuth2;
using MimeKit;

namespace EdgeMail.Gateway.Configuration;

/// <summary>Checks <c>Relay:Auth</c>, <c>Relay:OAuth2</c> and <c>Relay:Limits</c>; part of <see cref="GatewayOptionsValidator"/>.</summary>
internal static class RelayAuthValidator
{
    public static void Validate(RelayOptions relay, Action<string, string, string> add)
    {
        ValidateLimits(relay.Limits, add);
        if (!RelayAuthModes.All.Contains(relay.Auth, StringComparer.OrdinalIgnoreCase))
        {
            add("Relay:Auth", $"'{relay.Auth}' is not an authentication mode", "use " + string.Join(", ", RelayAuthModes.All));
            return;
        }

        if (!RelayAuthModes.IsOAuth2(relay.Auth))
        {
            return;
        }

        var o = relay.OAuth2;
        if (!string.Equals(relay.Mode, "Smarthost", StringComparison.OrdinalIgnoreCase))
        {
            add("Relay:Auth", $"is {relay.Auth} but Relay:Mode is {relay.Mode}", "set Relay:Mode to Smarthost (e.g. smtp.office365.com or smtp.gmail.com, port 587)");
        }

        if (!MailboxAddress.TryParse(relay.User, out var user) || user.Address.IndexOf('@', StringComparison.Ordinal) < 1)
        {
            add("Relay:User", $"'{relay.User}' is not a mailbox address but Relay:Auth is {relay.Auth}", "give the mailbox the gateway sends as, e.g. alerts@example.com (the token is for it)");
        }

        if (relay.AuthMechanism.Length > 0)
        {
            add("Relay:AuthMechanism", $"is {relay.AuthMechanism} but Relay:Auth is {relay.Auth}, which always uses XOAUTH2", "leave Relay:AuthMechanism empty");
        }

        CheckUri("Relay:OAuth2:Authority", o.Authority, add);
        CheckUri("Relay:OAuth2:TokenEndpoint", o.TokenEndpoint, add);
        CheckUri("Relay:OAuth2:AuthorizationEndpoint", o.AuthorizationEndpoint, add);
        if (o.RefreshBefore < TimeSpan.Zero || o.RefreshBefore > TimeSpan.FromMinutes(30))
        {
            add("Relay:OAuth2:RefreshBefore", $"{o.RefreshBefore} is outside 0..30 min", "use e.g. 00:05:00");
        }

        if (o.GrantRetryInterval <= TimeSpan.Zero)
        {
            add("Relay:OAuth2:GrantRetryInterval", "must be positive", "use e.g. 00:01:00");
        }

        switch (relay.Auth.ToUpperInvariant())
        {
            case "OAUTH2CLIENTCREDENTIALS":
                Require("Relay:OAuth2:TenantId", o.TenantId, "give the directory (tenant) id from the app registration's overview page", add);
                Require("Relay:OAuth2:ClientId", o.ClientId, "give the application (client) id from the app registration's overview page", add);
                ValidateClientCredential(o, add);
                break;
            case "OAUTH2REFRESHTOKEN":
                Require("Relay:OAuth2:ClientId", o.ClientId, "give the client id of the app registration (Microsoft) or of the Desktop-app OAuth client (Google)", add);
                if (OAuth2Providers.Google.Equals(o.Provider, StringComparison.OrdinalIgnoreCase))
                {
                    if (o.ClientSecret.Length == 0 && o.ClientSecretFile.Length == 0)
                    {
                        add("Relay:OAuth2:ClientSecret", "is empty but Google's desktop-app clients need their secret", "give the client secret shown with the OAuth client id (or Relay:OAuth2:ClientSecretFile)");
                    }

                    CheckFile("Relay:OAuth2:ClientSecretFile", o.ClientSecretFile, add);
                }
                else if (OAuth2Providers.Microsoft.Equals(o.Provider, StringComparison.OrdinalIgnoreCase))
                {
                    Require("Relay:OAuth2:TenantId", o.TenantId, "give the directory (tenant) id, or \"organizations\"", add);
                }
                else
                {
                    add("Relay:OAuth2:Provider", $"'{o.Provider}' is not a provider", "use Microsoft or Google");
                }

                break;
            case "GOOGLESERVICEACCOUNT":
                if (o.ServiceAccountKeyFile.Length == 0)
                {
                    add("Relay:OAuth2:ServiceAccountKeyFile", "is empty but Relay:Auth is GoogleServiceAccount", "give the service account's JSON key file (Cloud console > IAM > Service accounts > Keys)");
                }
                else if (!GoogleServiceAccountKey.TryLoad(o.ServiceAccountKeyFile, out _, out string problem))
                {
                    add("Relay:OAuth2:ServiceAccountKeyFile", problem, "give the JSON key file of the service account as downloaded (type service_account, with client_email and private_key)");
                }

                break;
        }
    }

    private static void ValidateClientCredential(RelayOAuth2Options o, Action<string, string, string> add)
    {
        int given = (o.CertificatePath.Length > 0 ? 1 : 0) + (o.ClientSecret.Length > 0 ? 1 : 0) + (o.ClientSecretFile.Length > 0 ? 1 : 0);
        if (given != 1)
        {
            add("Relay:OAuth2:CertificatePath", given == 0 ? "is empty and so are ClientSecret and ClientSecretFile" : "is one of several client credentials given (CertificatePath, ClientSecret, ClientSecretFile)",
                "give exactly one: a certificate (preferred; upload its public part under Certificates & secrets) or a client secret");
            return;
        }

        CheckFile("Relay:OAuth2:ClientSecretFile", o.ClientSecretFile, add);
        if (o.CertificatePath.Length > 0)
        {
            try
            {
                using var certificate = ClientCertificate.Load(o);
            }
            catch (InvalidOperationException ex)
            {
                add("Relay:OAuth2:CertificatePath", ex.Message, "give a PKCS#12 file with its private key (and Relay:OAuth2:CertificatePassword), or a PEM certificate with Relay:OAuth2:CertificateKeyPath");
            }
        }
    }

    private static void ValidateLimits(RelayLimitsOptions limits, Action<string, string, string> add)
    {
        if (!RelayLimitsOptions.Presets.Contains(limits.Preset, StringComparer.OrdinalIgnoreCase))
        {
            add("Relay:Limits:Preset", $"'{limits.Preset}' is not a preset", "use None, ExchangeOnline or Google");
        }

        foreach (var (key, value) in new[]
        {
            ("MessagesPerMinute", limits.MessagesPerMinute), ("MessagesPerDay", limits.MessagesPerDay),
            ("RecipientsPerDay", limits.RecipientsPerDay), ("RecipientsPerMessage", limits.RecipientsPerMessage),
        })
        {
            if (value < 0)
            {
                add("Relay:Limits:" + key, $"{value} is negative", "give a limit, 0 for none, or leave it empty for the preset's");
            }
        }

        if (!(limits.StormWindowFactor >= 1 && limits.StormWindowFactor <= 100))
        {
            add("Relay:Limits:StormWindowFactor", $"{limits.StormWindowFactor} is outside 1..100", "use e.g. 6 (a 10-minute storm window becomes an hour while mail is held back), or 1 to keep it");
        }
    }

    private static void Require(string key, string value, string fix, Action<string, string, string> add)
    {
        if (string.IsNullOrWhiteSpace(value))
        {
            add(key, "is empty", fix);
        }
    }

    private static void CheckFile(string key, string path, Action<string, string, string> add)
    {
        if (path.Length > 0 && !File.Exists(path))
        {
            add(key, $"'{path}' does not exist", "give a file readable by the gateway");
        }
    }

    private static void CheckUri(string key, string value, Action<string, string, string> add)
    {
        if (value.Length > 0 && (!Uri.TryCreate(value, UriKind.Absolute, out var uri) || uri.Scheme != Uri.UriSchemeHttps))
        {
            add(key, $"'{value}' is not an https URL", "give an https URL, or leave it empty for the provider's public endpoint");
        }
    }
}
