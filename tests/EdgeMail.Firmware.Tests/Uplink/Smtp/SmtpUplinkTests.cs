using System.Globalization;
using System.Text;
using System.Text.Json;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;
using EdgeMail.Firmware.Uplink.Smtp;
using EdgeMail.Simulation.Flash;
using EdgeMail.Simulation.Network;
using Xunit;

namespace EdgeMail.Firmware.Tests.Uplink.Smtp;

/// <summary>
/// What the SMTP uplink does with the server's answers: which alerts leave flash, which stay for the next session,
/// against <see cref="InMemorySmtpServer"/> scripted with refusals, hang-ups and unusual replies.
/// </summary>
public sealed class SmtpUplinkTests : IDisposable
{
    private const uint Epoch = 0x7F3A9C21;
    private static readonly FlashGeometry Geometry = new(64 * 1024, 4096, 256, 1, allowsReprogram: true, encrypted: false);
    private readonly NorFlashSimulator _flash = new(Geometry);
    private readonly ManualClock _clock = new();
    private readonly InMemorySmtpServer _server = new();
    private readonly AlertStore _store;

    public SmtpUplinkTests()
    {
        var queue = new FlashQueue(_flash);
        queue.Mount(Epoch);
        _store = new AlertStore(queue, _clock, new WallClock(_clock), 1);
    }

    public void Dispose() => _flash.Dispose();

    private SmtpUplink Uplink() => new(_store, _server, _clock, new SmtpUplinkOptions
    {
        DeviceId = "dev-1",
        Password = "s3cret",
        Host = "scripted",
        Port = 587,
        From = "dev-1@devices.test",
        To = "alerts@gateway.test",
        TimeoutMs = 10_000,
    });

    private uint Raise(string code) => _store.Raise(new Alert(code, Severity.Warning, "something is wrong"));

    /// <summary>The alert id in the subject of the message as the server read it.</summary>
    private string IdOf(int message)
    {
        string text = Encoding.ASCII.GetString(_server.Messages[message]);
        const string Subject = "Subject: EdgeMail alert ";
        int from = text.IndexOf(Subject, StringComparison.Ordinal) + Subject.Length;
        return text[from..text.IndexOf(' ', from)];
    }

    /// <summary>The alert JSON of the message as the server read it (the base64 part).</summary>
    private JsonElement AlertJson(int message)
    {
        string text = Encoding.ASCII.GetString(_server.Messages[message]);
        const string PartStart = "filename=\"alert.json\"\r\n\r\n";
        int from = text.IndexOf(PartStart, StringComparison.Ordinal) + PartStart.Length;
        string base64 = text[from..text.IndexOf("\r\n--", from, StringComparison.Ordinal)].Replace("\r\n", string.Empty, StringComparison.Ordinal);
        return JsonDocument.Parse(Convert.FromBase64String(base64)).RootElement.Clone();
    }

    private static string Id(uint seq) => Epoch.ToString("x8", CultureInfo.InvariantCulture) + "-" + seq.ToString(CultureInfo.InvariantCulture);

    [Fact]
    public void SendPending_PermanentRefusalThenTheServerHangsUp_DropsTheRefusedAlertOnceAndTheNextSessionDeliversTheRest()
    {
        uint refused = Raise("REFUSED");
        uint next = Raise("NEXT");
        _server.EndOfDataReplies.Enqueue("554 5.6.0 no thanks\r\n");
        _server.HangUpAfterMessage = 1;
        SmtpUplink uplink = Uplink();

        Assert.Throws<SmtpException>(() => uplink.SendPending()); // the RSET after the refusal finds the link closed
        Assert.Equal(1u, _store.Depth);

        Assert.Equal(1, uplink.SendPending());

        Assert.Equal(0u, _store.Depth);
        Assert.Equal(1, uplink.Rejected);
        Assert.Equal(1, uplink.Sent);
        Assert.Equal([Id(refused), Id(next)], [IdOf(0), IdOf(1)]);
        Assert.Equal(2, _server.Messages.Count);
    }

