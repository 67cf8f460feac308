using System.Text;
using EdgeMail.Firmware.Alerts;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Xunit;

namespace EdgeMail.Firmware.Tests.Alerts;

// FsCheck prints the seed ("Replay: ...") of any falsified property; pass it to [Property(Replay = "...")] to rerun.
public class Utf8Tests
{
    private static readonly UTF8Encoding Strict = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    [Theory]
    [InlineData("", "")]
    [InlineData("A", "41")]
    [InlineData("é", "C3A9")]
    [InlineData("€", "E282AC")]
    [InlineData("🔥", "F09F94A5")]
    public void Encode_KnownStrings_WritesExpectedBytes(string text, string hex)
    {
        var buffer = new byte[16];
        int length = Utf8.Encode(text, buffer, 3);
        Assert.Equal(hex, Convert.ToHexString(buffer, 3, length));
        Assert.Equal(length, Utf8.GetByteCount(text));
    }

    // Lone surrogates cannot travel through [InlineData] (xunit serialises the arguments), so these are built here.
    [Theory]
    [InlineData(new[] { 0xD800 }, "EFBFBD")] // lone high surrogate
    [InlineData(new[] { 0xDC00, 'x' }, "EFBFBD78")] // lone low surrogate
    [InlineData(new[] { 0xD800, 0xD800, 0xDC00 }, "EFBFBDF0908080")] // high, then a pair
    [InlineData(new[] { 0xDBFF, 0xDFFF }, "F48FBFBF")] // U+10FFFF
    public void Encode_Surrogates_PairsBecomeFourBytesAndLoneOnesBecomeReplacement(int[] units, string hex)
    {
        string text = new(units.Select(u => (char)u).ToArray());
        var buffer = new byte[16];
        int length = Utf8.Encode(text, buffer, 0);
        Assert.Equal(hex, Convert.ToHexString(buffer, 0, length));
        Assert.Equal(length, Utf8.GetByteCount(text));
    }

    [Property(MaxTest = 2000)]
    public Property Encode_RandomStrings_EqualsSystemTextEncodingWithReplacement() =>
        Prop.ForAll(AlertTestKit.NastyText().ToArbitrary(), text =>
        {
            byte[] expected = Encoding.UTF8.GetBytes(text); // .NET writes EF BF BD for a lone surrogate too
            var actual = new byte[Utf8.GetByteCount(text) + 2];
            int length = Utf8.Encode(text, actual, 1);
            return length == expected.Length && actual.AsSpan(1, length).SequenceEqual(expected)
                && Utf8.Decode(actual, 1, length) == Encoding.UTF8.GetString(expected);
        });

    [Property(MaxTest = 2000)]
    public bool IsValid_RandomBytes_AgreesWithStrictDecoder(byte[] bytes)
    {
        bool strictAccepts;
        try
        {
            Strict.GetString(bytes);
            strictAccepts = true;
        }
        catch (DecoderFallbackException)
        {
            strictAccepts = false;
        }

        return Utf8.IsValid(bytes, 0, bytes.Length) == strictAccepts;
    }

    [Theory]
    [InlineData("C0AF")] // overlong '/'
    [InlineData("EDA080")] // encoded surrogate
    [InlineData("F4908080")] // above U+10FFFF
    [InlineData("E282")] // truncated
    [InlineData("80")] // lone continuation
    public void IsValid_MalformedSequences_ReturnsFalse(string hex)
    {
        byte[] bytes = Convert.FromHexString(hex);
        Assert.False(Utf8.IsValid(bytes, 0, bytes.Length));
        Assert.Contains(Utf8.Replacement, Utf8.Decode(bytes, 0, bytes.Length));
    }

    [Fact]
    public void Encode_BufferTooSmall_ThrowsNamingTheFix()
    {
        var ex = Assert.Throws<ArgumentException>(() => Utf8.Encode("héllo", new byte[5], 0));
        Assert.Contains("GetByteCount", ex.Message, StringComparison.Ordinal);
    }
}
