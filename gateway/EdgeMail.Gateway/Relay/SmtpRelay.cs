using System.Net.Sockets;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Spool;
using MailKit;
using MailKit.Net.Smtp;
using MailKit.Security;
using MimeKit;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// Sends through a smarthost with MailKit: STARTTLS or implicit TLS, optional AUTH, connections kept open and
/// reused (a pool of up to <c>Relay:Concurrency</c>), and per-recipient results — one refused recipient does not
/// stop delivery to the others. 4xx and connection problems defer; 5xx fails.
/// </summary>
public sealed class SmtpRelay : IMailTransport
{
    private readonly RelayOptions _relay;
    private readonly string _heloName;
    private readonly Stack<RecordingSmtpClient> _idle = new();
    private readonly Lock _lock = new();

    /// <summary>Creates the relay.</summary>
    /// <param name="relay">Relay options.</param>
    /// <param name="heloName">Name for EHLO.</param>
    public SmtpRelay(RelayOptions relay, string heloName)
    {
        _relay = relay ?? throw new ArgumentNullException(nameof(relay));
        _heloName = heloName;
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<RecipientResult>> SendAsync(QueuedMessage message, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(message);
        RecordingSmtpClient? client = null;
        lock (_lock)
        {
            _idle.TryPop(out client);
        }

        bool reused = client is not null;
        client ??= NewClient();
        try
        {
            var results = await SendOnceAsync(client, message, _relay.Host, _relay.Port, Secure(), authenticate: true, cancellationToken).ConfigureAwait(false);
            if (reused && results is null)
            {
                // The kept connection had gone stale: try once on a fresh one.
                client.Dispose();
                client = NewClient();
                results = await SendOnceAsync(client, message, _relay.Host, _relay.Port, Secure(), authenticate: true, cancellationToken).ConfigureAwait(false);
            }

            return results ?? Defer(message, client.LastError);
        }
        finally
        {
            if (client.IsConnected)
            {
                lock (_lock)
                {
                    _idle.Push(client);
                }
            }
            else
            {
                client.Dispose();
            }
        }
    }

    /// <summary>One attempt on one connection. Null when the connection failed (the reason is in <see cref="RecordingSmtpClient.LastError"/>).</summary>
    /// <param name="client">Client (connected or not).</param>
    /// <param name="message">Message.</param>
    /// <param name="host">Server.</param>
    /// <param name="port">Port.</param>
    /// <param name="security">TLS mode.</param>
    /// <param name="authenticate">Whether to AUTH when a user is configured.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Per-recipient results, or null on a connection-level failure.</returns>
    internal async Task<IReadOnlyList<RecipientResult>?> SendOnceAsync(RecordingSmtpClient client, QueuedMessage message, string host, int port,
        SecureSocketOptions security, bool authenticate, CancellationToken cancellationToken)
    {
        client.Refused.Clear();
        try
        {
            if (!client.IsConnected)
            {
                client.Timeout = (int)_relay.Timeout.TotalMilliseconds;
                client.LocalDomain = _heloName;
                if (_relay.AcceptAnyCertificate)
                {
                    client.ServerCertificateValidationCallback = (_, _, _, _) => true;
                }

                await client.ConnectAsync(host, port, security, cancellationToken).ConfigureAwait(false);
                if (authenticate && _relay.User.Length > 0)
                {
                    if (_relay.AuthMechanism.Length > 0)
                    {
                        client.AuthenticationMechanisms.RemoveWhere(m => !m.Equals(_relay.AuthMechanism, StringComparison.OrdinalIgnoreCase));
                        if (client.AuthenticationMechanisms.Count == 0)
                        {
                            client.LastError = $"{host}:{port} does not offer AUTH {_relay.AuthMechanism.ToUpperInvariant()} (Relay:AuthMechanism)";
                            await SafeDisconnectAsync(client).ConfigureAwait(false);
                            return null;
                        }
                    }

                    await client.AuthenticateAsync(_relay.User, _relay.Password, cancellationToken).ConfigureAwait(false);
                }
            }

            using var stream = new MemoryStream(message.Mime);
            using var mime = await MimeMessage.LoadAsync(stream, cancellationToken).ConfigureAwait(false);
            var sender = message.EnvelopeFrom.Length > 0 ? MailboxAddress.Parse(message.EnvelopeFrom) : new MailboxAddress(string.Empty, string.Empty);
            var recipients = message.PendingRecipients.Select(MailboxAddress.Parse).ToList();
            string reply = await client.SendAsync(mime, sender, recipients, cancellationToken).ConfigureAwait(false);
            return message.PendingRecipients.Select(r => client.Refused.TryGetValue(r, out var refusal)
                ? new RecipientResult(r, refusal.Code is >= 400 and < 500 ? RecipientOutcome.Deferred : RecipientOutcome.Failed, refusal.Text)
                : new RecipientResult(r, RecipientOutcome.Sent, "250 " + reply)).ToList();
        }
        catch (SmtpCommandException ex)
        {
            int code = (int)ex.StatusCode;
            string outcome = code is >= 400 and < 500 ? RecipientOutcome.Deferred : RecipientOutcome.Failed;
            string text = $"{code} {ex.Message}";
            return message.PendingRecipients.Select(r => client.Refused.TryGetValue(r, out var refusal)
                ? new RecipientResult(r, refusal.Code is >= 400 and < 500 ? RecipientOutcome.Deferred : RecipientOutcome.Failed, refusal.Text)
                : new RecipientResult(r, outcome, text)).ToList();
        }
        catch (AuthenticationException ex)
        {
            client.LastError = "535 authentication failed: " + ex.Message;
            await SafeDisconnectAsync(client).ConfigureAwait(false);
            return null;
        }
        catch (NotSupportedException ex)
        {
            // E.g. Security=StartTls but the server offers no STARTTLS: never fall back to clear text.
            client.LastError = $"{host}:{port}: {ex.Message} (Relay:Security is {_relay.Security})";
            await SafeDisconnectAsync(client).ConfigureAwait(false);
            return null;
        }
        catch (Exception ex) when (ex is SmtpProtocolException or IOException or SocketException or SslHandshakeException or ServiceNotConnectedException or ServiceNotAuthenticatedException or TimeoutException)
        {
            client.LastError = $"connection to {host}:{port} failed: {ex.Message}";
            await SafeDisconnectAsync(client).ConfigureAwait(false);
            return null;
        }
    }

    private static async Task SafeDisconnectAsync(SmtpClient client)
    {
        try
        {
            if (client.IsConnected)
            {
                await client.DisconnectAsync(false).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is IOException or SmtpProtocolException or SocketException)
        {
            // Already broken.
        }
    }

    private static List<RecipientResult> Defer(QueuedMessage message, string reason) =>
        message.PendingRecipients.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, "451 4.4.1 " + reason)).ToList();

