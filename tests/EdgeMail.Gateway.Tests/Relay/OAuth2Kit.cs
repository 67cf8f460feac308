using System.Text;
using EdgeMail.Gateway.Spool;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>Relay configuration and mail for the OAuth2 tests: a token server, an XOAUTH2 smarthost, an Exchange-style app.</summary>
internal static class OAuth2Kit
{
    public const string Mailbox = "alerts@contoso.test";
    public const string AppId = "3f7e2a10-app";
    public const string AppSecret = "app-secret-Value~9f2";

    /// <summary>A token server with the Exchange app registered (its secret; mailbox permission on <see cref="Mailbox"/> unless not).</summary>
    public static async Task<TokenServer> ExchangeAsync(bool mailboxPermission = true)
    {
        var server = await TokenServer.StartAsync();
        server.AddApp(AppId, AppSecret, null, mailboxPermission ? [Mailbox] : []);
        return server;
    }

    public static Dictionary<string, object> OAuth2(TokenServer tokens, string clientId = AppId, string? secret = AppSecret) => new()
    {
        ["TenantId"] = TokenServer.Tenant, ["ClientId"] = clientId, ["ClientSecret"] = secret ?? string.Empty, ["Authority"] = tokens.Authority,
        ["TokenEndpoint"] = tokens.GoogleTokenEndpoint, ["AuthorizationEndpoint"] = tokens.GoogleAuthorizationEndpoint, ["GrantRetryInterval"] = "00:00:00.050",
    };

    public static Dictionary<string, object> Relay(XOAuth2SmtpServer smtp, Dictionary<string, object> oauth2, string auth = "OAuth2ClientCredentials",
        string[]? backoff = null, int concurrency = 2, object? limits = null) => new()
    {
        ["Mode"] = "Smarthost", ["Host"] = "127.0.0.1", ["Port"] = smtp.Port, ["Security"] = "StartTls", ["AcceptAnyCertificate"] = true,
        ["Auth"] = auth, ["User"] = Mailbox, ["Backoff"] = backoff ?? ["00:00:00.100"], ["Concurrency"] = concurrency, ["Timeout"] = "00:00:05",
        ["OAuth2"] = oauth2, ["Limits"] = limits ?? new Dictionary<string, object>(),
    };

    public static NewMessage Mail(string id, params string[] to)
    {
        string[] recipients = to.Length > 0 ? to : ["alice@example.com"];
        string mime = $"From: EdgeMail <edgemail@gw.test>\r\nTo: {string.Join(", ", recipients)}\r\nSubject: test {id}\r\nMessage-ID: <{id}@gw.test>\r\n"
            + "Date: Sat, 28 Nov 2026 09:58:12 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody of " + id + "\r\n";
        return new NewMessage("relay", "dev-1", null, id + "@gw.test", "edgemail@gw.test", recipients, Encoding.UTF8.GetBytes(mime));
    }
}
