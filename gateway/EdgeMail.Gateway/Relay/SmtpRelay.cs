using System.Globalization;
using System.Net;
using System.Net.Sockets;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay.OAuth2;
using EdgeMail.Gateway.Spool;
using MailKit;
using MailKit.Net.Smtp;
using MailKit.Security;
using MimeKit;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// Sends through a smarthost with MailKit: STARTTLS or implicit TLS, optional AUTH, connections kept open and
/// reused (a pool of up to <c>Relay:Concurrency</c>), and per-recipient results — one refused recipient does not
/// stop delivery to the others. 4xx and connection problems defer; 5xx fails — except a refusal of the gateway's own
/// session (a greeting other than 220, EHLO refused), sign-in or sender rights (or a provider quota), which an operator
/// fixes: that defers too. A password AUTH refused is not tried again before the first <c>Relay:Backoff</c> step has
/// passed: the mail that comes meanwhile is deferred with the same refusal without connecting, so a relay that counts
/// failed logins (fail2ban, a provider's lockout) sees one per step, not one per mail queued; a 454 (a temporary
/// failure, RFC 4954) only defers the mail at hand, also when another mechanism was refused after it
/// (<see cref="PasswordSignIn"/>). With <c>Relay:Auth</c>
/// set to an OAuth2 mode it authenticates with XOAUTH2 as <c>Relay:User</c>, renewing the token once when the server
/// refuses it. A mail to more than <c>Relay:Limits:RecipientsPerMessage</c> recipients goes out in several transactions:
/// the recipients each one but the last delivered to are handed over for recording before the next begins, and before
/// each one but the first the attempt asks whether it may go on (<see cref="PartedAttempt"/>, as direct MX). Recipients
/// a transaction that delivered to others turned away with "452 too many recipients" (or the 552 older servers send for
/// it) follow in a further transaction of the same attempt, on the same connection while it is open
/// (<see cref="PartedAttempt.TakeAsync"/>, as direct MX). A password or token goes in clear text only to a relay the
/// session reached on this machine (<see cref="SignInSecurity"/>). An attempt ends at <c>Relay:AttemptTimeout</c>: the
/// recipients not done by then are deferred, the results it had stand.
/// </summary>
public sealed class SmtpRelay : IMailTransport
{
    private readonly RelayOptions _relay;
    private readonly string _heloName;
    private readonly Stack<RecordingSmtpClient> _idle = new();
    private readonly Lock _lock = new();
    private readonly RelayTokens? _tokens;
    private readonly bool _google;
    private readonly TimeProvider _clock;
    private (DateTimeOffset Until, string Reason)? _signInRefused;

