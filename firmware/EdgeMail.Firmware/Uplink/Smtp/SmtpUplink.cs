using System;
using EdgeMail.Firmware.Alerts;

namespace EdgeMail.Firmware.Uplink.Smtp;

/// <summary>
/// Forwards the <see cref="AlertStore"/> over SMTP for sites where only mail leaves the network (DESIGN.md Contract 2):
/// each alert becomes one message with a <c>text/plain</c> part for people and an
/// <c>application/vnd.edgemail.alert+json</c> part whose body is the Contract 1 alert JSON (base64, so any line length
/// and byte passes every relay). An alert leaves flash only after the server's 250 to its DATA. The JSON is never held
/// whole: the alert is kept as its record (<see cref="OutgoingAlert"/>) and its JSON streamed, base64-encoded on the
/// way, through the client's send buffer; nothing is allocated per alert.
/// </summary>
/// <remarks>
/// A session: connect, EHLO (HELO when the server does not know EHLO), AUTH PLAIN (when a password is set; after HELO
/// there is no AUTH, so the session fails saying so and the secret is not sent), then MAIL/RCPT/DATA per alert, QUIT. A 4xx reply or a
/// broken link ends the session; the rest stays queued for the next <see cref="SendPending"/>. A 5xx reply to the end of one alert's
/// DATA means the gateway will never take that message: it is acknowledged (counted in <see cref="Rejected"/>),
/// so one bad alert cannot block the queue forever — the same rule as Contract 1. Not thread-safe.
/// </remarks>
public sealed class SmtpUplink
{
    private const string Boundary = "=_edgemail_alert_part";

    private readonly AlertStore _store;
    private readonly SmtpUplinkOptions _options;
    private readonly SmtpClient _client;
    private readonly OutgoingAlert _alert = new OutgoingAlert();
    private readonly byte[] _id = new byte[OutgoingAlert.MaxIdLength];
    private readonly Base64Lines _body;

    /// <summary>Creates the uplink.</summary>
    /// <param name="store">The alerts to forward.</param>
    /// <param name="transport">Byte stream to the gateway's SMTP port (TLS is the transport's business).</param>
    /// <param name="clock">Uptime, for timeouts.</param>
    /// <param name="options">Server, identity and addresses.</param>
    public SmtpUplink(AlertStore store, ITransport transport, IClock clock, SmtpUplinkOptions options)
    {
        _store = store ?? throw new ArgumentNullException(nameof(store));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        if (options.From.Length == 0 || options.To.Length == 0 || options.DeviceId.Length == 0)
        {
            throw new ArgumentException("DeviceId, From and To must be set.", nameof(options));
        }

        if (!DeviceIds.IsValid(options.DeviceId))
        {
            // It goes into the Subject and Message-ID as it is: a non-ASCII character would become a raw byte there,
            // a line break a header of its own.
            throw new ArgumentException("DeviceId '" + options.DeviceId + "' " + DeviceIds.Rule, nameof(options));
        }

        _client = new SmtpClient(transport, clock, options.TimeoutMs, options.SendBufferSize);
        _body = new Base64Lines(_client);
    }

    /// <summary>Alerts the server took (250).</summary>
    public long Sent { get; private set; }

    /// <summary>Alerts the server refused for good (5xx) and that were dropped so the queue moves on.</summary>
    public long Rejected { get; private set; }

    /// <summary>Why the last session ended early; null when it did not.</summary>
    public string? LastError { get; private set; }

    /// <summary>The underlying client (for its last reply code and the server's extensions).</summary>
    public SmtpClient Client => _client;

