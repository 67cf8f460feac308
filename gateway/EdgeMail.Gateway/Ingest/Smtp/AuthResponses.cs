using System.Buffers;
using System.Buffers.Text;
using System.Text;

namespace EdgeMail.Gateway.Ingest.Smtp;

/// <summary>What the line read now is, for <see cref="AuthResponses"/>: a command, or a response in an AUTH exchange.</summary>
internal enum AuthStep
{
    /// <summary>A command line.</summary>
    None,

    /// <summary>The response to AUTH PLAIN's 334.</summary>
    Plain,

    /// <summary>A response to one of AUTH LOGIN's 334s.</summary>
    Login,
}

/// <summary>
/// RFC 4954's AUTH responses are base64, and SmtpServer decodes them with <c>Convert.FromBase64String</c>: a response
/// of the right alphabet but a wrong length, or the client's <c>*</c> (which cancels the exchange), threw out of the
/// session and the connection closed with no reply; an AUTH PLAIN response without its two NULs was answered
/// <c>535</c> twice (the second taken by a pipelining client as the reply to its next command). Such lines are answered
/// <c>501</c> instead (RFC 4954 §4: <c>501</c> for a cancelled or malformed exchange), by the guarded reader.
/// </summary>
internal static class AuthResponses
{
    /// <summary>Whether a command line is an AUTH command (any case).</summary>
    /// <param name="line">The line, without its LF.</param>
    /// <returns>True for <c>AUTH ...</c>.</returns>
    public static bool IsAuthCommand(ReadOnlySequence<byte> line)
    {
        if (line.Length < 5)
        {
            return false;
        }

        Span<byte> head = stackalloc byte[5];
        line.Slice(0, 5).CopyTo(head);
        return Ascii.EqualsIgnoreCase(head, "AUTH "u8);
    }

    /// <summary>Why a line of an AUTH exchange cannot be taken, as a 501 reply's text; null when it can.</summary>
    /// <param name="line">The line, without its LF (a CR before it is ignored).</param>
    /// <param name="step">A command line (checked when it is <c>AUTH PLAIN|LOGIN</c> with an initial response), or a response.</param>
    /// <returns>The refusal, or null.</returns>
    public static string? Refusal(ReadOnlySpan<byte> line, AuthStep step)
    {
        line = line.TrimEnd("\r "u8);
        bool plain = step == AuthStep.Plain;
        if (step == AuthStep.None)
        {
            // AUTH, spaces, the mechanism, spaces, the initial response: only then is there a response to look at.
            int first = line.IndexOf((byte)' ');
            var rest = line[first..].TrimStart((byte)' ');
            int second = rest.IndexOf((byte)' ');
            if (second < 0)
            {
                return null;
            }

            var mechanism = rest[..second];
            plain = Ascii.EqualsIgnoreCase(mechanism, "PLAIN"u8);
            if (!plain && !Ascii.EqualsIgnoreCase(mechanism, "LOGIN"u8))
            {
                return null;
            }

            line = rest[second..].TrimStart((byte)' ');
        }

        if (line.SequenceEqual("*"u8))
        {
            return "5.7.0 authentication cancelled";
        }

        byte[] decoded = new byte[Base64.GetMaxDecodedFromUtf8Length(line.Length)];
        if (Base64.DecodeFromUtf8(line, decoded, out _, out int length) != OperationStatus.Done)
        {
            return "5.5.2 the AUTH response is not base64";
        }

        return plain && decoded.AsSpan(0, length).Count((byte)0) < 2
            ? "5.5.2 AUTH PLAIN wants the base64 of: authorization identity, NUL, user, NUL, password"
            : null;
    }
}
