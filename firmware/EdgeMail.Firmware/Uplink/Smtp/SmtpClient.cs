using System;
using EdgeMail.Firmware.Alerts;

namespace EdgeMail.Firmware.Uplink.Smtp;

/// <summary>
/// A tiny synchronous SMTP client for the device (RFC 5321): greeting, EHLO (HELO when the server does not know EHLO),
/// AUTH PLAIN (RFC 4954), MAIL, RCPT, DATA with dot-stuffing, QUIT — over an <see cref="ITransport"/>, so TLS is the transport's business. Buffers are
/// allocated once; the message body is streamed through <see cref="Write(byte[], int, int)"/> between
/// <see cref="BeginData"/> and <see cref="EndData"/>. Not thread-safe.
/// </summary>
public sealed class SmtpClient
{
    private const int MaxReplyLine = 512;
    private static readonly byte[] Base64Alphabet = new byte[]
    {
        (byte)'A', (byte)'B', (byte)'C', (byte)'D', (byte)'E', (byte)'F', (byte)'G', (byte)'H', (byte)'I', (byte)'J', (byte)'K', (byte)'L', (byte)'M',
        (byte)'N', (byte)'O', (byte)'P', (byte)'Q', (byte)'R', (byte)'S', (byte)'T', (byte)'U', (byte)'V', (byte)'W', (byte)'X', (byte)'Y', (byte)'Z',
        (byte)'a', (byte)'b', (byte)'c', (byte)'d', (byte)'e', (byte)'f', (byte)'g', (byte)'h', (byte)'i', (byte)'j', (byte)'k', (byte)'l', (byte)'m',
        (byte)'n', (byte)'o', (byte)'p', (byte)'q', (byte)'r', (byte)'s', (byte)'t', (byte)'u', (byte)'v', (byte)'w', (byte)'x', (byte)'y', (byte)'z',
        (byte)'0', (byte)'1', (byte)'2', (byte)'3', (byte)'4', (byte)'5', (byte)'6', (byte)'7', (byte)'8', (byte)'9', (byte)'+', (byte)'/',
    };

    private readonly ITransport _transport;
    private readonly IClock _clock;
    private readonly int _timeoutMs;
    private readonly byte[] _tx;
    private readonly byte[] _rx = new byte[MaxReplyLine];
    private int _txCount;
    private int _rxCount;
    private int _lineLength;
    private bool _atLineStart;
    private byte _last;
    private bool _inData;
    private int _ehloRefusal;

    /// <summary>Creates the client.</summary>
    /// <param name="transport">The byte stream to the server.</param>
    /// <param name="clock">Uptime, for reply deadlines.</param>
    /// <param name="timeoutMs">How long any one reply (or send) may take.</param>
    /// <param name="sendBufferSize">Send buffer in bytes (commands and body chunks); at least 128.</param>
    public SmtpClient(ITransport transport, IClock clock, int timeoutMs, int sendBufferSize)
    {
        _transport = transport ?? throw new ArgumentNullException(nameof(transport));
        _clock = clock ?? throw new ArgumentNullException(nameof(clock));
        if (sendBufferSize < 128)
        {
            throw new ArgumentOutOfRangeException(nameof(sendBufferSize), "The send buffer needs at least 128 bytes.");
        }

        _timeoutMs = timeoutMs;
        _tx = new byte[sendBufferSize];
    }

    /// <summary>The code of the last reply read.</summary>
    public int LastReplyCode { get; private set; }

    /// <summary>Whether the server's EHLO reply offered AUTH PLAIN.</summary>
    public bool SupportsAuthPlain { get; private set; }

    /// <summary>Whether the server's EHLO reply offered 8BITMIME.</summary>
    public bool Supports8BitMime { get; private set; }

    /// <summary>
    /// Whether the server refused EHLO as unknown (500 or 502) and the session was opened with HELO instead: then it
    /// offers no extension, neither AUTH nor 8BITMIME.
    /// </summary>
    public bool GreetedWithHelo { get; private set; }

