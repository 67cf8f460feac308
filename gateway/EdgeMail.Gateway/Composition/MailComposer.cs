using System.Buffers;
using System.Collections.Concurrent;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Unicode;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Spool;
using Fluid;
using MimeKit;
using MimeKit.Encodings;
using MimeKit.IO.Filters;
using MimeKit.Utils;

namespace EdgeMail.Gateway.Composition;

/// <summary>The device an alert came from, as mail shows it.</summary>
/// <param name="Id">Device id.</param>
/// <param name="Name">Display name.</param>
/// <param name="Site">Site.</param>
public sealed record DeviceInfo(string Id, string Name, string Site);

/// <summary>One alert to write as mail.</summary>
/// <param name="Device">The device.</param>
/// <param name="Alert">The alert.</param>
/// <param name="ReceivedAt">When the gateway received it.</param>
/// <param name="Peer">Remote endpoint, for the Received trace.</param>
/// <param name="SpoolId">Spool row, for the Received trace.</param>
/// <param name="To">Recipients.</param>
/// <param name="Template">Template name.</param>
/// <param name="InReplyTo">Message-ID of the raised twin, for a cleared alert.</param>
/// <param name="Via">The protocol it came with, for the Received trace.</param>
public sealed record AlertMail(DeviceInfo Device, Alert Alert, DateTimeOffset ReceivedAt, string? Peer, long SpoolId,
    IReadOnlyList<MailboxAddress> To, string Template, string? InReplyTo, string Via = IngestProtocols.Mqtt);

/// <summary>A composed mail: its Message-ID and its bytes as spooled and sent (CRLF, 7-bit, lines within 78).</summary>
/// <param name="MessageId">Message-ID, without angle brackets.</param>
/// <param name="Wire">The whole message.</param>
public sealed record ComposedMail(string MessageId, byte[] Wire);

/// <summary>
/// Writes alerts as RFC 5322 mail with MimeKit (no I/O): From the configured sender, To the routed people, a
/// subject with severity, device, site and text; text and HTML alternatives; Date, a deterministic Message-ID,
/// <c>Auto-Submitted: auto-generated</c>, a Received trace and In-Reply-To for cleared alerts. Device-supplied
/// strings only ever become header <em>values</em> (control characters removed, RFC 2047 encoded by MimeKit)
/// or HTML-escaped body text, so they cannot add a header or break the MIME structure.
/// </summary>
public sealed class MailComposer
{
    private static readonly TextEncoder HtmlEscaper = HtmlEncoder.Create(UnicodeRanges.All);
    private static readonly FormatOptions WireFormat = CreateWireFormat();
    private const string DeviceField = "X-EdgeMail-Device";
    private const string AlertField = "X-EdgeMail-Alert";
    private static readonly byte[] ConstantFields = Fields(new Header("Auto-Submitted", "auto-generated"), new Header("X-Auto-Response-Suppress", "All"), new Header("MIME-Version", "1.0"));
    private readonly SenderOptions _sender;
    private readonly TemplateSet _templates;
    private readonly TemplateOptions _fluid;
    private readonly DkimSigning? _dkim;
    private readonly byte[] _fromField;
    private readonly ConcurrentDictionary<string, byte[]> _toFields = new(StringComparer.Ordinal);

    /// <summary>Creates a composer.</summary>
    /// <param name="sender">Sender identity.</param>
    /// <param name="templates">Templates.</param>
    /// <param name="dkim">DKIM signer, or null to leave mail unsigned.</param>
    public MailComposer(SenderOptions sender, TemplateSet templates, DkimSigning? dkim = null)
    {
        _sender = sender ?? throw new ArgumentNullException(nameof(sender));
        _templates = templates ?? throw new ArgumentNullException(nameof(templates));
        _dkim = dkim;
        _fromField = AddressField(HeaderId.From, [new MailboxAddress(sender.DisplayName, sender.Address)]);
        _fluid = new TemplateOptions { CultureInfo = CultureInfo.InvariantCulture, TimeZone = TimeZoneInfo.Utc, MaxSteps = 100_000 };
    }

