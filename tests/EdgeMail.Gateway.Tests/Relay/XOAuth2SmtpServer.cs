using System.Collections.Concurrent;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using MimeKit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// A small SMTP submission server on loopback that, like Exchange Online and Gmail, offers only AUTH XOAUTH2 and only
/// after STARTTLS, accepts a token only while the <see cref="TokenServer"/> says it is valid for the named mailbox,
/// and refuses mail from an unauthenticated session with <c>530 5.7.57</c>. A refused token gets Microsoft's
/// <c>535 5.7.3</c> or Google's JSON challenge then <c>535 5.7.8</c>. It can end a session after a number of messages,
/// as providers do. (SmtpServer's authenticators know PLAIN and LOGIN only, hence this one.)
/// </summary>
public sealed class XOAuth2SmtpServer : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly Func<string, string, string?> _check;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _accepting;
    private readonly ConcurrentBag<Task> _sessions = [];
    private int _messages;

    /// <param name="check">(token, mailbox) → null when valid, else why not.</param>
    /// <param name="googleStyle">Refuse like Gmail (JSON challenge, 5.7.8) instead of like Exchange (5.7.3).</param>
    public XOAuth2SmtpServer(Func<string, string, string?> check, bool googleStyle = false)
    {
        _check = check;
        GoogleStyle = googleStyle;
        _listener.Start();
        _accepting = AcceptAsync();
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    public bool GoogleStyle { get; }

    /// <summary>Close a session right after this many messages (0: never).</summary>
    public int MessagesPerSession { get; set; }

    /// <summary>
    /// Asked at each AUTH XOAUTH2: a reply instead of the token check (<c>454 4.7.0 Temporary authentication failure</c>,
    /// say, while the provider's sign-in service is down), or null to check the token as usual.
    /// </summary>
    public Func<string?>? AuthReply { get; set; }

    /// <summary>Called with the running count after each accepted message (before the reply is sent).</summary>
    public Action<int>? Accepted { get; set; }

    /// <summary>Accepted mail: the authenticated mailbox, the envelope recipients and the message.</summary>
    public Channel<(string User, IReadOnlyList<string> To, MimeMessage Message)> Received { get; } =
        Channel.CreateUnbounded<(string, IReadOnlyList<string>, MimeMessage)>();

    /// <summary>Every AUTH XOAUTH2 attempt: the mailbox and whether it was accepted (never the token).</summary>
    public ConcurrentQueue<(string User, bool Ok)> AuthAttempts { get; } = new();

    public int Messages => Volatile.Read(ref _messages);

    public async Task<(string User, IReadOnlyList<string> To, MimeMessage Message)> NextAsync() =>
        await Received.Reader.ReadAsync().AsTask().WaitAsync(EdgeMail.Testing.Await.DefaultTimeout);

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        try
        {
            await _accepting;
        }
        catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }

        await Task.WhenAll(_sessions.ToArray());
        _stop.Dispose();
    }

    private async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            var client = await _listener.AcceptTcpClientAsync(_stop.Token);
            _sessions.Add(SessionAsync(client));
        }
    }

    private async Task SessionAsync(TcpClient client)
    {
        using (client)
        {
            try
            {
                await new Session(this, client.GetStream()).RunAsync(_stop.Token);
            }
            catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException or System.Security.Authentication.AuthenticationException)
            {
                // The client went away, or the server is stopping.
            }
        }
    }

    private sealed class Session(XOAuth2SmtpServer server, Stream network)
    {
        private Stream _stream = network;
        private StreamReader _reader = new(network, Encoding.Latin1, false, 1024, leaveOpen: true);
        private bool _tls;
        private string? _user;
        private string? _from;
        private readonly List<string> _to = [];
        private int _count;

        public async Task RunAsync(CancellationToken cancellationToken)
        {
            await WriteAsync("220 xoauth2.test ESMTP ready");
            while (!cancellationToken.IsCancellationRequested)
            {
                string? line = await _reader.ReadLineAsync(cancellationToken);
                if (line is null)
                {
                    return;
                }

                string verb = (line.Split(' ', 2)[0]).ToUpperInvariant();
                switch (verb)
                {
                    case "EHLO":
                        await WriteAsync(_tls
                            ? "250-xoauth2.test\r\n250-8BITMIME\r\n250-AUTH XOAUTH2\r\n250 SIZE 35882577"
                            : "250-xoauth2.test\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 SIZE 35882577");
                        break;
                    case "STARTTLS" when !_tls:
                        await WriteAsync("220 2.0.0 SMTP server ready");
                        var ssl = new SslStream(_stream, leaveInnerStreamOpen: false);
                        await ssl.AuthenticateAsServerAsync(SmarthostTlsTests.Certificate.Value);
                        _stream = ssl;
                        _reader = new StreamReader(ssl, Encoding.Latin1, false, 1024, leaveOpen: true);
                        _tls = true;
                        break;
                    case "AUTH":
                        await AuthAsync(line, cancellationToken);
                        break;
                    case "MAIL":
                        if (_user is null)
                        {
                            await WriteAsync("530 5.7.57 Client not authenticated to send mail. [xoauth2.test]");
                            break;
                        }

                        _from = line[(line.IndexOf(':', StringComparison.Ordinal) + 1)..].Trim().Split(' ')[0].Trim('<', '>');
                        _to.Clear();
                        await WriteAsync("250 2.1.0 Sender OK");
                        break;
                    case "RCPT":
                        _to.Add(line[(line.IndexOf(':', StringComparison.Ordinal) + 1)..].Trim().Split(' ')[0].Trim('<', '>'));
                        await WriteAsync("250 2.1.5 Recipient OK");
                        break;
                    case "DATA":
                        if (_from is null || _to.Count == 0)
                        {
                            await WriteAsync("503 5.5.1 Bad sequence of commands");
                            break;
                        }

                        await WriteAsync("354 Start mail input; end with <CRLF>.<CRLF>");
                        var message = await ReadDataAsync(cancellationToken);
                        int n = Interlocked.Increment(ref server._messages);
                        server.Accepted?.Invoke(n);
                        server.Received.Writer.TryWrite((_user!, _to.ToList(), message));
                        await WriteAsync($"250 2.0.0 OK <Q{n}@xoauth2.test> queued as Q{n}");
                        _from = null;
                        if (server.MessagesPerSession > 0 && ++_count >= server.MessagesPerSession)
                        {
                            return; // the provider ends the session; the client must reconnect and authenticate again
                        }

                        break;
                    case "RSET":
                        _from = null;
                        _to.Clear();
                        await WriteAsync("250 2.0.0 Resetting");
                        break;
                    case "NOOP":
                        await WriteAsync("250 2.0.0 OK");
                        break;
                    case "QUIT":
                        await WriteAsync("221 2.0.0 Service closing transmission channel");
                        return;
                    default:
                        await WriteAsync("500 5.3.3 Unrecognized command");
                        break;
                }
            }
        }

        private async Task AuthAsync(string line, CancellationToken cancellationToken)
        {
            string[] parts = line.Split(' ');
            if (!_tls || parts.Length < 2 || !parts[1].Equals("XOAUTH2", StringComparison.OrdinalIgnoreCase))
            {
                await WriteAsync("504 5.7.4 Unrecognized authentication type");
                return;
            }

            string initial = parts.Length > 2 ? parts[2] : string.Empty;
            if (initial.Length == 0)
            {
                await WriteAsync("334 ");
                initial = await _reader.ReadLineAsync(cancellationToken) ?? string.Empty;
            }

            // user={mailbox}^Aauth=Bearer {token}^A^A
            string decoded = Encoding.UTF8.GetString(Convert.FromBase64String(initial));
            string user = string.Empty;
            string token = string.Empty;
            foreach (string field in decoded.Split('\x01', StringSplitOptions.RemoveEmptyEntries))
            {
                if (field.StartsWith("user=", StringComparison.Ordinal))
                {
                    user = field[5..];
                }
                else if (field.StartsWith("auth=Bearer ", StringComparison.Ordinal))
                {
                    token = field[12..];
                }
            }

            if (server.AuthReply?.Invoke() is { } reply)
            {
                await WriteAsync(reply);
                return;
            }

            bool ok = server._check(token, user) is null;
            server.AuthAttempts.Enqueue((user, ok));
            if (ok)
            {
                _user = user;
                await WriteAsync("235 2.7.0 Authentication successful");
                return;
            }

            if (server.GoogleStyle)
            {
                string challenge = Convert.ToBase64String(JsonSerializer.SerializeToUtf8Bytes(new { status = "400", schemes = "Bearer", scope = "https://mail.google.com/" }));
                await WriteAsync("334 " + challenge);
                await _reader.ReadLineAsync(cancellationToken); // the client's empty answer
                await WriteAsync("535 5.7.8 Username and Password not accepted. For more information, go to https://support.google.com/mail/?p=BadCredentials");
            }
            else
            {
                await WriteAsync("535 5.7.3 Authentication unsuccessful [xoauth2.test]");
            }
        }

        private async Task<MimeMessage> ReadDataAsync(CancellationToken cancellationToken)
        {
            var data = new StringBuilder();
            while (await _reader.ReadLineAsync(cancellationToken) is { } line)
            {
                if (line == ".")
                {
                    break;
                }

                data.Append(line.StartsWith('.') ? line[1..] : line).Append("\r\n");
            }

            using var stream = new MemoryStream(Encoding.Latin1.GetBytes(data.ToString()));
            return await MimeMessage.LoadAsync(stream, cancellationToken);
        }

        private async Task WriteAsync(string reply)
        {
            await _stream.WriteAsync(Encoding.ASCII.GetBytes(reply + "\r\n"));
            await _stream.FlushAsync();
        }
    }
}
