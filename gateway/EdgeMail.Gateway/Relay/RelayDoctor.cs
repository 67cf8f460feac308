using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay.OAuth2;
using MailKit;
using MailKit.Net.Smtp;
using MailKit.Security;
using Microsoft.Extensions.Logging.Abstractions;
using MimeKit;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// <c>edgemail doctor relay</c>: checks the smarthost step by step — configuration, name, TCP, SMTP and TLS, token,
/// AUTH, and optionally a test mail — printing each step as it goes and, at the first failure, what to fix. Secrets
/// and tokens are never printed.
/// </summary>
public static class RelayDoctor
{
    /// <summary>Runs the checks.</summary>
    /// <param name="options">Gateway options.</param>
    /// <param name="output">Where the steps are printed.</param>
    /// <param name="sendTest">Also send a test mail.</param>
    /// <param name="to">Test mail recipient; null for <c>Sender:Operator</c> (if it is an address), else <c>Relay:User</c>.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>0 every step passed; 1 a step failed; 2 the configuration is invalid.</returns>
    public static async Task<int> RunAsync(GatewayOptions options, TextWriter output, bool sendTest, string? to, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(output);
        var relay = options.Relay;
        var steps = new Steps(output);
        var problems = GatewayOptionsValidator.Check(options).Where(p => p.StartsWith("Relay:", StringComparison.Ordinal) || p.StartsWith("Sender:", StringComparison.Ordinal)).ToList();
        if (problems.Count > 0)
        {
            await steps.FailAsync("configuration", problems, "correct the keys above").ConfigureAwait(false);
            return 2;
        }

        if (!string.Equals(relay.Mode, "Smarthost", StringComparison.OrdinalIgnoreCase))
        {
            await steps.OkAsync("configuration", $"Relay:Mode is {relay.Mode}: there is no smarthost to check").ConfigureAwait(false);
            return 0;
        }

        await steps.OkAsync("configuration", $"{relay.Host}:{relay.Port}, Security {relay.Security}, Auth {relay.Auth}{(relay.User.Length > 0 ? " as " + relay.User : string.Empty)}").ConfigureAwait(false);
        IPAddress[] addresses;
        try
        {
            addresses = IPAddress.TryParse(relay.Host, out var literal) ? [literal] : await Dns.GetHostAddressesAsync(relay.Host, cancellationToken).ConfigureAwait(false);
            await steps.OkAsync("resolve", $"{relay.Host} is {string.Join(", ", addresses.Select(a => a.ToString()))}").ConfigureAwait(false);
        }
        catch (SocketException ex)
        {
            await steps.FailAsync("resolve", $"{relay.Host}: {ex.Message}", "check the spelling of Relay:Host, and that this machine's DNS works").ConfigureAwait(false);
            return 1;
        }

        if (!await ConnectAsync(steps, relay, addresses, cancellationToken).ConfigureAwait(false))
        {
            return 1;
        }

        RelayTokens? tokens;
        try
        {
            tokens = RelayTokens.Create(options, TimeProvider.System, NullLogger.Instance);
        }
        catch (Exception ex) when (ex is TokenException or InvalidOperationException or IOException)
        {
            await steps.FailAsync("token", ex.Message, "see docs/relay-oauth2.md").ConfigureAwait(false);
            return 1;
        }

        await using var smtp = new SmtpRelay(relay, options.Sender.Hostname, tokens);
        using var client = SmtpRelay.NewClient();
        client.Timeout = (int)relay.Timeout.TotalMilliseconds;
        client.LocalDomain = options.Sender.Hostname;
        if (relay.AcceptAnyCertificate)
        {
            client.ServerCertificateValidationCallback = (_, _, _, _) => true;
        }

        if (await SmtpAsync(steps, client, smtp, relay, cancellationToken).ConfigureAwait(false) is not { } remote
            || !await TokenAsync(steps, tokens, cancellationToken).ConfigureAwait(false)
            || !await AuthenticateAsync(steps, client, smtp, relay, remote, cancellationToken).ConfigureAwait(false))
        {
            return 1;
        }

        if (sendTest && !await SendTestAsync(steps, client, options, to, cancellationToken).ConfigureAwait(false))
        {
            return 1;
        }

        await client.DisconnectAsync(true, cancellationToken).ConfigureAwait(false);
        await output.WriteLineAsync("The relay works.").ConfigureAwait(false);
        return 0;
    }

