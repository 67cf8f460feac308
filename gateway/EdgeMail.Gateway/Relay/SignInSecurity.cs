using System.Net;
using System.Net.Sockets;
using EdgeMail.Gateway.Configuration;
using MailKit.Net.Smtp;
using MailKit.Security;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// The one rule on where the smarthost credentials may go: a password or a bearer token is sent only on an encrypted
/// session, or (a password) to a relay on this machine, where it crosses no network. "On this machine" is the address
/// the session is connected to (127.0.0.0/8, ::1), whatever <c>Relay:Host</c> calls it: <c>localhost</c>, a name in
/// /etc/hosts, an address. What the configuration makes certain is refused at start (<see cref="StartProblem"/>); what
/// only the connection shows — the address it reached, and whether the server's EHLO reply offered STARTTLS
/// (<c>Relay:Security</c> StartTlsWhenAvailable against a server without it, or an attacker who strips it) — is checked
/// before each AUTH (<see cref="Withheld"/>, on a connection made by <see cref="ConnectAsync"/>). Postfix's client
/// refuses the same by default (<c>smtp_sasl_security_options = noplaintext</c>).
/// </summary>
internal static class SignInSecurity
{
    private const string Fix = "use StartTls (port 587) or Tls (port 465); a relay without TLS gets the password only on this machine (Relay:Host 127.0.0.1, ::1, localhost or a name that resolves to one of them)";

    /// <summary>Whether the host as configured is this machine by its spelling alone: a loopback address or <c>localhost</c>.</summary>
    /// <param name="host">Relay:Host as configured.</param>
    /// <returns>True for 127.0.0.0/8, ::1 and localhost.</returns>
    public static bool IsLoopback(string host) =>
        host.TrimEnd('.').Equals("localhost", StringComparison.OrdinalIgnoreCase)
        || (IPAddress.TryParse(host.AsSpan().Trim("[]"), out var address) && IsLoopback(address));

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

        return none && relay.User.Length > 0 && !MayBeLocal(relay.Host)
            ? ($"is None, which would send the password in clear text to {relay.Host}", Fix)
            : null;
    }

    /// <summary>
    /// Connects <paramref name="client"/> to the relay on a socket opened here, so that the address the session reached is
    /// known (MailKit does not tell it): the host's addresses are tried in turn, each connect bounded by the client's
    /// <c>Timeout</c>, as MailKit's own <c>ConnectAsync(host, ...)</c> does.
    /// </summary>
    /// <param name="client">The client, not connected, its <c>Timeout</c> set.</param>
    /// <param name="host">Relay:Host.</param>
    /// <param name="port">Relay:Port.</param>
    /// <param name="security">TLS mode.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The address the session is connected to.</returns>
    /// <exception cref="TimeoutException">No address of the host answered within the timeout.</exception>
    public static async Task<IPAddress> ConnectAsync(SmtpClient client, string host, int port, SecureSocketOptions security, CancellationToken cancellationToken)
    {
        // MailKit's stream bounds each read and write (asynchronous ones too, the TLS handshake's among them) by these.
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { ReceiveTimeout = client.Timeout, SendTimeout = client.Timeout };
        try
        {
            using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
            {
                timeout.CancelAfter(client.Timeout);
                try
                {
                    await socket.ConnectAsync(host, port, timeout.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    throw new TimeoutException($"{host}:{port} did not accept the connection within {client.Timeout} ms (Relay:Timeout)");
                }
            }

            var remote = ((IPEndPoint)socket.RemoteEndPoint!).Address;
            await client.ConnectAsync(socket, host, port, security, cancellationToken).ConfigureAwait(false);
            return remote.IsIPv4MappedToIPv6 ? remote.MapToIPv4() : remote;
        }
        catch
        {
            if (!client.IsConnected)
            {
                socket.Dispose();
            }

            throw;
        }
    }

    /// <summary>Why the credentials are not sent on this session, or null when they may be.</summary>
    /// <param name="relay">The relay options.</param>
    /// <param name="host">The relay's host.</param>
    /// <param name="port">The relay's port.</param>
    /// <param name="remote">The address the session is connected to (<see cref="ConnectAsync"/>).</param>
    /// <param name="encrypted">Whether the session is under TLS (MailKit's <c>IsSecure</c>).</param>
    /// <returns>The reason for the deferral, naming the fix; null when the session is encrypted or the relay is local.</returns>
    public static string? Withheld(RelayOptions relay, string host, int port, IPAddress remote, bool encrypted) =>
        encrypted || IsLoopback(remote)
            ? null
            : string.Equals(relay.Security, "None", StringComparison.OrdinalIgnoreCase)
                ? $"{host}:{port} is {remote}, not this machine, and Relay:Security is None, so the password was not sent in clear text. Fix: {Fix}"
                : $"{host}:{port} did not offer TLS (no STARTTLS), so {(RelayAuthModes.IsOAuth2(relay.Auth) ? "the bearer token" : "the password")} was not sent (Relay:Security is {relay.Security}). "
                  + "Fix: enable STARTTLS at the relay and set Relay:Security to StartTls, or use Tls (port 465)";

    private static bool IsLoopback(IPAddress address) =>
        IPAddress.IsLoopback(address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address);

    // A name is resolved as a connection resolves it (the machine's resolver, /etc/hosts first). One with no loopback
    // address, or none at all, can only lead elsewhere; one with a loopback address passes, and each connection decides on
    // the address it reached.
    private static bool MayBeLocal(string host)
    {
        if (IsLoopback(host))
        {
            return true;
        }

        if (IPAddress.TryParse(host.AsSpan().Trim("[]"), out _))
        {
            return false;
        }

        try
        {
            return Dns.GetHostAddresses(host).Any(IsLoopback);
        }
        catch (Exception ex) when (ex is SocketException or ArgumentException)
        {
            return false;
        }
    }
}
