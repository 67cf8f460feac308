using System.Text;
using MimeKit;

namespace EdgeMail.Gateway.Composition;

/// <summary>
/// A message whose bytes are final, as MimeKit objects that write exactly those bytes back: the header block is parsed
/// (raw values kept, so headers are written as they were), and the body is one opaque part holding the bytes after the
/// blank line, written out as they are. Nothing of the body is parsed: a MIME structure is neither checked nor rebuilt,
/// so a malformed one cannot come out different, and a well-formed one costs nothing to carry.
/// </summary>
internal static class WireMessage
{
    /// <summary>Opens <paramref name="wire"/> (a header block, a blank line, the body; CRLF line endings).</summary>
    /// <param name="wire">The message bytes; the body part reads them in place, so they must not change.</param>
    /// <returns>The message; it writes <paramref name="wire"/> back unchanged with CRLF new lines and International off.</returns>
    public static MimeMessage Open(byte[] wire)
    {
        ArgumentNullException.ThrowIfNull(wire);
        int blank = wire.AsSpan().IndexOf("\r\n\r\n"u8);
        int headerEnd = blank < 0 ? wire.Length : blank + 2;
        int bodyStart = blank < 0 ? wire.Length : blank + 4;
        HeaderList headers;
        using (var block = new MemoryStream(wire, 0, headerEnd, writable: false))
        {
            headers = HeaderList.Load(ParserOptions.Default, block);
        }

        // Given its headers, MimeMessage makes up no Message-ID or Date of its own (each costs a random number, which
        // OpenSSL follows with a getpid system call) and parses none of them into properties; nobody reads those here.
        var message = new MimeMessage(headers.Where(h => !IsContent(h)));
        var body = new MimePart();
        body.Headers.Clear();
        foreach (var field in headers.Where(IsContent))
        {
            body.Headers.Add(field);
        }

        // Content in the part's own transfer encoding is written out as it is, not transcoded.
        body.Content = new MimeContent(new MemoryStream(wire, bodyStart, wire.Length - bodyStart, writable: false), body.ContentTransferEncoding);
        message.Body = body;
        return message;
    }

    /// <summary>
    /// <paramref name="wire"/> as MailKit's client sends it, built without parsing it: the fields of the header block go
    /// into the message as one <see cref="Header"/> whose raw value is everything after the first field's name, written
    /// back as it is, and the body is one entity that writes the bytes after the blank line as they are. It writes exactly
    /// <paramref name="wire"/>, as <see cref="Open"/> does, without a header object per field (each one a parse, copies of
    /// its name and value, and a change handler in the list). A field MailKit leaves out when it sends (<c>Bcc</c>,
    /// <c>Resent-Bcc</c>, <c>Content-Length</c>) is the exception: it is a header of its own, between the runs of fields
    /// around it, so that MailKit recognises it. Not for DKIM: the signer looks for Content-* headers on the body. Mail
    /// this does not cover is opened by <see cref="Open"/>: a line of the header block that is neither a field nor a
    /// folded line, a block starting with white space, a line break other than CRLF, no body or one not ending in CRLF.
    /// </summary>
    /// <param name="wire">The message bytes; read in place, so they must not change.</param>
    /// <returns>The message.</returns>
    public static MimeMessage ForSending(byte[] wire)
    {
        ArgumentNullException.ThrowIfNull(wire);
        int blank = wire.AsSpan().IndexOf("\r\n\r\n"u8);
        int bodyStart = blank + 4;
        if (blank <= 0 || bodyStart == wire.Length || !wire.AsSpan().EndsWith("\r\n"u8) || !IsCrlfOnly(wire)
            || HeaderRuns(wire, blank + 2) is not { } headers)
        {
            return Open(wire);
        }

        return new MimeMessage(headers) { Body = new FinalBody(wire, bodyStart, wire.Length - bodyStart) };
    }

