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

    private static bool IsContent(Header header) => header.Field.StartsWith("Content-", StringComparison.OrdinalIgnoreCase);
}
