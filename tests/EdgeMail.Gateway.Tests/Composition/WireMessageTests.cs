using System.Text;
using EdgeMail.Gateway.Composition;
using MimeKit;
using Xunit;

namespace EdgeMail.Gateway.Tests.Composition;

/// <summary>
/// When a device's mail may go out as its spooled bytes: only when MailKit's preparation could not have changed any of
/// them — else the relay parses and prepares it as before. And the message the relay hands MailKit for such mail writes
/// exactly those bytes, however its header block is laid out.
/// </summary>
public sealed class WireMessageTests
{
    private const string Head = "Received: from ups-1 by gw1.example.com; Sat, 5 Dec 2026 10:00:00 +0000\r\nFrom: UPS 1 via EdgeMail <alerts@example.com>\r\n" +
        "To: ops@example.com\r\nSubject: on battery\r\nMessage-ID: <ups.1@lan.example.com>\r\n\r\n";

    public static TheoryData<string, bool> Bodies => new()
    {
        { "Mains lost in hall 3.\r\n", true },
        { "\r\n", true },
        { new string('x', 998) + "\r\n", true },
        { "a line\r\nfrom the UPS\r\n", true },
        { new string('x', 999) + "\r\n", false },                   // MimeKit would make it quoted-printable
        { "Mains lost\r\nFrom the UPS: 31 C\r\n", false },           // an mbox "From " marker: quoted-printable too
        { "Temperatur 31 \u00b0C\r\n", false },                      // 8-bit text: the server may not take 8BITMIME
        { "nul \0 byte\r\n", false },
        { "bare\nline feed\r\n", false },
        { "bare\rcarriage return\r\n", false },
        { "no final line break", false },
        { "an 8BIT word, conservatively\r\n", false },
        { "a binary word, conservatively\r\n", false },
    };

    [Theory]
    [MemberData(nameof(Bodies))]
    public void IsTransportReady_OnlyWhenPreparingCouldChangeNothing(string body, bool expected)
    {
        Assert.Equal(expected, WireMessage.IsTransportReady(Encoding.UTF8.GetBytes(Head + body)));
    }

    [Theory]
    [InlineData("Content-Transfer-Encoding: 8bit")]
    [InlineData("Content-Transfer-Encoding: binary")]
    [InlineData("Content-Transfer-Encoding:\r\n 8bit")]
    public void IsTransportReady_NotWhenAPartDeclaresAnEncodingPreparationWouldChange(string field)
    {
        string mail = Head.Replace("\r\n\r\n", "\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n", StringComparison.Ordinal) +
            "--b\r\nContent-Type: text/plain\r\n" + field + "\r\n\r\nplain text\r\n--b--\r\n";

        Assert.False(WireMessage.IsTransportReady(Encoding.ASCII.GetBytes(mail)));
    }

    public static TheoryData<string, string?> MessageIdFields => new()
    {
        { Head + "body\r\n", "<ups.1@lan.example.com>" },
        { "message-id:<a@b>\r\nMessage-ID: <second@b>\r\n\r\n", "<a@b>" },                     // the first, whatever its case
        { "Subject: s\r\nMessage-ID :\r\n <folded@b>\r\n\t\r\nTo: x\r\n\r\n", "<folded@b>" },     // white space before the colon, folded
        { "a line that is no field\r\n\tnor\r\nMessage-ID: <c@d>\r\n\r\nbody", "<c@d>" },       // what MimeKit may choke on is passed over
        { "Message-ID: <no-body@b>", "<no-body@b>" },
        { "Resent-Message-ID: <r@b>\r\nMessage-IDs: <x@b>\r\n\r\n", null },
        { "Subject: s\r\n\r\nMessage-ID: <in-the-body@b>\r\n", null },
        { "\r\nMessage-ID: <empty-header-block@b>\r\n", null },
        { "Message-ID:   \r\n\r\n", null },
    };

    [Theory]
    [MemberData(nameof(MessageIdFields))]
    public void FieldValue_FindsTheFirstFieldOfTheHeaderBlockByItsBytesAlone(string mail, string? expected)
    {
        Assert.Equal(expected, WireMessage.FieldValue(Encoding.ASCII.GetBytes(mail), "Message-ID"u8));
    }

