using System;

namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// A cursor that writes JSON tokens into a caller's byte buffer without allocating: ASCII literals, escaped strings
/// (from UTF-8 bytes or from a string), integers, fixed-point numbers and ISO-8601 UTC times. Running out of room
/// throws <see cref="ArgumentException"/> naming the room there was.
/// </summary>
internal sealed class JsonOutput
{
    private const string Hex = "0123456789abcdef";
    private byte[] _buffer = new byte[0];
    private int _start;
    private int _position;

    /// <summary>Bytes written since <see cref="Begin"/>.</summary>
    public int Length => _position - _start;

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
    }

    /// <summary>Writes an ASCII literal (keys and punctuation) as is.</summary>
    public void Raw(string ascii)
    {
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

    private void Ensure(int count)
    {
        if (_buffer.Length - _position < count)
        {
            throw new ArgumentException(
                "The destination buffer is too small for the JSON: " + (_buffer.Length - _start).ToString() +
                " bytes were available from the offset. Give it " + AlertRecord.MaxJsonLength.ToString() + " bytes (AlertJsonWriter.MaxLength).",
                "destination");
        }
    }
}
