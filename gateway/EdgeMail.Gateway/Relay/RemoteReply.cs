using System.Diagnostics.CodeAnalysis;
using System.Text;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Spool;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// A reply as the gateway keeps it (<see cref="RecipientResult.Reply"/>): one line of readable text of bounded length.
/// The text after a reply code is the remote server's, and in direct MX mode that is any exchanger on the Internet;
/// MailKit hands it over as it came — continuation lines joined with LF, every other byte kept (NUL, escape sequences)
/// and no bound on the length. From the result it goes to the spool, the logs, the console, the device's receipt and
/// the operator's failure notice, each of which wants one clean line.
/// </summary>
public static class RemoteReply
{
    /// <summary>
    /// The most characters kept: four reply lines of RFC 5321's most (512 octets, §4.5.3.1.5) — enough for any honest
    /// server's explanation, and a hostile server's thousands of continuation lines do not fill the spool.
    /// </summary>
    public const int MaxLength = 2048;

    /// <summary>Put between a multi-line reply's lines.</summary>
    public const string LineBreak = " / ";

    /// <summary>
    /// The reply as kept: its lines joined with <see cref="LineBreak"/> (empty ones dropped), a tab as a space, any other
    /// control character and bidirectional override as U+FFFD, and cut to <see cref="MaxLength"/> with an ellipsis where it was cut. The start (reply
    /// code, enhanced status code) is never touched; a clean reply is returned as it is.
    /// </summary>
    /// <param name="reply">The reply as formed from the server's answer (or a local error).</param>
    /// <returns>The reply as kept; the same for a reply cleaned already.</returns>
    [return: NotNullIfNotNull(nameof(reply))]
    public static string? Clean(string? reply)
    {
        if (reply is null || (reply.Length <= MaxLength && !NeedsCleaning(reply)))
        {
            return reply;
        }

        var sb = new StringBuilder(Math.Min(reply.Length, MaxLength + 1));
        bool lineBreak = false;
        foreach (char c in reply)
        {
            if (c is '\r' or '\n' or '\u2028' or '\u2029')
            {
                lineBreak = sb.Length > 0;
                continue;
            }

            if (lineBreak)
            {
                sb.Append(LineBreak);
                lineBreak = false;
            }

            sb.Append(c == '\t' ? ' ' : char.IsControl(c) || IsBidiControl(c) ? '\uFFFD' : c);
            if (sb.Length > MaxLength)
            {
                break; // what follows would be cut anyway: a flood of lines is not copied whole
            }
        }

        Ellipsis.Cut(sb, MaxLength);

        return sb.ToString();
    }

    private static bool NeedsCleaning(string reply)
    {
        foreach (char c in reply)
        {
            if (char.IsControl(c) || c is '\u2028' or '\u2029' || IsBidiControl(c))
            {
                return true;
            }
        }

        return false;
    }

    // Embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069): text shown in the console or a terminal could be
    // made to read other than it is.
    private static bool IsBidiControl(char c) => c is >= '\u202A' and <= '\u202E' or >= '\u2066' and <= '\u2069';
}