    /// <summary>Creates the relay.</summary>
    /// <param name="relay">Relay options.</param>
    /// <param name="heloName">Name for EHLO.</param>
    /// <param name="tokens">The token cache for the OAuth2 modes of <c>Relay:Auth</c> (owned by the relay); null for passwords.</param>
    /// <param name="clock">Clock for how long a refused AUTH holds; the system's when null.</param>
    public SmtpRelay(RelayOptions relay, string heloName, RelayTokens? tokens = null, TimeProvider? clock = null)
    {
        _clock = clock ?? TimeProvider.System;
        _relay = relay ?? throw new ArgumentNullException(nameof(relay));
        _heloName = heloName;
        _tokens = tokens;
        _google = relay.OAuth2.IsGoogle(relay.Auth) || relay.Host.EndsWith("gmail.com", StringComparison.OrdinalIgnoreCase) || relay.Host.EndsWith("google.com", StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>The token cache, when the relay signs in with OAuth2.</summary>
    public RelayTokens? Tokens => _tokens;

    /// <inheritdoc />
    public Task<IReadOnlyList<RecipientResult>> SendAsync(QueuedMessage message, CancellationToken cancellationToken) =>
        SendAsync(message, null, cancellationToken);

    /// <inheritdoc />
    public async Task<IReadOnlyList<RecipientResult>> SendAsync(QueuedMessage message, PartSent? partSent, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(message);
        int perMessage = _relay.Limits.Effective().RecipientsPerMessage;
        List<IReadOnlyList<string>> parts = perMessage > 0 && message.PendingRecipients.Count > perMessage
            ? [.. message.PendingRecipients.Chunk(perMessage)]
            : [message.PendingRecipients];

        // The attempt's deadline bounds its sessions; the hand-overs to the spool (partSent) keep the caller's token: one
        // cut short would leave recipients that have the mail neither recorded nor known not to be.
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(_relay.EffectiveAttemptTimeout());
        var attempt = new SmarthostAttempt(this, message, partSent, deadline.Token);
        var results = new List<RecipientResult>(message.PendingRecipients.Count);
        try
        {
            for (int p = 0; p < parts.Count; p++)
            {
                if (await attempt.MayGoOnAsync(cancellationToken).ConfigureAwait(false) is { } stop)
                {
                    results.AddRange(PartedAttempt.NotAttempted(parts.Skip(p).SelectMany(rest => rest), stop));
                    break;
                }

                var sent = await SendPooledAsync(message with { PendingRecipients = parts[p] }, attempt, deadline.Token).ConfigureAwait(false);
                if (await attempt.TakeAsync(sent, p < parts.Count - 1, results, cancellationToken).ConfigureAwait(false) is { } ended)
                {
                    results.AddRange(PartedAttempt.NotAttempted(parts.Skip(p + 1).SelectMany(rest => rest), ended));
                    break;
                }
            }
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            // Relay:Timeout bounds each read and write, not a relay that drips a byte at a time: what the attempt has
            // done stands, the rest waits for the next attempt. A transaction cut short after its data went out may have
            // been delivered: sent again then, as after any timeout.
            results.AddRange(NotDone(message, results,
                $"451 4.4.2 the delivery attempt did not end within Relay:AttemptTimeout ({_relay.EffectiveAttemptTimeout():c}); it was cut short at {_relay.Host}:{_relay.Port}"));
        }
        finally
        {
            if (attempt.Connection is not null)
            {
                Release(attempt.Connection);
            }
        }

        return results;
    }

    // A 4xx is for now. So is a 552 that says the transaction has too many recipients: RFC 5321 (4.5.3.1.10) asks
    // clients to read it as 452, which older servers sent it for; bounced, those recipients would lose the mail for
    // the server's limit per transaction, not for anything about them.
    private static RecipientResult RefusedRecipient(string address, (int Code, string Text) refusal) =>
        new(address, refusal.Code is >= 400 and < 500 || (refusal.Code == 552 && PartedAttempt.IsTooManyRecipients(refusal.Text))
            ? RecipientOutcome.Deferred
            : RecipientOutcome.Failed, refusal.Text);

    /// <summary>
    /// One transaction: on the connection an earlier transaction of the attempt kept, else on one from the pool or a new
    /// one. The attempt keeps the connection while it is still open (to the pool with <see cref="Release"/> once the
    /// attempt is done).
    /// </summary>
    /// <returns>The results.</returns>
    private async Task<IReadOnlyList<RecipientResult>> SendPooledAsync(QueuedMessage message, SmarthostAttempt attempt, CancellationToken cancellationToken)
    {
        // The transaction owns the kept connection now, and hands it back while it is still open.
        RecordingSmtpClient? client = attempt.Connection;
        attempt.Connection = null;
        if (client is null)
        {
            string? held = null;
            lock (_lock)
            {
                if (_signInRefused is { } refused && _clock.GetUtcNow() < refused.Until)
                {
                    held = $"{refused.Reason} (AUTH not tried again before {refused.Until:u})";
                }
                else
                {
                    _idle.TryPop(out client);
                }
            }

            if (held is not null)
            {
                return Defer(message, held);
            }
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

            results ??= Defer(message, client.LastError);
            if (client.IsConnected)
            {
                attempt.Connection = client;
            }
            else
            {
                client.Dispose();
            }

            return results;
        }
        catch (OperationCanceledException)
        {
            // Cut short mid-command: the connection is in no state for another transaction.
            client.Dispose();
            throw;
        }
        catch
        {
            Release(client);
            throw;
        }
    }

    /// <summary>
    /// A smarthost attempt: its transactions share one connection while it stays open, bounded by the attempt's deadline
    /// (linked to the caller's cancellation).
    /// </summary>
    private sealed class SmarthostAttempt(SmtpRelay relay, QueuedMessage message, PartSent? partSent, CancellationToken deadline) : PartedAttempt(message, partSent)
    {
        /// <summary>The connection the attempt's last transaction left open, for its next.</summary>
        public RecordingSmtpClient? Connection { get; set; }

        // The token passed in is the caller's, which the hand-overs take; a transaction takes the attempt's deadline.
        protected override Task<IReadOnlyList<RecipientResult>> FollowUpAsync(IReadOnlyList<string> recipients, CancellationToken cancellationToken) =>
            relay.SendPooledAsync(Message with { PendingRecipients = recipients }, this, deadline);
    }

    /// <summary>A deferral for each recipient of <paramref name="message"/> without a result yet: those an attempt cut short did not finish.</summary>
    /// <param name="message">The message.</param>
    /// <param name="results">The attempt's results so far.</param>
    /// <param name="reply">The reply to defer them with.</param>
    /// <returns>The deferrals.</returns>
    internal static IEnumerable<RecipientResult> NotDone(QueuedMessage message, List<RecipientResult> results, string reply)
    {
        var done = results.Select(r => r.Address).ToHashSet(StringComparer.Ordinal);
        return message.PendingRecipients.Where(r => !done.Contains(r)).Select(r => new RecipientResult(r, RecipientOutcome.Deferred, reply) { RelayDown = true }).ToList();
    }

    private void Release(RecordingSmtpClient client)
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
                client.TlsFailure = null;
                client.Timeout = (int)_relay.Timeout.TotalMilliseconds;
                client.LocalDomain = _heloName;
                if (_relay.AcceptAnyCertificate)
                {
                    client.ServerCertificateValidationCallback = (_, _, _, _) => true;
                }

                bool signsIn = authenticate && (_tokens is not null || _relay.User.Length > 0);
                IPAddress? remote = null;
                try
                {
                    if (signsIn)
                    {
                        remote = await SignInSecurity.ConnectAsync(client, host, port, security, cancellationToken).ConfigureAwait(false);
                    }
                    else
                    {
                        await client.ConnectAsync(host, port, security, cancellationToken).ConfigureAwait(false);
                    }
                }
                catch (SmtpCommandException ex)
                {
                    // A greeting other than 220, EHLO and HELO refused, or STARTTLS refused: the server turned down this
                    // session, not this mail (RFC 5321 §3.1, §5.1). A connection failure, then: direct MX tries the next
                    // exchanger, as Postfix does (smtp_skip_5xx_greeting), and with none left the mail is deferred.
                    string refusal = $"{(int)ex.StatusCode} {ex.Message}";
                    if (client.StartTlsSent)
                    {
                        client.TlsFailure = new TlsFailure(Refused: true, refusal);
                        client.LastError = $"{host}:{port} refused STARTTLS: {refusal}";
                    }
                    else
                    {
                        client.LastError = $"{host}:{port} refused the session: {refusal}";
                    }

                    await SafeDisconnectAsync(client).ConfigureAwait(false);
                    return null;
                }

                if (signsIn && SignInSecurity.Withheld(_relay, host, port, remote!, client.IsSecure) is { } withheld)
                {
                    client.LastError = withheld;
                    await SafeDisconnectAsync(client).ConfigureAwait(false);
                    return null;
                }

                if (authenticate && _tokens is not null)
                {
                    if (await SignInAsync(client, host, port, cancellationToken).ConfigureAwait(false) is { } refused)
                    {
                        client.LastError = refused;
                        await SafeDisconnectAsync(client).ConfigureAwait(false);
                        return null;
                    }
                }
                else if (authenticate && _relay.User.Length > 0)
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

                    await PasswordSignIn.AuthenticateAsync(client, _relay.User, _relay.Password, cancellationToken).ConfigureAwait(false);
                }
            }

