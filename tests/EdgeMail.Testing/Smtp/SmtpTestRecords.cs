using MimeKit;

namespace EdgeMail.Testing.Smtp;

/// <summary>A command as the server read it, before it answered.</summary>
/// <param name="Connection">Which connection (1 for the server's first).</param>
/// <param name="Verb">EHLO, HELO, MAIL, RCPT, DATA, AUTH, STARTTLS, RSET, NOOP, QUIT.</param>
/// <param name="Argument">The address of MAIL and RCPT (empty for the null sender), the mechanism of AUTH, the name of EHLO and HELO; else empty.</param>
public sealed record SmtpCommandSeen(int Connection, string Verb, string Argument);

/// <summary>An AUTH exchange: who tried, how, and whether the password was right.</summary>
/// <param name="User">User name the client sent.</param>
/// <param name="Mechanism">PLAIN or LOGIN.</param>
/// <param name="Accepted">Whether the server accepted it.</param>
public sealed record SmtpAuthAttempt(string User, string Mechanism, bool Accepted);

/// <summary>One message the server read to the end of its DATA, with its envelope and how it was answered.</summary>
public sealed class ReceivedMail
{
    private readonly Lazy<MimeMessage> _message;

    internal ReceivedMail(int number, int connection, string from, IReadOnlyList<string> to, byte[] data, bool secure, string? user)
    {
        Number = number;
        Connection = connection;
        From = from;
        To = to;
        Data = data;
        Secure = secure;
        User = user;
        _message = new Lazy<MimeMessage>(() => MimeMessage.Load(new MemoryStream(data, writable: false)));
    }

    /// <summary>Order among every message this server read (1 for the first), accepted or not.</summary>
    public int Number { get; }

    /// <summary>Which connection it came on (1 for the server's first).</summary>
    public int Connection { get; }

    /// <summary>The reverse path of MAIL FROM; empty for the null sender.</summary>
    public string From { get; }

    /// <summary>The recipients the server accepted, in RCPT order.</summary>
    public IReadOnlyList<string> To { get; }

    /// <summary>The content as SmtpServer hands it over: dot-unstuffed, without the final <c>CRLF.CRLF</c>.</summary>
    public byte[] Data { get; }

    /// <summary>The content parsed by MimeKit.</summary>
    public MimeMessage Message => _message.Value;

    /// <summary>Whether the connection was under TLS (STARTTLS or implicit).</summary>
    public bool Secure { get; }

    /// <summary>The authenticated user, or null when the client did not authenticate.</summary>
    public string? User { get; }

    /// <summary>How the server answered the end of DATA; null only while the test's script decides.</summary>
    public SmtpReply? Reply { get; internal set; }

    /// <summary>The parsed message and its recipients: <c>var (message, to) = await server.NextAsync();</c>.</summary>
    /// <param name="message">The parsed message.</param>
    /// <param name="to">The accepted recipients.</param>
    public void Deconstruct(out MimeMessage message, out IReadOnlyList<string> to)
    {
        message = Message;
        to = To;
    }
}
