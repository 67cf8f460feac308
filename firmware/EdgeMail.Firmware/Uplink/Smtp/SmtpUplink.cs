using System;
using EdgeMail.Firmware.Alerts;

namespace EdgeMail.Firmware.Uplink.Smtp;

/// <summary>
/// Forwards the <see cref="AlertStore"/> over SMTP for sites where only mail leaves the network (DESIGN.md Contract 2):
/// each alert becomes one message with a <c>text/plain</c> part for people and an
/// <c>application/vnd.edgemail.alert+json</c> part whose body is the Contract 1 alert JSON (base64, so any line length
/// and byte passes every relay). An alert leaves flash only after the server's 250 to its DATA.
/// </summary>
/// <remarks>
/// A session: connect, EHLO, AUTH PLAIN (when a password is set), then MAIL/RCPT/DATA per alert, QUIT. A 4xx reply or a
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
    private readonly byte[] _json = new byte[AlertJsonWriter.MaxLength];
    private readonly byte[] _line = new byte[78];

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

        _client = new SmtpClient(transport, clock, options.TimeoutMs, options.SendBufferSize);
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

            while (_store.TryNext(_json, 0, out int length, out uint seq))
            {
                _client.MailFrom(_options.From);
                _client.RcptTo(_options.To);
                _client.BeginData();
                WriteMessage(length);
                try
                {
                    _client.EndData();
                    taken++;
                    Sent++;
                }
                catch (SmtpException ex) when (ex.IsPermanent)
                {
                    // The server read this message and refuses it for good: it would refuse it every time.
                    Rejected++;
                    LastError = ex.Message;
                    _client.Reset();
                }

                _store.Acknowledge(seq);
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

    private void WriteMessage(int length)
    {
        SmtpClient c = _client;
        ForwarderReceipt.TryFindString(_json, 0, length, "id", out int idOffset, out int idLength);
        c.Write("From: <");
        c.Write(_options.From);
        c.Write(">\r\nTo: <");
        c.Write(_options.To);
        c.Write(">\r\nSubject: EdgeMail alert ");
        c.Write(_json, idOffset, idLength);
        c.Write(" from ");
        c.Write(_options.DeviceId);
        c.Write("\r\nMessage-ID: <");
        c.Write(_json, idOffset, idLength);
        c.Write(".");
        c.Write(_options.DeviceId);
        c.Write("@edgemail.device>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"");
        c.Write(Boundary);
        c.Write("\"\r\n\r\n--");
        c.Write(Boundary);
        c.Write("\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nEdgeMail alert ");
        c.Write(_json, idOffset, idLength);
        c.Write(" from device ");
        c.Write(_options.DeviceId);
        c.Write(".\r\nThe alert itself is the application/vnd.edgemail.alert+json part of this message.\r\n\r\n--");
        c.Write(Boundary);
        c.Write("\r\nContent-Type: application/vnd.edgemail.alert+json; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"alert.json\"\r\n\r\n");

        // 76 characters per line: 19 quanta of 3 bytes.
        int i = 0;
        while (i < length)
        {
            int n = 0;
            for (int q = 0; q < 19 && i < length; q++)
            {
                int take = length - i < 3 ? length - i : 3;
                n += SmtpClient.EncodeBase64Quantum(_json, i, take, _line, n);
                i += take;
            }

            _line[n++] = (byte)'\r';
            _line[n++] = (byte)'\n';
            c.Write(_line, 0, n);
        }

        c.Write("\r\n--");
        c.Write(Boundary);
        c.Write("--\r\n");
    }
}
