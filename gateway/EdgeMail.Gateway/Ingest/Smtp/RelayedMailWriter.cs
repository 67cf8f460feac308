using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Spool;
using MimeKit;
using MimeKit.Utils;

namespace EdgeMail.Gateway.Ingest.Smtp;

/// <summary>Who submitted a mail and how, for the trace and the rewrite.</summary>
/// <param name="DeviceId">The device (authenticated user or allow-listed source).</param>
/// <param name="DeviceName">Its display name.</param>
/// <param name="PeerAddress">Remote IP address.</param>
/// <param name="EnvelopeFrom">MAIL FROM address (may be empty).</param>
/// <param name="Authenticated">True after AUTH.</param>
/// <param name="Secure">True over TLS.</param>
/// <param name="SessionId">Session id for the trace.</param>
/// <param name="ReceivedAt">When the data was received.</param>
public sealed record Submission(string DeviceId, string DeviceName, string PeerAddress, string EnvelopeFrom, bool Authenticated, bool Secure,
    string SessionId, DateTimeOffset ReceivedAt);

/// <summary>The rewritten mail, ready to spool.</summary>
/// <param name="SpoolKey">Unique key (the spool's message id): derived from the device, the original Message-ID and the content.</param>
/// <param name="Mime">Wire bytes, CRLF line endings.</param>
/// <param name="Hops">Received headers found in the original.</param>
public sealed record RelayedMail(string SpoolKey, byte[] Mime, int Hops);

/// <summary>
/// Rewrites a mail a device submitted so it can be relayed under the gateway's name (no I/O). The original
/// header block is kept except the fields that claim an identity or a route (<c>From</c>, <c>Sender</c>,
/// <c>Reply-To</c>, <c>Return-Path</c>, <c>Bcc</c>, DKIM/ARC signatures, <c>Content-Length</c>, and any <c>X-EdgeMail-*</c> a device
/// might forge); a <c>Received</c> trace goes on top; <c>From</c> becomes the gateway's sender so SPF, DKIM and
/// DMARC align; the device's own From moves to <c>Reply-To</c> and <c>X-EdgeMail-Original-From</c>. The body
/// bytes are kept as they came, except that bare CR and bare LF become CRLF (so nothing downstream can read a
/// different end of data than we did), and the last line keeps the CRLF the DATA terminator carried.
/// </summary>
public static class RelayedMailWriter
{
    private static readonly HashSet<string> Dropped = new(StringComparer.OrdinalIgnoreCase)
    {
        "From", "Sender", "Reply-To", "Return-Path", "Bcc", "Resent-Bcc", "DKIM-Signature", "ARC-Seal", "ARC-Message-Signature",
        "ARC-Authentication-Results", "Authentication-Results", "Delivered-To",

        // Meaningless in SMTP mail (the end of data ends it), and never sent by MailKit: kept, it would make the
        // spooled bytes longer than the mail that goes out.
        "Content-Length",
    };

    private static readonly FormatOptions WireFormat = CreateWireFormat();

    /// <summary>Counts <c>Received</c> headers (the hop count of RFC 5321 §6.3) without rewriting anything.</summary>
    /// <param name="raw">The mail as submitted.</param>
    /// <returns>Hop count.</returns>
    public static int CountHops(ReadOnlySpan<byte> raw)
    {
        var (headers, _) = Split(Normalize(raw));
        return headers?.Count(h => h.Id == HeaderId.Received) ?? 0;
    }

    /// <summary>Rewrites a submitted mail.</summary>
    /// <param name="raw">The mail as submitted (DATA, dot-unstuffed).</param>
    /// <param name="submission">Who sent it.</param>
    /// <param name="sender">The gateway's identity.</param>
    /// <returns>The mail to spool.</returns>
    public static RelayedMail Rewrite(ReadOnlySpan<byte> raw, Submission submission, SenderOptions sender) => RewriteNormalized(Normalize(raw), submission, sender);

    /// <summary>Rewrites a submitted mail held in an array of its own, which is not copied when its lines end in CRLF already.</summary>
    /// <param name="raw">The mail as submitted (DATA, dot-unstuffed); not changed.</param>
    /// <param name="submission">Who sent it.</param>
    /// <param name="sender">The gateway's identity.</param>
    /// <returns>The mail to spool.</returns>
    public static RelayedMail Rewrite(byte[] raw, Submission submission, SenderOptions sender)
    {
        ArgumentNullException.ThrowIfNull(raw);
        return RewriteNormalized(WireMessage.IsCrlfOnly(raw) ? raw : Normalize(raw), submission, sender);
    }

