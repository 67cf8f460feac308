using System.Globalization;
using System.Net;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MimeKit;

namespace EdgeMail.Gateway.Ingest.Smtp;

/// <summary>The SMTP reply for a submitted message.</summary>
/// <param name="Code">Reply code (250, 451, 554).</param>
/// <param name="Text">Enhanced status code and text.</param>
public readonly record struct SubmissionReply(int Code, string Text);

/// <summary>
/// What happens to mail a device submitted (Contract 2). A message carrying a part of type
/// <c>application/vnd.edgemail.alert+json</c> is an alert like any MQTT alert: the same <see cref="AlertIngest"/>
/// (parser, de-duplication on (device, id), receipts), then the same routing, templates and relay. Any other mail
/// is rewritten by <see cref="RelayedMailWriter"/>, DKIM-signed when <c>Dkim</c> is configured, and queued as kind <c>relay</c> for the envelope recipients
/// (expanded to people) through the same spool and delivery worker. Mail that has passed more than
/// <c>Smtp:MaxHops</c> hops is refused as a loop, and mail with more than <see cref="MaxAlertParts"/> alert parts
/// is refused whole (<c>552 5.3.4</c>) rather than stored in part. The reply is decided only after the spool committed.
/// </summary>
public sealed partial class SubmissionHandler
{
    /// <summary>The MIME type of an EdgeMail alert part.</summary>
    public const string AlertMimeType = "application/vnd.edgemail.alert+json";

    /// <summary>Most alert parts one message may carry; a message with more is refused whole, nothing of it stored.</summary>
    public const int MaxAlertParts = 16;
    private readonly GatewayOptions _options;
    private readonly SmtpIngestOptions _smtp;
    private readonly RecipientPolicy _recipients;
    private readonly DkimSigning? _dkim;
    private readonly AlertIngest _alerts;
    private readonly ISpool _spool;
    private readonly TimeProvider _clock;
    private readonly IngestPressure _pressure;
    private readonly Operations.DiskGuard _disk;
    private readonly Devices.DeviceRegistry _devices;
    private readonly ILogger<SubmissionHandler> _logger;

    /// <summary>Creates the handler.</summary>
    /// <param name="options">Gateway options.</param>
    /// <param name="smtp">SMTP options.</param>
    /// <param name="alerts">Alert ingest (shared with MQTT).</param>
    /// <param name="spool">Spool.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="pressure">Counts accepted mail, so delivery can yield to a burst (alerts count in <see cref="AlertIngest"/>).</param>
    /// <param name="disk">Refuses new mail while the disk is low.</param>
    /// <param name="logger">Logger.</param>
    /// <param name="devices">Device names.</param>
    public SubmissionHandler(IOptions<GatewayOptions> options, IOptions<SmtpIngestOptions> smtp, AlertIngest alerts, ISpool spool, TimeProvider clock,
        IngestPressure pressure, Operations.DiskGuard disk, ILogger<SubmissionHandler> logger, Devices.DeviceRegistry devices)
    {
        _disk = disk;
        _devices = devices;
        _pressure = pressure;
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(smtp);
        _options = options.Value;
        _smtp = smtp.Value;
        _recipients = new RecipientPolicy(_options, _smtp);
        _dkim = DkimSigning.Create(_options.Dkim);
        _alerts = alerts;
        _spool = spool;
        _clock = clock;
        _logger = logger;
    }

