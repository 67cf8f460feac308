namespace EdgeMail.Gateway.Relay.OAuth2;

/// <summary>
/// Turns what a provider answered — an SMTP reply (<c>535 5.7.3</c>, <c>550 5.7.30</c>, <c>530 5.7.57</c>, Gmail's
/// <c>5.7.8</c>) or a token endpoint error (<c>invalid_client</c>, <c>AADSTS…</c>, Google's <c>unauthorized_client</c>)
/// — into one sentence that says what to fix and where. docs/relay-oauth2.md has the same steps at length.
/// </summary>
public static class AuthErrors
{
    private const string Doc = " (docs/relay-oauth2.md)";

    private static readonly (string Code, string Fix)[] TokenCodes =
    [
        ("AADSTS7000215", "Relay:OAuth2:ClientSecret is wrong: give the secret's Value (shown once when it was created), not its Secret ID"),
        ("AADSTS7000222", "the client secret has expired: create a new one under Certificates & secrets, or better, use a certificate (Relay:OAuth2:CertificatePath)"),
        ("AADSTS700027", "the certificate is not the app's: upload its public part (.cer) under the app registration's Certificates & secrets, and check Relay:OAuth2:CertificatePath names that certificate"),
        ("AADSTS700024", "the client assertion is outside its valid time: the gateway's clock is off; fix NTP"),
        ("AADSTS700016", "Relay:OAuth2:ClientId is not an application in tenant Relay:OAuth2:TenantId: check both on the app registration's overview page"),
        ("AADSTS90002", "Relay:OAuth2:TenantId names no tenant: give the directory (tenant) id from the app registration's overview page"),
        ("AADSTS70011", "the scope is wrong: leave Relay:OAuth2:Scope empty (app-only uses https://outlook.office365.com/.default, delegated https://outlook.office.com/SMTP.Send)"),
        ("AADSTS65001", "the permission has not been consented: grant admin consent for SMTP.SendAsApp (app-only) or SMTP.Send (delegated) under API permissions"),
        ("AADSTS500011", "the tenant has no Exchange Online service principal: the tenant needs an Exchange Online licence"),
        ("AADSTS7000112", "the application is disabled in the tenant: enable it under Enterprise applications > Properties"),
        ("AADSTS700082", "the stored sign-in expired after long inactivity: run 'edgemail relay login' again"),
        ("AADSTS70008", "the stored sign-in has expired: run 'edgemail relay login' again"),
        ("AADSTS50173", "the stored sign-in was revoked (password changed or sessions revoked): run 'edgemail relay login' again"),
        ("AADSTS70043", "a conditional access sign-in frequency policy expired the sign-in: run 'edgemail relay login' again, or use OAuth2ClientCredentials"),
        ("AADSTS50076", "multi-factor authentication is now required: run 'edgemail relay login' again"),
        ("AADSTS50079", "multi-factor authentication registration is required: complete it, then run 'edgemail relay login' again"),
        ("AADSTS53003", "a conditional access policy blocks the sign-in: exclude this app or account from it, or use OAuth2ClientCredentials"),
        ("AADSTS50034", "the account does not exist in the tenant: sign in with Relay:User"),
        ("AADSTS50057", "the account is disabled: enable it or sign in with another mailbox"),
    ];