            bool asSpooled = SpooledAsComposed(message);
            using var mime = await OpenAsync(message, asSpooled, cancellationToken).ConfigureAwait(false);
            var sender = message.EnvelopeFrom.Length > 0 ? MailboxAddress.Parse(message.EnvelopeFrom) : new MailboxAddress(string.Empty, string.Empty);
            var recipients = message.PendingRecipients.Select(MailboxAddress.Parse).ToList();
            client.Spooled = asSpooled ? message.Mime.Length : null;
            string reply;
            try
            {
                reply = await client.SendAsync(mime, sender, recipients, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                client.Spooled = null;
            }

            return message.PendingRecipients.Select(r => client.Refused.TryGetValue(r, out var refusal)
                ? RefusedRecipient(r, refusal)
                : new RecipientResult(r, RecipientOutcome.Sent, "250 " + reply)).ToList();
        }
        catch (Exception ex) when (cancellationToken.IsCancellationRequested && ex is not OperationCanceledException)
        {
            // Cancelled mid-command, the stream may fail with an I/O error rather than say so: the attempt's deadline
            // or a stop, not a failure of this server.
            await SafeDisconnectAsync(client).ConfigureAwait(false);
            throw new OperationCanceledException($"cancelled while talking to {host}:{port}", ex, cancellationToken);
        }
        catch (SmtpCommandException ex) when (ex.StatusCode == SmtpStatusCode.ServiceNotAvailable || client.Refused.Values.Any(r => r.Code == 421))
        {
            // 421 is the server closing the connection (RFC 5321 3.8), not an answer about this mail: Postfix's idle
            // timeout ends a kept connection that way, and the 421 is read as the reply to the next MAIL FROM. A
            // connection failure, then: a kept connection is replaced at once, direct MX tries the next exchanger.
            string reply = ex.StatusCode == SmtpStatusCode.ServiceNotAvailable ? $"421 {ex.Message}" : client.Refused.Values.First(r => r.Code == 421).Text;
            client.LastError = $"{host}:{port} closed the connection: {reply}";
            await SafeDisconnectAsync(client).ConfigureAwait(false);
            return null;
        }
        catch (SmtpCommandException ex)
        {
            int code = (int)ex.StatusCode;
            string outcome = code is >= 400 and < 500 ? RecipientOutcome.Deferred : RecipientOutcome.Failed;
            string text = $"{code} {ex.Message}";
            if (authenticate && ex.ErrorCode != SmtpErrorCode.RecipientNotAccepted && AuthErrors.IsSenderSide(text))
            {
                // The relay refuses the gateway itself (its sign-in, its right to this sender, its quota), not the
                // recipient: an operator or time fixes that, so the mail waits instead of bouncing.
                string? fix = AuthErrors.SmtpFix(text, _google, IsAppOnly, _tokens is not null);
                string explained = fix is null ? text : $"{text}. Fix: {fix}";
                if (fix is not null)
                {
                    _tokens?.Refused(text, fix);
                }

                await SafeDisconnectAsync(client).ConfigureAwait(false);
                return message.PendingRecipients.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, "451 4.7.0 deferred, the relay refuses the gateway: " + explained) { RelayDown = true }).ToList();
            }

            // With PIPELINING the RCPTs after a refused MAIL FROM are answered "503 bad sequence": those replies say
            // nothing about the recipients, so the MAIL FROM reply (a 451 greylisting, say) decides for all of them.
            bool senderRefused = ex.ErrorCode == SmtpErrorCode.SenderNotAccepted;
            return message.PendingRecipients.Select(r => !senderRefused && client.Refused.TryGetValue(r, out var refusal)
                ? RefusedRecipient(r, refusal)
                : new RecipientResult(r, outcome, text)).ToList();
        }
        catch (AuthenticationException ex) when (AuthReply(ex) is { } reply && reply[0] == '4')
        {
            // A 454 (RFC 4954): the server could not check the credentials just now, it did not refuse them. Deferred as
            // any 4xx; the next mail signs in again as usual.
            client.LastError = $"temporary authentication failure at {host}:{port}: {reply}";
            await SafeDisconnectAsync(client).ConfigureAwait(false);
            return null;
        }
        catch (AuthenticationException ex)
        {
            client.LastError = "535 authentication failed: " + ex.Message
                + (AuthErrors.SmtpFix(ex.Message, _google, IsAppOnly, oauth2: false) is { } fix ? ". Fix: " + fix : string.Empty);
            lock (_lock)
            {
                _signInRefused = (_clock.GetUtcNow() + _relay.EffectiveBackoff()[0], client.LastError);
            }

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
            if (ex is SslHandshakeException)
            {
                // MailKit's own text is advice about certificates; what broke the handshake is in the exceptions it wraps.
                client.TlsFailure = new TlsFailure(Refused: false, $"TLS handshake with {host}:{port} failed: {HandshakeError(ex)}");
            }

            client.LastError = $"connection to {host}:{port} failed: {ex.Message}";
            await SafeDisconnectAsync(client).ConfigureAwait(false);
            return null;
        }
    }

    // Mail the gateway composed itself was prepared for any relay when it was spooled (7-bit, lines within 78): it goes
    // out as the spooled bytes, its headers read and its body not parsed at all, its size the spooled length. So does a
    // device's own relayed mail when preparing it could change nothing (7-bit, short lines, nothing declared 8bit or
    // binary: WireMessage.IsTransportReady) — the common case, and then a DKIM signature made over the spooled bytes
    // meets exactly those bytes. Other device mail (8-bit text, say) is parsed and sent as MailKit prepares it for the
    // server at hand.
    private static bool SpooledAsComposed(QueuedMessage message) =>
        message.Kind is "alert" or "digest" or "notice" || (message.Kind == "relay" && WireMessage.IsTransportReady(message.Mime));

    private static async Task<MimeMessage> OpenAsync(QueuedMessage message, bool asSpooled, CancellationToken cancellationToken)
    {
        if (asSpooled)
        {
            return WireMessage.ForSending(message.Mime);
        }

        // Persistent: the parts' content stays in the spooled bytes instead of being copied out of them, so the stream
        // must outlive this method (it holds nothing but the array).
        var stream = new MemoryStream(message.Mime, writable: false);
        return await MimeMessage.LoadAsync(ParserOptions.Default, stream, persistent: true, cancellationToken).ConfigureAwait(false);
    }

    private bool IsAppOnly => RelayAuthModes.OAuth2ClientCredentials.Equals(_relay.Auth, StringComparison.OrdinalIgnoreCase);

    /// <summary>XOAUTH2 as <c>Relay:User</c>: the cached token, and once more with a renewed one if the server refuses it.</summary>
    /// <returns>Null when authenticated, else why not (and what to fix).</returns>
    internal async Task<string?> SignInAsync(RecordingSmtpClient client, string host, int port, CancellationToken cancellationToken)
    {
        if (!client.AuthenticationMechanisms.Contains("XOAUTH2"))
        {
            return $"{host}:{port} does not offer AUTH XOAUTH2 (Relay:Auth is {_relay.Auth}); check Relay:Host and Relay:Port";
        }

        string token;
        try
        {
            token = await _tokens!.GetAsync(cancellationToken).ConfigureAwait(false);
            string? refusal = await TryXOAuth2Async(client, token, cancellationToken).ConfigureAwait(false);
            if (refusal is null)
            {
                _tokens.Accepted();
                return null;
            }

            if (Temporary(refusal) is { } temporary)
            {
                return temporary;
            }

            // Expired or revoked early, as far as the server is concerned: one renewal, then the same connection again
            // (RFC 4954 lets a client retry AUTH after a failure).
            token = await _tokens.RenewAsync(token, cancellationToken).ConfigureAwait(false);
            if (!client.IsConnected)
            {
                return $"{host}:{port} closed the connection after refusing the token ({refusal}); a renewed token is tried on the next attempt";
            }

            string? again = await TryXOAuth2Async(client, token, cancellationToken).ConfigureAwait(false);
            if (again is null)
            {
                _tokens.Accepted();
                return null;
            }

            if (Temporary(again) is { } temporaryAgain)
            {
                return temporaryAgain;
            }

            string fix = AuthErrors.SmtpFix(again, _google, IsAppOnly, oauth2: true) ?? "check Relay:User and the grant (docs/relay-oauth2.md)";
            _tokens.Refused(again, fix);
            return $"relay sign-in refused: {again}. Fix: {fix}";
        }
        catch (TokenException ex)
        {
            return "relay sign-in: " + ex.Message;
        }

        // A 4xx (454, RFC 4954) says nothing about the token: no renewal, and the grant is not marked refused.
        string? Temporary(string refusal) => refusal.StartsWith('4') ? $"temporary authentication failure at {host}:{port}: {refusal}" : null;
    }

    private async Task<string?> TryXOAuth2Async(RecordingSmtpClient client, string token, CancellationToken cancellationToken)
    {
        try
        {
            await client.AuthenticateAsync(new SaslMechanismOAuth2(_relay.User, token), cancellationToken).ConfigureAwait(false);
            return null;
        }
        catch (AuthenticationException ex)
        {
            return AuthReply(ex) ?? ex.Message;
        }
        catch (SmtpCommandException ex)
        {
            return $"{(int)ex.StatusCode} {ex.Message}";
        }
    }

    // MailKit says "535: 5.7.3 Authentication unsuccessful" for the server's reply to AUTH; null for its own refusals
    // (a mechanism too weak, a broken SASL exchange), which carry no reply code.
    private static string? AuthReply(AuthenticationException ex)
    {
        string m = ex.Message;
        return m.Length > 5 && char.IsAsciiDigit(m[0]) && char.IsAsciiDigit(m[1]) && char.IsAsciiDigit(m[2]) && m.AsSpan(3).StartsWith(": ")
            ? string.Concat(m.AsSpan(0, 3), " ", m.AsSpan(5))
            : null;
    }

    // After a failure the connection is just closed. A connection that is still good ends politely (QUIT, "221", so
    // the relay logs a clean close, not a lost client), briefly: a relay that does not answer does not hold up the
    // gateway's stop. Never throws: it comes after the transaction, whose results stand whatever QUIT does (MailKit lets
    // the TimeoutException of an unanswered QUIT through).
    internal static async Task SafeDisconnectAsync(SmtpClient client, bool quit = false)
    {
        try
        {
            if (client.IsConnected)
            {
                using var brief = quit ? new CancellationTokenSource(TimeSpan.FromSeconds(2)) : null;
                await client.DisconnectAsync(quit, brief?.Token ?? CancellationToken.None).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is IOException or SmtpProtocolException or SmtpCommandException or SocketException or OperationCanceledException or TimeoutException)
        {
            // Already broken, or too slow to say goodbye.
        }
    }

    private static string HandshakeError(Exception ex)
    {
        var messages = new List<string>();
        for (var inner = ex.InnerException; inner is not null; inner = inner.InnerException)
        {
            if (!messages.Contains(inner.Message))
            {
                messages.Add(inner.Message);
            }
        }

        return messages.Count > 0 ? string.Join(": ", messages) : ex.Message;
    }

    private static List<RecipientResult> Defer(QueuedMessage message, string reason) =>
        message.PendingRecipients.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, "451 4.4.1 " + reason) { RelayDown = true }).ToList();

    internal SecureSocketOptions Secure() => _relay.Security.ToUpperInvariant() switch
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
            await SafeDisconnectAsync(client, quit: true).ConfigureAwait(false);
            client.Dispose();
        }

        _tokens?.Dispose();
    }

    internal static RecordingSmtpClient NewClient() => new();
}