    /// <summary>Writes one alert as mail.</summary>
    /// <param name="mail">The alert and its routing.</param>
    /// <param name="now">The Date of the mail.</param>
    /// <returns>The mail.</returns>
    public ComposedMail ComposeAlert(AlertMail mail, DateTimeOffset now)
    {
        ArgumentNullException.ThrowIfNull(mail);
        var model = new Dictionary<string, object?>
        {
            ["device"] = DeviceModel(mail.Device),
            ["alert"] = AlertModel(mail.Alert, mail.ReceivedAt),
            ["gateway"] = new Dictionary<string, object?> { ["hostname"] = _sender.Hostname },
            ["received_text"] = FormatTime(mail.ReceivedAt),
        };
        return Write(_templates.Get(mail.Template), model, mail.To, now, MessageIds.ForAlert(mail.Device.Id, mail.Alert.Id, _sender.Hostname),
            mail.InReplyTo, Trace(mail.Device.Id, mail.Peer, mail.Via, mail.SpoolId, mail.ReceivedAt), mail.Device.Id, Clean(mail.Alert.Id, 128));
    }

    /// <summary>Writes held repeats of one (device, code) as one digest mail.</summary>
    /// <param name="device">The device.</param>
    /// <param name="repeats">The held alerts with their receive times, oldest first.</param>
    /// <param name="to">Recipients.</param>
    /// <param name="window">The storm window, for the explanation.</param>
    /// <param name="firstSpoolId">Spool row of the first repeat, for the trace.</param>
    /// <param name="inReplyTo">Message-ID of the last mail for this alert, for threading.</param>
    /// <param name="now">The Date.</param>
    /// <param name="via">The protocol the first repeat came with, for the Received trace.</param>
    /// <param name="omitted">Repeats held but not listed, between the last two of <paramref name="repeats"/> ("and 4,812 more").</param>
    /// <param name="clears">How many of all the repeats, listed or not, are clears; null to count the listed ones.</param>
    /// <returns>The mail.</returns>
    public ComposedMail ComposeDigest(DeviceInfo device, IReadOnlyList<(Alert Alert, DateTimeOffset ReceivedAt)> repeats,
        IReadOnlyList<MailboxAddress> to, TimeSpan window, long firstSpoolId, string? inReplyTo, DateTimeOffset now, string via = IngestProtocols.Mqtt, long omitted = 0,
        long? clears = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(repeats);
        var last = repeats[^1];
        long total = repeats.Count + omitted;
        long cleared = Math.Clamp(clears ?? repeats.Count(r => r.Alert.State == AlertState.Cleared), 0, total);
        var model = new Dictionary<string, object?>
        {
            ["device"] = DeviceModel(device),
            ["alert"] = AlertModel(last.Alert, last.ReceivedAt),
            ["repeats"] = repeats.Select(r => AlertModel(r.Alert, r.ReceivedAt)).ToList(),
            ["total"] = total,
            ["raises"] = total - cleared,
            ["clears"] = cleared,
            ["more"] = omitted,
            ["more_text"] = omitted.ToString("N0", CultureInfo.InvariantCulture),
            ["window"] = window.ToString("c", CultureInfo.InvariantCulture),
            ["window_text"] = Duration(window),
            ["gateway"] = new Dictionary<string, object?> { ["hostname"] = _sender.Hostname },
            ["received_text"] = FormatTime(last.ReceivedAt),
        };
        return Write(_templates.Get("digest"), model, to, now, MessageIds.ForDigest(device.Id, last.Alert.Code, repeats[0].Alert.Id, _sender.Hostname),
            inReplyTo, Trace(device.Id, null, via, firstSpoolId, repeats[0].ReceivedAt), device.Id, null);
    }

