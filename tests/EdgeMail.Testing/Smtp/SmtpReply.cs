using System.Globalization;

namespace EdgeMail.Testing.Smtp;

/// <summary>
/// What <see cref="SmtpTestServer"/> answers where a test scripts it: a reply code with its text (enhanced status code
/// first, as in <c>451 4.3.0 try later</c>), <see cref="Drop"/> — the connection closed with no answer at all — or
/// <see cref="Hang"/>, no answer and the connection kept open.
/// </summary>
/// <param name="Code">Reply code (250, 451, 550, ...); 0 for <see cref="Drop"/>, -1 for <see cref="Hang"/>.</param>
/// <param name="Text">Reply text.</param>
public sealed record SmtpReply(int Code, string Text)
{
    /// <summary>The server's acceptance of a message.</summary>
    public static SmtpReply Ok { get; } = new(250, "2.0.0 queued");

    /// <summary>No reply: the server closes the connection (a crash, a network cut, an idle timeout).</summary>
    public static SmtpReply Drop { get; } = new(0, "connection dropped without a reply");

    /// <summary>
    /// No reply, the connection left open: a hung server. The session reads on and throws the input away until the
    /// client gives up and closes, or the test server stops. For the end of a message and for QUIT only.
    /// </summary>
    public static SmtpReply Hang { get; } = new(-1, "no reply, the connection left open");

    /// <summary>
    /// Whether the server closes the connection right after this reply, as servers do after a 421 ("service not
    /// available, closing transmission channel": Postfix's idle timeout, a restart).
    /// </summary>
    public bool Closes { get; init; }

    /// <summary>Whether this is <see cref="Drop"/>.</summary>
    public bool IsDrop => Code == 0;

    /// <summary>Whether this is <see cref="Hang"/>.</summary>
    public bool IsHang => Code == -1;

    /// <summary>Whether the reply accepts (2xx or 3xx).</summary>
    public bool IsPositive => Code is >= 200 and < 400;

    /// <inheritdoc />
    public override string ToString() => IsDrop ? "(dropped)" : IsHang ? "(hung)" : Code.ToString(CultureInfo.InvariantCulture) + " " + Text;
}
