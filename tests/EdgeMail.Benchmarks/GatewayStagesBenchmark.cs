using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using BenchmarkDotNet.Attributes;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Ingest.Smtp;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Routing;
using EdgeMail.Gateway.Spool;

namespace EdgeMail.Benchmarks;

/// <summary>
/// The gateway's per-alert pipeline, one stage at a time, on the alert the gateway benchmark's load generator sends
/// (gateway/bench/LoadGen): CPU time and allocations of each stage, which a whole-process profile cannot give without
/// the noise of everything else on the machine. Allocations are independent of the machine's load; times are not.
/// `dotnet run -c Release --project tests/EdgeMail.Benchmarks -- --filter '*GatewayStages*'`
/// </summary>
[MemoryDiagnoser]
public class GatewayStagesBenchmark
{
    private static readonly DateTimeOffset Received = new(2026, 12, 5, 1, 0, 0, TimeSpan.Zero);
    private readonly byte[] _payload = Encoding.UTF8.GetBytes(
        """{"v":1,"id":"i-bench-7-1234","seq":1234,"state":"raised","sev":"warning","code":"BENCH_LOAD","text":"Benchmark alert number 1234 from device bench-7","values":{"n":1234},"boot":1,"count":1}""");

    private readonly GatewayOptions _options = new()
    {
        Users = { ["ops"] = new UserOptions { Name = "Ops", Email = "ops@sink.edgemail.test" } },
        Routes = { new RouteOptions { Devices = "*", Codes = "*", MinSeverity = "info", To = { "ops" } } },
    };

    private Alert _alert = null!;
    private Router _router = null!;
    private MailComposer _composer = null!;
    private MailComposer _dkimComposer = null!;
    private AlertMail _mail = null!;
    private byte[] _wire = null!;
    private QueuedMessage _queued = null!;
    private QueuedMessage _deviceMail = null!;
    private byte[] _submitted = null!;
    private SmtpRelay _relay = null!;
    private BenchSmtpSink _sink = null!;
    private string _dir = null!;
    private SqliteSpool _spool = null!;
    private int _spooled;

