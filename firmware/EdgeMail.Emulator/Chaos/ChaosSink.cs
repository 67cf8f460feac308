using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace EdgeMail.Emulator.Chaos;

/// <summary>How the sink misbehaves while a fault window is open.</summary>
internal enum SinkFault
{
    None,
    Refuse421,
    Defer451,
    Full452,
    Slow,
    DropAfterData,
    Down,
}

/// <summary>A message the sink read to its end (and stored, unless the reply refused it).</summary>
internal sealed record SinkMessage(DateTimeOffset At, string MessageId, string? Device, string? AlertId, string[] Recipients, string? Subject, string? Code);

/// <summary>
/// The relay the gateway delivers to in a chaos run: a small SMTP server on a loopback port the OS chose, written for
/// the job (the emulator does not depend on test code) so it can misbehave at exactly the point a fault names: 421 at
/// the greeting, 452 to RCPT, 451 after the data, replies slowed down, the connection closed after the data was read
/// and stored but before the reply (the gateway cannot know the mail arrived), or not listening at all. Recipients in
/// <see cref="Refused"/> always get 550. Every message it took is kept with its Message-ID: the verdict's ground truth.
/// </summary>
internal sealed class ChaosSink : IAsyncDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentQueue<SinkMessage> _stored = new();
    private readonly HashSet<string> _refused;
    private readonly TimeProvider _time;
    private readonly Random _random;
    private readonly Lock _randomLock = new();
    private readonly Lock _listenerLock = new();
    private TcpListener _listener;
    private Task _accept = Task.CompletedTask;
    private volatile SinkFault _fault;
    private long _queueId;

    private ChaosSink(IEnumerable<string> refused, int seed, TimeProvider time)
    {
        _refused = new HashSet<string>(refused, StringComparer.OrdinalIgnoreCase);
        _random = new Random(seed);
        _time = time;
        _listener = new TcpListener(IPAddress.Loopback, 0);
    }

    public int Port { get; private set; }

    public IReadOnlyCollection<string> Refused => _refused;

    /// <summary>Every message stored, in order (resends of the same Message-ID included).</summary>
    public IReadOnlyList<SinkMessage> Stored => [.. _stored];

    public long Connections;

    public long RefusedReplies;

    public static ChaosSink Start(IEnumerable<string> refused, int seed, TimeProvider time)
    {
        var sink = new ChaosSink(refused, seed, time);
        sink._listener.Start();
        sink.Port = ((IPEndPoint)sink._listener.LocalEndpoint).Port;
        sink._accept = sink.AcceptLoop(sink._listener);
        return sink;
    }

    /// <summary>The misbehaviour from now on (<see cref="SinkFault.None"/>: a well-behaved relay).</summary>
    public SinkFault Fault
    {
        get => _fault;
        set
        {
            lock (_listenerLock)
            {
                SinkFault was = _fault;
                _fault = value;
                if (value == SinkFault.Down && was != SinkFault.Down)
                {
                    _listener.Stop(); // connection refused while down
                }
                else if (value != SinkFault.Down && was == SinkFault.Down)
                {
                    _listener = new TcpListener(IPAddress.Loopback, Port);
                    _listener.Start();
                    _accept = AcceptLoop(_listener);
                }
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        lock (_listenerLock)
        {
            _listener.Stop();
        }

        try
        {
            await _accept.ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
        {
            // stopping
        }

        _stop.Dispose();
    }

    private async Task AcceptLoop(TcpListener listener)
    {
        while (!_stop.IsCancellationRequested)
        {
            TcpClient client;
            try
            {
                client = await listener.AcceptTcpClientAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException or InvalidOperationException)
            {
                return; // stopped (shut down, or down for a fault)
            }

            Interlocked.Increment(ref Connections);
            _ = Task.Run(() => Serve(client));
        }
    }

    private double NextDouble()
    {
        lock (_randomLock)
        {
            return _random.NextDouble();
        }
    }

    private async Task Serve(TcpClient client)
    {
        using (client)
        {
            try
            {
                client.NoDelay = true;
                NetworkStream stream = client.GetStream();
                using var reader = new StreamReader(stream, Encoding.Latin1, false, 8192, leaveOpen: true);
                CancellationToken stop = _stop.Token;
                if (_fault == SinkFault.Refuse421)
                {
                    await Reply(stream, "421 4.3.2 sink.test chaos: service not available, closing", stop).ConfigureAwait(false);
                    Interlocked.Increment(ref RefusedReplies);
                    return;
                }

                await Reply(stream, "220 sink.test ESMTP chaos sink", stop).ConfigureAwait(false);
                var recipients = new List<string>();
                while (!stop.IsCancellationRequested)
                {
                    string? line = await reader.ReadLineAsync(stop).ConfigureAwait(false);
                    if (line is null)
                    {
                        return;
                    }

                    string verb = (line.Length >= 4 ? line[..4] : line).ToUpperInvariant();
                    switch (verb)
                    {
                        case "EHLO":
                            await Reply(stream, "250-sink.test\r\n250-8BITMIME\r\n250 SIZE 10485760", stop).ConfigureAwait(false);
                            break;
                        case "HELO":
                            await Reply(stream, "250 sink.test", stop).ConfigureAwait(false);
                            break;
                        case "MAIL":
                            recipients.Clear();
                            await Reply(stream, "250 2.1.0 ok", stop).ConfigureAwait(false);
                            break;
                        case "RCPT":
                            string rcpt = Address(line);
                            if (_refused.Contains(rcpt))
                            {
                                await Reply(stream, "550 5.1.1 <" + rcpt + ">: no such user (chaos: chosen recipient)", stop).ConfigureAwait(false);
                                Interlocked.Increment(ref RefusedReplies);
                            }
                            else if (_fault == SinkFault.Full452 && NextDouble() < 0.7)
                            {
                                await Reply(stream, "452 4.3.1 insufficient system storage (chaos)", stop).ConfigureAwait(false);
                                Interlocked.Increment(ref RefusedReplies);
                            }
                            else
                            {
                                recipients.Add(rcpt);
                                await Reply(stream, "250 2.1.5 ok", stop).ConfigureAwait(false);
                            }

                            break;
                        case "DATA":
                            if (recipients.Count == 0)
                            {
                                await Reply(stream, "554 5.5.1 no valid recipients", stop).ConfigureAwait(false);
                                break;
                            }

                            await Reply(stream, "354 end with <CRLF>.<CRLF>", stop).ConfigureAwait(false);
                            string data = await ReadData(reader, stop).ConfigureAwait(false);
                            SinkFault fault = _fault;
                            if (fault == SinkFault.Defer451 && NextDouble() < 0.7)
                            {
                                await Reply(stream, "451 4.3.0 chaos: local error in processing", stop).ConfigureAwait(false);
                                Interlocked.Increment(ref RefusedReplies);
                                break;
                            }

                            Store(data, recipients);
                            if (fault == SinkFault.DropAfterData && NextDouble() < 0.6)
                            {
                                // Taken, but the reply never leaves: the gateway must assume nothing arrived and resend.
                                client.Client.LingerState = new LingerOption(true, 0);
                                return;
                            }

                            long id = Interlocked.Increment(ref _queueId);
                            await Reply(stream, "250 2.0.0 ok queued as C" + id.ToString("X6", CultureInfo.InvariantCulture), stop).ConfigureAwait(false);
                            break;
                        case "RSET":
                            recipients.Clear();
                            await Reply(stream, "250 2.0.0 ok", stop).ConfigureAwait(false);
                            break;
                        case "NOOP":
                            await Reply(stream, "250 2.0.0 ok", stop).ConfigureAwait(false);
                            break;
                        case "QUIT":
                            await Reply(stream, "221 2.0.0 bye", stop).ConfigureAwait(false);
                            return;
                        default:
                            await Reply(stream, "502 5.5.2 command not recognised", stop).ConfigureAwait(false);
                            break;
                    }
                }
            }
            catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
            {
                // the gateway went away (killed, timed out); nothing to do
            }
        }
    }

    private async Task Reply(NetworkStream stream, string text, CancellationToken stop)
    {
        if (_fault == SinkFault.Slow)
        {
            await Task.Delay(TimeSpan.FromMilliseconds(500 + (NextDouble() * 2500)), _time, stop).ConfigureAwait(false);
        }

        byte[] bytes = Encoding.ASCII.GetBytes(text + "\r\n");
        await stream.WriteAsync(bytes, stop).ConfigureAwait(false);
    }

    private static async Task<string> ReadData(StreamReader reader, CancellationToken stop)
    {
        var text = new StringBuilder();
        while (true)
        {
            string line = await reader.ReadLineAsync(stop).ConfigureAwait(false) ?? throw new IOException("connection closed inside DATA");
            if (line == ".")
            {
                return text.ToString();
            }

            text.Append(line.StartsWith('.') ? line[1..] : line).Append("\r\n");
        }
    }

    private void Store(string data, List<string> recipients)
    {
        var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        string? last = null;
        foreach (string line in data.Split("\r\n"))
        {
            if (line.Length == 0)
            {
                break;
            }

            if ((line[0] == ' ' || line[0] == '\t') && last is not null)
            {
                headers[last] += " " + line.Trim();
                continue;
            }

            int colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon > 0)
            {
                last = line[..colon].Trim();
                headers.TryAdd(last, line[(colon + 1)..].Trim());
            }
        }

        string messageId = headers.TryGetValue("Message-ID", out string? mid) ? mid.Trim('<', '>', ' ') : "(none)";
        headers.TryGetValue("X-EdgeMail-Device", out string? device);
        headers.TryGetValue("X-EdgeMail-Alert", out string? alert);
        headers.TryGetValue("Subject", out string? subject);
        string? code = null;
        if (subject is not null && subject.Contains("EDGEMAIL.QUEUE_FULL", StringComparison.Ordinal))
        {
            code = "EDGEMAIL.QUEUE_FULL";
        }

        _stored.Enqueue(new SinkMessage(_time.GetUtcNow(), messageId, device, alert, [.. recipients], subject, code));
    }

    private static string Address(string line)
    {
        int lt = line.IndexOf('<', StringComparison.Ordinal);
        int gt = line.IndexOf('>', StringComparison.Ordinal);
        return lt >= 0 && gt > lt ? line[(lt + 1)..gt] : line[(line.IndexOf(':', StringComparison.Ordinal) + 1)..].Trim();
    }
}