    private static async Task<bool> ConnectAsync(Steps steps, RelayOptions relay, IPAddress[] addresses, CancellationToken cancellationToken)
    {
        var watch = Stopwatch.StartNew();
        try
        {
            using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(relay.Timeout);
            await socket.ConnectAsync(addresses, relay.Port, timeout.Token).ConfigureAwait(false);
            await steps.OkAsync("connect", string.Create(CultureInfo.InvariantCulture, $"TCP {socket.RemoteEndPoint} in {watch.ElapsedMilliseconds} ms")).ConfigureAwait(false);
            return true;
        }
        catch (Exception ex) when (ex is SocketException || (ex is OperationCanceledException && !cancellationToken.IsCancellationRequested))
        {
            string what = ex is SocketException s ? s.Message : $"no answer within {relay.Timeout.TotalSeconds:0} s (Relay:Timeout)";
            await steps.FailAsync("connect", $"{relay.Host}:{relay.Port}: {what}", "a firewall or the ISP may block the port (many block 25; providers take 587 with StartTls or 465 with Tls); check Relay:Port").ConfigureAwait(false);
            return false;
        }
    }

    /// <returns>The address the session reached; null when the step failed.</returns>
    private static async Task<IPAddress?> SmtpAsync(Steps steps, RecordingSmtpClient client, SmtpRelay smtp, RelayOptions relay, CancellationToken cancellationToken)
    {
        try
        {
            var remote = await SignInSecurity.ConnectAsync(client, relay.Host, relay.Port, smtp.Secure(), cancellationToken).ConfigureAwait(false);
            string tls = client.IsSecure ? $"TLS ({client.SslProtocol}, {client.SslCipherSuite})" : $"no TLS (Relay:Security {relay.Security})";
            string auth = client.AuthenticationMechanisms.Count > 0 ? string.Join(' ', client.AuthenticationMechanisms.Order()) : "none";
            await steps.OkAsync("SMTP", $"{tls}; AUTH offered: {auth}").ConfigureAwait(false);
            return remote;
        }
        catch (SslHandshakeException ex)
        {
            await steps.FailAsync("TLS", ex.Message, "the server's certificate must be trusted by this machine (ca-certificates) and name Relay:Host; Relay:Security must match the port (StartTls on 587, Tls on 465)").ConfigureAwait(false);
        }
        catch (NotSupportedException ex)
        {
            await steps.FailAsync("TLS", ex.Message, "Relay:Security StartTls needs a server that offers STARTTLS; for port 465 use Tls").ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is SmtpProtocolException or SmtpCommandException or IOException or SocketException or TimeoutException)
        {
            await steps.FailAsync("SMTP", ex.Message, "the port does not speak SMTP as configured: check Relay:Port and Relay:Security (Tls for 465, StartTls for 587)").ConfigureAwait(false);
        }

        return null;
    }

    private static async Task<bool> TokenAsync(Steps steps, RelayTokens? tokens, CancellationToken cancellationToken)
    {
        if (tokens is null)
        {
            return true;
        }

        try
        {
            await tokens.GetAsync(cancellationToken).ConfigureAwait(false);
            await steps.OkAsync("token", $"obtained with {tokens.Describe}").ConfigureAwait(false);
            return true;
        }
        catch (TokenException ex)
        {
            await steps.FailAsync("token", ex.Message, null).ConfigureAwait(false);
            return false;
        }
    }

    private static async Task<bool> AuthenticateAsync(Steps steps, RecordingSmtpClient client, SmtpRelay smtp, RelayOptions relay, IPAddress remote, CancellationToken cancellationToken)
    {
        if ((smtp.Tokens is not null || relay.User.Length > 0) && SignInSecurity.Withheld(relay, relay.Host, relay.Port, remote, client.IsSecure) is { } withheld)
        {
            await steps.FailAsync("AUTH", withheld, null).ConfigureAwait(false);
            return false;
        }

        if (smtp.Tokens is not null)
        {
            if (await smtp.SignInAsync(client, relay.Host, relay.Port, cancellationToken).ConfigureAwait(false) is { } refused)
            {
                await steps.FailAsync("AUTH", refused, null).ConfigureAwait(false);
                return false;
            }

            await steps.OkAsync("AUTH", $"XOAUTH2 as {relay.User}").ConfigureAwait(false);
            return true;
        }

        if (relay.User.Length == 0)
        {
            await steps.OkAsync("AUTH", "none (Relay:User is empty)").ConfigureAwait(false);
            return true;
        }

        try
        {
            await PasswordSignIn.AuthenticateAsync(client, relay.User, relay.Password, cancellationToken).ConfigureAwait(false);
            await steps.OkAsync("AUTH", $"as {relay.User}").ConfigureAwait(false);
            return true;
        }
        catch (Exception ex) when (ex is AuthenticationException or NotSupportedException)
        {
            await steps.FailAsync("AUTH", ex.Message, AuthErrors.SmtpFix("535 " + ex.Message, relay.Host.EndsWith("gmail.com", StringComparison.OrdinalIgnoreCase), false, false)
                ?? "check Relay:User and Relay:Password").ConfigureAwait(false);
            return false;
        }
    }