/// <summary>
/// A MailKit client that records refused recipients instead of failing the whole message, and that sends mail the
/// gateway composed (or a device's mail that needs no preparation) as it was spooled: without preparing it again and
/// without writing it once more only to measure it for <c>SIZE=</c> (MailKit's default when the server offers SIZE: the
/// message is serialised twice per send). Where the server offers CHUNKING, such mail goes as one <c>BDAT n LAST</c>:
/// its length is known, so the transaction takes two round trips (MAIL and RCPT pipelined, then the data with its
/// command) instead of DATA's three, and the bytes need no dot-stuffing. Mail MailKit prepares keeps DATA: BDAT would
/// make MailKit serialise it once more to measure it.
/// </summary>
internal sealed class RecordingSmtpClient : SmtpClient
{
    private readonly CommandWatch _commands;

    public RecordingSmtpClient()
        : this(new CommandWatch())
    {
    }

    private RecordingSmtpClient(CommandWatch commands)
        : base(commands) => _commands = commands;

    public Dictionary<string, (int Code, string Text)> Refused { get; } = new(StringComparer.OrdinalIgnoreCase);

    public string LastError { get; set; } = "connection failed";

    /// <summary>How TLS failed on the last connection, when that is what failed it; else null.</summary>
    public TlsFailure? TlsFailure { get; set; }

