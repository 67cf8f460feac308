using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.Operations;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Xunit;
using static EdgeMail.Gateway.Tests.Relay.DirectMxEarlyRecordTests;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// A remote server's reply is untrusted text: a smarthost, and in direct MX mode any exchanger on the Internet, writes
/// what it likes after the reply code. MailKit hands it over as it came — the continuation lines joined with LF, every
/// other byte kept (a NUL included), with no bound on its length. What the gateway keeps of it (spool, logs, console,
/// receipts, failure notices) is one line of readable text of bounded length, reply code first.
/// </summary>
public sealed class HostileReplyTests
{
    // Three lines with a NUL, a bell, an escape sequence and a C1 control in them.
    private const string ControlsReply = "550-5.1.1 <bad@example.com> no such\0user\r\n550-5.1.1 \a\u001b[31mred\u001b[0m\tand\u0085more\r\n550 5.1.1 end\r\n";
    private const string ControlsCleaned = "550 5.1.1 <bad@example.com> no such\uFFFDuser / 5.1.1 \uFFFD\uFFFD[31mred\uFFFD[0m and\uFFFDmore / 5.1.1 end";

    // PostgreSQL's text refuses U+0000, so a reply with a NUL must reach the spool without one, or the attempt's result
    // can never be committed and the mail never leaves the worker.
    [PostgresFact]
    public async Task Postgres_TheSmarthostRefusesARecipientWithNulAndControlsInItsReply_TheFailureIsRecorded_AsOneCleanLine()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        using var server = ScriptedSmtpServer.Start(to => to == "bad@example.com" ? [ControlsReply] : null);
        var log = new DeliveryContainmentTests.WorkerLog();
        await using var gw = await TestGateway.StartAsync(c =>
        {
            Smarthost(c, server.Port);
            c["Spool"] = new { Provider = "Postgres", db.ConnectionString };
        }, s => s.AddSingleton<ILoggerProvider>(log));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("nul-1", "bad@example.com", "alice@example.com"), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("nul-1@gw.test", default))?.Status == MessageStatus.Partial,
            "the attempt's result recorded: alice sent, bad failed");

        var detail = await DetailAsync(gw.Spool, "nul-1@gw.test");
        var bad = detail.Recipients.Single(r => r.Address == "bad@example.com");
        Assert.Equal(("failed", ControlsCleaned), (bad.Status, bad.Reply));
        var attempt = Assert.Single(detail.Attempts);
        Assert.Equal(ControlsCleaned, attempt.Results.Single(r => r.Address == "bad@example.com").Reply);
        Assert.Contains(ControlsCleaned, await Await.Within(log.ContainingAsync("Failed <nul-1@gw.test>"), "the worker's word on the failure"), StringComparison.Ordinal);
    }

    // A hostile exchanger's thousand continuation lines (about 50 KB, within what is read: CommandWatch.MaxReplyBytes):
    // what is kept starts with the reply code, is at most RemoteReply.MaxLength characters and says that it was cut.
    [Fact]
    public async Task TheSmarthostDefersWithAThousandContinuationLines_TheReplyKeptIsBounded_OneLine_CodeFirst_MarkedAsCut()
    {
        string flood = string.Concat(Enumerable.Range(0, 1000).Select(i => $"451-4.7.1 line {i} of a reply that goes on and on\r\n")) + "451 4.7.1 try again later\r\n";
        using var server = ScriptedSmtpServer.Start(to => to == "bob@example.com" ? [flood] : null);
        var log = new DeliveryContainmentTests.WorkerLog();
        await using var gw = await TestGateway.StartAsync(c => Smarthost(c, server.Port), s => s.AddSingleton<ILoggerProvider>(log));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("flood-1", "bob@example.com"), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("flood-1@gw.test", default))?.Attempts == 1, "the deferral recorded");

        var detail = await DetailAsync(gw.Spool, "flood-1@gw.test");
        string reply = Assert.Single(detail.Recipients).Reply!;
        Assert.StartsWith("451 4.7.1 line 0 of a reply that goes on and on / 4.7.1 line 1 of", reply, StringComparison.Ordinal);
        Assert.Equal(RemoteReply.MaxLength, reply.Length);
        Assert.EndsWith("…", reply, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', reply);
        Assert.Equal(reply, detail.Summary.LastReply);
        Assert.Equal(reply, Assert.Single(Assert.Single(detail.Attempts).Results).Reply);
        string line = await Await.Within(log.ContainingAsync("Deferred <flood-1@gw.test>"), "the worker's word on the deferral");
        Assert.Contains(reply, line, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', line);
    }

    // MailKit reads a reply whole before it hands it over: an exchanger that sends continuation lines for ever would have
    // the gateway hold them all in memory until the attempt's deadline. The read stops at CommandWatch.MaxReplyBytes.
    [Fact]
    public async Task Relay_Smarthost_TheServersReplyRunsOnForMegabytes_TheConnectionIsClosedAtTheBound_TheRecipientIsDeferred()
    {
        using var server = ScriptedSmtpServer.Start(to => to == "bob@example.com" ? Flood() : null);
        await using var relay = new SmtpRelay(new RelayOptions { Host = "127.0.0.1", Port = server.Port, Security = "None", Timeout = TimeSpan.FromSeconds(10) }, "gw.test");

        var result = Assert.Single(await relay.SendAsync(Mail("flood-2", "bob@example.com"), CancellationToken.None).WaitAsync(Await.DefaultTimeout));

        Assert.Equal(RecipientOutcome.Deferred, result.Outcome);
        Assert.Equal($"451 4.4.1 connection to 127.0.0.1:{server.Port} failed: the server's reply ran past {CommandWatch.MaxReplyBytes} bytes (RFC 5321 lets a line "
            + "have 512); the connection is closed", result.Reply);
        Assert.True(result.RelayDown);

        // About 19 MB, lazily: 300,000 lines of 64 bytes, then the end of the reply.
        static IEnumerable<string> Flood()
        {
            for (int i = 0; i < 300_000; i++)
            {
                yield return string.Create(CultureInfo.InvariantCulture, $"452-4.5.3 line {i,9} of a reply that goes on and on and on\r\n");
            }

            yield return "452 4.5.3 end\r\n";
        }
    }

    // Well within the bound: a long EHLO answer and pipelined replies in one read are not a long reply.
    [Fact]
    public async Task Relay_Smarthost_AReplyJustUnderTheBound_IsReadWhole_AndKeptCleaned()
    {
        string longest = string.Concat(Enumerable.Repeat("550-5.1.1 " + new string('x', 500) + "\r\n", (CommandWatch.MaxReplyBytes / 512) - 1)) + "550 5.1.1 end\r\n";
        Assert.InRange(Encoding.ASCII.GetByteCount(longest), CommandWatch.MaxReplyBytes - 512, CommandWatch.MaxReplyBytes);
        using var server = ScriptedSmtpServer.Start(to => to == "bob@example.com" ? [longest] : null);
        await using var relay = new SmtpRelay(new RelayOptions { Host = "127.0.0.1", Port = server.Port, Security = "None", Timeout = TimeSpan.FromSeconds(10) }, "gw.test");

        var results = await relay.SendAsync(Mail("long-1", "bob@example.com", "alice@example.com"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);

        Assert.Equal(["bob@example.com failed", "alice@example.com sent"], results.Select(r => r.Address + " " + r.Outcome));
        Assert.StartsWith("550 5.1.1 xxxxxxxx", results[0].Reply, StringComparison.Ordinal);
        Assert.Equal(RemoteReply.MaxLength, results[0].Reply.Length);
    }

    private static QueuedMessage Mail(string id, params string[] to)
    {
        var now = new DateTimeOffset(2026, 12, 5, 10, 0, 0, TimeSpan.Zero);
        byte[] wire = Encoding.ASCII.GetBytes($"From: <ups-1@lan.example.com>\r\nTo: <ops@example.com>\r\nSubject: {id}\r\nMessage-ID: <{id}@lan.example.com>\r\n\r\nMains lost.\r\n");
        return new QueuedMessage(1, "relay", "ups-1", null, id + "@lan.example.com", "alerts@example.com", to, wire, 0, now, now.AddDays(5));
    }

    private static void Smarthost(Dictionary<string, object> c, int port) =>
        c["Relay"] = new { Mode = "Smarthost", Host = "127.0.0.1", Port = port, Security = "None", Timeout = "00:00:05", Backoff = new[] { "01:00:00" } };

    /// <summary>
    /// An SMTP server written out by hand, for replies no well-behaved server library sends: the RCPT reply for an address
    /// is the script's pieces of text written one after the other as they are (CRLFs and all), or <c>250 2.1.5 ok</c>. It
    /// takes any number of connections and accepts every message's data.
    /// </summary>
    internal sealed class ScriptedSmtpServer : IDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly CancellationTokenSource _stop = new();
        private readonly Func<string, IEnumerable<string>?> _rcpt;

        private ScriptedSmtpServer(Func<string, IEnumerable<string>?> rcpt)
        {
            _rcpt = rcpt;
            _listener.Start();
            _ = AcceptAsync();
        }

        public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

        public static ScriptedSmtpServer Start(Func<string, IEnumerable<string>?> rcpt) => new(rcpt);

        public void Dispose()
        {
            _stop.Cancel();
            _listener.Stop();
            _stop.Dispose();
        }

        private async Task AcceptAsync()
        {
            try
            {
                while (true)
                {
                    _ = ServeAsync(await _listener.AcceptTcpClientAsync(_stop.Token));
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                // Stopped.
            }
        }

        private async Task ServeAsync(TcpClient client)
        {
            using (client)
            {
                try
                {
                    var stream = client.GetStream();
                    var input = new BufferedStream(stream);
                    async Task ReplyAsync(string text) => await stream.WriteAsync(Encoding.UTF8.GetBytes(text.EndsWith("\r\n", StringComparison.Ordinal) ? text : text + "\r\n"), _stop.Token);
                    await ReplyAsync("220 scripted.test ESMTP");
                    while (await ReadLineAsync(input) is { } line)
                    {
                        string verb = (line.Length >= 4 ? line[..4] : line).ToUpperInvariant();
                        switch (verb)
                        {
                            case "EHLO":
                                await ReplyAsync("250-scripted.test\r\n250 ENHANCEDSTATUSCODES");
                                break;
                            case "RCPT":
                                string to = line[(line.IndexOf('<', StringComparison.Ordinal) + 1)..line.IndexOf('>', StringComparison.Ordinal)];
                                foreach (string piece in _rcpt(to) ?? ["250 2.1.5 ok"])
                                {
                                    await ReplyAsync(piece);
                                }

                                break;
                            case "DATA":
                                await ReplyAsync("354 go ahead");
                                while (await ReadLineAsync(input) is { } body && body != ".")
                                {
                                }

                                await ReplyAsync("250 2.0.0 queued");
                                break;
                            case "QUIT":
                                await ReplyAsync("221 2.0.0 bye");
                                return;
                            default:
                                await ReplyAsync("250 2.0.0 ok");
                                break;
                        }
                    }
                }
                catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or IOException or SocketException)
                {
                    // The client went away, or the test is over.
                }
            }
        }

        private async Task<string?> ReadLineAsync(Stream input)
        {
            var line = new StringBuilder();
            var one = new byte[1];
            while (await input.ReadAsync(one, _stop.Token) == 1)
            {
                if (one[0] == (byte)'\n')
                {
                    return line.ToString().TrimEnd('\r');
                }

                line.Append((char)one[0]);
            }

            return null;
        }
    }
}