    /// <summary>The fix for a token endpoint's error.</summary>
    /// <param name="google">True for Google's endpoint.</param>
    /// <param name="serviceAccount">True for a Google service account (domain-wide delegation).</param>
    /// <param name="error">The OAuth2 <c>error</c> (e.g. <c>invalid_client</c>).</param>
    /// <param name="description">The <c>error_description</c> (AADSTS code and text), may be empty.</param>
    /// <returns>What to do.</returns>
    public static string TokenFix(bool google, bool serviceAccount, string error, string description)
    {
        ArgumentNullException.ThrowIfNull(error);
        ArgumentNullException.ThrowIfNull(description);
        foreach (var (code, fix) in TokenCodes)
        {
            if (description.Contains(code, StringComparison.Ordinal))
            {
                return fix + Doc;
            }
        }

        string e = error.ToUpperInvariant();
        if (google)
        {
            return e switch
            {
                "UNAUTHORIZED_CLIENT" when serviceAccount => "domain-wide delegation is not set up: in the Google Admin console (Security > Access and data control > API controls > Domain-wide delegation) add the service account's client id with the scope https://mail.google.com/" + Doc,
                "INVALID_GRANT" when serviceAccount && description.Contains("JWT Signature", StringComparison.OrdinalIgnoreCase) => "the service account key was deleted or replaced: download a new JSON key into Relay:OAuth2:ServiceAccountKeyFile" + Doc,
                "INVALID_GRANT" when serviceAccount && description.Contains("time", StringComparison.OrdinalIgnoreCase) => "the signed assertion's time is off: fix the gateway's clock (NTP)" + Doc,
                "INVALID_GRANT" when serviceAccount => "Google refused to issue a token for Relay:User: it must be a user of the Workspace domain that delegated to the service account" + Doc,
                "INVALID_GRANT" => "the stored sign-in was revoked or has expired (an OAuth consent screen in Testing status expires it after 7 days: publish the app): run 'edgemail relay login' again" + Doc,
                "INVALID_CLIENT" or "DELETED_CLIENT" => "Relay:OAuth2:ClientId or ClientSecret is wrong, or the OAuth client was deleted: check them under APIs & Services > Credentials" + Doc,
                "ACCESS_DENIED" or "ADMIN_POLICY_ENFORCED" or "ORG_INTERNAL" => "the Workspace administrator blocks this app: mark it Trusted under API controls > App access control" + Doc,
                "INVALID_SCOPE" => "the scope is wrong: leave Relay:OAuth2:Scope empty for https://mail.google.com/" + Doc,
                _ => "check Relay:OAuth2 against the Google Cloud console" + Doc,
            };
        }

        return e switch
        {
            "INVALID_CLIENT" => "the app's credential was refused: check Relay:OAuth2:ClientId, and the client secret or certificate registered under Certificates & secrets" + Doc,
            "UNAUTHORIZED_CLIENT" => "the app may not use this grant: check Relay:OAuth2:ClientId and, for sign-in, allow public client flows under Authentication" + Doc,
            "INVALID_GRANT" or "INTERACTION_REQUIRED" => "the stored sign-in is no longer valid: run 'edgemail relay login' again" + Doc,
            "INVALID_SCOPE" => "the scope is wrong: leave Relay:OAuth2:Scope empty" + Doc,
            "CONSENT_REQUIRED" => "grant admin consent under API permissions" + Doc,
            _ => "check Relay:OAuth2 against the app registration" + Doc,
        };
    }

