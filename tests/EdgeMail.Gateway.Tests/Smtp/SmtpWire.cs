using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Text;

namespace EdgeMail.Gateway.Tests.Smtp;

/// <summary>A raw SMTP client for tests: sends exact bytes and reads replies as the server wrote them.</summary>
public sealed class SmtpWire : IAsyncDisposable
{
    private readonly TcpClient _tcp;
    private Stream _stream;
    private readonly List<byte> _pending = [];

    private SmtpWire(TcpClient tcp, Stream stream)
    {
        _tcp = tcp;
        _stream = stream;
    }

    public static TimeSpan ReadTimeout { get; } = TimeSpan.FromSeconds(10);

    /// <summary>Connects (optionally from a given local address, e.g. 127.0.0.2 to be an allow-listed source) and reads the greeting.</summary>
    public static async Task<(SmtpWire Wire, string Greeting)> ConnectAsync(IPEndPoint server, IPAddress? from = null, bool implicitTls = false)
    {
        var tcp = new TcpClient(AddressFamily.InterNetwork);
        if (from is not null)
        {
            tcp.Client.Bind(new IPEndPoint(from, 0));
        }

        await tcp.ConnectAsync(server);
        Stream stream = tcp.GetStream();
        if (implicitTls)
        {
            var ssl = new SslStream(stream, false, (_, _, _, _) => true);
            await ssl.AuthenticateAsClientAsync("localhost");
            stream = ssl;
        }

        var wire = new SmtpWire(tcp, stream);
        return (wire, await wire.ReadReplyAsync());
    }

    public bool IsSecure => _stream is SslStream;

    public Task SendRawAsync(string text) => SendRawAsync(Encoding.UTF8.GetBytes(text));

    public async Task SendRawAsync(byte[] bytes)
    {
        await _stream.WriteAsync(bytes);
        await _stream.FlushAsync();
    }

    /// <summary>Sends one command line (CRLF added) and reads its reply.</summary>
    public async Task<string> CommandAsync(string line)
    {
        await SendRawAsync(line + "\r\n");
        return await ReadReplyAsync();
    }

    /// <summary>Reads one (possibly multi-line) reply; returns "" when the server closed the connection.</summary>
    public async Task<string> ReadReplyAsync()
    {
        var reply = new StringBuilder();
        while (true)
        {
            string? line = await ReadLineAsync();
            if (line is null)
            {
                return reply.ToString();
            }

            reply.Append(line).Append('\n');
            if (line.Length < 4 || line[3] != '-')
            {
                return reply.ToString().TrimEnd('\n');
            }
        }
    }

    /// <summary>True when the server has closed the connection (reads to the end, with a timeout).</summary>
    public async Task<bool> IsClosedAsync()
    {
        try
        {
            while (await ReadLineAsync() is not null)
            {
            }

            return true;
        }
        catch (IOException)
        {
            return true;
        }
    }

    public async Task<string> StartTlsAsync()
    {
        string reply = await CommandAsync("STARTTLS");
        if (reply.StartsWith("220", StringComparison.Ordinal))
        {
            var ssl = new SslStream(_stream, false, (_, _, _, _) => true);
            await ssl.AuthenticateAsClientAsync("localhost");
            _stream = ssl;
            _pending.Clear();
        }

        return reply;
    }

    /// <summary>Does the TLS handshake after the 220 to STARTTLS was already read.</summary>
    public async Task StartTlsAfterReplyAsync()
    {
        var ssl = new SslStream(_stream, false, (_, _, _, _) => true);
        await ssl.AuthenticateAsClientAsync("localhost");
        _stream = ssl;
        _pending.Clear();
    }

    public Task<string> AuthPlainAsync(string user, string password) =>
        CommandAsync("AUTH PLAIN " + Convert.ToBase64String(Encoding.UTF8.GetBytes("\0" + user + "\0" + password)));

    /// <summary>MAIL, RCPT(s), DATA and the message; returns the final reply (or the first refusal).</summary>
    public async Task<string> SendMailAsync(string from, IEnumerable<string> to, string message)
    {
        string r = await CommandAsync($"MAIL FROM:<{from}>");
        if (!r.StartsWith("250", StringComparison.Ordinal))
        {
            return r;
        }

        foreach (string rcpt in to)
        {
            r = await CommandAsync($"RCPT TO:<{rcpt}>");
            if (!r.StartsWith("250", StringComparison.Ordinal))
            {
                return r;
            }
        }

        r = await CommandAsync("DATA");
        if (!r.StartsWith("354", StringComparison.Ordinal))
        {
            return r;
        }

        string body = message.Replace("\r\n", "\n", StringComparison.Ordinal).Replace("\n", "\r\n", StringComparison.Ordinal);
        body = string.Join("\r\n", body.Split("\r\n").Select(l => l.StartsWith('.') ? "." + l : l));
        await SendRawAsync(body + (body.EndsWith("\r\n", StringComparison.Ordinal) ? string.Empty : "\r\n") + ".\r\n");
        return await ReadReplyAsync();
    }

    private async Task<string?> ReadLineAsync()
    {
        using var timeout = new CancellationTokenSource(ReadTimeout);
        var buffer = new byte[4096];
        while (true)
        {
            int lf = _pending.IndexOf((byte)'\n');
            if (lf >= 0)
            {
                string line = Encoding.UTF8.GetString(_pending.GetRange(0, lf).ToArray()).TrimEnd('\r');
                _pending.RemoveRange(0, lf + 1);
                return line;
            }

            int n;
            try
            {
                n = await _stream.ReadAsync(buffer, timeout.Token);
            }
            catch (IOException)
            {
                n = 0;
            }

            if (n == 0)
            {
                if (_pending.Count == 0)
                {
                    return null;
                }

                string rest = Encoding.UTF8.GetString(_pending.ToArray());
                _pending.Clear();
                return rest;
            }

            _pending.AddRange(buffer.AsSpan(0, n).ToArray());
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stream.DisposeAsync();
        _tcp.Dispose();
    }
}