    private static RelayedMail RewriteNormalized(byte[] normalized, Submission submission, SenderOptions sender)
    {
        ArgumentNullException.ThrowIfNull(submission);
        ArgumentNullException.ThrowIfNull(sender);
        var (original, bodyStart) = Split(normalized);
        var headers = new HeaderList();
        string via = $"{submission.DeviceId} ([{submission.PeerAddress}])";
        string with = IngestProtocols.Smtp(submission.Secure, submission.Authenticated);
        headers.Add(new Header(HeaderId.Received,
            $"from {via} by {sender.Hostname} (EdgeMail) with {with} id {submission.SessionId}; {DateUtils.FormatDate(submission.ReceivedAt)}"));

        string? originalFrom = null;
        string? originalMessageId = null;
        bool hasDate = false;
        int hops = 0;
        foreach (var h in original ?? [])
        {
            if (h.Id == HeaderId.Received)
            {
                hops++;
            }

            if (h.Id == HeaderId.From)
            {
                originalFrom ??= h.Value;
            }

            if (h.Id == HeaderId.MessageId)
            {
                originalMessageId ??= h.Value;
            }

            hasDate |= h.Id == HeaderId.Date;
            if (Dropped.Contains(h.Field) || h.Field.StartsWith("X-EdgeMail-", StringComparison.OrdinalIgnoreCase))
            {
                continue;
            }

            headers.Add(h);
        }

        headers.Add(new Header(HeaderId.From, FromField(submission.DeviceName, sender)));
        var replyTo = ReplyTo(originalFrom, submission.EnvelopeFrom);
        if (replyTo.Count > 0)
        {
            headers.Add(new Header(HeaderId.ReplyTo, replyTo.ToString(WireFormat, true).Trim()));
        }

        headers.Add(new Header("X-EdgeMail-Original-From", MailComposer.Clean(originalFrom ?? "<" + submission.EnvelopeFrom + ">", 300)));
        headers.Add(new Header("X-EdgeMail-Device", MailComposer.Clean(submission.DeviceId, 128)));
        if (!hasDate)
        {
            headers.Add(new Header(HeaderId.Date, DateUtils.FormatDate(submission.ReceivedAt)));
        }

        string key = SpoolKey(submission.DeviceId, submission.SessionId, submission.ReceivedAt, originalMessageId, normalized, "relay", sender.Hostname);
        if (originalMessageId is null)
        {
            headers.Add(new Header(HeaderId.MessageId, "<" + key + ">"));
        }

        var head = Scratch.HeaderBlock();
        headers.WriteTo(WireFormat, head);
        head.Write("\r\n"u8);
        var body = normalized.AsSpan(bodyStart);

        // SmtpServer hands the data over without the CRLF of "<CRLF>.<CRLF>", which RFC 5321 §4.1.1.4 counts as the end
        // of the last line: put it back, so the mail stored (the local mailbox too) is the mail sent, and a DKIM
        // verifier reading either sees the same last line as the signer did.
        var lastLine = body.IsEmpty ? [] : "\r\n"u8;
        byte[] mime = new byte[checked((int)head.Length + body.Length + lastLine.Length)];
        head.GetBuffer().AsSpan(0, (int)head.Length).CopyTo(mime);
        body.CopyTo(mime.AsSpan((int)head.Length));
        lastLine.CopyTo(mime.AsSpan((int)head.Length + body.Length));
        return new RelayedMail(key, mime, hops);
    }

    // The gateway's From for a device: the same for every mail of that device, so formatted (and RFC 2047-encoded) once.
    // Keyed by everything it is made of; bounded, since device names come from the configuration, which can change.
    private static string FromField(string deviceName, SenderOptions sender)
    {
        var key = (deviceName, sender.DisplayName, sender.Address);
        if (FromFields.TryGetValue(key, out string? field))
        {
            return field;
        }

        var from = new InternetAddressList { new MailboxAddress(MailComposer.Clean($"{deviceName} via {sender.DisplayName}", 120), sender.Address) };
        field = from.ToString(WireFormat, true).Trim();
        if (FromFields.Count >= MaxFromFields)
        {
            FromFields.Clear();
        }

        FromFields[key] = field;
        return field;
    }

    private const int MaxFromFields = 4096;
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<(string Device, string Display, string Address), string> FromFields = new();

    private static InternetAddressList ReplyTo(string? originalFrom, string envelopeFrom)
    {
        var list = new InternetAddressList();
        if (originalFrom is not null && InternetAddressList.TryParse(originalFrom, out var parsed))
        {
            foreach (var mailbox in parsed.Mailboxes.Take(5))
            {
                if (mailbox.Address.IndexOf('@', StringComparison.Ordinal) > 0)
                {
                    list.Add(new MailboxAddress(MailComposer.Clean(mailbox.Name ?? string.Empty, 120), mailbox.Address));
                }
            }
        }

        if (list.Count == 0 && envelopeFrom.IndexOf('@', StringComparison.Ordinal) > 0 && MailboxAddress.TryParse(envelopeFrom, out var env))
        {
            list.Add(env);
        }

        return list;
    }

