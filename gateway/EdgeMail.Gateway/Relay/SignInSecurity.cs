using System.Net;
using EdgeMail.Gateway.Configuration;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// The one rule on where the smarthost credentials may go: a password or a bearer token is sent only on an encrypted
/// session, or (a password) to a relay on this machine (127.0.0.0/8, ::1, localhost: a local Postfix), where it crosses
/// no network. What the configuration makes certain is refused at start (<see cref="StartProblem"/>); what only the server's EHLO
/// reply shows (<c>Relay:Security</c> StartTlsWhenAvailable against a server without STARTTLS, or an attacker who
/// strips it) is checked before each AUTH (<see cref="Withheld"/>). Postfix's client refuses the same by default
/// (<c>smtp_sasl_security_options = noplaintext</c>).
/// </summary>
internal static class SignInSecurity
{
    private const string Fix = "use StartTls (port 587) or Tls (port 465); a relay without TLS gets the password only on this machine (Relay:Host 127.0.0.1, ::1 or localhost)";

    /// <summary>Whether the host is this machine: a loopback address or <c>localhost</c>.</summary>
    /// <param name="host">Relay:Host as configured.</param>
    /// <returns>True for 127.0.0.0/8, ::1 and localhost.</returns>
    public static bool IsLoopback(string host) =>
        host.TrimEnd('.').Equals("localhost", StringComparison.OrdinalIgnoreCase)
        || (IPAddress.TryParse(host.AsSpan().Trim("[]"), out var address) && IPAddress.IsLoopback(address));

    /// <summary>Relay:Security's problem at start, when the configuration would send the credentials in clear text.</summary>
    /// <param name="relay">The relay options.</param>
    /// <returns>The problem and its fix for <c>Relay:Security</c>; null when there is none.</returns>
    public static (string Problem, string Fix)? StartProblem(RelayOptions relay)
    {
        if (!string.Equals(relay.Mode, "Smarthost", StringComparison.OrdinalIgnoreCase))
        {
            return null;
        }

        bool none = string.Equals(relay.Security, "None", StringComparison.OrdinalIgnoreCase);
        bool whenAvailable = string.Equals(relay.Security, "StartTlsWhenAvailable", StringComparison.OrdinalIgnoreCase);

        // The providers the OAuth2 modes are for (Exchange Online, Gmail) are never on this machine and always offer
        // STARTTLS: for a bearer token either setting can only be a mistake, so it is refused at start wherever Relay:Host is.
        if (RelayAuthModes.IsOAuth2(relay.Auth))
        {
            return none || whenAvailable ? ($"is {relay.Security}, which could send the bearer token in clear text", Fix) : null;
        }

        return none && relay.User.Length > 0 && !IsLoopback(relay.Host)
            ? ($"is None, which would send the password in clear text to {relay.Host}", Fix)
            : null;
    }

    /// <summary>Why the credentials are not sent on this session, or null when they may be.</summary>
    /// <param name="relay">The relay options.</param>
    /// <param name="host">The relay's host.</param>
    /// <param name="port">The relay's port.</param>
    /// <param name="encrypted">Whether the session is under TLS (MailKit's <c>IsSecure</c>).</param>
    /// <returns>The reason for the deferral, naming the fix; null when the session is encrypted or the relay is local.</returns>
    public static string? Withheld(RelayOptions relay, string host, int port, bool encrypted) =>
        encrypted || IsLoopback(host)
            ? null
            : $"{host}:{port} did not offer TLS (no STARTTLS), so {(RelayAuthModes.IsOAuth2(relay.Auth) ? "the bearer token" : "the password")} was not sent (Relay:Security is {relay.Security}). "
              + "Fix: enable STARTTLS at the relay and set Relay:Security to StartTls, or use Tls (port 465)";
}
