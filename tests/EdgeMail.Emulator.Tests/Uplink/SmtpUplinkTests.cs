using System.Diagnostics;
using System.Text;
using System.Text.Json;
using EdgeMail.Firmware;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;
using EdgeMail.Firmware.Uplink.Smtp;
using EdgeMail.Simulation.Flash;
using EdgeMail.Simulation.Network;
using EdgeMail.Testing.Smtp;
using MimeKit;
using Xunit;

namespace EdgeMail.Emulator.Tests.Uplink;

/// <summary>The firmware's SMTP uplink (DESIGN.md Contract 2) against a real SMTP server over loopback TCP.</summary>
public sealed class SmtpUplinkTests : IAsyncLifetime, IDisposable
{
    private static readonly FlashGeometry Geometry = new(64 * 1024, 4096, 256, 1, allowsReprogram: true, encrypted: false);
    private readonly NorFlashSimulator _flash = new(Geometry);
    private readonly TcpTransport _transport = new();
    private readonly RealClock _clock = new();
    private SmtpTestServer _server = null!;
    private AlertStore _store = null!;

    public async Task InitializeAsync()
    {
        _server = await SmtpTestServer.StartAsync(new() { ServerName = "gateway.test", Users = new Dictionary<string, string> { ["dev-1"] = "s3cret" } });
        var queue = new FlashQueue(_flash);
        queue.Mount(0x7F3A9C21);
        _store = new AlertStore(queue, _clock, new WallClock(_clock), 1);
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    public void Dispose()
    {
        _transport.Dispose();
        _flash.Dispose();
    }

    private SmtpUplink Uplink(string? password = "s3cret", SmtpTestServer? server = null) => new(_store, _transport, _clock, new SmtpUplinkOptions
    {
        DeviceId = "dev-1",
        Password = password,
        Host = "127.0.0.1",
        Port = (server ?? _server).Port,
        From = "dev-1@devices.test",
        To = "alerts@gateway.test",
        TimeoutMs = 10_000,
    });

    private uint Raise(string code, string text = "something is wrong") => _store.Raise(new Alert(code, Severity.Critical, text));

    private static (MimeMessage Message, JsonElement Alert) Parse(byte[] data)
    {
        MimeMessage message = MimeMessage.Load(new MemoryStream(data));
        MimePart part = message.BodyParts.OfType<MimePart>().Single(p => p.ContentType.MimeType == "application/vnd.edgemail.alert+json");
        using var json = new MemoryStream();
        part.Content!.DecodeTo(json);
        return (message, JsonDocument.Parse(json.ToArray()).RootElement.Clone());
    }

    [Fact]
    public void SendPending_SubmitsEachAlertAsOneMessageWithTheAlertJsonPart_AndEmptiesTheQueue()
    {
        uint[] seqs = [Raise("FREEZER_TEMP_HIGH", "Freezer 2 above -15 °C"), Raise("DOOR_OPEN"), Raise("POWER_FAIL", new string('x', 1000))];

        int sent = Uplink().SendPending();

        Assert.Equal(3, sent);
        Assert.Equal(0u, _store.Depth);
        var received = _server.Received.ToList();
        Assert.Equal(3, received.Count);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal("dev-1", received[i].User);
            Assert.Equal("dev-1@devices.test", received[i].From);
            Assert.Equal(["alerts@gateway.test"], received[i].To);
            (MimeMessage message, JsonElement alert) = Parse(received[i].Data);
            Assert.Equal($"7f3a9c21-{seqs[i]}", alert.GetProperty("id").GetString());
            Assert.Equal(1, alert.GetProperty("v").GetInt32());
            Assert.Contains($"7f3a9c21-{seqs[i]}", message.Subject, StringComparison.Ordinal);
            Assert.Equal("auto-generated", message.Headers["Auto-Submitted"]);
        }

        Assert.Equal("Freezer 2 above -15 °C", Parse(received[0].Data).Alert.GetProperty("text").GetString());
    }

    [Fact]
    public void SendPending_WrongSecret_FailsWith535AndKeepsEveryAlert()
    {
        Raise("DOOR_OPEN");

        var ex = Assert.Throws<SmtpException>(() => Uplink(password: "wrong").SendPending());

        Assert.Equal(535, ex.ReplyCode);
        Assert.Equal(1u, _store.Depth);
        Assert.Empty(_server.Received);
    }

    [Fact]
    public void SendPending_TemporaryRefusal_KeepsTheAlertAndTheNextSessionDeliversIt()
    {
        uint seq = Raise("DOOR_OPEN");
        _server.OnData = m => m.Number == 1 ? new SmtpReply(452, "4.3.1 spool busy, try later") : SmtpReply.Ok;
        SmtpUplink uplink = Uplink();

        var ex = Assert.Throws<SmtpException>(() => uplink.SendPending());
        Assert.Equal(452, ex.ReplyCode);
        Assert.Equal(1u, _store.Depth);

        Assert.Equal(1, uplink.SendPending());
        Assert.Equal(0u, _store.Depth);
        Assert.Equal($"7f3a9c21-{seq}", Parse(Assert.Single(_server.Received).Data).Alert.GetProperty("id").GetString());
    }