    /// <summary>Stores one submitted message and says what to reply.</summary>
    /// <param name="device">The device the session submits as.</param>
    /// <param name="remote">Remote endpoint.</param>
    /// <param name="envelopeFrom">MAIL FROM (empty for <c>&lt;&gt;</c>).</param>
    /// <param name="recipients">Accepted RCPT TO addresses (local part, domain).</param>
    /// <param name="authenticated">True after AUTH.</param>
    /// <param name="secure">True over TLS.</param>
    /// <param name="sessionId">Session id for the trace.</param>
    /// <param name="raw">The message (dot-unstuffed DATA).</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The reply; a spool failure throws and is answered 451 (452 when the disk is low) by the caller.</returns>
    public async Task<SubmissionReply> HandleAsync(string device, IPEndPoint remote, string envelopeFrom, IReadOnlyList<(string User, string Host)> recipients,
        bool authenticated, bool secure, string sessionId, byte[] raw, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(remote);
        ArgumentNullException.ThrowIfNull(recipients);
        ArgumentNullException.ThrowIfNull(raw);
        _disk.ThrowIfLow();
        var alertParts = AlertParts(raw);
        if (alertParts.Count > MaxAlertParts)
        {
            LogTooManyAlertParts(device, remote.Address.ToString(), MaxAlertParts);
            return new SubmissionReply(552,
                $"5.3.4 too many alert parts: at most {MaxAlertParts.ToString(CultureInfo.InvariantCulture)} in one message; nothing was stored, send them in several messages");
        }

        if (alertParts.Count > 0)
        {
            int alertHops = RelayedMailWriter.CountHops(raw);
            if (alertHops > _smtp.MaxHops)
            {
                return Loop(device, remote, alertHops);
            }

            int stored = 0, duplicates = 0;
            foreach (byte[] payload in alertParts)
            {
                var outcome = await _alerts.IngestAlertAsync(device, remote.ToString(), payload, cancellationToken, IngestProtocols.Smtp(secure, authenticated)).ConfigureAwait(false);
                stored += outcome == AcceptOutcome.Stored ? 1 : 0;
                duplicates += outcome == AcceptOutcome.Duplicate ? 1 : 0;
            }

            return new SubmissionReply(250, $"2.0.0 alert stored ({stored.ToString(CultureInfo.InvariantCulture)} new, {duplicates.ToString(CultureInfo.InvariantCulture)} duplicate)");
        }

        var people = new List<string>();
        foreach (var (user, host) in recipients)
        {
            if (_recipients.TryResolve(user, host, out var mailboxes, out _))
            {
                people.AddRange(mailboxes.Select(m => m.Address));
            }
        }

        people = people.Distinct(StringComparer.OrdinalIgnoreCase).ToList();
        if (people.Count == 0)
        {
            return new SubmissionReply(554, "5.5.1 no valid recipients");
        }

        string name = _devices.Find(device)?.Name ?? device;
        var submission = new Submission(device, name, remote.Address.ToString(), envelopeFrom, authenticated, secure, sessionId, _clock.GetUtcNow());
        var mail = RelayedMailWriter.Rewrite(raw, submission, _options.Sender);
        if (mail.Hops > _smtp.MaxHops)
        {
            return Loop(device, remote, mail.Hops);
        }

        var mime = Sign(mail, device);
        var queued = await _spool.QueueMailAsync(new NewMessage("relay", device, null, mail.SpoolKey, _options.Sender.Address, people, mime), cancellationToken).ConfigureAwait(false);
        _pressure.Accepted();
        return new SubmissionReply(250, queued == AcceptOutcome.Stored ? $"2.0.0 queued as <{mail.SpoolKey}>" : $"2.0.0 already queued as <{mail.SpoolKey}>");
    }

    // Signed as the gateway's mail (d= normally the domain of Sender:Address), after the rewrite made From the
    // gateway's. Mail MimeKit cannot read goes out unsigned rather than being refused: the device cannot fix it.
    private byte[] Sign(RelayedMail mail, string device)
    {
        if (_dkim is null)
        {
            return mail.Mime;
        }

        try
        {
            return _dkim.SignWire(mail.Mime);
        }
        catch (FormatException ex)
        {
            LogUnsigned(device, mail.SpoolKey, ex.Message);
            return mail.Mime;
        }
    }

    private SubmissionReply Loop(string device, IPEndPoint remote, int hops)
    {
        LogLoop(device, remote.Address.ToString(), hops);
        return new SubmissionReply(554, $"5.4.6 routing loop detected: {hops.ToString(CultureInfo.InvariantCulture)} Received headers");
    }

    /// <summary>
    /// The decoded bodies of the message's alert parts, or none when it has none or cannot be parsed. Decoding stops
    /// at one more than <see cref="MaxAlertParts"/>: that many means too many.
    /// </summary>
    /// <param name="raw">The message.</param>
    /// <returns>Alert payloads.</returns>
    public static IReadOnlyList<byte[]> AlertParts(byte[] raw)
    {
        ArgumentNullException.ThrowIfNull(raw);
        if (!WireMessage.ContainsIgnoreCase(raw, "vnd.edgemail.alert+json"u8))
        {
            return []; // the common case for relayed mail: no MIME parse at all
        }

        MimeMessage message;
        try
        {
            using var stream = new MemoryStream(raw, writable: false);
            message = MimeMessage.Load(stream);
        }
        catch (FormatException)
        {
            return [];
        }

        var payloads = new List<byte[]>();
        foreach (var part in message.BodyParts.OfType<MimePart>())
        {
            if (!part.ContentType.IsMimeType("application", "vnd.edgemail.alert+json") || part.Content is null)
            {
                continue;
            }

            using var decoded = new MemoryStream();
            part.Content.DecodeTo(decoded);
            payloads.Add(decoded.ToArray());
            if (payloads.Count > MaxAlertParts)
            {
                break;
            }
        }

        return payloads;
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Mail relayed for device {Device} <{SpoolKey}> goes out without a DKIM signature: {Reason}")]
    private partial void LogUnsigned(string device, string spoolKey, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP message from device {Device} ({Source}) refused with 552: more than {Limit} alert parts")]
    private partial void LogTooManyAlertParts(string device, string source, int limit);

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP message from device {Device} ({Source}) refused with 554: loop, {Hops} Received headers")]
    private partial void LogLoop(string device, string source, int hops);
}