    // The header block (CRLF line breaks only) as runs of fields MailKit sends as they are, one header each, and the
    // fields it hides, parsed; null when a line is neither a field (a name of printable ASCII, white space allowed
    // before its colon) nor the folded continuation of one.
    private static HeaderList? HeaderRuns(byte[] wire, int headerEnd)
    {
        var headers = new HeaderList();
        int run = -1, runColon = -1; // the run not yet added, and where its first field's name ends
        int field = -1;              // the field being read: its folded lines follow it
        bool hidden = false;
        for (int start = 0; ; )
        {
            bool last = start == headerEnd;
            var line = last ? default : wire.AsSpan(start, wire.AsSpan(start, headerEnd - start).IndexOf((byte)'\n') - 1);
            if (!last && line.Length > 0 && line[0] is (byte)' ' or (byte)'\t')
            {
                if (field < 0)
                {
                    return null;
                }

                start += line.Length + 2;
                continue;
            }

            // The field before this line ends here.
            if (field >= 0 && hidden)
            {
                if (!Header.TryParse(ParserOptions.Default, wire, field, start - field, out var parsed))
                {
                    return null;
                }

                headers.Add(parsed);
            }

            if (last)
            {
                break;
            }

            int colon = line.IndexOf((byte)':');
            var name = colon > 0 ? line[..colon].TrimEnd(" \t"u8) : default;
            if (name.IsEmpty || name.ContainsAnyExceptInRange((byte)'!', (byte)'~'))
            {
                return null;
            }

            hidden = IsHiddenWhenSent(name);
            if (hidden && run >= 0)
            {
                headers.Add(Run(wire, run, runColon, start));
                run = -1;
            }
            else if (!hidden && run < 0)
            {
                (run, runColon) = (start, start + colon);
            }

            field = start;
            start += line.Length + 2;
        }

        if (run >= 0)
        {
            headers.Add(Run(wire, run, runColon, headerEnd));
        }

        return headers;
    }

    private static bool IsHiddenWhenSent(ReadOnlySpan<byte> name) =>
        Ascii.EqualsIgnoreCase(name, "Bcc"u8) || Ascii.EqualsIgnoreCase(name, "Resent-Bcc"u8) || Ascii.EqualsIgnoreCase(name, "Content-Length"u8);

    private static FieldRun Run(byte[] wire, int start, int colon, int end) =>
        new(Encoding.ASCII.GetString(wire, start, colon - start), wire[start..colon], wire[(colon + 1)..end]);

    // Fields written as one: MimeKit writes a header's raw name, a colon and its raw value, and parses neither.
    private sealed class FieldRun(string name, byte[] field, byte[] value) : Header(ParserOptions.Default, HeaderId.Unknown, name, field, value);

    /// <summary>
    /// True when <paramref name="wire"/> is already what MailKit's preparation would send for any server: every byte
    /// 7-bit and not NUL, CRLF line endings only, no line over 998 octets (RFC 5322 §2.1.1), no line starting with
    /// <c>From </c> (which MimeKit's best-encoding check would quoted-printable-encode), and no <c>8bit</c> or
    /// <c>binary</c> anywhere (so no part declares a transfer encoding preparation would change). Such mail can go out
    /// as its bytes, its headers read by <see cref="Open"/>; anything else is parsed and prepared. The test is
    /// conservative: a false "no" costs only the slower path.
    /// </summary>
    /// <param name="wire">Message bytes.</param>
    /// <returns>True when sending the bytes as they are equals preparing them.</returns>
    public static bool IsTransportReady(ReadOnlySpan<byte> wire)
    {
        if (!wire.EndsWith("\r\n"u8) || wire.IndexOfAnyExceptInRange((byte)1, (byte)0x7F) >= 0 || !IsCrlfOnly(wire)
            || ContainsIgnoreCase(wire, "8bit"u8) || ContainsIgnoreCase(wire, "binary"u8))
        {
            return false;
        }

        // CRLF only and ending with one: every line ends with a CRLF of its own.
        for (int start = 0; start < wire.Length;)
        {
            int lf = wire[start..].IndexOf((byte)'\n');
            if (lf - 1 > MaxLineLength || wire[start..].StartsWith("From "u8))
            {
                return false;
            }

            start += lf + 1;
        }

        return true;
    }