    [Fact]
    public void SendPending_PermanentRefusalOfOneMessage_DropsItAndDeliversTheRest()
    {
        Raise("A_CODE");
        uint second = Raise("B_CODE");
        _server.OnData = m => m.Number == 1 ? new SmtpReply(554, "5.6.0 malformed") : SmtpReply.Ok;
        SmtpUplink uplink = Uplink();

        Assert.Equal(1, uplink.SendPending());

        Assert.Equal(1, uplink.Rejected);
        Assert.Equal(0u, _store.Depth);
        Assert.Equal($"7f3a9c21-{second}", Parse(Assert.Single(_server.Received).Data).Alert.GetProperty("id").GetString());
    }

    [Theory]
    [InlineData(500, "5.5.2 command unrecognized")]
    [InlineData(502, "5.5.1 command not implemented")]
    public async Task SendPending_ServerThatDoesNotKnowEhlo_FallsBackToHeloAndDeliversWithoutExtensions(int code, string text)
    {
        // RFC 5321 4.1.4: a server refuses an EHLO it does not know and stays as it was; the client should then say
        // HELO. The uplink gave up at EHLO, every session, and the alerts never left flash.
        await using SmtpTestServer legacy = await SmtpTestServer.StartAsync(new() { ServerName = "legacy.test" });
        legacy.OnCommand = c => c.Verb == "EHLO" ? new SmtpReply(code, text) : null;
        uint seq = Raise("DOOR_OPEN");
        SmtpUplink uplink = Uplink(password: null, server: legacy);

        Assert.Equal(1, uplink.SendPending());

        Assert.Equal(0u, _store.Depth);
        Assert.Equal($"7f3a9c21-{seq}", Parse(Assert.Single(legacy.Received).Data).Alert.GetProperty("id").GetString());
        Assert.Equal(["EHLO", "HELO", "MAIL", "RCPT", "DATA", "QUIT"], legacy.Commands.Select(c => c.Verb));
        Assert.True(uplink.Client.GreetedWithHelo);
        Assert.False(uplink.Client.SupportsAuthPlain);
    }

    [Fact]
    public void SendPending_ServerThatDoesNotKnowEhlo_WhenTheDeviceMustAuthenticate_FailsSayingWhyAndNeverSendsTheSecret()
    {
        // HELO has no AUTH: the fallback must not end in credentials sent some other way, nor in a refusal that reads
        // like a wrong secret. The alerts stay queued.
        _server.OnCommand = c => c.Verb == "EHLO" ? new SmtpReply(502, "5.5.1 command not implemented") : null;
        Raise("DOOR_OPEN");

        var ex = Assert.Throws<SmtpException>(() => Uplink().SendPending());

        Assert.Contains("HELO", ex.Message, StringComparison.Ordinal);
        Assert.Contains("AUTH", ex.Message, StringComparison.Ordinal);
        Assert.Equal(502, ex.ReplyCode);
        Assert.Equal(1u, _store.Depth);
        Assert.Equal(["EHLO", "HELO"], _server.Commands.Select(c => c.Verb));
        Assert.Empty(_server.AuthAttempts);
    }

    [Fact]
    public void Data_LinesStartingWithADot_AreDotStuffedAndArriveUnchanged()
    {
        var client = new SmtpClient(_transport, _clock, 10_000, 128);
        client.Connect("127.0.0.1", _server.Port);
        client.Ehlo("device.test");
        Assert.True(client.SupportsAuthPlain);
        client.AuthPlain("dev-1", "s3cret");
        client.MailFrom("dev-1@devices.test");
        client.RcptTo("alerts@gateway.test");
        client.BeginData();
        string body = "Subject: dots\r\n\r\n.hidden line\r\n..two dots\r\n.\r\nend" + new string('.', 300) + "\r\n.";
        byte[] bytes = Encoding.ASCII.GetBytes(body);
        client.Write(bytes, 0, 7); // split across writes, including mid-line
        client.Write(bytes, 7, bytes.Length - 7);
        client.EndData();
        client.Quit();

        byte[] data = Assert.Single(_server.Received).Data;
        string text = Encoding.ASCII.GetString(data);
        // The CRLF before the terminating dot belongs to the message; SmtpServer hands the content over without it.
        Assert.Equal(body, text.EndsWith("\r\n", StringComparison.Ordinal) ? text[..^2] : text);
    }

    [Fact]
    public void Base64Quantum_MatchesTheRuntimeEncoder()
    {
        var random = new Random(5);
        for (int length = 0; length < 40; length++)
        {
            var bytes = new byte[length];
            random.NextBytes(bytes);
            var sb = new StringBuilder();
            var quad = new byte[4];
            for (int i = 0; i < length; i += 3)
            {
                SmtpClient.EncodeBase64Quantum(bytes, i, Math.Min(3, length - i), quad, 0);
                sb.Append(Encoding.ASCII.GetString(quad));
            }

            Assert.Equal(Convert.ToBase64String(bytes), sb.ToString());
        }
    }

    private sealed class RealClock : IClock
    {
        private readonly Stopwatch _watch = Stopwatch.StartNew();

        public long UptimeMs => _watch.ElapsedMilliseconds + 1;
    }
}
