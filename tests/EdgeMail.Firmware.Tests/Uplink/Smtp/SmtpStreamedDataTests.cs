using System.Text;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;
using EdgeMail.Firmware.Tests.Alerts;
using EdgeMail.Firmware.Uplink;
using EdgeMail.Firmware.Uplink.Smtp;
using EdgeMail.Simulation.Flash;
using EdgeMail.Simulation.Network;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Firmware.Tests.Uplink.Smtp;

/// <summary>
/// The SMTP uplink streams each alert's JSON (base64, 76-character lines) through the client's send buffer: the whole
/// session on the wire is byte for byte what the former path sent, which formatted every alert into a 4 KiB JSON buffer
/// first (kept below as <see cref="BufferedSession"/>, the reference), for alerts from the smallest to the largest.
/// </summary>
public sealed class SmtpStreamedDataTests(ITestOutputHelper output) : IDisposable
{
    private const string Boundary = "=_edgemail_alert_part";
    private static readonly FlashGeometry Geometry = new(64 * 1024, 4096, 256, 1, allowsReprogram: true, encrypted: false);
    private readonly NorFlashSimulator _flash = new(Geometry);
    private readonly FixedClock _clock = new();
    private AlertStore? _store;

    public void Dispose() => _flash.Dispose();

    private static SmtpUplinkOptions Options(string? password = "s3cret") => new()
    {
        DeviceId = "dev-1",
        Password = password,
        Host = "scripted",
        Port = 587,
        From = "dev-1@devices.test",
        To = "alerts@gateway.test",
        TimeoutMs = 10_000,
    };

    private AlertStore Store()
    {
        if (_store == null)
        {
            var queue = new FlashQueue(_flash);
            queue.Mount(0x7F3A9C21);
            _store = new AlertStore(queue, _clock, new WallClock(_clock), 1);
        }

        return _store;
    }

    /// <summary>What the uplink sent before the JSON was streamed: the same session, each alert's JSON in one buffer.</summary>
    private static byte[] BufferedSession(AlertStore store, SmtpUplinkOptions options)
    {
        var server = new InMemorySmtpServer();
        var client = new SmtpClient(server, new FixedClock(), options.TimeoutMs, options.SendBufferSize);
        var json = new byte[AlertJsonWriter.MaxLength];
        var line = new byte[78];
        client.Connect(options.Host, options.Port);
        client.Ehlo(options.ClientName);
        if (options.Password != null)
        {
            client.AuthPlain(options.UserName ?? options.DeviceId, options.Password);
        }

        while (store.TryNext(json, 0, out int length, out _))
        {
            client.MailFrom(options.From);
            client.RcptTo(options.To);
            client.BeginData();
            BufferedMessage(client, options, json, length, line);
            client.EndData();
        }

        client.Quit();
        store.Rewind();
        return [.. server.FromDevice];
    }

