using System.Net;
using System.Net.Sockets;
using System.Text;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using MimeKit;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// What the relay puts on the wire for mail the gateway composed: the spooled bytes exactly (dot-stuffed for DATA),
/// with <c>SIZE=</c> their exact length, as one <c>BDAT</c> where the server offers CHUNKING. The relay takes both from the spool instead of preparing and measuring the
/// message again, so these hold only while MimeKit writes a parsed message back byte for byte.
/// </summary>
public sealed class SmarthostWireTests
{
    private static readonly DateTimeOffset Now = new(2026, 12, 5, 10, 0, 0, TimeSpan.Zero);

    public static TheoryData<string, bool> VectorsAndChunking
    {
        get
        {
            var data = new TheoryData<string, bool>();
            foreach (string vector in new[] { "full.json", "unicode.json", "escapes.json", "coalesced.json", "no-clock.json" })
            {
                data.Add(vector, false);
                data.Add(vector, true);
            }

            return data;
        }
    }

    [Theory]
    [MemberData(nameof(VectorsAndChunking))]
    public async Task Send_ComposedAlert_ArrivesAsSpooledWithItsExactSize(string vector, bool chunking)
    {
        var alert = AlertParser.Parse(File.ReadAllBytes(Path.Combine(Alerts.ContractDir, "valid", vector))).Alert!;

        // A text with lines that start with a dot: DATA must stuff them, and the receiver get them back unchanged; BDAT
        // (where the server offers CHUNKING) carries the bytes as they are, and says how many.
        alert = alert with { Text = alert.Text + "\n.\n..hidden\n. dot" };
        var composer = new MailComposer(new SenderOptions { Address = "alerts@example.com", Hostname = "gw1.example.com" }, TemplateSet.Load(string.Empty));
        var composed = composer.ComposeAlert(new AlertMail(new DeviceInfo("freezer-2", "Freezer 2", "Hall 3"), alert, Now, "192.0.2.7:50123", 7,
            [new MailboxAddress("Ops", "ops@example.com"), new MailboxAddress("Lead", "lead@example.com")], "default", null), Now);
        byte[] wire = composed.Wire;

        var received = await SendAsync(new QueuedMessage(1, "alert", "freezer-2", alert.Id, composed.MessageId, "alerts@example.com",
            ["ops@example.com", "lead@example.com"], wire, 0, Now, Now.AddDays(5)), chunking);

        Assert.Equal(Encoding.ASCII.GetString(wire), Encoding.ASCII.GetString(received.Data));
        Assert.Equal(["EHLO", "MAIL", "RCPT", "RCPT", chunking ? $"BDAT {wire.Length} LAST" : "DATA", "QUIT"], received.Commands); // the kept connection ends with QUIT when the relay stops
        Assert.Contains($" SIZE={wire.Length}", received.MailFrom, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Send_ComposedDigestAndNotice_ArriveAsSpooledWithTheirExactSize()
    {
        var composer = new MailComposer(new SenderOptions { Address = "alerts@example.com", Hostname = "gw1.example.com" }, TemplateSet.Load(string.Empty));
        var repeat = AlertParser.Parse(File.ReadAllBytes(Path.Combine(Alerts.ContractDir, "valid", "full.json"))).Alert!;
        var digest = composer.ComposeDigest(new DeviceInfo("freezer-2", "Freezer 2", "Hall 3"), [(repeat, Now), (repeat with { Id = "7f3a9c21-43" }, Now)],
            [new MailboxAddress("Ops", "ops@example.com")], TimeSpan.FromMinutes(10), 7, null, Now);
        using var notice = composer.ComposeFailureNotice("x.alert@gw1.example.com", "[CRITICAL] freezer °C", [("ops@example.com", "550 5.1.1 no such user")],
            new MailboxAddress("Operator", "op@example.com"), Now, 1);

        foreach (var (kind, messageId, wire) in new[] { ("digest", digest.MessageId, digest.Wire), ("notice", notice.MessageId!, MailComposer.ToWire(notice)) })
        {
            var received = await SendAsync(new QueuedMessage(1, kind, "freezer-2", null, messageId, "alerts@example.com", ["ops@example.com"], wire, 0, Now, Now.AddDays(5)));

            Assert.Equal(Encoding.ASCII.GetString(wire), Encoding.ASCII.GetString(received.Data));
            Assert.Contains($" SIZE={wire.Length}", received.MailFrom, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Send_DevicesOwnEightBitMail_IsPreparedForASevenBitServer()
    {
        // Mail relayed for a device is its own: parsed and prepared by MailKit for the server at hand, which here does
        // not offer 8BITMIME, so the 8-bit text is re-encoded and reads the same.
        byte[] wire = Encoding.UTF8.GetBytes(
            "From: ups-1@lan.example.com\r\nTo: ops@example.com\r\nSubject: on battery\r\nMessage-ID: <ups.1@lan.example.com>\r\n" +
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nNetzausfall in Halle 3, Temperatur 31 °C\r\n");

        var received = await SendAsync(new QueuedMessage(1, "relay", "ups-1", null, "ups.1@lan.example.com", "alerts@example.com", ["ops@example.com"], wire, 0, Now, Now.AddDays(5)));

        Assert.All(received.Data, b => Assert.True(b < 128));
        using var message = MimeMessage.Load(new MemoryStream(received.Data));
        Assert.Equal("Netzausfall in Halle 3, Temperatur 31 °C\n", message.TextBody?.ReplaceLineEndings("\n"));
    }

    [Fact]
    public async Task Send_DevicesSevenBitMail_ArrivesAsSpooledWithItsExactSize()
    {
        // A device's plain 7-bit mail, as the SMTP listener rewrites and spools it (dotted lines included): nothing
        // preparation could change, so it goes out as its spooled bytes, and SIZE= is their length.
        byte[] submitted = Encoding.ASCII.GetBytes(
            "From: <ups-1@lan.example.com>\r\nTo: <ops@example.com>\r\nSubject: on battery\r\nMessage-ID: <ups.1@lan.example.com>\r\n\r\n" +
            "Mains lost in hall 3.\r\n.\r\n..hidden\r\nRuntime left: 41 min");
        var relayed = Gateway.Ingest.Smtp.RelayedMailWriter.Rewrite(submitted,
            new Gateway.Ingest.Smtp.Submission("ups-1", "UPS 1", "192.0.2.7", "ups-1@lan.example.com", false, false, "abc123def456", Now),
            new SenderOptions { Address = "alerts@example.com", Hostname = "gw1.example.com" });

        var received = await SendAsync(new QueuedMessage(1, "relay", "ups-1", null, relayed.SpoolKey, "alerts@example.com", ["ops@example.com"], relayed.Mime, 0, Now, Now.AddDays(5)));

        Assert.Equal(Encoding.ASCII.GetString(relayed.Mime), Encoding.ASCII.GetString(received.Data));
        Assert.Contains($" SIZE={relayed.Mime.Length}", received.MailFrom, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Send_DevicesMailWithAnOverlongLine_IsPreparedAndReadsTheSame(bool chunking)
    {
        // 7-bit, but one line longer than SMTP's 998 octets: it is still parsed and prepared (quoted-printable), and
        // goes by DATA even where the server offers CHUNKING (BDAT would make MailKit write it once more to measure it).
        string longLine = string.Concat(Enumerable.Repeat("0123456789", 120));
        byte[] wire = Encoding.ASCII.GetBytes(
            "From: ups-1@lan.example.com\r\nTo: ops@example.com\r\nSubject: log\r\nMessage-ID: <ups.2@lan.example.com>\r\n\r\n" + longLine + "\r\n");

        var received = await SendAsync(new QueuedMessage(1, "relay", "ups-1", null, "ups.2@lan.example.com", "alerts@example.com", ["ops@example.com"], wire, 0, Now, Now.AddDays(5)), chunking);

        Assert.Equal(["EHLO", "MAIL", "RCPT", "DATA", "QUIT"], received.Commands);
        Assert.All(Encoding.ASCII.GetString(received.Data).Split("\r\n"), line => Assert.True(line.Length <= 998, $"a line of {line.Length} octets went out"));
        using var message = MimeMessage.Load(new MemoryStream(received.Data));
        Assert.Equal(longLine + "\n", message.TextBody?.ReplaceLineEndings("\n"));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Send_SpooledDeviceMailWithAContentLengthField_DeclaresTheSizeOfWhatIsSent(bool chunking)
    {
        // Spooled as a device sent it (before ingest dropped the field): MailKit never sends Content-Length, so the
        // size declared (SIZE=, and BDAT's count, which the server reads exactly) is that of the mail without it.
        const string ContentLength = "Content-Length: 23\r\n";
        string spooled = "From: <ups-1@lan.example.com>\r\nTo: <ops@example.com>\r\nSubject: on battery\r\n" + ContentLength +
            "Message-ID: <ups.3@lan.example.com>\r\n\r\nMains lost in hall 3.\r\n";
        string sent = spooled.Replace(ContentLength, string.Empty, StringComparison.Ordinal);

        var received = await SendAsync(new QueuedMessage(1, "relay", "ups-1", null, "ups.3@lan.example.com", "alerts@example.com", ["ops@example.com"],
            Encoding.ASCII.GetBytes(spooled), 0, Now, Now.AddDays(5)), chunking);

        Assert.Equal(sent, Encoding.ASCII.GetString(received.Data));
        Assert.Contains($" SIZE={sent.Length}", received.MailFrom, StringComparison.Ordinal);
        Assert.Equal(["EHLO", "MAIL", "RCPT", chunking ? $"BDAT {sent.Length} LAST" : "DATA", "QUIT"], received.Commands);
    }

    private static async Task<Received> SendAsync(QueuedMessage message, bool chunking = false)
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var server = ServeOneAsync(listener, chunking);
        await using (var relay = new SmtpRelay(new RelayOptions { Host = "127.0.0.1", Port = ((IPEndPoint)listener.LocalEndpoint).Port, Security = "None", Timeout = TimeSpan.FromSeconds(10) }, "gw1.example.com"))
        {
            var results = await relay.SendAsync(message, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
            Assert.All(results, r => Assert.Equal(RecipientOutcome.Sent, r.Outcome));
        }

        return await server.WaitAsync(TimeSpan.FromSeconds(30));
    }

    private sealed record Received(string MailFrom, byte[] Data, List<string> Commands);

    // A server that offers SIZE and PIPELINING (and CHUNKING when asked), records each command (its verb; BDAT whole),
    // the MAIL command as sent, and the message data: after undoing DATA's dot-stuffing (RFC 5321 4.5.2), or the BDAT
    // chunks' bytes as they came (RFC 3030).
    private static async Task<Received> ServeOneAsync(TcpListener listener, bool chunking)
    {
        using var socket = await listener.AcceptSocketAsync();
        await using var stream = new NetworkStream(socket);
        var input = new BufferedStream(stream);
        async Task ReplyAsync(string text) => await stream.WriteAsync(Encoding.ASCII.GetBytes(text + "\r\n"));
        await ReplyAsync("220 test ESMTP");
        string mailFrom = string.Empty;
        var commands = new List<string>();
        var data = new MemoryStream();
        while (await ReadLineAsync(input) is { } line)
        {
            string verb = line.Length >= 4 ? line[..4].ToUpperInvariant() : line.ToUpperInvariant();
            commands.Add(verb == "BDAT" ? line : verb);
            switch (verb)
            {
                case "EHLO":
                    await ReplyAsync("250-test\r\n250-PIPELINING\r\n" + (chunking ? "250-CHUNKING\r\n" : string.Empty) + "250-SIZE 10000000\r\n250 ENHANCEDSTATUSCODES");
                    break;
                case "MAIL":
                    mailFrom = line;
                    await ReplyAsync("250 2.1.0 ok");
                    break;
                case "DATA":
                    await ReplyAsync("354 go ahead");
                    while (await ReadLineAsync(input) is { } body && body != ".")
                    {
                        data.Write(Encoding.Latin1.GetBytes((body.StartsWith('.') ? body[1..] : body) + "\r\n"));
                    }

                    await ReplyAsync("250 2.0.0 queued");
                    break;
                case "BDAT":
                    var chunk = new byte[int.Parse(line.Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture)];
                    await input.ReadExactlyAsync(chunk);
                    data.Write(chunk);
                    await ReplyAsync("250 2.0.0 " + (line.EndsWith(" LAST", StringComparison.OrdinalIgnoreCase) ? "queued" : "chunk ok"));
                    break;
                case "QUIT":
                    await ReplyAsync("221 2.0.0 bye");
                    return new Received(mailFrom, data.ToArray(), commands);
                default:
                    await ReplyAsync("250 2.0.0 ok");
                    break;
            }
        }

        return new Received(mailFrom, data.ToArray(), commands);
    }

    private static async Task<string?> ReadLineAsync(Stream input)
    {
        var line = new StringBuilder();
        var one = new byte[1];
        while (await input.ReadAsync(one) == 1)
        {
            if (one[0] == (byte)'\n')
            {
                return line.ToString().TrimEnd('\r');
            }

            line.Append((char)one[0]);
        }

        return line.Length > 0 ? line.ToString() : null;
    }
}