    /// <summary>
    /// Whether STARTTLS was the last command sent: MailKit answers a refused STARTTLS, a refused greeting and a refused
    /// EHLO with the same exception.
    /// </summary>
    public bool StartTlsSent => _commands.StartTls;

    /// <summary>Whether the server of the last connection sent anything (its greeting, a refusal too): someone answers there.</summary>
    public bool Greeted => _commands.Greeted;

    /// <summary>The spooled length of the message being sent when it goes out as spooled (prepared already); else null.</summary>
    public long? Spooled { get; set; }

    protected override bool PreferSendAsBinaryData => Spooled is not null;

    protected override void Prepare(FormatOptions options, MimeMessage message, EncodingConstraint constraint, int maxLineLength)
    {
        if (Spooled is null)
        {
            base.Prepare(options, message, constraint, maxLineLength);
        }
        else
        {
            options.International = false; // as MailKit does for signed mail: headers are written as spooled
        }
    }

    // The spooled length is the size only when every field of the mail is written: one MailKit hides when it sends
    // (Content-Length, Bcc, Resent-Bcc, in mail spooled before ingest dropped them) makes the mail sent shorter, and
    // BDAT would then promise bytes that never come. Such mail is measured as it is written.
    protected override long GetSize(FormatOptions options, MimeMessage message, CancellationToken cancellationToken) =>
        Spooled is { } size && !HidesFields(options, message) ? size : base.GetSize(options, message, cancellationToken);