    /// <summary>Writes a failure notice to the operator about mail that could not be delivered.</summary>
    /// <param name="failedMessageId">Message-ID of the failed mail.</param>
    /// <param name="failedSubject">Its subject.</param>
    /// <param name="failures">Recipient and reason for each failed recipient.</param>
    /// <param name="operatorMailbox">Who is told.</param>
    /// <param name="now">The Date.</param>
    /// <param name="attempt">The attempt that failed (a message can fail for some recipients in one attempt and others later: one notice each).</param>
    /// <returns>The notice.</returns>
    public MimeMessage ComposeFailureNotice(string failedMessageId, string failedSubject, IReadOnlyList<(string Address, string Reason)> failures,
        MailboxAddress operatorMailbox, DateTimeOffset now, int attempt = 0)
    {
        ArgumentNullException.ThrowIfNull(failures);
        var message = new MimeMessage();
        message.From.Add(new MailboxAddress(_sender.DisplayName + " (delivery)", _sender.Address));
        message.To.Add(operatorMailbox);
        message.Subject = Clean("Undeliverable: " + failedSubject, 200);
        message.Date = now;
        message.MessageId = MessageIds.ForNotice(failedMessageId, attempt, _sender.Hostname);
        message.InReplyTo = failedMessageId;
        message.Headers.Add("Auto-Submitted", "auto-replied");
        var text = new StringBuilder();
        text.Append("EdgeMail could not deliver the mail ").Append('<').Append(failedMessageId).Append('>').Append(" to:\n\n");
        foreach (var (address, reason) in failures)
        {
            text.Append("  ").Append(address).Append(": ").Append(Clean(reason, 500)).Append('\n');
        }

        text.Append("\nThe device has been sent a 'failed' receipt. Check the relay settings and the addresses above.\n");
        message.Body = new TextPart("plain") { Text = text.ToString() };
        message.Prepare(EncodingConstraint.SevenBit, 78);
        _dkim?.Sign(message);
        return message;
    }

    /// <summary>Writes a notice to the operator about something the gateway did on its own (parked items, a full disk).</summary>
    /// <param name="messageId">Its Message-ID (unique).</param>
    /// <param name="subject">Subject, one line.</param>
    /// <param name="body">Plain text.</param>
    /// <param name="operatorMailbox">Who is told.</param>
    /// <param name="now">The Date.</param>
    /// <returns>The notice.</returns>
    public MimeMessage ComposeOperatorNotice(string messageId, string subject, string body, MailboxAddress operatorMailbox, DateTimeOffset now)
    {
        ArgumentNullException.ThrowIfNull(body);
        var message = new MimeMessage();
        message.From.Add(new MailboxAddress(_sender.DisplayName + " (gateway)", _sender.Address));
        message.To.Add(operatorMailbox);
        message.Subject = Clean(subject, 200);
        message.Date = now;
        message.MessageId = messageId;
        message.Headers.Add("Auto-Submitted", "auto-generated");
        message.Headers.Add("X-Auto-Response-Suppress", "All");
        message.Body = new TextPart("plain") { Text = CleanBody(body) };
        message.Prepare(EncodingConstraint.SevenBit, 78);
        _dkim?.Sign(message);
        return message;
    }

    /// <summary>The message as wire bytes (CRLF line endings, 7-bit).</summary>
    /// <param name="message">The message.</param>
    /// <returns>Bytes to spool and send.</returns>
    public static byte[] ToWire(MimeMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);