    /// <summary>Every CR followed by LF and every LF preceded by CR (jumps from line break to line break, vectorised).</summary>
    /// <param name="raw">Message bytes.</param>
    /// <returns>True when every line break is CRLF.</returns>
    internal static bool IsCrlfOnly(ReadOnlySpan<byte> raw)
    {
        int i = 0;
        while (true)
        {
            int next = raw[i..].IndexOfAny((byte)'\r', (byte)'\n');
            if (next < 0)
            {
                return true;
            }

            i += next;
            if (raw[i] == '\n' || i + 1 >= raw.Length || raw[i + 1] != '\n')
            {
                return false;
            }

            i += 2;
        }
    }

    /// <summary>
    /// The value of the first field named <paramref name="name"/> in the header block of <paramref name="wire"/>, found by
    /// a byte scan that trusts nothing else of the block: lines that are not fields are passed over, folded lines are
    /// joined, white space around the value is dropped. For mail whose parse may be what failed.
    /// </summary>
    /// <param name="wire">Message bytes, CRLF line endings (<see cref="Ingest.Smtp.RelayedMailWriter.Normalize"/>).</param>
    /// <param name="name">The field's name, ASCII (matched ignoring case).</param>
    /// <returns>The value, each byte one character (Latin-1, so distinct bytes stay distinct), or null when the block has no such field or it is empty.</returns>
    internal static string? FieldValue(ReadOnlySpan<byte> wire, ReadOnlySpan<byte> name)
    {
        int blank = wire.StartsWith("\r\n"u8) ? 0 : wire.IndexOf("\r\n\r\n"u8);
        var block = blank < 0 ? wire : wire[..blank];
        for (int start = 0; start < block.Length; start = NextLine(block, start))
        {
            var at = block[start..];
            var rest = at.Length > name.Length && Ascii.EqualsIgnoreCase(at[..name.Length], name) ? at[name.Length..].TrimStart(" \t"u8) : default;
            if (rest.IsEmpty || rest[0] != (byte)':')
            {
                continue;
            }

            int end = NextLine(block, start);
            while (end < block.Length && block[end] is (byte)' ' or (byte)'\t')
            {
                end = NextLine(block, end);
            }

            string value = Encoding.Latin1.GetString(block[(block.Length - rest.Length + 1)..end]).Replace("\r\n", string.Empty, StringComparison.Ordinal).Trim(' ', '\t');
            return value.Length == 0 ? null : value;
        }

        return null;
    }

    // Where the line after the one beginning at start begins (the block's length after its last line).
    private static int NextLine(ReadOnlySpan<byte> block, int start)
    {
        int end = block[start..].IndexOf("\r\n"u8);
        return end < 0 ? block.Length : start + end + 2;
    }

    private const int MaxLineLength = 998;

    /// <summary>ASCII case-insensitive search.</summary>
    /// <param name="haystack">Where to search.</param>
    /// <param name="needle">What to find, in lower case.</param>
    /// <returns>True when found.</returns>
    internal static bool ContainsIgnoreCase(ReadOnlySpan<byte> haystack, ReadOnlySpan<byte> needle)
    {
        byte lower = needle[0];
        byte upper = (byte)char.ToUpperInvariant((char)lower);
        int offset = 0;
        while (true)
        {
            int i = haystack[offset..].IndexOfAny(lower, upper);
            if (i < 0 || offset + i + needle.Length > haystack.Length)
            {
                return false;
            }

            offset += i;
            if (Ascii.EqualsIgnoreCase(haystack.Slice(offset, needle.Length), needle))
            {
                return true;
            }

            offset++;
        }
    }

    private static bool IsContent(Header header) => header.Field.StartsWith("Content-", StringComparison.OrdinalIgnoreCase);
}
