using System.Text.Json;
using EdgeMail.Firmware.Alerts;
using FsCheck;
using FsCheck.Fluent;

namespace EdgeMail.Firmware.Tests.Alerts;

/// <summary>Shared helpers: encode an alert, write its JSON, parse it back; random text generators.</summary>
internal static class AlertTestKit
{
    public const uint Epoch = 0x7f3a9c21;

    public static byte[] Encode(Alert alert, long raisedUnixMs = AlertRecord.UnknownTime, long raisedUptimeMs = 1_000, uint boot = 17)
    {
        var buffer = new byte[AlertRecord.MaxSize];
        int length = AlertRecord.Encode(alert, raisedUnixMs, raisedUptimeMs, boot, buffer, 0);
        return buffer.AsSpan(0, length).ToArray();
    }

    public static string WriteJson(byte[] record, ulong seq = 42, uint currentBoot = 17, long currentUptimeMs = 5_000,
        long currentUnixMs = AlertRecord.UnknownTime, uint epoch = Epoch)
    {
        var json = new byte[AlertJsonWriter.MaxLength];
        int length = new AlertJsonWriter().Write(record, 0, record.Length, epoch, seq, currentBoot, currentUptimeMs, currentUnixMs, json, 0);
        return System.Text.Encoding.UTF8.GetString(json, 0, length);
    }

    public static JsonElement Parse(string json)
    {
        using var document = JsonDocument.Parse(json);
        return document.RootElement.Clone();
    }

    /// <summary>
    /// Strings built from pieces that stress a JSON writer: printable ASCII, control characters, quote, backslash,
    /// DEL, two- and three-byte BMP characters, lone high and low surrogates, and non-BMP code points as pairs.
    /// </summary>
    public static Gen<string> NastyText()
    {
        Gen<string> piece = Gen.Frequency(
            (6, Gen.Choose(0x20, 0x7E).Select(Char)),
            (3, Gen.Choose(0x00, 0x1F).Select(Char)),
            (2, Gen.Elements("\"", "\\", "\u007F", "/", "\u2028")),
            (2, Gen.Choose(0x80, 0x7FF).Select(Char)),
            (2, Gen.Choose(0x800, 0xD7FF).Select(Char)),
            (1, Gen.Choose(0xE000, 0xFFFF).Select(Char)),
            (1, Gen.Choose(0xD800, 0xDBFF).Select(Char)),
            (1, Gen.Choose(0xDC00, 0xDFFF).Select(Char)),
            (2, Gen.Choose(0x10000, 0x10FFFF).Select(char.ConvertFromUtf32)));
        return Gen.ListOf(piece).Select(pieces => string.Concat(pieces));
    }

    private static string Char(int c) => ((char)c).ToString();
}