    [Fact]
    public void SendPending_PermanentRefusalThenRsetAnswered421_DropsTheRefusedAlertOnceAndTheNextSessionDeliversTheRest()
    {
        uint refused = Raise("REFUSED");
        uint next = Raise("NEXT");
        _server.EndOfDataReplies.Enqueue("554 5.6.0 no thanks\r\n");
        bool closing = true;
        _server.OnCommand = line =>
        {
            if (line != "RSET" || !closing)
            {
                return null;
            }

            closing = false;
            _server.HangUp();
            return "421 4.3.2 shutting down\r\n";
        };
        SmtpUplink uplink = Uplink();

        Assert.Equal(421, Assert.Throws<SmtpException>(() => uplink.SendPending()).ReplyCode);
        Assert.Equal(1u, _store.Depth);

        Assert.Equal(1, uplink.SendPending());

        Assert.Equal(0u, _store.Depth);
        Assert.Equal(1, uplink.Rejected);
        Assert.Equal([Id(refused), Id(next)], [IdOf(0), IdOf(1)]);
    }

    [Theory]
    [InlineData("24: ok")] // once read as 250: the alert left flash untaken
    [InlineData("250ok")] // a code must end with a space, a hyphen or the line
    [InlineData("4:0 no")] // once read as 500: dropped as refused
    [InlineData("4;0 no")] // once read as 510
    public void SendPending_EndOfDataReplyWithoutAThreeDigitCode_KeepsTheAlertQueuedAndFailsTheLink(string reply)
    {
        uint seq = Raise("ALERT");
        _server.EndOfDataReplies.Enqueue(reply + "\r\n");
        SmtpUplink uplink = Uplink();

        var ex = Assert.Throws<SmtpException>(() => uplink.SendPending());

        Assert.Equal(0, ex.ReplyCode); // the link failed; the server said nothing this client can act on
        Assert.Equal(1u, _store.Depth);
        Assert.Equal(0, uplink.Sent + uplink.Rejected);
        Assert.Equal(1, uplink.SendPending());
        Assert.Equal(0u, _store.Depth);
        Assert.Equal([Id(seq), Id(seq)], [IdOf(0), IdOf(1)]);
    }

    [Theory]
    [InlineData("RCPT TO:", "251 2.1.5 user not local; will forward")]
    [InlineData("RCPT TO:", "252 2.1.5 cannot verify the user, will attempt delivery")]
    [InlineData("MAIL FROM:", "251 2.1.0 sender ok")]
    public void SendPending_OtherPositiveReplyToMailOrRcpt_DeliversTheAlert(string verb, string reply)
    {
        uint seq = Raise("ALERT");
        _server.OnCommand = line => line.StartsWith(verb, StringComparison.Ordinal) ? reply + "\r\n" : null;
        SmtpUplink uplink = Uplink();

        Assert.Equal(1, uplink.SendPending());

        Assert.Equal(0u, _store.Depth);
        Assert.Equal(Id(seq), IdOf(0));
    }

    [Fact]
    public void SendPending_SlowRepliesBeforeTheMessage_TheAlertCarriesItsAgeWhenItIsWritten()
    {
        // The alert is loaded before MAIL; a server that takes its time over MAIL, RCPT and DATA (up to the timeout
        // each) made the age in the JSON that much too young.
        uint seq = Raise("ALERT");
        _clock.UptimeMs += 5_000;
        _server.OnCommand = line =>
        {
            if (line.StartsWith("MAIL FROM:", StringComparison.Ordinal) || line.StartsWith("RCPT TO:", StringComparison.Ordinal) || line == "DATA")
            {
                _clock.UptimeMs += 10_000;
            }

            return null;
        };

        Assert.Equal(1, Uplink().SendPending());

        Assert.Equal(Id(seq), IdOf(0));
        Assert.Equal(35_000, AlertJson(0).GetProperty("age_ms").GetInt64());
    }

    [Theory]
    [InlineData("gerät-7")] // Write(string) put one byte per char: a raw 0xE4 in Subject and Message-ID
    [InlineData("dev-1\r\nBcc: someone@example.test")]
    [InlineData("dev 1")]
    [InlineData("..")]
    public void Constructor_DeviceIdTheGatewayWouldNotAccept_IsRefusedWithTheRule(string deviceId)
    {
        var ex = Assert.Throws<ArgumentException>(() => new SmtpUplink(_store, _server, _clock, new SmtpUplinkOptions
        {
            DeviceId = deviceId, From = "dev-1@devices.test", To = "alerts@gateway.test",
        }));

        Assert.StartsWith("DeviceId '" + deviceId + "' must be 1 to 64 ASCII letters, digits, '-', '_' or '.'", ex.Message, StringComparison.Ordinal);
    }

    private sealed class ManualClock : IClock
    {
        public long UptimeMs { get; set; } = 123_456;
    }
}
