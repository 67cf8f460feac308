using System;

namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// A cursor that writes JSON tokens without allocating: ASCII literals, escaped strings (from UTF-8 bytes or from a
/// string), integers, fixed-point numbers and ISO-8601 UTC times. Either into a caller's byte buffer (running out of
/// room throws <see cref="ArgumentException"/> naming the room there was), or streamed: through a small chunk of its
/// own into an <see cref="IByteSink"/>, or only counted (<see cref="BeginMeasure"/>). The three modes produce the same
/// bytes for the same calls.
/// </summary>
internal sealed class JsonOutput
{
    /// <summary>Chunk size when streaming: at least the largest single reservation (22 bytes for a time, 21 for a number).</summary>
    internal const int ChunkSize = 32;

    private const string Hex = "0123456789abcdef";
    private static readonly byte[] NoBytes = new byte[0];
    private byte[] _buffer = NoBytes;
    private byte[]? _chunk;
    private IByteSink? _sink;
    private bool _streaming;
    private int _flushed;
    private int _start;
    private int _position;

    /// <summary>Bytes written since <see cref="Begin"/> (or <see cref="BeginStream"/>, <see cref="BeginMeasure"/>).</summary>
    public int Length => _flushed + _position - _start;

    /// <summary>The bytes one character of a string takes once escaped (1..6).</summary>
    public static int EscapedLength(string text)
    {
        int count = 0;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c < 0x20)
            {
                count += ShortEscape(c) != 0 ? 2 : 6;
            }
            else if (c == '"' || c == '\\')
            {
                count += 2;
            }
            else if (c < 0x80)
            {
                count++;
            }
            else if (c < 0x800)
            {
                count += 2;
            }
            else if (Utf8.IsHighSurrogate(c) && i + 1 < text.Length && Utf8.IsLowSurrogate(text[i + 1]))
            {
                count += 4;
                i++;
            }
            else
            {
                count += 3;
            }
        }

        return count;
    }

    /// <summary>The bytes well-formed UTF-8 takes once escaped by <see cref="String(byte[], int, int)"/>, quotes not counted.</summary>
    public static int EscapedLength(byte[] utf8, int offset, int count)
    {
        int length = 0;
        for (int i = offset; i < offset + count; i++)
        {
            length += EscapedLength(utf8[i]);
        }

        return length;
    }

    /// <summary>The bytes one byte of UTF-8 takes once escaped (1, 2 or 6).</summary>
    public static int EscapedLength(byte b)
    {
        if (b < 0x20)
        {
            return ShortEscape(b) != 0 ? 2 : 6;
        }

        return b == '"' || b == '\\' ? 2 : 1;
    }

    public void Begin(byte[] buffer, int offset)
    {
        if (buffer == null)
        {
            throw new ArgumentNullException(nameof(buffer));
        }

        if (offset < 0 || offset > buffer.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), "The offset lies outside the destination buffer.");
        }

        _buffer = buffer;
        _start = offset;
        _position = offset;
        _streaming = false;
        _sink = null;
        _flushed = 0;
    }

    /// <summary>Streams into <paramref name="sink"/> in chunks; call <see cref="End"/> to hand over the last one.</summary>
    public void BeginStream(IByteSink sink)
    {
        if (sink == null)
        {
            throw new ArgumentNullException(nameof(sink));
        }

        BeginChunked(sink);
    }

    /// <summary>Only counts the bytes (<see cref="Length"/>), for a payload whose length must be known before it is sent.</summary>
    public void BeginMeasure() => BeginChunked(null);

    /// <summary>Streaming: hands the last chunk to the sink. Harmless in the other modes.</summary>
    public void End()
    {
        if (_streaming)
        {
            Flush();
        }
    }

    /// <summary>Writes an ASCII literal (keys and punctuation) as is.</summary>
    public void Raw(string ascii)
    {
        if (ascii.Length > ChunkSize)
        {
            for (int i = 0; i < ascii.Length; i++)
            {
                Byte((byte)ascii[i]);
            }

            return;
        }

        Ensure(ascii.Length);
        for (int i = 0; i < ascii.Length; i++)
        {
            _buffer[_position++] = (byte)ascii[i];
        }
    }

    /// <summary>Writes a quoted JSON string from well-formed UTF-8 bytes, escaping only what JSON requires.</summary>
    public void String(byte[] utf8, int offset, int count)
    {
        Byte((byte)'"');
        int end = offset + count;
        for (int i = offset; i < end; i++)
        {
            byte b = utf8[i];
            if (b < 0x20 || b == '"' || b == '\\')
            {
                Escape(b);
            }
            else
            {
                Byte(b); // ASCII and the bytes of multi-byte sequences go through unchanged
            }
        }

        Byte((byte)'"');
    }

    /// <summary>Writes a quoted JSON string from UTF-16 (lone surrogates become U+FFFD).</summary>
    public void String(string text)
    {
        Byte((byte)'"');
        for (int i = 0; i < text.Length; i++)
        {
            int c = text[i];
            if (c < 0x20 || c == '"' || c == '\\')
            {
                Escape(c);
                continue;
            }

            if (c >= 0xD800 && c <= 0xDFFF)
            {
                if (c <= 0xDBFF && i + 1 < text.Length && Utf8.IsLowSurrogate(text[i + 1]))
                {
                    c = 0x10000 + ((c - 0xD800) << 10) + (text[i + 1] - 0xDC00);
                    i++;
                }
                else
                {
                    c = Utf8.Replacement;
                }
            }

            Ensure(4);
            _position = Utf8.WriteScalar(c, _buffer, _position);
        }

        Byte((byte)'"');
    }

    /// <summary>Writes an unsigned integer in decimal.</summary>
    public void UInt(ulong value) => Digits(value, 0);

    /// <summary>Writes a signed integer in decimal.</summary>
    public void Int(long value) => Fixed(value, 0);

    /// <summary>Writes mantissa × 10^-scale exactly, e.g. (−95, 1) as −9.5 and (5, 3) as 0.005.</summary>
    public void Fixed(long mantissa, int scale)
    {
        ulong magnitude;
        if (mantissa < 0)
        {
            Byte((byte)'-');
            magnitude = (ulong)(-(mantissa + 1)) + 1; // no overflow at long.MinValue
        }
        else
        {
            magnitude = (ulong)mantissa;
        }

        Digits(magnitude, scale);
    }

    /// <summary>Writes eight lower-case hex digits.</summary>
    public void Hex8(uint value)
    {
        Ensure(8);
        for (int shift = 28; shift >= 0; shift -= 4)
        {
            _buffer[_position++] = (byte)Hex[(int)((value >> shift) & 0xF)];
        }
    }

    /// <summary>Writes a quoted ISO-8601 UTC time to the second, e.g. "2026-11-28T09:58:12Z", for 0..9999-12-31.</summary>
    public void IsoTime(long unixMs)
    {
        long days = unixMs / 86400000L;
        int secondOfDay = (int)(unixMs % 86400000L / 1000L);

        // Civil date from a day count (proleptic Gregorian, 400-year eras of 146097 days, years starting in March).
        long z = days + 719468L;
        long era = z / 146097L;
        int dayOfEra = (int)(z - (era * 146097L));
        int yearOfEra = (dayOfEra - (dayOfEra / 1460) + (dayOfEra / 36524) - (dayOfEra / 146096)) / 365;
        int dayOfYear = dayOfEra - ((365 * yearOfEra) + (yearOfEra / 4) - (yearOfEra / 100));
        int monthFromMarch = ((5 * dayOfYear) + 2) / 153;
        int day = dayOfYear - (((153 * monthFromMarch) + 2) / 5) + 1;
        int month = monthFromMarch < 10 ? monthFromMarch + 3 : monthFromMarch - 9;
        int year = (int)((era * 400L) + yearOfEra + (month <= 2 ? 1 : 0));

        Ensure(22);
        Byte((byte)'"');
        Pad(year, 4);
        Byte((byte)'-');
        Pad(month, 2);
        Byte((byte)'-');
        Pad(day, 2);
        Byte((byte)'T');
        Pad(secondOfDay / 3600, 2);
        Byte((byte)':');
        Pad(secondOfDay / 60 % 60, 2);
        Byte((byte)':');
        Pad(secondOfDay % 60, 2);
        Raw("Z\"");
    }

    private static char ShortEscape(int c)
    {
        switch (c)
        {
            case '\n':
                return 'n';
            case '\r':
                return 'r';
            case '\t':
                return 't';
            case '\b':
                return 'b';
            case '\f':
                return 'f';
            case '"':
                return '"';
            case '\\':
                return '\\';
            default:
                return (char)0;
        }
    }

    private void Escape(int c)
    {
        char shortForm = ShortEscape(c);
        if (shortForm != 0)
        {
            Ensure(2);
            _buffer[_position++] = (byte)'\\';
            _buffer[_position++] = (byte)shortForm;
        }
        else
        {
            Raw("\\u00");
            Ensure(2);
            _buffer[_position++] = (byte)Hex[c >> 4];
            _buffer[_position++] = (byte)Hex[c & 0xF];
        }
    }

    private void Digits(ulong value, int scale)
    {
        int count = 1;
        for (ulong rest = value / 10; rest != 0; rest /= 10)
        {
            count++;
        }

        if (count <= scale)
        {
            count = scale + 1; // leading zeros: 5 at scale 3 is 0.005
        }

        int total = scale == 0 ? count : count + 1;
        Ensure(total);
        int p = _position + total - 1;
        for (int i = 0; i < count; i++)
        {
            if (scale != 0 && i == scale)
            {
                _buffer[p--] = (byte)'.';
            }

            _buffer[p--] = (byte)('0' + (int)(value % 10));
            value /= 10;
        }

        _position += total;
    }

    private void Pad(int value, int width)
    {
        for (int i = width - 1; i >= 0; i--)
        {
            _buffer[_position + i] = (byte)('0' + (value % 10));
            value /= 10;
        }

        _position += width;
    }

    private void Byte(byte b)
    {
        Ensure(1);
        _buffer[_position++] = b;
    }

    private void BeginChunked(IByteSink? sink)
    {
        _chunk ??= new byte[ChunkSize]; // once per writer, on first use
        _buffer = _chunk;
        _start = 0;
        _position = 0;
        _streaming = true;
        _sink = sink;
        _flushed = 0;
    }

    private void Flush()
    {
        int count = _position - _start;
        if (count > 0)
        {
            _sink?.Write(_buffer, _start, count);
            _flushed += count;
            _position = _start;
        }
    }

    private void Ensure(int count)
    {
        if (_buffer.Length - _position < count)
        {
            if (_streaming)
            {
                Flush();
                return; // every reservation is at most ChunkSize
            }

            throw new ArgumentException(
                "The destination buffer is too small for the JSON: " + (_buffer.Length - _start).ToString() +
                " bytes were available from the offset. Give it " + AlertRecord.MaxJsonLength.ToString() + " bytes (AlertJsonWriter.MaxLength).",
                "destination");
        }
    }
}