    [GlobalSetup]
    public void Setup()
    {
        _alert = AlertParser.Parse(_payload).Alert!;
        _router = new Router(_options);
        var templates = TemplateSet.Load(string.Empty);
        _composer = new MailComposer(_options.Sender, templates);
        _dir = Directory.CreateTempSubdirectory("edgemail-stages-").FullName;
        using (var rsa = RSA.Create(2048))
        {
            File.WriteAllText(Path.Combine(_dir, "dkim.pem"), rsa.ExportPkcs8PrivateKeyPem());
        }

        _dkimComposer = new MailComposer(_options.Sender, templates,
            DkimSigning.Create(new DkimOptions { KeyFile = Path.Combine(_dir, "dkim.pem"), Domain = "gateway.localhost", Selector = "bench" }));
        var route = _router.Route("bench-7", _alert);
        _mail = new AlertMail(new DeviceInfo("bench-7", "bench-7", "Bench"), _alert, Received, "127.0.0.1:40000", 1234, route.Recipients, route.Template, null);
        _wire = _composer.ComposeAlert(_mail, Received).Wire;

        _queued = new QueuedMessage(1, "alert", "bench-7", _alert.Id, "bench-7.i-bench-7-1234.alert@gateway.localhost", _options.Sender.Address,
            ["ops@sink.edgemail.test"], _wire, 0, Received, Received.AddDays(5));
        _submitted = SubmittedMail();
        var relayed = RelayedMailWriter.Rewrite(_submitted, Submission, _options.Sender);
        _deviceMail = new QueuedMessage(2, "relay", "bench-1", null, relayed.SpoolKey, _options.Sender.Address, ["ops@sink.edgemail.test"], relayed.Mime, 0,
            Received, Received.AddDays(5));
        _sink = new BenchSmtpSink();
        _relay = new SmtpRelay(new RelayOptions { Mode = "Smarthost", Host = "127.0.0.1", Port = _sink.Port, Security = "None", Concurrency = 1 }, "gateway.localhost");
        _spool = SqliteSpool.Open(Path.Combine(_dir, "spool.db"), false, 512, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _relay.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _sink.Dispose();
        _spool.DisposeAsync().AsTask().GetAwaiter().GetResult();
        Directory.Delete(_dir, true);
    }

    /// <summary>Accept: parse and validate the alert JSON (the spool insert is in the end-to-end profile).</summary>
    [Benchmark]
    public AlertParseResult AcceptParse() => AlertParser.Parse(_payload);

    /// <summary>Route: who is told, and the route explanation kept with the alert.</summary>
    [Benchmark]
    public RouteResult Route() => _router.Route("bench-7", _alert);

    /// <summary>Compose: render the templates and write the mail's bytes as they are spooled.</summary>
    [Benchmark]
    public byte[] Compose() => _composer.ComposeAlert(_mail, Received).Wire;

    /// <summary>Compose with DKIM signing (RSA-SHA256 2048).</summary>
    [Benchmark]
    public byte[] ComposeDkim() => _dkimComposer.ComposeAlert(_mail, Received).Wire;

    /// <summary>The SMTP client's whole send of one spooled message on a kept connection, to an in-process sink.</summary>
    [Benchmark]
    public Task<IReadOnlyList<RecipientResult>> SmtpSend() => _relay.SendAsync(_queued, CancellationToken.None);

    /// <summary>SMTP ingest: the rewrite of a device's 1 KiB mail (as smtp-source sends it in smtp-ingest.sh) before it is spooled.</summary>
    [Benchmark]
    public RelayedMail SmtpIngestRewrite() => RelayedMailWriter.Rewrite(_submitted, Submission, _options.Sender);

    /// <summary>The SMTP client's send of that device's mail, rewritten and spooled, on a kept connection.</summary>
    [Benchmark]
    public Task<IReadOnlyList<RecipientResult>> SmtpSendDeviceMail() => _relay.SendAsync(_deviceMail, CancellationToken.None);

    /// <summary>Alerts handled together by <see cref="SpoolLifeAsync"/>: about a group commit's worth under load.</summary>
    public const int SpoolBatch = 32;

    /// <summary>
    /// The spool's part of <see cref="SpoolBatch"/> alerts' lives, as the pipeline asks for it: each accepted (one group
    /// commit), read by the router, their mails queued (one commit), read by the delivery worker, and each mail's
    /// result recorded (one commit). fsync off: what is measured is the CPU of the statements, not the disk.
    /// </summary>
    [Benchmark(OperationsPerInvoke = SpoolBatch)]
    public async Task SpoolLifeAsync()
    {
        var accepted = new Task<AcceptOutcome>[SpoolBatch];
        for (int i = 0; i < SpoolBatch; i++)
        {
            string id = "i-bench-" + (++_spooled).ToString(System.Globalization.CultureInfo.InvariantCulture);
            accepted[i] = _spool.AcceptAlertAsync(new IncomingAlert("bench-" + (_spooled % 50), id, Received, "127.0.0.1:40000", _payload, null, "BENCH_LOAD", IngestProtocols.Mqtt, "warning"), CancellationToken.None);
        }

        await Task.WhenAll(accepted);
        var alerts = await _spool.NewAlertsAsync(SpoolBatch, CancellationToken.None);
        var commits = alerts.Select(a => new RoutingCommit(a.RowId, AlertStatus.Routed, null,
            new NewMessage("alert", a.Device, a.AlertId, a.Device + "." + a.AlertId + ".alert@gateway.localhost", _options.Sender.Address, ["ops@sink.edgemail.test"], _wire),
            null, null, Route: "route 1")).ToList();
        await _spool.CommitRoutingAsync(commits, CancellationToken.None);
        var due = await _spool.DueMessagesAsync(Received.AddYears(10), SpoolBatch, new HashSet<long>(), CancellationToken.None);
        await Task.WhenAll(due.Select(m => _spool.CommitDeliveryAsync(
            new DeliveryCommit(m.RowId, [new RecipientResult("ops@sink.edgemail.test", "sent", "250 2.0.0 Ok: queued as 4C2F1A")], null, null), CancellationToken.None)));
    }

    private static readonly Submission Submission = new("bench-1", "Bench", "127.0.0.1", "bench@lan.edgemail.test", false, false, "0123456789ab", Received);

    // The shape of smtp-source's message: five header fields, then 1 KiB of 80-column lines.
    private static byte[] SubmittedMail()
    {
        var text = new StringBuilder(
            "From: <bench@lan.edgemail.test>\r\nTo: <ops@sink.edgemail.test>\r\nDate: Sat,  5 Dec 2026 04:16:48 +0000 (UTC)\r\n" +
            "Message-Id: <4d7d.0003.0000@bench-client.edgemail.test>\r\nSubject: gateway bench\r\n\r\n");
        for (int i = 0; i < 13; i++)
        {
            text.Append((char)('0' + (i % 10))).Append('X', 77).Append("\r\n");
        }

        return Encoding.ASCII.GetBytes(text.ToString().TrimEnd('\r', '\n'));
    }
}

/// <summary>
/// A minimal SMTP responder for benchmarks: one thread per connection, blocking sockets, no parsing beyond what the
/// replies need, so that what is measured is the client. Offers PIPELINING, SIZE and 8BITMIME, like Postfix's smtp-sink.
/// </summary>
internal sealed class BenchSmtpSink : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly Thread _accept;