    /// <summary>Opens the connection and reads the 220 greeting.</summary>
    /// <param name="host">Server host.</param>
    /// <param name="port">Server port (587 submission, 25).</param>
    /// <exception cref="TransportException">The connection could not be made.</exception>
    /// <exception cref="SmtpException">No 220 greeting.</exception>
    public void Connect(string host, int port)
    {
        _rxCount = 0;
        _txCount = 0;
        _inData = false;
        _transport.Open(host, port, _timeoutMs);
        Expect(220, "the greeting");
    }

    /// <summary>
    /// Sends EHLO and learns the server's extensions. A server that answers 500 or 502 does not know EHLO and stays in
    /// the state it was in (RFC 5321 section 4.1.4): the client then says HELO, as section 3.2 asks, and the session
    /// has no extensions (<see cref="GreetedWithHelo"/>).
    /// </summary>
    /// <param name="clientName">The client's name (a domain or address literal).</param>
    /// <exception cref="SmtpException">The server refused EHLO otherwise, or HELO too.</exception>
    public void Ehlo(string clientName)
    {
        SupportsAuthPlain = false;
        Supports8BitMime = false;
        GreetedWithHelo = false;
        _ehloRefusal = 0;
        Command("EHLO ", clientName, null);
        try
        {
            Expect(250, "EHLO");
            return;
        }
        catch (SmtpException ex) when (ex.ReplyCode == 500 || ex.ReplyCode == 502)
        {
            _ehloRefusal = ex.ReplyCode;
        }

        Command("HELO ", clientName, null);
        Expect(250, "HELO");

        // Whatever the lines of the refusal or of the HELO reply looked like, a HELO session has no extensions.
        SupportsAuthPlain = false;
        Supports8BitMime = false;
        GreetedWithHelo = true;
    }

    /// <summary>Authenticates with AUTH PLAIN (the secret travels base64-encoded: use TLS below, or a trusted LAN).</summary>
    /// <param name="user">User name (EdgeMail: the device id).</param>
    /// <param name="password">Password (the device's secret).</param>
    /// <exception cref="SmtpException">The server does not offer AUTH PLAIN (nor any AUTH after a HELO fallback, with the
    /// EHLO refusal's code), or refused the credentials (535); in the first two cases nothing was sent.</exception>
    public void AuthPlain(string user, string password)
    {
        if (GreetedWithHelo)
        {
            throw new SmtpException(_ehloRefusal, "the server answered EHLO with " + _ehloRefusal.ToString()
                + " and took HELO instead, which has no AUTH: the device is configured to authenticate (a password is set), so the secret was not sent"
                + " and nothing was submitted; enable EHLO and AUTH PLAIN on the server, or set no password for a source the server allow-lists");
        }

        if (!SupportsAuthPlain)
        {
            throw new SmtpException(0, "the server did not offer AUTH PLAIN after EHLO (is TLS required first, or is AUTH disabled?)");
        }

        // "\0user\0password" as UTF-8, base64-encoded, sent as the initial response (RFC 4954).
        int userBytes = Utf8.GetByteCount(user);
        int passBytes = Utf8.GetByteCount(password);
        var raw = new byte[2 + userBytes + passBytes];
        Utf8.Encode(user, raw, 1);
        Utf8.Encode(password, raw, 2 + userBytes);
        Append("AUTH PLAIN ");
        int n = raw.Length;
        int i = 0;
        while (i < n)
        {
            int take = n - i < 3 ? n - i : 3;
            EnsureRoom(4);
            _txCount += EncodeBase64Quantum(raw, i, take, _tx, _txCount);
            i += take;
        }

        Array.Clear(raw, 0, raw.Length);
        Append("\r\n");
        Flush();
        Expect(235, "AUTH PLAIN");
    }

