using System.Text;
using EdgeMail.Gateway.Composition;
using Xunit;

namespace EdgeMail.Gateway.Tests.Composition;

/// <summary>
/// When a device's mail may go out as its spooled bytes: only when MailKit's preparation could not have changed any of
/// them — else the relay parses and prepares it as before.
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
}