    private SecureSocketOptions Secure() => _relay.Security.ToUpperInvariant() switch
    {
        "TLS" => SecureSocketOptions.SslOnConnect,
        "NONE" => SecureSocketOptions.None,
        "STARTTLSWHENAVAILABLE" => SecureSocketOptions.StartTlsWhenAvailable,
        _ => SecureSocketOptions.StartTls,
    };

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        List<RecordingSmtpClient> clients;
        lock (_lock)
        {
            clients = [.. _idle];
            _idle.Clear();
        }

        foreach (var client in clients)
        {
            await SafeDisconnectAsync(client).ConfigureAwait(false);
            client.Dispose();
        }
    }

    internal static RecordingSmtpClient NewClient() => new();
}

/// <summary>A MailKit client that records refused recipients instead of failing the whole message.</summary>
internal sealed class RecordingSmtpClient : SmtpClient
{
    public Dictionary<string, (int Code, string Text)> Refused { get; } = new(StringComparer.OrdinalIgnoreCase);

    public string LastError { get; set; } = "connection failed";

    protected override void OnRecipientNotAccepted(MimeMessage message, MailboxAddress mailbox, SmtpResponse response)
    {
        Refused[mailbox.Address] = ((int)response.StatusCode, $"{(int)response.StatusCode} {response.Response}");
    }
}