    /// <summary>Starts a mail transaction.</summary>
    /// <param name="from">Envelope sender address (no angle brackets).</param>
    public void MailFrom(string from)
    {
        Command("MAIL FROM:<", from, ">");
        Expect(250, "MAIL FROM", anyCompletion: true);
    }

    /// <summary>Adds a recipient.</summary>
    /// <param name="to">Recipient address (no angle brackets).</param>
    public void RcptTo(string to)
    {
        Command("RCPT TO:<", to, ">");
        Expect(250, "RCPT TO", anyCompletion: true);
    }

    /// <summary>Sends DATA and waits for 354; then write the message with <see cref="Write(byte[], int, int)"/>.</summary>
    public void BeginData()
    {
        Command("DATA", null, null);
        Expect(354, "DATA");
        _inData = true;
        _atLineStart = true;
        _last = 0;
    }

    /// <summary>Writes message bytes (headers and body, lines ending in CRLF); a line that starts with '.' is dot-stuffed.</summary>
    /// <param name="buffer">Source bytes.</param>
    /// <param name="offset">First byte.</param>
    /// <param name="count">Number of bytes.</param>
    public void Write(byte[] buffer, int offset, int count)
    {
        if (!_inData)
        {
            throw new InvalidOperationException("Write is only valid between BeginData and EndData.");
        }

        for (int i = 0; i < count; i++)
        {
            byte b = buffer[offset + i];
            EnsureRoom(2);
            if (_atLineStart && b == (byte)'.')
            {
                _tx[_txCount++] = (byte)'.';
            }

            _tx[_txCount++] = b;
            _atLineStart = b == (byte)'\n' && _last == (byte)'\r';
            _last = b;
        }
    }

    /// <summary>
    /// Writes up to three bytes as four base64 characters straight into the send buffer (no line break: the caller
    /// ends lines). Base64 has no '.', so nothing is dot-stuffed; the bytes are those of <see cref="EncodeBase64Quantum"/>
    /// passed to <see cref="Write(byte[], int, int)"/>.
    /// </summary>
    /// <param name="src">Source.</param>
    /// <param name="offset">First byte.</param>
    /// <param name="count">1..3 bytes.</param>
    public void WriteBase64Quantum(byte[] src, int offset, int count)
    {
        if (!_inData)
        {
            throw new InvalidOperationException("Write is only valid between BeginData and EndData.");
        }

        EnsureRoom(4);
        _txCount += EncodeBase64Quantum(src, offset, count, _tx, _txCount);
        _atLineStart = false;
        _last = _tx[_txCount - 1];
    }

    /// <summary>Writes ASCII text into the message (see <see cref="Write(byte[], int, int)"/>).</summary>
    /// <param name="text">Text; characters above 0x7F are not allowed here.</param>
    public void Write(string text)
    {
        if (!_inData)
        {
            throw new InvalidOperationException("Write is only valid between BeginData and EndData.");
        }

        for (int i = 0; i < text.Length; i++)
        {
            byte b = (byte)text[i];
            EnsureRoom(2);
            if (_atLineStart && b == (byte)'.')
            {
                _tx[_txCount++] = (byte)'.';
            }

            _tx[_txCount++] = b;
            _atLineStart = b == (byte)'\n' && _last == (byte)'\r';
            _last = b;
        }
    }

    /// <summary>Ends the message with CRLF.CRLF and waits for the server to take it (250).</summary>
    public void EndData()
    {
        if (!_inData)
        {
            throw new InvalidOperationException("EndData without BeginData.");
        }

        _inData = false;
        if (!_atLineStart)
        {
            Append("\r\n");
        }

        Append(".\r\n");
        Flush();
        Expect(250, "the end of DATA");
    }

    /// <summary>Sends RSET: abandons the current transaction, keeps the session.</summary>
    public void Reset()
    {
        Command("RSET", null, null);
        Expect(250, "RSET");
    }