    protected override Task<long> GetSizeAsync(FormatOptions options, MimeMessage message, CancellationToken cancellationToken) =>
        Spooled is { } size && !HidesFields(options, message) ? Task.FromResult(size) : base.GetSizeAsync(options, message, cancellationToken);

    private static bool HidesFields(FormatOptions options, MimeMessage message) =>
        options.HiddenHeaders.Count > 0 && (message.Headers.Any(h => options.HiddenHeaders.Contains(h.Id))
            || (message.Body is { } body && body.Headers.Any(h => options.HiddenHeaders.Contains(h.Id))));

    protected override void OnRecipientNotAccepted(MimeMessage message, MailboxAddress mailbox, SmtpResponse response)
    {
        Refused[mailbox.Address] = ((int)response.StatusCode, $"{(int)response.StatusCode} {response.Response}");
    }
}

/// <summary>How TLS failed on a connection.</summary>
/// <param name="Refused">The server refused STARTTLS with a reply (after offering it); false when the handshake failed.</param>
/// <param name="Error">The reply, or what broke the handshake.</param>
internal sealed record TlsFailure(bool Refused, string Error);

/// <summary>
/// The wire, watched for the one command the client's exceptions do not name (STARTTLS), for whether the server said
/// anything at all, and for a reply longer than any server has a reason to send.
/// </summary>
internal sealed class CommandWatch : IProtocolLogger
{
    /// <summary>
    /// The most bytes one reply may have: 128 lines of RFC 5321's longest (512 octets, §4.5.3.1.5). MailKit reads a reply
    /// whole into memory before it hands it over, however long it is, so an exchanger that sends continuation lines for
    /// ever would have the gateway buffer them until the attempt's deadline.
    /// </summary>
    internal const int MaxReplyBytes = 128 * 512;

