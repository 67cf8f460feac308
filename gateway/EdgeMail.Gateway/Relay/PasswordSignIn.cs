using System.Net;
using System.Text;
using MailKit.Net.Smtp;
using MailKit.Security;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// AUTH with a user name and password, the server's mechanisms tried in MailKit's order (strongest first) as
/// <c>SmtpClient.AuthenticateAsync(user, password)</c> tries them, but one per call. In one call MailKit goes on to the
/// next mechanism after each failure and throws only the last one's reply (each failure replaces the one before), so a
/// 454 to the first (the server cannot check passwords just now, RFC 4954) reads as the 535 a later one got: a refused
/// password. One mechanism per call, each reply is seen; when any was a 4xx, that is the failure thrown.
/// </summary>
internal static class PasswordSignIn
{
    /// <summary>Signs in, or throws the failure that says most: a 4xx when a mechanism got one, else the last refusal.</summary>
    /// <param name="client">A connected client; its <c>AuthenticationMechanisms</c> are those it may use.</param>
    /// <param name="user">User name.</param>
    /// <param name="password">Password.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task.</returns>
    /// <exception cref="AuthenticationException">Every mechanism failed.</exception>
    /// <exception cref="NotSupportedException">The server offers no mechanism MailKit can use with a password.</exception>
    public static async Task AuthenticateAsync(SmtpClient client, string user, string password, CancellationToken cancellationToken)
    {
        var mechanisms = new OneAtATime(new NetworkCredential(user, password));
        AuthenticationException? temporary = null;
        AuthenticationException? last = null;

        // A server may close the session after a refused AUTH: the refusals so far are then the answer, not the closed
        // connection the next call would report.
        while (last is null || client.IsConnected)
        {
            mechanisms.Next();
            try
            {
                await client.AuthenticateAsync(Encoding.UTF8, mechanisms, cancellationToken).ConfigureAwait(false);
                return;
            }
            catch (AuthenticationException ex)
            {
                // MailKit wraps the server's reply to each mechanism in an SmtpCommandException; its own exception for a
                // mechanism the server called too weak (534), which it skips, carries none and does not replace a reply.
                if (ex.InnerException is SmtpCommandException { StatusCode: var code })
                {
                    last = ex;
                    if (temporary is null && (int)code is >= 400 and < 500)
                    {
                        temporary = ex;
                    }
                }
                else
                {
                    last ??= ex;
                }
            }
            catch (NotSupportedException) when (mechanisms.Given is not null)
            {
                // MailKit could not use the mechanism it was given (no SASL implementation for it): the next one.
            }
            catch (NotSupportedException) when (last is not null)
            {
                // Every mechanism has had its turn.
                break;
            }
        }

        throw temporary ?? last!;
    }

    /// <summary>
    /// Credentials MailKit asks for per mechanism, in its order, before it tries each: given to the first not yet given,
    /// and to no other until <see cref="Next"/>, so one call tries one mechanism.
    /// </summary>
    private sealed class OneAtATime(NetworkCredential credential) : ICredentials
    {
        private readonly HashSet<string> _given = new(StringComparer.OrdinalIgnoreCase);

        /// <summary>The mechanism given the credential since <see cref="Next"/>; null when none was left.</summary>
        public string? Given { get; private set; }

        public void Next() => Given = null;

        public NetworkCredential? GetCredential(Uri uri, string authType)
        {
            if (Given is not null || !_given.Add(authType))
            {
                return null;
            }

            Given = authType;
            return credential;
        }
    }
}