    /// <summary>Sends QUIT (best effort) and closes the connection.</summary>
    public void Quit()
    {
        try
        {
            Command("QUIT", null, null);
            Expect(221, "QUIT");
        }
        catch (SmtpException)
        {
            // Already going away.
        }
        finally
        {
            _transport.Close();
        }
    }

    /// <summary>Closes the connection without QUIT.</summary>
    public void Abort() => _transport.Close();

    /// <summary>Encodes up to three bytes as four base64 characters.</summary>
    /// <param name="src">Source.</param>
    /// <param name="offset">First byte.</param>
    /// <param name="count">1..3 bytes.</param>
    /// <param name="dst">Destination.</param>
    /// <param name="at">Where the four characters go.</param>
    /// <returns>4.</returns>
    public static int EncodeBase64Quantum(byte[] src, int offset, int count, byte[] dst, int at)
    {
        int b0 = src[offset];
        int b1 = count > 1 ? src[offset + 1] : 0;
        int b2 = count > 2 ? src[offset + 2] : 0;
        dst[at] = Base64Alphabet[b0 >> 2];
        dst[at + 1] = Base64Alphabet[((b0 & 0x03) << 4) | (b1 >> 4)];
        dst[at + 2] = count > 1 ? Base64Alphabet[((b1 & 0x0F) << 2) | (b2 >> 6)] : (byte)'=';
        dst[at + 3] = count > 2 ? Base64Alphabet[b2 & 0x3F] : (byte)'=';
        return 4;
    }

    private void Command(string verb, string? argument, string? tail)
    {
        Append(verb);
        if (argument != null)
        {
            for (int i = 0; i < argument.Length; i++)
            {
                char c = argument[i];
                if (c == '\r' || c == '\n' || c > 0x7E)
                {
                    throw new ArgumentException("SMTP command arguments must be printable ASCII without line breaks.", nameof(argument));
                }
            }

            Append(argument);
        }

        if (tail != null)
        {
            Append(tail);
        }

        Append("\r\n");
        Flush();
    }

    private void Append(string ascii)
    {
        for (int i = 0; i < ascii.Length; i++)
        {
            EnsureRoom(1);
            _tx[_txCount++] = (byte)ascii[i];
        }
    }

    private void EnsureRoom(int bytes)
    {
        if (_txCount + bytes > _tx.Length)
        {
            Flush();
        }
    }

    private void Flush()
    {
        int offset = 0;
        long deadline = _clock.UptimeMs + _timeoutMs;
        while (offset < _txCount)
        {
            long left = deadline - _clock.UptimeMs;
            int n = left > 0 ? _transport.Send(_tx, offset, _txCount - offset, (int)left) : 0;
            if (n < 0 || (n == 0 && left <= 0))
            {
                _txCount = 0;
                _transport.Close();
                throw new SmtpException(0, n < 0 ? "the connection to the SMTP server broke while sending" : "sending to the SMTP server stalled for " + _timeoutMs.ToString() + " ms");
            }

            offset += n;
        }

        _txCount = 0;
    }

    /// <summary>Reads one reply (all its lines) and checks its code.</summary>
    /// <param name="code">The code expected.</param>
    /// <param name="what">What the reply answers, for messages.</param>
    /// <param name="anyCompletion">Take any 2xx as well: a server may accept RCPT with 251 (will forward) or 252
    /// (cannot verify, will try), RFC 5321 sections 3.4 and 4.2.1.</param>
    private void Expect(int code, string what, bool anyCompletion = false)
    {
        long deadline = _clock.UptimeMs + _timeoutMs;
        bool first = true;
        while (true)
        {
            int end = ReadLine(deadline, what);

            // "250-..." continues, "250 ..." (or "250" alone) ends the reply.
            int reply = ReplyCode(end);
            if (reply < 0)
            {
                _transport.Close();
                throw new SmtpException(0, "malformed SMTP reply to " + what + ": '" + Utf8.Decode(_rx, 0, end) + "'");
            }

            if (!first || code == 250)
            {
                NoteExtension(end);
            }

            first = false;
            bool last = end == 3 || _rx[3] != (byte)'-';
            if (last)
            {
                LastReplyCode = reply;
                if (reply != code && !(anyCompletion && reply / 100 == 2))
                {
                    string text = Utf8.Decode(_rx, 0, end);
                    Consume(end);
                    throw new SmtpException(reply, "SMTP server answered " + what + " with '" + text + "' (expected " + code.ToString() + ")");
                }

                Consume(end);
                return;
            }

            Consume(end);
        }
    }