    /// <summary>The fix for an SMTP reply that refuses the gateway's authentication or sender, or null when the reply is about something else.</summary>
    /// <param name="reply">The reply text, with its code (e.g. <c>535 5.7.3 Authentication unsuccessful</c>).</param>
    /// <param name="google">True when the relay is Google's.</param>
    /// <param name="appOnly">True for Exchange app-only (client credentials), false for a delegated sign-in or a password.</param>
    /// <param name="oauth2">True when the gateway sent a token, false for a password.</param>
    /// <returns>What to do, or null.</returns>
    public static string? SmtpFix(string reply, bool google, bool appOnly, bool oauth2)
    {
        ArgumentNullException.ThrowIfNull(reply);
        bool Has(string s) => reply.Contains(s, StringComparison.OrdinalIgnoreCase);
        if (Has("5.7.30") || (Has("basic authentication") && Has("disabled")))
        {
            return "the provider no longer accepts passwords: set Relay:Auth to OAuth2ClientCredentials (Exchange Online) or OAuth2RefreshToken / GoogleServiceAccount" + Doc;
        }

        if (Has("5.7.9") || Has("application-specific password"))
        {
            return "Google wants OAuth2, not a password: set Relay:Auth to GoogleServiceAccount or OAuth2RefreshToken" + Doc;
        }

        if (Has("5.7.139") || Has("SmtpClientAuthentication"))
        {
            return "SMTP AUTH is disabled for the mailbox or the tenant: Set-CASMailbox -Identity <Relay:User> -SmtpClientAuthenticationDisabled $false (and check security defaults)" + Doc;
        }

        if (Has("5.7.60") || Has("SendAsDenied") || Has("send as this sender"))
        {
            return "the mailbox may not send as Sender:Address: make Sender:Address the mailbox Relay:User, or Add-RecipientPermission -Identity <Sender:Address> -Trustee <Relay:User or the app> -AccessRights SendAs" + Doc;
        }

        if (google && (Has("5.7.8") || Has("5.7.14") || Has("535")))
        {
            return oauth2
                ? "Gmail refused the token for Relay:User: for a service account, domain-wide delegation must list its client id with https://mail.google.com/ and Relay:User must be in that domain; for a sign-in, Relay:User must be the account that signed in" + Doc
                : "Gmail refused the password: Google accepts OAuth2 only; set Relay:Auth to GoogleServiceAccount or OAuth2RefreshToken" + Doc;
        }

        if (Has("5.7.3") || Has("5.7.57") || Has("535") || Has("530 "))
        {
            if (!oauth2)
            {
                return "the smarthost refused Relay:User and Relay:Password: check them; Microsoft 365 and Gmail need OAuth2 (Relay:Auth)" + Doc;
            }

            return appOnly
                ? "Exchange Online refused the app's token for Relay:User; check, in order: the app has the Office 365 Exchange Online application permission SMTP.SendAsApp with admin consent; the Exchange service principal was registered with the *enterprise application's* object id (New-ServicePrincipal -AppId <client id> -ObjectId <enterprise app object id>); Add-MailboxPermission -Identity <Relay:User> -User <service principal id> -AccessRights FullAccess; SMTP AUTH is enabled for the mailbox (Set-CASMailbox -Identity <Relay:User> -SmtpClientAuthenticationDisabled $false)" + Doc
                : "Exchange Online refused the signed-in token for Relay:User: the account that ran 'edgemail relay login' must be Relay:User (or have Send As on it), SMTP.Send must be consented, and SMTP AUTH enabled for the mailbox (Set-CASMailbox -Identity <Relay:User> -SmtpClientAuthenticationDisabled $false)" + Doc;
        }

        return null;
    }

    /// <summary>Whether a refusal at MAIL FROM or DATA is about the gateway's own sign-in or sender rights, or a provider quota — things an operator fixes (or time heals), not the recipient: the mail is deferred, not bounced.</summary>
    /// <param name="reply">The reply text with its code.</param>
    /// <returns>True for such refusals.</returns>
    public static bool IsSenderSide(string reply)
    {
        ArgumentNullException.ThrowIfNull(reply);
        string[] markers = ["5.7.57", "5.7.30", "5.7.3 ", "5.7.139", "5.7.60", "SendAsDenied", "5.7.8", "5.7.0 Authentication Required", "5.4.5", "SubmissionQuotaExceeded", "5.2.2 Submission quota"];
        return markers.Any(m => reply.Contains(m, StringComparison.OrdinalIgnoreCase));
    }

    /// <summary>The first line of an endpoint's error description, without the trace and correlation ids Microsoft appends.</summary>
    /// <param name="description">The description.</param>
    /// <returns>A short text.</returns>
    public static string Short(string? description)
    {
        if (string.IsNullOrEmpty(description))
        {
            return string.Empty;
        }

        string s = description.Split('\n')[0].Trim();
        int trace = s.IndexOf(" Trace ID:", StringComparison.Ordinal);
        if (trace > 0)
        {
            s = s[..trace];
        }

        return s.Length > 300 ? s[..300] + "..." : s;
    }
}