    private static async Task<bool> SendTestAsync(Steps steps, RecordingSmtpClient client, GatewayOptions options, string? to, CancellationToken cancellationToken)
    {
        string recipient = to ?? (options.Sender.Operator.Contains('@', StringComparison.Ordinal) ? options.Sender.Operator
            : options.Users.TryGetValue(options.Sender.Operator, out var user) ? user.Email : options.Relay.User.Length > 0 ? options.Relay.User : options.Sender.Address);
        var now = TimeProvider.System.GetUtcNow();
        using var message = new MimeMessage();
        message.From.Add(new MailboxAddress(options.Sender.DisplayName, options.Sender.Address));
        message.To.Add(MailboxAddress.Parse(recipient));
        message.Subject = $"EdgeMail relay test from {options.Sender.Hostname}";
        message.Date = now;
        message.MessageId = $"edgemail.relay-test.{now.ToUnixTimeSeconds()}.{Guid.NewGuid():N}@{options.Sender.Hostname}";
        message.Headers.Add("Auto-Submitted", "auto-generated");
        message.Body = new TextPart("plain") { Text = $"This is a test mail from 'edgemail doctor relay' on {options.Sender.Hostname}, sent through {options.Relay.Host}:{options.Relay.Port} as {options.Relay.User}.\n" };
        try
        {
            string reply = await client.SendAsync(message, cancellationToken).ConfigureAwait(false);
            if (client.Refused.Count > 0)
            {
                return await RecipientRefusedAsync().ConfigureAwait(false);
            }

            await steps.OkAsync("test mail", $"accepted for {recipient}: {reply}").ConfigureAwait(false);
            return true;
        }
        catch (SmtpCommandException ex) when (client.Refused.Count > 0 && ex.ErrorCode != SmtpErrorCode.SenderNotAccepted)
        {
            // The one recipient refused, the server is not asked for the data: MailKit's "no recipients were accepted"
            // says less than the refusal. (A sender refused under PIPELINING has its RCPT answered "bad sequence" too:
            // the sender's refusal is the one that says why.)
            return await RecipientRefusedAsync().ConfigureAwait(false);
        }
        catch (SmtpCommandException ex)
        {
            string text = $"{(int)ex.StatusCode} {ex.Message}";
            await steps.FailAsync("test mail", text, AuthErrors.SmtpFix(text, options.Relay.OAuth2.IsGoogle(options.Relay.Auth), RelayAuthModes.OAuth2ClientCredentials.Equals(options.Relay.Auth, StringComparison.OrdinalIgnoreCase), RelayAuthModes.IsOAuth2(options.Relay.Auth))
                ?? "the server refused the mail; its reply says why").ConfigureAwait(false);
            return false;
        }
        catch (Exception ex) when (ex is SmtpProtocolException or IOException or ServiceNotConnectedException)
        {
            await steps.FailAsync("test mail", ex.Message, "the connection broke; run the doctor again").ConfigureAwait(false);
            return false;
        }

        async Task<bool> RecipientRefusedAsync()
        {
            var (code, text) = client.Refused.Values.First();
            await steps.FailAsync("test mail", $"{recipient} refused: {text}", code >= 500 ? "check the address" : "try again later").ConfigureAwait(false);
            return false;
        }
    }

    private sealed class Steps(TextWriter output)
    {
        // A detail may quote the server (its greeting, its replies): one clean line, as a delivery result keeps it, so
        // that its escape sequences do not reach the operator's terminal.
        public async Task OkAsync(string step, string detail) => await output.WriteLineAsync($"  ok    {step,-13} {RemoteReply.Clean(detail)}").ConfigureAwait(false);

        public Task FailAsync(string step, string detail, string? fix) => FailAsync(step, [detail], fix);

        // Each line of a list on a line of its own, under the first.
        public async Task FailAsync(string step, IReadOnlyList<string> lines, string? fix)
        {
            await output.WriteLineAsync($"  FAIL  {step,-13} {string.Join(Environment.NewLine + "         ", lines.Select(RemoteReply.Clean))}").ConfigureAwait(false);
            if (fix is not null)
            {
                await output.WriteLineAsync($"        {"fix:",-13} {fix}").ConfigureAwait(false);
            }
        }
    }
}