        // Sized for the body and a header block at once, rather than grown by doubling from 256 bytes.
        long body = message.Body is MimePart { Content.Stream: { CanSeek: true } content } ? content.Length : 2048;
        using var stream = new MemoryStream((int)Math.Min(body + 2048, 1 << 20));
        message.WriteTo(WireFormat, stream);
        return stream.ToArray();
    }

    // The mail straight into its bytes. Each header field is encoded and folded by MimeKit's Header, in the order a
    // MimeMessage built from the same values writes them (trace first, then From, Date, Subject, Message-Id, To, the
    // auto-reply fields, MIME-Version, threading, ours, the body's Content-Type); the golden files and a comparison
    // with such a MimeMessage (FuzzPropertyTests) hold the bytes. The message object cost most of the composition's
    // time: its ten address lists, its header list's change events, a copy of the parser options per list, and its
    // writing through a new-line filter into one buffer and from there into another.
    private ComposedMail Write(MailTemplate template, Dictionary<string, object?> model, IReadOnlyList<MailboxAddress> to, DateTimeOffset now,
        string messageId, string? inReplyTo, string received, string device, string? alertId)
    {
        var context = new TemplateContext(_fluid);
        foreach (var (key, value) in model)
        {
            context.SetValue(key, value);
        }

        string subject = Clean(template.Subject.Render(context, NullEncoder.Default), 250);
        string text = CleanBody(template.Text.Render(context, NullEncoder.Default));
        string html = CleanBody(template.Html.Render(context, HtmlEscaper));
        // As MimeMessage took it: what MimeKit reads back from the field is the Message-ID the spool keeps.
        messageId = MimeUtils.ParseMessageId("<" + messageId + ">") ?? throw new ArgumentException($"Invalid Message-Id format: {messageId}.", nameof(messageId));
        string id = "<" + messageId + ">";

        var scratch = Scratch.ForThisThread();
        var wire = scratch.Wire;
        scratch.WriteField(HeaderId.Received, received);
        wire.Write(_fromField);
        scratch.WriteField(HeaderId.Date, DateUtils.FormatDate(now));
        scratch.WriteField(HeaderId.Subject, subject);
        scratch.WriteField(HeaderId.MessageId, id);
        wire.Write(ToField(to));
        wire.Write(ConstantFields);
        if (inReplyTo is not null)
        {
            string thread = "<" + (MimeUtils.ParseMessageId(inReplyTo) ?? throw new ArgumentException("Invalid Message-Id format.", nameof(inReplyTo))) + ">";
            scratch.WriteField(HeaderId.InReplyTo, thread);
            scratch.WriteField(HeaderId.References, thread);
        }

        scratch.WriteField(DeviceField, device);
        if (alertId is not null)
        {
            scratch.WriteField(AlertField, alertId);
        }

        Span<byte> boundary = stackalloc byte[BoundaryLength];
        NewBoundary(boundary);
        wire.Write("Content-Type: multipart/alternative; boundary=\""u8);
        wire.Write(boundary);
        wire.Write("\"\r\n\r\n"u8);
        WriteAlternatives(scratch, boundary, text, html);
        byte[] bytes = scratch.TakeWire();
        return _dkim is null ? new ComposedMail(messageId, bytes) : new ComposedMail(messageId, Signed(bytes));
    }

    private byte[] Signed(byte[] wire)
    {
        using var message = WireMessage.Open(wire);
        _dkim!.Sign(message);
        return ToWire(message);
    }

    // From and To exactly as MimeMessage encodes and folds an address list (MimeKit has no public way to encode one
    // otherwise), made once per distinct list: the sender is one, and routes give few recipient lists.
    private byte[] ToField(IReadOnlyList<MailboxAddress> to)
    {
        var key = new StringBuilder();
        foreach (var mailbox in to)
        {
            string name = mailbox.Name ?? string.Empty;
            key.Append(name.Length).Append(':').Append(name).Append(mailbox.Address.Length).Append(':').Append(mailbox.Address);
        }

        string k = key.ToString();
        if (_toFields.TryGetValue(k, out byte[]? field))
        {
            return field;
        }

        if (_toFields.Count >= 1024)
        {
            _toFields.Clear();
        }

        return _toFields[k] = AddressField(HeaderId.To, to);
    }

    private static byte[] AddressField(HeaderId id, IEnumerable<MailboxAddress> mailboxes)
    {
        using var message = new MimeMessage((IEnumerable<Header>)[]);
        (id == HeaderId.From ? message.From : message.To).AddRange(mailboxes);
        return Fields(message.Headers[message.Headers.IndexOf(id)]);
    }

    private static byte[] Fields(params Header[] headers)
    {
        var fields = new MemoryStream();
        foreach (var header in headers)
        {
            WriteField(fields, header);
        }

        return fields.ToArray();
    }

    // A field as MimeKit folded it: its raw value ends each line with the platform's new line, the wire with CRLF.
    private static void WriteField(MemoryStream wire, Header header)
    {
        wire.Write(header.RawField);
        wire.WriteByte((byte)':');
        WriteCrlf(wire, header.RawValue, 0, header.RawValue.Length);
    }

    /// <summary>
    /// The multipart/alternative body (text, then HTML) as MimeKit's BodyBuilder, Prepare(7-bit, 78) and WriteTo write
    /// it -- the same encoding decision (BestEncodingFilter), the same encoders, the same layout -- without an entity per
    /// part and a filter chain per write (golden files hold the bytes).
    /// </summary>
    private static void WriteAlternatives(Scratch scratch, ReadOnlySpan<byte> boundary, string text, string html)
    {
        WriteTextPart(scratch, boundary, "plain"u8, text);
        WriteTextPart(scratch, boundary, "html"u8, html);
        var wire = scratch.Wire;
        wire.Write("--"u8);
        wire.Write(boundary);
        wire.Write("--\r\n"u8);
    }

    private static void WriteTextPart(Scratch scratch, ReadOnlySpan<byte> boundary, ReadOnlySpan<byte> subtype, string text)
    {
        var wire = scratch.Wire;
        byte[] raw = ArrayPool<byte>.Shared.Rent(Encoding.UTF8.GetByteCount(text));
        try
        {
            int length = Encoding.UTF8.GetBytes(text, raw);
            var best = scratch.Best;
            best.Reset();
            best.Filter(raw, 0, length, out _, out _);
            var encoding = best.GetBestEncoding(EncodingConstraint.SevenBit, 78);
            wire.Write("--"u8);
            wire.Write(boundary);
            wire.Write("\r\nContent-Type: text/"u8);
            wire.Write(subtype);
            wire.Write("; charset=utf-8\r\n"u8);

            // Prepare leaves a 7-bit part without the header (7bit is the default) and names any other encoding.
            if (encoding == ContentEncoding.SevenBit)
            {
                wire.Write("\r\n"u8);
                WriteCrlf(wire, raw, 0, length);
            }
            else
            {
                IMimeEncoder encoder = encoding == ContentEncoding.Base64 ? scratch.Base64 : scratch.QuotedPrintable;
                wire.Write(encoding == ContentEncoding.Base64 ? "Content-Transfer-Encoding: base64\r\n\r\n"u8 : "Content-Transfer-Encoding: quoted-printable\r\n\r\n"u8);
                encoder.Reset();
                byte[] output = ArrayPool<byte>.Shared.Rent(encoder.EstimateOutputLength(length));
                try
                {
                    WriteCrlf(wire, output, 0, encoder.Flush(raw, 0, length, output));
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(output);
                }
            }

            wire.Write("\r\n"u8);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(raw);
        }
    }

    // Every line ending to CRLF, as the DOS new-line filter does: LF in body text (CleanBody turned every CR into LF)
    // and in header values folded on Unix, CRLF in those folded on Windows.
    private static void WriteCrlf(MemoryStream body, byte[] bytes, int index, int length)
    {
        var span = bytes.AsSpan(index, length);
        int lf;
        while ((lf = span.IndexOf((byte)'\n')) >= 0)
        {
            body.Write(span[..(lf > 0 && span[lf - 1] == '\r' ? lf - 1 : lf)]);
            body.Write("\r\n"u8);
            span = span[(lf + 1)..];
        }

        body.Write(span);
    }

    // As MimeKit's Multipart does: "=-" and 16 random bytes in base64. '=' cannot occur in quoted-printable text except
    // as an escape, and 128 random bits do not occur in 7-bit text by chance.
    private const int BoundaryLength = 2 + 24;

    private static void NewBoundary(Span<byte> boundary)
    {
        Span<byte> random = stackalloc byte[16];
        System.Security.Cryptography.RandomNumberGenerator.Fill(random);
        "=-"u8.CopyTo(boundary);
        System.Buffers.Text.Base64.EncodeToUtf8(random, boundary[2..], out _, out _);
    }

    private string Trace(string device, string? peer, string via, long spoolId, DateTimeOffset receivedAt)
    {
        string from = peer is null ? device : $"{device} ([{PeerAddress(peer)}])";
        string protocol = via is IngestProtocols.Mqtt or IngestProtocols.Local or "ESMTP" or "ESMTPS" or "ESMTPA" or "ESMTPSA" ? via : IngestProtocols.Mqtt;
        return $"from {from} by {_sender.Hostname} (EdgeMail) with {protocol} id {spoolId.ToString(CultureInfo.InvariantCulture)}; {DateUtils.FormatDate(receivedAt)}";
    }

    private static string PeerAddress(string peer)
    {
        int colon = peer.LastIndexOf(':');
        string host = colon > 0 ? peer[..colon] : peer;
        return new string(host.Where(c => char.IsAsciiHexDigit(c) || c is '.' or ':').ToArray()).Trim('[', ']');
    }

    private static Dictionary<string, object?> DeviceModel(DeviceInfo device) => new()
    {
        ["id"] = device.Id,
        ["name"] = Clean(device.Name.Length > 0 ? device.Name : device.Id, Devices.DeviceText.MaxLength),
        ["site"] = Clean(device.Site, Devices.DeviceText.MaxLength),
    };

    private static Dictionary<string, object?> AlertModel(Alert alert, DateTimeOffset receivedAt)
    {
        var raised = alert.RaisedAt(receivedAt);
        string raisedText = raised is null
            ? "time unknown (the device had no clock)"
            : alert.Raised is null ? FormatTime(raised.Value) + " (from the device's uptime)" : FormatTime(raised.Value);
        string text = CleanBody(alert.Text);
        return new Dictionary<string, object?>
        {
            ["id"] = Clean(alert.Id, 128),
            ["seq"] = alert.Seq,
            ["state"] = alert.State == AlertState.Raised ? "raised" : "cleared",
            ["severity"] = Severities.Name(alert.Severity),
            ["label"] = alert.State == AlertState.Cleared ? "CLEARED" : Severities.Name(alert.Severity).ToUpperInvariant(),
            ["color"] = alert.State == AlertState.Cleared ? "#2e7d32" : alert.Severity switch { Severity.Critical => "#c62828", Severity.Warning => "#ef6c00", _ => "#1565c0" },
            ["code"] = alert.Code,
            ["text"] = text.Length > 0 ? text : alert.Code,
            ["summary"] = Clean(alert.Text.Length > 0 ? alert.Text : alert.Code, 120),
            ["values"] = alert.Values.Select(v => new Dictionary<string, object?>
            {
                ["name"] = Clean(v.Key, 64),
                ["value"] = v.Value.ToString("G", CultureInfo.InvariantCulture),
            }).ToList(),
            ["raised_text"] = raisedText,
            ["time_known"] = raised is not null,
            ["count"] = alert.Count,
            ["first_text"] = alert.First is { } f ? FormatTime(f) : string.Empty,
            ["last_text"] = alert.Last is { } l ? FormatTime(l) : string.Empty,
            ["boot"] = alert.Boot,
        };
    }

    // "10 min", "1 h 30 min", "2 s": how long a window is, as a subject line says it.
    private static string Duration(TimeSpan span)
    {
        var parts = new List<string>(3);
        long hours = (long)span.TotalHours;
        if (hours > 0)
        {
            parts.Add(hours.ToString(CultureInfo.InvariantCulture) + " h");
        }

        if (span.Minutes > 0)
        {
            parts.Add(span.Minutes.ToString(CultureInfo.InvariantCulture) + " min");
        }

        if (span.Seconds > 0 || parts.Count == 0)
        {
            parts.Add(span.Seconds.ToString(CultureInfo.InvariantCulture) + " s");
        }

        return string.Join(' ', parts);
    }

    private static string FormatTime(DateTimeOffset t) => t.ToUniversalTime().ToString("yyyy-MM-dd HH:mm:ss 'UTC'", CultureInfo.InvariantCulture);

    /// <summary>One line of text: control characters become spaces, runs of white space collapse, long text is cut with an ellipsis.</summary>
    /// <param name="s">Untrusted text.</param>
    /// <param name="max">Most characters kept.</param>
    /// <returns>Safe single-line text.</returns>
    internal static string Clean(string s, int max)
    {
        // Text that looks like an RFC 2047 encoded word ("=?utf-8?q?...") makes MimeKit emit a malformed encoded word
        // and, folded, a header line without leading white space (found by FuzzPropertyTests): break the "=?" up.
        s = s.Replace("=?", "= ?", StringComparison.Ordinal);
        var sb = new StringBuilder(Math.Min(s.Length, max + 1));
        bool space = false;
        foreach (char c in s)
        {
            if (char.IsControl(c) || char.IsWhiteSpace(c) || c is '\u2028' or '\u2029')
            {
                space = sb.Length > 0;
                continue;
            }

            if (space)
            {
                sb.Append(' ');
                space = false;
            }

            sb.Append(c);
        }

        Ellipsis.Cut(sb, max);

        return sb.ToString();
    }

    // Body text: keep newlines and tabs, make other control characters visible as U+FFFD.
    private static string CleanBody(string s)
    {
        if (!NeedsCleaning(s))
        {
            return s; // the usual case for rendered templates: nothing to change, nothing to copy
        }

        var sb = new StringBuilder(s.Length);
        foreach (char c in s.Replace("\r\n", "\n", StringComparison.Ordinal))
        {
            sb.Append(c is '\n' or '\t' ? c : c == '\r' ? '\n' : char.IsControl(c) ? '\uFFFD' : c);
        }

        return sb.ToString().Replace("\n\n\n\n", "\n\n\n", StringComparison.Ordinal);
    }

    private static bool NeedsCleaning(string s)
    {
        foreach (char c in s)
        {
            if (c is not ('\n' or '\t') && char.IsControl(c))
            {
                return true;
            }
        }

        return s.Contains("\n\n\n\n", StringComparison.Ordinal);
    }

    private static FormatOptions CreateWireFormat()
    {
        var options = FormatOptions.Default.Clone();
        options.NewLineFormat = NewLineFormat.Dos;
        options.International = false;
        return options;
    }

    /// <summary>
    /// What writing one mail reuses: the wire buffer, the part encoders, and a MimeKit header per field (constructing one
    /// copies the parser options). One per thread: the composer is shared, its callers' loops go on on whichever
    /// thread-pool thread, and writing a mail never awaits, so a mail is written on one thread from start to end.
    /// </summary>
    private sealed class Scratch
    {
        // A buffer a large mail (a custom template's) grew beyond this is not kept.
        private const int KeptCapacity = 64 * 1024;

        [ThreadStatic]
        private static Scratch? _current;

        private readonly Dictionary<HeaderId, Header> _known = [];
        private readonly Dictionary<string, Header> _named = new(StringComparer.Ordinal);

        public MemoryStream Wire { get; private set; } = new(8 * 1024);

        public BestEncodingFilter Best { get; } = new();

        public QuotedPrintableEncoder QuotedPrintable { get; } = new(78);

        public Base64Encoder Base64 { get; } = new(78);

        public static Scratch ForThisThread()
        {
            var scratch = _current ??= new Scratch();
            scratch.Wire.SetLength(0);
            return scratch;
        }

        public void WriteField(HeaderId id, string value) =>
            Write(CollectionsMarshal.GetValueRefOrAddDefault(_known, id, out _) ??= new Header(id, value), value);

        public void WriteField(string name, string value) =>
            Write(CollectionsMarshal.GetValueRefOrAddDefault(_named, name, out _) ??= new Header(name, value), value);

        public byte[] TakeWire()
        {
            byte[] bytes = Wire.ToArray();
            if (Wire.Capacity > KeptCapacity)
            {
                Wire = new MemoryStream(8 * 1024);
            }

            return bytes;
        }

        private void Write(Header header, string value)
        {
            header.SetValue(FormatOptions.Default, Encoding.UTF8, value);
            MailComposer.WriteField(Wire, header);
        }
    }
}
