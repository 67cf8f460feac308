using EdgeMail.Firmware.Uplink;

namespace EdgeMail.Simulation.Network;

/// <summary>
/// An SMTP server behind <see cref="ITransport"/>, in memory and synchronous: greets, offers AUTH PLAIN, says yes to
/// every command, 354 to DATA and 250 (or the next of <see cref="EndOfDataReplies"/>) to the end of a message. It can
/// record every byte the device sent and each message as it was on the wire (dot-stuffed, up to the CRLF before the
/// final dot). With nothing to answer, <see cref="Receive"/> reports a closed link, so a protocol slip fails at once
/// instead of waiting on a clock. A test scripts other replies to commands (<see cref="OnCommand"/>) and a server that
/// hangs up after replying (<see cref="HangUpAfterMessage"/>, <see cref="HangUp"/>). Without recording it allocates
/// nothing: the emulator's <c>bench</c> measures the SMTP uplink over it, as it does the MQTT one over <c>LoopbackBroker</c>.
/// </summary>
/// <param name="record">Keep the bytes and messages (tests); off for allocation measurements.</param>
public sealed class InMemorySmtpServer(bool record = true) : ITransport
{
    private readonly byte[] _command = new byte[1024];
    private readonly byte[] _toDevice = new byte[4096];
    private readonly List<byte> _message = [];
    private int _commandCount;
    private int _outStart;
    private int _outCount;
    private bool _open;
    private bool _inData;
    private int _endMatch;
    private bool _hangingUp;

    /// <summary>Every byte the device sent (when recording).</summary>
    public List<byte> FromDevice { get; } = [];

    /// <summary>Each message as it was on the wire (when recording).</summary>
    public List<byte[]> Messages { get; } = [];

    /// <summary>Messages whose end was answered, recorded or not.</summary>
    public long MessageCount { get; private set; }

    /// <summary>Bytes the device sent.</summary>
    public long BytesFromDevice { get; private set; }

    /// <summary>Bytes the device read.</summary>
    public long BytesToDevice { get; private set; }

    /// <summary>Replies to the ends of the next messages (e.g. "451 4.3.0 busy\r\n"); 250 when empty.</summary>
    public Queue<string> EndOfDataReplies { get; } = new();

    /// <summary>
    /// A reply to a command line (given without its CRLF) instead of the server's own, with its CRLF; null lets the
    /// server answer. Not asked for the end of a message (<see cref="EndOfDataReplies"/>).
    /// </summary>
    public Func<string, string?>? OnCommand { get; set; }

    /// <summary>
    /// The number of the message (counted from 1 over the server's life, as <see cref="MessageCount"/>) after whose
    /// end-of-data reply the server hangs up (<see cref="HangUp"/>); 0 for never.
    /// </summary>
    public long HangUpAfterMessage { get; set; }

    /// <summary>
    /// Closes the connection from the server's side once the device has read what was answered so far (from
    /// <see cref="OnCommand"/>: the reply it returns too): then the device's reads and sends report a closed link.
    /// </summary>
    public void HangUp() => _hangingUp = true;

    /// <inheritdoc />
    public void Open(string host, int port, int timeoutMs)
    {
        _open = true;
        _commandCount = 0;
        _outStart = 0;
        _outCount = 0;
        _inData = false;
        _hangingUp = false;
        Reply("220 scripted ESMTP\r\n");
    }

    /// <inheritdoc />
    public int Send(byte[] buffer, int offset, int count, int timeoutMs)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        if (!_open || _hangingUp)
        {
            return -1;
        }

        BytesFromDevice += count;

        for (int i = 0; i < count && !_hangingUp; i++)
        {
            byte b = buffer[offset + i];
            if (record)
            {
                FromDevice.Add(b);
            }

            if (_inData)
            {
                if (record)
                {
                    _message.Add(b);
                }

                _endMatch = b == "\r\n.\r\n"[_endMatch] ? _endMatch + 1 : b == '\r' ? 1 : 0;
                if (_endMatch == 5)
                {
                    _inData = false;
                    MessageCount++;
                    if (record)
                    {
                        Messages.Add([.. _message.Take(_message.Count - 3)]);
                        _message.Clear();
                    }

                    Reply(EndOfDataReplies.Count > 0 ? EndOfDataReplies.Dequeue() : "250 2.0.0 queued\r\n");
                    if (MessageCount == HangUpAfterMessage)
                    {
                        HangUp();
                    }
                }

                continue;
            }

            if (_commandCount < _command.Length)
            {
                _command[_commandCount++] = b;
            }

            if (b == '\n')
            {
                Command();
                _commandCount = 0;
            }
        }

        return count;
    }

    /// <inheritdoc />
    public int Receive(byte[] buffer, int offset, int count, int timeoutMs)
    {
        if (!_open || _outCount == 0)
        {
            return -1;
        }

        int n = Math.Min(count, _outCount);
        Array.Copy(_toDevice, _outStart, buffer, offset, n);
        _outStart += n;
        _outCount -= n;
        if (_outCount == 0)
        {
            _outStart = 0;
        }

        BytesToDevice += n;
        return n;
    }

    /// <inheritdoc />
    public void Close() => _open = false;

    private bool Is(string verb)
    {
        for (int i = 0; i < verb.Length; i++)
        {
            if (i >= _commandCount || _command[i] != verb[i])
            {
                return false;
            }
        }

        return true;
    }

    private void Command()
    {
        if (OnCommand is { } script && script(System.Text.Encoding.ASCII.GetString(_command, 0, Math.Max(0, _commandCount - 2))) is { } scripted)
        {
            Reply(scripted);
        }
        else if (Is("EHLO"))
        {
            Reply("250-scripted\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n");
        }
        else if (Is("AUTH PLAIN "))
        {
            Reply("235 2.7.0 ok\r\n");
        }
        else if (Is("DATA\r\n"))
        {
            _inData = true;
            _endMatch = 2; // the device is at the start of a line
            Reply("354 go ahead\r\n");
        }
        else if (Is("QUIT\r\n"))
        {
            Reply("221 bye\r\n");
        }
        else if (Is("MAIL FROM:<") || Is("RCPT TO:<") || Is("RSET\r\n"))
        {
            Reply("250 ok\r\n");
        }
        else
        {
            Reply("500 5.5.1 unknown command\r\n");
        }
    }

    private void Reply(string text)
    {
        for (int i = 0; i < text.Length; i++)
        {
            _toDevice[_outStart + _outCount++] = (byte)text[i];
        }
    }
}