    public static TheoryData<string> Layouts => new()
    {
        Head + "Mains lost in hall 3.\r\n",
        // folded fields, a tab continuation, Content-* between other fields, a repeated field, white space before a colon
        "Received: from ups-1\r\n by gw1.example.com;\r\n\tSat, 5 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n" +
            "Content-Type: multipart/alternative;\r\n boundary=\"=-b\"\r\nFrom: UPS 1 <alerts@example.com>\r\nContent-Transfer-Encoding: 7bit\r\n" +
            "X-Note: one\r\nX-Note: two\r\nSubject : spaced\r\n\r\n--=-b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--=-b--\r\n",
    };

    [Theory]
    [MemberData(nameof(Layouts))]
    public void ForSending_WritesTheBytesItWasGiven(string mail)
    {
        Assert.Equal(mail, Written(() => WireMessage.ForSending(Encoding.ASCII.GetBytes(mail))));
    }

    // What the relay never opens this way (neither composed nor transport-ready), left to the parser as before.
    [Theory]
    [InlineData("From ups-1 Sat Dec  5 10:00:00 2026\r\nSubject: mbox line\r\n\r\nbody\r\n")]
    [InlineData(Head + "bare\nline feed\r\n")]
    [InlineData(Head)]
    [InlineData("Subject: no blank line\r\n")]
    [InlineData(" Subject: leading white space\r\n\r\nbody\r\n")]
    [InlineData("Subject: a bare\nline feed in the header block\r\n\r\nbody\r\n")]
    [InlineData("Subject: fine\r\na line that is no field\r\n\r\nbody\r\n")]
    [InlineData("Subject: fine\r\n: a field without a name\r\n\r\nbody\r\n")]
    public void ForSending_OutsideItsCase_IsWhatOpenIs(string mail)
    {
        Assert.Equal(Written(() => WireMessage.Open(Encoding.ASCII.GetBytes(mail))), Written(() => WireMessage.ForSending(Encoding.ASCII.GetBytes(mail))));
    }

    // MailKit leaves these fields out of what it sends; it must still see each of them as a field of its own.
    [Theory]
    [InlineData("Bcc: boss@example.com")]
    [InlineData("resent-bcc: boss@example.com")]
    [InlineData("Content-Length: 22")]
    public void ForSending_ThatMailKitHidesAFieldIn_LeavesItOut(string field)
    {
        string mail = Head.Replace("Subject:", field + "\r\nSubject:", StringComparison.Ordinal) + "Mains lost in hall 3.\r\n";
        var sending = Format.Clone();
        sending.HiddenHeaders.UnionWith([HeaderId.Bcc, HeaderId.ResentBcc, HeaderId.ContentLength]);

        string written = Written(() => WireMessage.ForSending(Encoding.ASCII.GetBytes(mail)), sending);

        Assert.Equal(Head + "Mains lost in hall 3.\r\n", written);
    }

    [Fact]
    public async Task ForSending_WritesTheSameBytesAsynchronously()
    {
        byte[] wire = Encoding.ASCII.GetBytes(Head + "Mains lost in hall 3.\r\n");
        using var message = WireMessage.ForSending(wire);
        using var written = new MemoryStream();

        await message.WriteToAsync(Format, written);

        Assert.Equal(wire, written.ToArray());
    }

    private static readonly FormatOptions Format = CreateFormat();

    private static FormatOptions CreateFormat()
    {
        var format = FormatOptions.Default.Clone();
        format.NewLineFormat = NewLineFormat.Dos;
        format.International = false;
        return format;
    }

    private static string Written(Func<MimeMessage> open, FormatOptions? format = null)
    {
        try
        {
            using var message = open();
            using var written = new MemoryStream();
            message.WriteTo(format ?? Format, written);
            return Encoding.ASCII.GetString(written.ToArray());
        }
        catch (FormatException ex)
        {
            return "FormatException: " + ex.Message;
        }
    }
}