    /// <summary>
    /// The code of the line in the receive buffer: three digits, the first 1 to 5, then a space, a hyphen or the end
    /// of the line; -1 for anything else. Anything else is not a reply this client may act on: "24: ok" must not
    /// pass for 250 (the alert would leave flash untaken), nor "4:0" for 500 (dropped as refused).
    /// </summary>
    private int ReplyCode(int end)
    {
        if (end < 3 || (end > 3 && _rx[3] != (byte)' ' && _rx[3] != (byte)'-'))
        {
            return -1;
        }

        int code = 0;
        for (int i = 0; i < 3; i++)
        {
            int digit = _rx[i] - '0';
            if (digit < 0 || digit > 9)
            {
                return -1;
            }

            code = (code * 10) + digit;
        }

        return code >= 100 && code <= 599 ? code : -1;
    }

    /// <summary>Records EHLO keywords from the line in the receive buffer (AUTH ... PLAIN, 8BITMIME).</summary>
    private void NoteExtension(int end)
    {
        if (end >= 8 && Matches(4, "AUTH"))
        {
            for (int i = 8; i + 5 <= end; i++)
            {
                if ((_rx[i - 1] == ' ' || _rx[i - 1] == '=') && Matches(i, "PLAIN") && (i + 5 == end || _rx[i + 5] == ' '))
                {
                    SupportsAuthPlain = true;
                }
            }
        }
        else if (end >= 12 && Matches(4, "8BITMIME"))
        {
            Supports8BitMime = true;
        }
    }

    private bool Matches(int at, string keyword)
    {
        for (int i = 0; i < keyword.Length; i++)
        {
            int c = _rx[at + i];
            if (c >= 'a' && c <= 'z')
            {
                c -= 32;
            }

            if (c != keyword[i])
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Reads until the receive buffer starts with a whole line; returns its length without CRLF.</summary>
    private int ReadLine(long deadline, string what)
    {
        while (true)
        {
            for (int i = 1; i < _rxCount; i++)
            {
                if (_rx[i] == (byte)'\n' && _rx[i - 1] == (byte)'\r')
                {
                    _lineLength = i + 1;
                    return i - 1;
                }
            }

            if (_rxCount == _rx.Length)
            {
                _transport.Close();
                throw new SmtpException(0, "SMTP reply line to " + what + " is longer than " + MaxReplyLine.ToString() + " bytes");
            }

            long left = deadline - _clock.UptimeMs;
            int n = left > 0 ? _transport.Receive(_rx, _rxCount, _rx.Length - _rxCount, (int)left) : 0;
            if (n < 0)
            {
                throw new SmtpException(0, "the SMTP server closed the connection while we waited for the reply to " + what);
            }

            if (n == 0 && _clock.UptimeMs >= deadline)
            {
                _transport.Close();
                throw new SmtpException(0, "no SMTP reply to " + what + " within " + _timeoutMs.ToString() + " ms");
            }

            _rxCount += n;
        }
    }

    private void Consume(int end)
    {
        int used = _lineLength > 0 ? _lineLength : end + 2;
        _rxCount -= used;
        if (_rxCount > 0)
        {
            Array.Copy(_rx, used, _rx, 0, _rxCount);
        }

        _lineLength = 0;
    }
}
