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
/// local part holding '>', say) is what is passed over here.
/// </summary>
internal static class MailParameters
{
    private const int Shown = 32;

    // The parser keeps only its command factory, which none of the parts called here uses: one serves every session.
    private static readonly SmtpParser Parser = new(new SmtpCommandFactory());
    private static readonly SearchValues<byte> ValueBytes = SearchValues.Create([.. Enumerable.Range(33, 28).Select(b => (byte)b), .. Enumerable.Range(62, 65).Select(b => (byte)b)]);

    /// <summary>Why a <c>MAIL</c> command line's parameters are refused, as the text of a 501 reply; null when they are well-formed.</summary>
    /// <param name="line">A MAIL command line, without its CRLF.</param>
    /// <returns>The reply text (after the code), or null.</returns>
    public static string? Refusal(ReadOnlySequence<byte> line)
    {
        if (EndsAtItsPath(line))
        {
            return null;
        }

        var reader = new TokenReader(line);
        if (!Parser.TryMakeMail(ref reader))
        {
            return null;
        }

        reader.Skip(TokenKind.Space);
        if (!Parser.TryMakeFrom(ref reader) || reader.Take().Kind != TokenKind.Colon)
        {
            return null; // SmtpServer answers it
        }

        reader.Skip(TokenKind.Space);
        if (!reader.TryMake(Parser.TryMakeReversePath, out IMailbox _))
        {
            return null; // likewise
        }

        if (!reader.TryMake(Rest, out ReadOnlySequence<byte> parameters) || parameters.IsEmpty)
        {
            return null;
        }

        return Check(parameters.IsSingleSegment ? parameters.FirstSpan : parameters.ToArray());
    }

    /// <summary>Checks the parameters after the path.</summary>
    /// <param name="parameters">Everything after the path.</param>
    /// <returns>The reply text, or null when they are well-formed.</returns>
    internal static string? Check(ReadOnlySpan<byte> parameters)
    {
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

            if (!(seen ??= new HashSet<string>(StringComparer.OrdinalIgnoreCase)).Add(Encoding.ASCII.GetString(keyword)))
            {
                return $"5.5.4 the parameter {Show(keyword)} is given twice";
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