    /// <summary>One session: submits every queued alert, in order, then QUIT.</summary>
    /// <returns>The number of alerts the server took in this session.</returns>
    /// <exception cref="TransportException">The connection could not be made.</exception>
    /// <exception cref="SmtpException">The session failed (greeting, EHLO, AUTH, a 4xx, a broken link); what was not
    /// taken stays queued.</exception>
    public int SendPending()
    {
        int taken = 0;
        _store.Rewind();
        LastError = null;
        try
        {
            _client.Connect(_options.Host, _options.Port);
            _client.Ehlo(_options.ClientName);
            if (_options.Password != null)
            {
                _client.AuthPlain(_options.UserName ?? _options.DeviceId, _options.Password);
            }

            while (_store.TryNext(_alert))
            {
                _client.MailFrom(_options.From);
                _client.RcptTo(_options.To);
                _client.BeginData();
                WriteMessage();
                try
                {
                    _client.EndData();
                    taken++;
                    Sent++;
                }
                catch (SmtpException ex) when (ex.IsPermanent)
                {
                    // The server read this message and refuses it for good: it would refuse it every time. Drop it
                    // before anything else can fail: a server that hangs up after the refusal (or answers RSET with
                    // 421) would otherwise get the same alert, and refuse it, at every session.
                    _store.Acknowledge(_alert.Seq);
                    Rejected++;
                    LastError = ex.Message;
                    _client.Reset();
                    continue;
                }

                _store.Acknowledge(_alert.Seq);
            }

            _client.Quit();
            return taken;
        }
        catch (SmtpException ex)
        {
            LastError = ex.Message;
            _client.Abort();
            _store.Rewind();
            throw;
        }
    }

    private void WriteMessage()
    {
        SmtpClient c = _client;
        int idLength = _alert.WriteId(_id, 0);
        c.Write("From: <");
        c.Write(_options.From);
        c.Write(">\r\nTo: <");
        c.Write(_options.To);
        c.Write(">\r\nSubject: EdgeMail alert ");
        c.Write(_id, 0, idLength);
        c.Write(" from ");
        c.Write(_options.DeviceId);
        c.Write("\r\nMessage-ID: <");
        c.Write(_id, 0, idLength);
        c.Write(".");
        c.Write(_options.DeviceId);
        c.Write("@edgemail.device>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"");
        c.Write(Boundary);
        c.Write("\"\r\n\r\n--");
        c.Write(Boundary);
        c.Write("\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nEdgeMail alert ");
        c.Write(_id, 0, idLength);
        c.Write(" from device ");
        c.Write(_options.DeviceId);
        c.Write(".\r\nThe alert itself is the application/vnd.edgemail.alert+json part of this message.\r\n\r\n--");
        c.Write(Boundary);
        c.Write("\r\nContent-Type: application/vnd.edgemail.alert+json; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"alert.json\"\r\n\r\n");
        _body.Begin();
        _alert.Stamp(); // MAIL, RCPT and DATA took round trips since it was loaded: its age is the one it has now
        _alert.WriteTo(_body);
        _body.End();
        c.Write("\r\n--");
        c.Write(Boundary);
        c.Write("--\r\n");
    }

    /// <summary>
    /// Base64-encodes the streamed JSON into the message: 76 characters (19 quanta of 3 bytes) per line, the last line
    /// shorter, each ending in CRLF; the JSON arrives in pieces of any size, a quantum may straddle two of them.
    /// </summary>
    private sealed class Base64Lines : IByteSink
    {
        private const int QuantaPerLine = 19;

        private readonly SmtpClient _client;
        private readonly byte[] _pending = new byte[3];
        private int _pendingCount;
        private int _quanta;

        public Base64Lines(SmtpClient client) => _client = client;

        public void Begin()
        {
            _pendingCount = 0;
            _quanta = 0;
        }

        public void Write(byte[] buffer, int offset, int count)
        {
            int i = 0;

            // Complete a quantum begun in the previous piece.
            while (_pendingCount > 0 && i < count)
            {
                _pending[_pendingCount++] = buffer[offset + i++];
                if (_pendingCount == 3)
                {
                    _pendingCount = 0;
                    Quantum(_pending, 0, 3);
                }
            }

            while (count - i >= 3)
            {
                Quantum(buffer, offset + i, 3);
                i += 3;
            }

            while (i < count)
            {
                _pending[_pendingCount++] = buffer[offset + i++];
            }
        }

        /// <summary>Encodes the last one or two bytes (with '=' padding) and ends the last line.</summary>
        public void End()
        {
            if (_pendingCount > 0)
            {
                _client.WriteBase64Quantum(_pending, 0, _pendingCount);
                _pendingCount = 0;
                _quanta++;
            }

            if (_quanta > 0)
            {
                _client.Write("\r\n");
                _quanta = 0;
            }
        }

        private void Quantum(byte[] src, int offset, int count)
        {
            _client.WriteBase64Quantum(src, offset, count);
            if (++_quanta == QuantaPerLine)
            {
                _client.Write("\r\n");
                _quanta = 0;
            }
        }
    }
}
