using System.Globalization;
using System.Net;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Operations;
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
/// is refused whole (<c>552 5.3.4</c>) rather than stored in part. Mail whose handling fails for a reason of its own is
/// quarantined for the operator (<see cref="QuarantinedMail"/>). The reply is decided only after the spool committed.
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
    private readonly ParkingLot _parking;
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
    /// <param name="parking">Counts quarantined mail and tells the operator.</param>
    public SubmissionHandler(IOptions<GatewayOptions> options, IOptions<SmtpIngestOptions> smtp, AlertIngest alerts, ISpool spool, TimeProvider clock,
        IngestPressure pressure, Operations.DiskGuard disk, ILogger<SubmissionHandler> logger, Devices.DeviceRegistry devices, ParkingLot parking)
    {
        _parking = parking;
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

    /// <summary>
    /// Stores one submitted message and says what to reply. A message whose handling fails for a reason of its own (a
    /// bug in the rewrite, a library's exception on a strange message: anything but the spool failing or the caller
    /// stopping) is quarantined — kept as it came, with its envelope, for the operator to release or cancel — and taken
    /// with <c>250</c>: answered <c>451</c>, the device would send it again first at every session, for ever, and
    /// nothing queued behind it would move.
    /// </summary>
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
        var received = new Received(device, remote, envelopeFrom, recipients, authenticated, secure, sessionId, _clock.GetUtcNow(), raw);
        Handled handled;
        AcceptOutcome queued;
        try
        {
            handled = await DecideAsync(received, cancellationToken).ConfigureAwait(false);
            if (handled.Relay is null)
            {
                return handled.Reply;
            }

            queued = await _spool.QueueMailAsync(handled.Relay, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
        {
            return await QuarantineAsync(received, ex, cancellationToken).ConfigureAwait(false);
        }

        // Durable from here: nothing that follows may turn the 250 into a quarantine (the mail would go out twice).
        _pressure.Accepted();
        return new SubmissionReply(250, queued == AcceptOutcome.Stored ? $"2.0.0 queued as <{handled.Relay.MessageId}>" : $"2.0.0 already queued as <{handled.Relay.MessageId}>");
    }

    /// <summary>
    /// Handles quarantined mail again, as it was submitted (same device, envelope, session facts and data), so that the
    /// rewrite and every check apply to it as to new mail: the mail it makes is queued and the quarantine ended in one
    /// commit. When handling fails again, or the mail is now refused (a recipient no longer configured), it stays
    /// quarantined with the new reason. Never sends the data as it came.
    /// </summary>
    /// <param name="rowId">The quarantined mail's spool row.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>What came of it.</returns>
    /// <exception cref="SpoolException">The spool failed; nothing changed.</exception>
    public async Task<QuarantineRelease> ReleaseQuarantinedAsync(long rowId, CancellationToken cancellationToken)
    {
        if (await _spool.QuarantinedAsync(rowId, cancellationToken).ConfigureAwait(false) is not { } kept)
        {
            return new QuarantineRelease(QuarantineReleaseOutcome.NotQuarantined, string.Empty);
        }

        string reason;
        Exception? fault = null;
        if (_devices.FindEnabled(kept.Device) is null)
        {
            // Disabled since (perhaps because it was taken over): its held mail is no more its to send than new mail.
            reason = $"refused when released: device {kept.Device} is disabled or no longer configured, and its mail is not relayed";
        }
        else
        {
            try
            {
                var recipients = kept.Recipients.Select(a => a.LastIndexOf('@') is int at and >= 0 ? (a[..at], a[(at + 1)..]) : (a, string.Empty)).ToList();
                var received = new Received(kept.Device, IPEndPoint.Parse(kept.Peer), kept.EnvelopeFrom, recipients, kept.Authenticated, kept.Secure, kept.SessionId,
                    kept.ReceivedAt, kept.Raw, Released: true);
                var handled = await DecideAsync(received, cancellationToken).ConfigureAwait(false);
                if (handled.Reply.Code == 250)
                {
                    if (!await _spool.SettleQuarantinedAsync(rowId, handled.Relay, cancellationToken).ConfigureAwait(false))
                    {
                        return new QuarantineRelease(QuarantineReleaseOutcome.NotQuarantined, string.Empty);
                    }

                    LogReleased(kept.MessageId, kept.Device, handled.Reply.Text);
                    return new QuarantineRelease(QuarantineReleaseOutcome.Released, handled.Reply.Text);
                }

                reason = $"refused when released: {handled.Reply.Code.ToString(CultureInfo.InvariantCulture)} {handled.Reply.Text}";
            }
            catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
            {
                fault = ex;
                reason = ParkingLot.Describe("handling", ex);
            }
        }

        LogStillQuarantined(fault, kept.MessageId, kept.Device, reason);
        if (!await _spool.QuarantineAgainAsync(rowId, reason, cancellationToken).ConfigureAwait(false))
        {
            return new QuarantineRelease(QuarantineReleaseOutcome.NotQuarantined, string.Empty);
        }

        _parking.MailQuarantined(kept.Device, kept.MessageId, reason);
        return new QuarantineRelease(QuarantineReleaseOutcome.StillQuarantined, reason);
    }

    // Everything short of queueing relayed mail: the reply, and the mail to queue if it is one. Alert parts are stored
    // here, by the alert ingest (which keeps an alert whose handling fails as rejected itself).
    private async Task<Handled> DecideAsync(Received m, CancellationToken cancellationToken)
    {
        _disk.ThrowIfLow();
        var alertParts = AlertParts(m.Raw);
        if (alertParts.Count > MaxAlertParts)
        {
            LogTooManyAlertParts(m.Device, m.Remote.Address.ToString(), MaxAlertParts);
            return new Handled(new SubmissionReply(552,
                $"5.3.4 too many alert parts: at most {MaxAlertParts.ToString(CultureInfo.InvariantCulture)} in one message; nothing was stored, send them in several messages"), null);
        }

        if (alertParts.Count > 0)
        {
            int alertHops = RelayedMailWriter.CountHops(m.Raw);
            if (alertHops > _smtp.MaxHops)
            {
                return new Handled(Loop(m.Device, m.Remote, alertHops), null);
            }

            int stored = 0, duplicates = 0;
            foreach (byte[] payload in alertParts)
            {
                var outcome = await _alerts.IngestAlertAsync(m.Device, m.Remote.ToString(), payload, cancellationToken, IngestProtocols.Smtp(m.Secure, m.Authenticated),
                    receivedAt: m.Released ? m.ReceivedAt : null).ConfigureAwait(false);
                stored += outcome == AcceptOutcome.Stored ? 1 : 0;
                duplicates += outcome == AcceptOutcome.Duplicate ? 1 : 0;
            }

            return new Handled(new SubmissionReply(250,
                $"2.0.0 alert stored ({stored.ToString(CultureInfo.InvariantCulture)} new, {duplicates.ToString(CultureInfo.InvariantCulture)} duplicate)"), null);
        }

        var people = new List<string>();
        foreach (var (user, host) in m.Recipients)
        {
            if (_recipients.TryResolve(user, host, out var mailboxes, out _))
            {
                people.AddRange(mailboxes.Select(b => b.Address));
            }
        }

        people = people.Distinct(StringComparer.OrdinalIgnoreCase).ToList();
        if (people.Count == 0)
        {
            return new Handled(new SubmissionReply(554, "5.5.1 no valid recipients"), null);
        }

        string name = _devices.Find(m.Device)?.Name ?? m.Device;
        var submission = new Submission(m.Device, name, m.Remote.Address.ToString(), m.EnvelopeFrom, m.Authenticated, m.Secure, m.SessionId, m.ReceivedAt);
        var mail = RelayedMailWriter.Rewrite(m.Raw, submission, _options.Sender);
        if (mail.Hops > _smtp.MaxHops)
        {
            return new Handled(Loop(m.Device, m.Remote, mail.Hops), null);
        }

        var relay = new NewMessage("relay", m.Device, null, mail.SpoolKey, _options.Sender.Address, people, Sign(mail, m.Device));
        return new Handled(new SubmissionReply(250, $"2.0.0 queued as <{mail.SpoolKey}>"), relay);
    }

    // Committed before the 250, as any mail: if that fails too, the spool's exception is answered 451 and nothing was taken.
    private async Task<SubmissionReply> QuarantineAsync(Received m, Exception fault, CancellationToken cancellationToken)
    {
        string reason = ParkingLot.Describe("handling", fault);
        string key = RelayedMailWriter.QuarantineKey(m.Raw, m.Device, m.SessionId, m.ReceivedAt, _options.Sender.Hostname);
        LogQuarantining(fault, m.Device, m.Remote.Address.ToString(), key, reason);
        var kept = new QuarantinedMail(key, m.Device, m.EnvelopeFrom, [.. m.Recipients.Select(r => r.User + "@" + r.Host)], m.Remote.ToString(), m.Authenticated, m.Secure,
            m.SessionId, m.ReceivedAt, m.Raw);
        bool stored = await _spool.QuarantineAsync(kept, reason, cancellationToken).ConfigureAwait(false) is not null;

        // Durable from here: a failure in what follows must not keep the device from being told (it would send it again).
        try
        {
            _pressure.Accepted();
            if (stored)
            {
                _parking.MailQuarantined(m.Device, key, reason);
            }
            else
            {
                // The device did not see the first 250: the operator knows of this mail already, and it is one mail.
                LogAlreadyQuarantined(key, m.Device);
            }
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            LogAfterQuarantineFailed(ex, key, m.Device);
        }

        return new SubmissionReply(250, stored ? $"2.0.0 taken and quarantined for the operator as <{key}>: handling it failed" : $"2.0.0 already quarantined as <{key}>");
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

    // A submission as handling sees it: as it came over SMTP, or as quarantine kept it (Released: the operator's release
    // hands it over now, not the device, which may have been silent since).
    private sealed record Received(string Device, IPEndPoint Remote, string EnvelopeFrom, IReadOnlyList<(string User, string Host)> Recipients, bool Authenticated,
        bool Secure, string SessionId, DateTimeOffset ReceivedAt, byte[] Raw, bool Released = false);

    // The reply, and the relayed mail to queue when there is one (the reply then holds only once it is queued).
    private sealed record Handled(SubmissionReply Reply, NewMessage? Relay);

    [LoggerMessage(Level = LogLevel.Error, Message = "Handling mail from device {Device} ({Source}) failed; quarantining it as <{Key}> and answering 250, so that the device's later mail flows: {Reason}")]
    private partial void LogQuarantining(Exception ex, string device, string source, string key, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "Mail <{Key}> from device {Device} was quarantined before and is sent again: answered 250, not kept twice")]
    private partial void LogAlreadyQuarantined(string key, string device);

    [LoggerMessage(Level = LogLevel.Error, Message = "Mail <{Key}> from device {Device} is quarantined, but what follows (counting it, the operator's notice) failed; it is taken all the same")]
    private partial void LogAfterQuarantineFailed(Exception ex, string key, string device);

    [LoggerMessage(Level = LogLevel.Error, Message = "Quarantined mail <{Key}> from device {Device} was released but stays quarantined: {Reason}")]
    private partial void LogStillQuarantined(Exception? ex, string key, string device, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "Quarantined mail <{Key}> from device {Device} released and handled: {Reply}")]
    private partial void LogReleased(string key, string device, string reply);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Mail relayed for device {Device} <{SpoolKey}> goes out without a DKIM signature: {Reason}")]
    private partial void LogUnsigned(string device, string spoolKey, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP message from device {Device} ({Source}) refused with 552: more than {Limit} alert parts")]
    private partial void LogTooManyAlertParts(string device, string source, int limit);

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP message from device {Device} ({Source}) refused with 554: loop, {Hops} Received headers")]
    private partial void LogLoop(string device, string source, int hops);
}

/// <summary>What releasing quarantined mail came to.</summary>
public enum QuarantineReleaseOutcome
{
    /// <summary>The row is not quarantined mail (any more): nothing was done.</summary>
    NotQuarantined,

    /// <summary>Handled again: its mail is queued (or its alerts stored) and the quarantine ended.</summary>
    Released,

    /// <summary>Handling it failed again, or it is refused now: it stays quarantined with the new reason.</summary>
    StillQuarantined,
}

/// <summary>The outcome of releasing quarantined mail.</summary>
/// <param name="Outcome">What came of it.</param>
/// <param name="Detail">What its handling answered (<c>2.0.0 queued as &lt;…&gt;</c>), or why it stays quarantined.</param>
public readonly record struct QuarantineRelease(QuarantineReleaseOutcome Outcome, string Detail);
