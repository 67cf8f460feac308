using System.Buffers;
using System.Text;
using SmtpServer.Mail;
using SmtpServer.Protocol;
using SmtpServer.Text;

namespace EdgeMail.Gateway.Ingest.Smtp;

/// <summary>
/// MAIL's parameters, checked on the command line before SmtpServer's parser sees it. That parser
/// (<c>SmtpParser.TryMakeMail</c>) makes the command with no parameters at all when one of them does not parse: <c>SIZE=</c>,
/// <c>=5</c> or <c>SIZE=900000 X=1=2</c> got 250, and the declared-size check (<see cref="SubmissionPolicy.CheckDeclaredSize"/>)
/// never saw a SIZE. Each parameter must be RFC 5321's (§4.1.2) <c>keyword["=" value]</c>: the keyword letters, digits and
/// '-', from a letter or digit; the value one or more printable ASCII characters but '='. SmtpServer's own white space
/// separates them (it skips runs of it). The path is found by SmtpServer's parser, so what it takes as the path (a quoted
/// local part holding '>', say) is what is passed over here. A well-formed parameter of no extension the server offers
/// is refused with <c>555 5.5.4</c> (RFC 5321 §4.1.1.11, §4.1.2): SmtpServer takes any (<c>SmtpParser.TryMakeMailParameters</c>)
/// and reads only SIZE, and never looks after RCPT's path. The same checks apply to RCPT's parameters.
/// </summary>
internal static class MailParameters
{
    private const int Shown = 32;

    // The MAIL parameters of what EHLO offers (SmtpServer's EhloCommand.GetExtensions): SIZE (RFC 1870), BODY of 8BITMIME
    // (RFC 6152), SMTPUTF8 (RFC 6531), AUTH (RFC 4954; taken on a port without AUTH too, where it only names a sender
    // that a client relays for). None of them gives RCPT one (DSN's NOTIFY and ORCPT are not offered).
    private static readonly string[] MailKeywords = ["SIZE", "BODY", "SMTPUTF8", "AUTH"];

    // The parser keeps only its command factory, which none of the parts called here uses: one serves every session.
    private static readonly SmtpParser Parser = new(new SmtpCommandFactory());

    // The parser's parts as delegates once, not three new ones for every command line with parameters.
    private static readonly TokenReader.TryMakeDelegate MailVerb = Parser.TryMakeMail, FromColon = Parser.TryMakeFrom, RcptVerb = Parser.TryMakeRcptLiteral,
        ToColon = Parser.TryMakeToLiteral;

    private static readonly TokenReader.TryMakeDelegate<IMailbox> ReversePath = Parser.TryMakeReversePath, ForwardPath = Parser.TryMakePath;
    private static readonly SearchValues<byte> ValueBytes = SearchValues.Create([.. Enumerable.Range(33, 28).Select(b => (byte)b), .. Enumerable.Range(62, 65).Select(b => (byte)b)]);

    /// <summary>Why a <c>MAIL</c> command line's parameters are refused (501 malformed, 555 not offered); null when they are taken.</summary>
    /// <param name="line">A MAIL command line, without its CRLF.</param>
    /// <returns>The reply, or null.</returns>
    public static SmtpResponse? Refusal(ReadOnlySequence<byte> line)
    {
        if (EndsAtItsPath(line))
        {
            return null;
        }

        return Refusal(line, MailVerb, FromColon, ReversePath, MailKeywords, "MAIL");
    }

    /// <summary>Why an <c>RCPT</c> command line's parameters are refused (501 malformed, 555 not offered: no RCPT parameter is); null when it has none.</summary>
    /// <param name="line">An RCPT command line, without its CRLF.</param>
    /// <returns>The reply, or null.</returns>
    public static SmtpResponse? RcptRefusal(ReadOnlySequence<byte> line)
    {
        if (EndsAtItsPath(line))
        {
            return null;
        }

        // RCPT TO:<postmaster> takes no domain, which SmtpServer's parser wants: it is read as the guarded reader hands it
        // over, with one (PostmasterPath).
        if (line.Length <= PostmasterPath.MaxLine && PostmasterPath.TryAddDomain(line.IsSingleSegment ? line.FirstSpan : line.ToArray(), "postmaster.invalid", out byte[] rewritten))
        {
            line = new ReadOnlySequence<byte>(rewritten.AsMemory(0, rewritten.Length - 2)); // without the CRLF it gained
        }

        return Refusal(line, RcptVerb, ToColon, ForwardPath, [], "RCPT");
    }

    // The command's verb, FROM: or TO:, and its path are SmtpServer's to judge (a line they do not parse is left to it);
    // what follows the path is checked here.
    private static SmtpResponse? Refusal(ReadOnlySequence<byte> line, TokenReader.TryMakeDelegate command, TokenReader.TryMakeDelegate fromOrTo,
        TokenReader.TryMakeDelegate<IMailbox> path, string[] known, string verb)
    {
        var reader = new TokenReader(line);
        if (!command(ref reader))
        {
            return null;
        }

        reader.Skip(TokenKind.Space);
        if (!fromOrTo(ref reader) || reader.Take().Kind != TokenKind.Colon)
        {
            return null;
        }

        reader.Skip(TokenKind.Space);
        if (!reader.TryMake(path, out IMailbox _))
        {
            return null;
        }

        if (!reader.TryMake(Rest, out ReadOnlySequence<byte> parameters) || parameters.IsEmpty)
        {
            return null;
        }

        return Check(parameters.IsSingleSegment ? parameters.FirstSpan : parameters.ToArray(), known, verb);
    }