    public BenchSmtpSink()
    {
        _listener.Start();
        _accept = new Thread(AcceptLoop) { IsBackground = true, Name = "bench-smtp-sink" };
        _accept.Start();
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    public void Dispose() => _listener.Stop();

    private void AcceptLoop()
    {
        try
        {
            while (true)
            {
                var socket = _listener.AcceptSocket();
                socket.NoDelay = true;
                new Thread(() => Serve(socket)) { IsBackground = true }.Start();
            }
        }
        catch (SocketException)
        {
            // Stopped.
        }
    }

    private static void Serve(Socket socket)
    {
        var buffer = new byte[64 * 1024];
        var line = new List<byte>(1024);
        bool data = false;
        int tail = 0; // how much of "\r\n.\r\n" ends the data read so far
        using (socket)
        {
            Send(socket, "220 sink ESMTP\r\n");
            try
            {
                while (true)
                {
                    int n = socket.Receive(buffer);
                    if (n == 0)
                    {
                        return;
                    }

                    var reply = new StringBuilder();
                    for (int i = 0; i < n; i++)
                    {
                        byte b = buffer[i];
                        if (data)
                        {
                            tail = b == "\r\n.\r\n"[tail] ? tail + 1 : b == '\r' ? 1 : 0;
                            if (tail == 5)
                            {
                                data = false;
                                tail = 0;
                                reply.Append("250 2.0.0 Ok: queued as BENCH\r\n");
                            }

                            continue;
                        }

                        line.Add(b);
                        if (b != '\n')
                        {
                            continue;
                        }

                        string verb = Encoding.ASCII.GetString(line.ToArray(), 0, Math.Min(4, line.Count)).ToUpperInvariant();
                        line.Clear();
                        switch (verb)
                        {
                            case "EHLO":
                                reply.Append("250-sink\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n");
                                break;
                            case "DATA":
                                data = true;
                                tail = 2; // the DATA line's own CRLF starts the terminator
                                reply.Append("354 End data with <CR><LF>.<CR><LF>\r\n");
                                break;
                            case "QUIT":
                                Send(socket, "221 2.0.0 Bye\r\n");
                                return;
                            default:
                                reply.Append("250 2.0.0 Ok\r\n");
                                break;
                        }
                    }

                    if (reply.Length > 0)
                    {
                        Send(socket, reply.ToString());
                    }
                }
            }
            catch (SocketException)
            {
                // The client went away.
            }
        }
    }

    private static void Send(Socket socket, string text) => socket.Send(Encoding.ASCII.GetBytes(text));
}