    /// <summary>The former <c>SmtpUplink.WriteMessage</c>, unchanged.</summary>
    private static void BufferedMessage(SmtpClient c, SmtpUplinkOptions options, byte[] json, int length, byte[] line)
    {
        Assert.True(ForwarderReceipt.TryFindString(json, 0, length, "id", out int idOffset, out int idLength));
        c.Write("From: <");
        c.Write(options.From);
        c.Write(">\r\nTo: <");
        c.Write(options.To);
        c.Write(">\r\nSubject: EdgeMail alert ");
        c.Write(json, idOffset, idLength);
        c.Write(" from ");
        c.Write(options.DeviceId);
        c.Write("\r\nMessage-ID: <");
        c.Write(json, idOffset, idLength);
        c.Write(".");
        c.Write(options.DeviceId);
        c.Write("@edgemail.device>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"");
        c.Write(Boundary);
        c.Write("\"\r\n\r\n--");
        c.Write(Boundary);
        c.Write("\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nEdgeMail alert ");
        c.Write(json, idOffset, idLength);
        c.Write(" from device ");
        c.Write(options.DeviceId);
        c.Write(".\r\nThe alert itself is the application/vnd.edgemail.alert+json part of this message.\r\n\r\n--");
        c.Write(Boundary);
        c.Write("\r\nContent-Type: application/vnd.edgemail.alert+json; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"alert.json\"\r\n\r\n");
        int i = 0;
        while (i < length)
        {
            int n = 0;
            for (int q = 0; q < 19 && i < length; q++)
            {
                int take = length - i < 3 ? length - i : 3;
                n += SmtpClient.EncodeBase64Quantum(json, i, take, line, n);
                i += take;
            }

            line[n++] = (byte)'\r';
            line[n++] = (byte)'\n';
            c.Write(line, 0, n);
        }

        c.Write("\r\n--");
        c.Write(Boundary);
        c.Write("--\r\n");
    }

    /// <summary>Raises the alerts, records the reference session, then runs the streaming uplink; returns both sessions.</summary>
    private (byte[] Expected, byte[] Actual, InMemorySmtpServer Server) Compare(SmtpUplinkOptions options, params Alert[] alerts)
    {
        AlertStore store = Store();
        foreach (Alert a in alerts)
        {
            store.Raise(a);
        }

        byte[] expected = BufferedSession(store, options);
        var server = new InMemorySmtpServer();
        var uplink = new SmtpUplink(store, server, _clock, options);
        Assert.Equal(alerts.Length, uplink.SendPending());
        Assert.Equal(0u, store.Depth);
        return (expected, [.. server.FromDevice], server);
    }

    private static void AssertSameBytes(byte[] expected, byte[] actual)
    {
        if (!expected.AsSpan().SequenceEqual(actual))
        {
            int at = 0;
            while (at < expected.Length && at < actual.Length && expected[at] == actual[at])
            {
                at++;
            }

            Assert.Fail($"sessions differ at byte {at} (expected {expected.Length} bytes, sent {actual.Length}):\n"
                + $"expected …{Encoding.UTF8.GetString(expected, Math.Max(0, at - 80), Math.Min(160, expected.Length - Math.Max(0, at - 80)))}\n"
                + $"sent     …{Encoding.UTF8.GetString(actual, Math.Max(0, at - 80), Math.Min(160, actual.Length - Math.Max(0, at - 80)))}");
        }
    }

    public static TheoryData<string> Alerts() => ["tiny", "typical", "dots", "crlf-dot", "long-line", "unicode", "maximum"];

    private static Alert Make(string which) => which switch
    {
        "tiny" => new Alert("X", Severity.Info, string.Empty),
        "typical" => new Alert("FREEZER_TEMP_HIGH", Severity.Warning, "Freezer 2 above -15 °C for 10 minutes"),
        "dots" => new Alert(".DOT", Severity.Critical, ".\n..\n.leading dot\r\n.\r\n"),
        "crlf-dot" => new Alert("END", Severity.Critical, "\r\n.\r\nQUIT\r\n" + new string('.', 300)),
        "long-line" => new Alert("LONG", Severity.Warning, new string('x', 1000)),
        "unicode" => new Alert("UTF8", Severity.Warning, "🔥 \"quoted\" \\ é " + new string('\u0001', 40)),
        _ => StreamedJsonTests.MaxAlert(),
    };

    [Theory]
    [MemberData(nameof(Alerts))]
    public void SendPending_OneAlert_SendsTheSameSessionBytesAsTheBufferedJson(string which)
    {
        (byte[] expected, byte[] actual, InMemorySmtpServer server) = Compare(Options(), Make(which));

        AssertSameBytes(expected, actual);
        output.WriteLine($"{which}: session {actual.Length} bytes, DATA {server.Messages[0].Length} bytes");
    }

    [Fact]
    public void SendPending_JsonOfEveryLengthModuloALine_SendsTheSameSessionBytesAsTheBufferedJson()
    {
        // 57 JSON bytes fill one 76-character base64 line: cover every remainder, and quanta of 1, 2 and 3 bytes at the end.
        var alerts = new Alert[120];
        for (int i = 0; i < alerts.Length; i++)
        {
            alerts[i] = new Alert("LEN_" + i.ToString(System.Globalization.CultureInfo.InvariantCulture), Severity.Info, new string('a', i));
        }

        (byte[] expected, byte[] actual, InMemorySmtpServer server) = Compare(Options(password: null), alerts);

        AssertSameBytes(expected, actual);
        Assert.Equal(120, server.Messages.Count);
        Assert.Equal(57, server.Messages.Select(m => Convert.FromBase64String(Base64Json(m).Replace("\r\n", string.Empty, StringComparison.Ordinal)).Length % 57).Distinct().Count());
    }

    [Fact]
    public void SendPending_SmallestSendBuffer_SendsTheSameSessionBytesAsTheBufferedJson()
    {
        SmtpUplinkOptions options = Options();
        options.SendBufferSize = 128;
        (byte[] expected, byte[] actual, _) = Compare(options, Make("maximum"), Make("dots"), Make("tiny"));

        AssertSameBytes(expected, actual);
    }

    [Theory]
    [MemberData(nameof(Alerts))]
    public void Data_EveryAlert_KeepsLinesWithinLimitsAndCarriesTheJsonOfTheAlert(string which)
    {
        AlertStore store = Store();
        store.Raise(Make(which));
        var expectedJson = new byte[AlertJsonWriter.MaxLength];
        Assert.True(store.TryNext(expectedJson, 0, out int length, out _));
        store.Rewind();
        var server = new InMemorySmtpServer();

        new SmtpUplink(store, server, _clock, Options()).SendPending();

        byte[] data = server.Messages.Single();
        string text = Encoding.ASCII.GetString(data);
        string[] lines = text.Split("\r\n");
        Assert.All(lines, l => Assert.InRange(l.Length, 0, 998));
        Assert.DoesNotContain('\n', text.Replace("\r\n", string.Empty, StringComparison.Ordinal));
        Assert.All(lines.Where(l => l.StartsWith('.')), l => Assert.StartsWith("..", l, StringComparison.Ordinal));
        string base64 = Base64Json(data);
        Assert.All(base64.Split("\r\n", StringSplitOptions.RemoveEmptyEntries), l => Assert.InRange(l.Length, 4, 76));
        Assert.Equal(expectedJson.AsSpan(0, length).ToArray(), Convert.FromBase64String(base64.Replace("\r\n", string.Empty, StringComparison.Ordinal)));
        Assert.True(ForwarderReceipt.TryFindString(expectedJson, 0, length, "id", out int idOffset, out int idLength));
        string id = Encoding.ASCII.GetString(expectedJson, idOffset, idLength);
        Assert.Contains("Subject: EdgeMail alert " + id + " from dev-1\r\n", text, StringComparison.Ordinal);
        Assert.Contains("Message-ID: <" + id + ".dev-1@edgemail.device>\r\n", text, StringComparison.Ordinal);
    }

    [Fact]
    public void SendPending_ManyAlertsInOneSession_AllocatesNoMoreThanOneAlert()
    {
        AlertStore store = Store();
        var server = new InMemorySmtpServer(record: false);
        var uplink = new SmtpUplink(store, server, _clock, Options(password: null));
        var alert = new Alert("WARM", Severity.Warning, "warm up");
        store.Raise(alert);
        uplink.SendPending(); // first use: JIT, the JSON cursor's chunk

        long Session(int alerts)
        {
            for (int i = 0; i < alerts; i++)
            {
                alert.Code = "CODE_" + i.ToString(System.Globalization.CultureInfo.InvariantCulture);
                store.Raise(alert);
            }

            long before = GC.GetAllocatedBytesForCurrentThread();
            Assert.Equal(alerts, uplink.SendPending());
            return GC.GetAllocatedBytesForCurrentThread() - before;
        }

        // The runtime now and then allocates on the test's thread by itself (see ZeroAllocation), so each size gets three
        // sessions and the least of them counts: an allocation per alert shows in every session of 50.
        long[] ones = [Session(1), Session(1), Session(1)];
        long[] manys = [Session(50), Session(50), Session(50)];
        output.WriteLine($"sessions of 1 alert: {string.Join(", ", ones)} bytes allocated; of 50: {string.Join(", ", manys)}");
        Assert.Equal(ones.Min(), manys.Min());
    }

    [Fact]
    public void SendPending_PermanentRefusal_AcknowledgesAndContinuesAsBefore()
    {
        AlertStore store = Store();
        store.Raise(new Alert("BAD", Severity.Warning, "refused"));
        store.Raise(new Alert("GOOD", Severity.Warning, "taken"));
        var server = new InMemorySmtpServer();
        server.EndOfDataReplies.Enqueue("554 5.6.0 no thanks\r\n");
        var uplink = new SmtpUplink(store, server, _clock, Options());

        Assert.Equal(1, uplink.SendPending());

        Assert.Equal(1, uplink.Rejected);
        Assert.Equal(1, uplink.Sent);
        Assert.Equal(0u, store.Depth);
        Assert.Contains("RSET\r\n", Encoding.ASCII.GetString([.. server.FromDevice]), StringComparison.Ordinal);
    }

    [Fact]
    public void SendPending_TemporaryRefusal_KeepsTheAlertForTheNextSession()
    {
        AlertStore store = Store();
        store.Raise(new Alert("LATER", Severity.Warning, "try again"));
        var server = new InMemorySmtpServer();
        server.EndOfDataReplies.Enqueue("451 4.3.0 busy\r\n");
        var uplink = new SmtpUplink(store, server, _clock, Options());

        Assert.Throws<SmtpException>(() => uplink.SendPending());
        Assert.Equal(1u, store.Depth);
        Assert.Equal(1, uplink.SendPending());
        Assert.Equal(0u, store.Depth);
        Assert.Equal(server.Messages[0], server.Messages[1]);
    }

    /// <summary>The base64 body of the alert part (lines with their CRLF).</summary>
    private static string Base64Json(byte[] data)
    {
        string text = Encoding.ASCII.GetString(data);
        const string Start = "filename=\"alert.json\"\r\n\r\n";
        int from = text.IndexOf(Start, StringComparison.Ordinal) + Start.Length;
        int to = text.IndexOf("\r\n--" + Boundary + "--", from, StringComparison.Ordinal);
        return text[from..to];
    }

    private sealed class FixedClock : IClock
    {
        public long UptimeMs => 123_456;
    }
}