    private static readonly byte[] StartTlsCommand = "STARTTLS\r\n"u8.ToArray();

    private int _replyBytes;
    private int _lineBytes;
    private byte _afterCode;

    /// <summary>Whether the last write was the STARTTLS command (sent alone, and flushed for its reply).</summary>
    public bool StartTls { get; private set; }

    public bool Greeted { get; private set; }

    public IAuthenticationSecretDetector? AuthenticationSecretDetector { get; set; }

    public void LogConnect(Uri uri) => (StartTls, Greeted, _replyBytes, _lineBytes) = (false, false, 0, 0);

    public void LogClient(byte[] buffer, int offset, int count) =>
        StartTls = buffer.AsSpan(offset, count).SequenceEqual(StartTlsCommand);

    // MailKit calls this with each read from the server, before it parses a byte of it; what is thrown here ends the
    // read, and MailKit marks the connection broken. Replies are counted line by line: a line whose code is followed by
    // '-' continues the reply, any other ends it (several replies may come in one read, pipelined).
    public void LogServer(byte[] buffer, int offset, int count)
    {
        Greeted |= count > 0;
        foreach (byte b in buffer.AsSpan(offset, count))
        {
            if (_lineBytes == 3)
            {
                _afterCode = b;
            }

            _lineBytes++;
            if (++_replyBytes > MaxReplyBytes)
            {
                throw new SmtpProtocolException(string.Create(CultureInfo.InvariantCulture,
                    $"the server's reply ran past {MaxReplyBytes} bytes (RFC 5321 lets a line have 512); the connection is closed"));
            }

            if (b == (byte)'\n')
            {
                if (_lineBytes < 4 || _afterCode != (byte)'-')
                {
                    _replyBytes = 0;
                }

                _lineBytes = 0;
            }
        }
    }

    public void Dispose()
    {
    }
}