    /// <summary>
    /// The spool key of a submission kept in quarantine (<see cref="QuarantinedMail"/>), made as the relayed mail's is:
    /// with a Message-ID, from the device, that id and the content, so that the same mail sent again (the device did not
    /// see our 250) is the same quarantined mail; without one, unique. The Message-ID is read by a byte scan of the
    /// header block (<see cref="WireMessage.FieldValue"/>), not by MimeKit: its parse may be what failed.
    /// </summary>
    /// <param name="raw">The mail as submitted.</param>
    /// <param name="device">The device the session submitted as.</param>
    /// <param name="sessionId">The session's id.</param>
    /// <param name="receivedAt">When its data was received.</param>
    /// <param name="host">The gateway's host name (<c>Sender:Hostname</c>).</param>
    /// <returns><c>&lt;hex&gt;.quarantined@&lt;host&gt;</c>.</returns>
    public static string QuarantineKey(ReadOnlySpan<byte> raw, string device, string sessionId, DateTimeOffset receivedAt, string host)
    {
        byte[] normalized = Normalize(raw);
        return SpoolKey(device, sessionId, receivedAt, WireMessage.FieldValue(normalized, "Message-ID"u8), normalized, QuarantinedMail.Kind, host);
    }

    // With an original Message-ID, a resubmission of the same mail (the device did not see our 250) is a duplicate;
    // without one, two identical mails are two mails (a device without a clock may repeat itself word for word).
    private static string SpoolKey(string device, string sessionId, DateTimeOffset receivedAt, string? messageId, byte[] content, string kind, string host)
    {
        string basis = messageId is null
            ? $"{device}\n{sessionId}\n{receivedAt.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture)}\n{Convert.ToHexString(RandomNumberGenerator.GetBytes(8))}"
            : $"{device}\n{messageId}";
        // SHA-256(UTF-8(basis) || SHA-256(content)), without the arrays of each step.
        int basisLength = Encoding.UTF8.GetByteCount(basis);
        byte[] input = System.Buffers.ArrayPool<byte>.Shared.Rent(basisLength + SHA256.HashSizeInBytes);
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        try
        {
            Encoding.UTF8.GetBytes(basis, input);
            SHA256.HashData(content, input.AsSpan(basisLength, SHA256.HashSizeInBytes));
            SHA256.HashData(input.AsSpan(0, basisLength + SHA256.HashSizeInBytes), hash);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(input);
        }

        return string.Concat(Convert.ToHexStringLower(hash[..16]), ".", kind, "@", host);
    }

    private static (HeaderList? Headers, int BodyStart) Split(byte[] normalized)
    {
        if (normalized.AsSpan().StartsWith("\r\n"u8))
        {
            return (null, 2); // an empty header block
        }

        int blank = normalized.AsSpan().IndexOf("\r\n\r\n"u8);
        int headerLength = blank < 0 ? normalized.Length : blank + 2;
        int bodyStart = blank < 0 ? normalized.Length : blank + 4;
        try
        {
            var headers = Scratch.ParseHeaders(normalized, headerLength);
            return headers.Count == 0 ? (null, 0) : (headers, bodyStart);
        }
        catch (FormatException)
        {
            // Not a header block at all: everything is body.
            return (null, 0);
        }
    }

    // What a rewrite reuses: MimeKit's parser (its construction allocates its read buffers, 6 KB) and the buffer the new
    // header block is written to. One per thread: a rewrite never awaits, so it runs on one thread from start to end.
    private static class Scratch
    {
        private const int KeptCapacity = 64 * 1024;

        [ThreadStatic]
        private static MimeParser? _parser;

        [ThreadStatic]
        private static MemoryStream? _head;

        // As HeaderList.Load, which makes a parser of its own each time. The parser lets go of the mail when done.
        public static HeaderList ParseHeaders(byte[] mail, int length)
        {
            using var stream = new MemoryStream(mail, 0, length, writable: false);
            var parser = _parser ??= new MimeParser(ParserOptions.Default, Stream.Null, MimeFormat.Entity);
            try
            {
                parser.SetStream(stream, MimeFormat.Entity);
                return parser.ParseHeaders();
            }
            finally
            {
                parser.SetStream(Stream.Null, MimeFormat.Entity);
            }
        }

        // Emptied for the next mail; one that grew past KeptCapacity (a mail with a huge header block) is not kept.
        public static MemoryStream HeaderBlock()
        {
            if (_head is null || _head.Capacity > KeptCapacity)
            {
                _head = new MemoryStream(2048);
            }

            _head.SetLength(0);
            return _head;
        }
    }

    /// <summary>Bare CR and bare LF become CRLF.</summary>
    /// <param name="raw">Input.</param>
    /// <returns>CRLF-only bytes.</returns>
    public static byte[] Normalize(ReadOnlySpan<byte> raw)
    {
        if (WireMessage.IsCrlfOnly(raw))
        {
            return raw.ToArray();
        }

        using var output = new MemoryStream(raw.Length + 256);
        for (int i = 0; i < raw.Length; i++)
        {
            byte b = raw[i];
            if (b is (byte)'\r' or (byte)'\n')
            {
                output.Write("\r\n"u8);
                if (b == '\r' && i + 1 < raw.Length && raw[i + 1] == '\n')
                {
                    i++;
                }
            }
            else
            {
                output.WriteByte(b);
            }
        }

        return output.ToArray();
    }

    private static FormatOptions CreateWireFormat()
    {
        var options = FormatOptions.Default.Clone();
        options.NewLineFormat = NewLineFormat.Dos;
        options.International = false;
        return options;
    }
}