    /// <summary>Checks the parameters after the path: each well-formed (else 501), given once (else 501), and one of <paramref name="known"/> (else 555).</summary>
    /// <param name="parameters">Everything after the path.</param>
    /// <param name="known">The keywords taken.</param>
    /// <param name="verb">MAIL or RCPT, for the reply.</param>
    /// <returns>The reply, or null when they are taken.</returns>
    internal static SmtpResponse? Check(ReadOnlySpan<byte> parameters, string[] known, string verb)
    {
        string? malformed = Malformed(parameters, known, out string? unknown);
        if (malformed is not null)
        {
            return new SmtpResponse(SmtpReplyCode.SyntaxError, malformed);
        }

        if (unknown is null)
        {
            return null;
        }

        string offered = known.Length == 0 ? "no parameters are offered for RCPT" : $"{verb} takes {string.Join(", ", known)}";
        return new SmtpResponse(NotRecognized, $"5.5.4 the parameter {unknown} is not recognized or not implemented here: {offered} (RFC 5321)");
    }

    /// <summary>RFC 5321's reply to a MAIL or RCPT parameter not recognized or not implemented (SmtpServer has no name for it).</summary>
    internal const SmtpReplyCode NotRecognized = (SmtpReplyCode)555;

    // The first problem of form as the text of a 501 reply; meanwhile the first well-formed keyword not taken.
    private static string? Malformed(ReadOnlySpan<byte> parameters, string[] known, out string? unknown)
    {
        unknown = null;
        HashSet<string>? seen = null;
        int i = 0;
        while (true)
        {
            while (i < parameters.Length && IsSpace(parameters[i]))
            {
                i++;
            }

            if (i == parameters.Length)
            {
                return null;
            }

            int start = i;
            while (i < parameters.Length && !IsSpace(parameters[i]) && parameters[i] != '=')
            {
                i++;
            }

            var keyword = parameters[start..i];
            if (keyword.IsEmpty)
            {
                return "5.5.4 a parameter has no name before its '=' (RFC 5321: NAME or NAME=VALUE)";
            }

            if (!IsKeyword(keyword))
            {
                return keyword.ContainsAnyExceptInRange((byte)'!', (byte)'~')
                    ? "5.5.4 a parameter name has a byte other than letters, digits and '-' (RFC 5321)"
                    : $"5.5.4 {Show(keyword)} is not a parameter name: letters, digits and '-', from a letter or digit (RFC 5321)";
            }

            if (i < parameters.Length && parameters[i] == '=')
            {
                int value = ++i;
                while (i < parameters.Length && !IsSpace(parameters[i]))
                {
                    i++;
                }

                if (i == value)
                {
                    return $"5.5.4 the parameter {Show(keyword)} has no value after its '=' (RFC 5321: NAME or NAME=VALUE)";
                }

                if (parameters[value..i].ContainsAnyExcept(ValueBytes))
                {
                    return $"5.5.4 the value of the parameter {Show(keyword)} has a byte that is not allowed: printable ASCII other than '=' (RFC 5321)";
                }
            }

            string name = Encoding.ASCII.GetString(keyword);
            if (!(seen ??= new HashSet<string>(StringComparer.OrdinalIgnoreCase)).Add(name))
            {
                return $"5.5.4 the parameter {Show(keyword)} is given twice";
            }

            if (unknown is null && !known.Contains(name, StringComparer.OrdinalIgnoreCase))
            {
                unknown = Show(keyword);
            }
        }
    }

    // The common MAIL FROM:<a@b> (one '>', nothing after it but white space) has no parameters: it is not parsed here as
    // well as by SmtpServer, which parses every MAIL line next. A path or value holding another '>' is parsed.
    private static bool EndsAtItsPath(ReadOnlySequence<byte> line)
    {
        int closes = 0;
        foreach (var segment in line)
        {
            foreach (byte b in segment.Span)
            {
                if (b == '>')
                {
                    closes++;
                }
                else if (closes > 0 && !IsSpace(b))
                {
                    return false;
                }
            }
        }

        return closes == 1;
    }

    private static bool Rest(ref TokenReader reader)
    {
        while (reader.Peek().Kind != TokenKind.None)
        {
            reader.Take();
        }

        return true;
    }

    // As SmtpServer's tokenizer has it (Token.IsWhiteSpace).
    private static bool IsSpace(byte b) => b == ' ' || b is >= 9 and <= 13;

    private static bool IsKeyword(ReadOnlySpan<byte> keyword)
    {
        if (!char.IsAsciiLetterOrDigit((char)keyword[0]))
        {
            return false;
        }

        foreach (byte b in keyword[1..])
        {
            if (!char.IsAsciiLetterOrDigit((char)b) && b != '-')
            {
                return false;
            }
        }

        return true;
    }

    // Only printable ASCII comes here.
    private static string Show(ReadOnlySpan<byte> text) => Encoding.ASCII.GetString(text.Length <= Shown ? text : text[..Shown]);
}
