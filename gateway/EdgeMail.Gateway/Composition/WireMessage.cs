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
    /// <paramref name="wire"/> as MailKit's client sends it, built without MimeKit's parser: each header field is read on
    /// its own (raw field and value, in their order, Content-* among them) and the body is one entity that writes the
    /// bytes after the blank line as they are. It writes exactly <paramref name="wire"/>, as <see cref="Open"/> does, at
    /// about half the allocation (the parser's buffers, a part's default headers and a new-line filter on the body are
    /// what <see cref="Open"/> pays for). Not for DKIM: the signer looks for Content-* headers on the body. Mail this
    /// does not cover (a field without a colon, a header block starting with white space, a line break other than
    /// CRLF, no body or one not ending in CRLF) is opened by <see cref="Open"/>.
    /// </summary>
    /// <param name="wire">The message bytes; read in place, so they must not change.</param>
    /// <returns>The message.</returns>
    public static MimeMessage ForSending(byte[] wire)
    {
        ArgumentNullException.ThrowIfNull(wire);
        int blank = wire.AsSpan().IndexOf("\r\n\r\n"u8);
        int bodyStart = blank + 4;
        if (blank <= 0 || bodyStart == wire.Length || wire[0] is (byte)' ' or (byte)'\t' || !wire.AsSpan().EndsWith("\r\n"u8) || !IsCrlfOnly(wire))
        {
            return Open(wire);
        }

        int headerEnd = blank + 2;
        var headers = new HeaderList();
        for (int start = 0; start < headerEnd;)
        {
            // A field runs to the first line break not followed by white space (a folded line continues it).
            int end = start;
            do
            {
                end += wire.AsSpan(end, headerEnd - end).IndexOf((byte)'\n') + 1;
            }
            while (end < headerEnd && wire[end] is (byte)' ' or (byte)'\t');

            if (!Header.TryParse(ParserOptions.Default, wire, start, end - start, out var header))
            {
                return Open(wire);
            }

            headers.Add(header);
            start = end;
        }

        return new MimeMessage(headers) { Body = new FinalBody(wire, bodyStart, wire.Length - bodyStart) };
    }

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
            if (System.Text.Ascii.EqualsIgnoreCase(haystack.Slice(offset, needle.Length), needle))
            {
                return true;
            }

            offset++;
        }
    }

    private static bool IsContent(Header header) => header.Field.StartsWith("Content-", StringComparison.OrdinalIgnoreCase);
}
