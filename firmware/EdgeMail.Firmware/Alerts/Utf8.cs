using System;

namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// UTF-8 without <c>System.Text.Encoding</c> (nanoFramework's mscorlib has none). Encoding writes into a caller's
/// buffer and allocates nothing; a surrogate pair becomes one 4-byte sequence and a lone surrogate becomes U+FFFD
/// (EF BF BD), exactly as <c>Encoding.UTF8</c> does. Decoding allocates and is meant for tests and diagnostics.
/// </summary>
public static class Utf8
{
    /// <summary>The replacement character written for a lone surrogate or read for a malformed sequence.</summary>
    public const char Replacement = '\uFFFD';

    /// <summary>Counts the bytes <see cref="Encode"/> writes for <paramref name="text"/>.</summary>
    /// <param name="text">The string; null counts as empty.</param>
    /// <returns>The number of UTF-8 bytes.</returns>
    public static int GetByteCount(string text)
    {
        if (text == null)
        {
            return 0;
        }

        int count = 0;
        int length = text.Length;
        for (int i = 0; i < length; i++)
        {
            char c = text[i];
            if (c < 0x80)
            {
                count++;
            }
            else if (c < 0x800)
            {
                count += 2;
            }
            else if (IsHighSurrogate(c) && i + 1 < length && IsLowSurrogate(text[i + 1]))
            {
                count += 4;
                i++;
            }
            else
            {
                count += 3; // BMP character, or a lone surrogate written as U+FFFD
            }
        }

        return count;
    }

    /// <summary>Writes <paramref name="text"/> as UTF-8 into <paramref name="destination"/> at <paramref name="offset"/>.</summary>
    /// <param name="text">The string; null writes nothing.</param>
    /// <param name="destination">The buffer.</param>
    /// <param name="offset">Where the first byte goes.</param>
    /// <returns>The number of bytes written.</returns>
    /// <exception cref="ArgumentException">The bytes do not fit between <paramref name="offset"/> and the end of the buffer.</exception>
    public static int Encode(string text, byte[] destination, int offset)
    {
        if (destination == null)
        {
            throw new ArgumentNullException(nameof(destination));
        }

        int needed = GetByteCount(text);
        if (offset < 0 || offset > destination.Length || destination.Length - offset < needed)
        {
            throw new ArgumentException("The destination buffer is too small for the UTF-8 bytes; size it with Utf8.GetByteCount.", nameof(destination));
        }

        if (text == null)
        {
            return 0;
        }

        int p = offset;
        int length = text.Length;
        for (int i = 0; i < length; i++)
        {
            int c = text[i];
            if (c >= 0xD800 && c <= 0xDFFF)
            {
                if (c <= 0xDBFF && i + 1 < length && IsLowSurrogate(text[i + 1]))
                {
                    c = 0x10000 + ((c - 0xD800) << 10) + (text[i + 1] - 0xDC00);
                    i++;
                }
                else
                {
                    c = Replacement;
                }
            }

            p = WriteScalar(c, destination, p);
        }

        return p - offset;
    }

    /// <summary>
    /// Decodes UTF-8 into a new string (allocates; not for the hot path). Each malformed or truncated sequence,
    /// overlong form, encoded surrogate or code point above U+10FFFF reads as one U+FFFD per rejected byte.
    /// </summary>
    /// <param name="source">The bytes.</param>
    /// <param name="offset">Index of the first byte.</param>
    /// <param name="count">Number of bytes.</param>
    /// <returns>The string.</returns>
    public static string Decode(byte[] source, int offset, int count)
    {
        CheckRange(source, offset, count);
        var chars = new char[count]; // UTF-16 never needs more units than UTF-8 has bytes
        int n = 0;
        int i = offset;
        int end = offset + count;
        while (i < end)
        {
            int length = DecodeScalar(source, i, end, out int scalar);
            if (length == 0)
            {
                chars[n++] = Replacement;
                i++;
            }
            else if (scalar >= 0x10000)
            {
                scalar -= 0x10000;
                chars[n++] = (char)(0xD800 + (scalar >> 10));
                chars[n++] = (char)(0xDC00 + (scalar & 0x3FF));
                i += length;
            }
            else
            {
                chars[n++] = (char)scalar;
                i += length;
            }
        }

        return new string(chars, 0, n);
    }

    /// <summary>Tells whether a byte range is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF).</summary>
    /// <param name="source">The bytes.</param>
    /// <param name="offset">Index of the first byte.</param>
    /// <param name="count">Number of bytes.</param>
    /// <returns>True when every sequence is well-formed.</returns>
    public static bool IsValid(byte[] source, int offset, int count)
    {
        CheckRange(source, offset, count);
        int i = offset;
        int end = offset + count;
        while (i < end)
        {
            int length = DecodeScalar(source, i, end, out _);
            if (length == 0)
            {
                return false;
            }

            i += length;
        }

        return true;
    }

    /// <summary>Writes one Unicode scalar value (not a surrogate) as UTF-8; the caller has checked the room.</summary>
    internal static int WriteScalar(int c, byte[] destination, int p)
    {
        if (c < 0x80)
        {
            destination[p++] = (byte)c;
        }
        else if (c < 0x800)
        {
            destination[p++] = (byte)(0xC0 | (c >> 6));
            destination[p++] = (byte)(0x80 | (c & 0x3F));
        }
        else if (c < 0x10000)
        {
            destination[p++] = (byte)(0xE0 | (c >> 12));
            destination[p++] = (byte)(0x80 | ((c >> 6) & 0x3F));
            destination[p++] = (byte)(0x80 | (c & 0x3F));
        }
        else
        {
            destination[p++] = (byte)(0xF0 | (c >> 18));
            destination[p++] = (byte)(0x80 | ((c >> 12) & 0x3F));
            destination[p++] = (byte)(0x80 | ((c >> 6) & 0x3F));
            destination[p++] = (byte)(0x80 | (c & 0x3F));
        }

        return p;
    }

    internal static bool IsHighSurrogate(char c) => c >= 0xD800 && c <= 0xDBFF;

    internal static bool IsLowSurrogate(char c) => c >= 0xDC00 && c <= 0xDFFF;

    /// <summary>Decodes one well-formed sequence at <paramref name="i"/>; returns its length, or 0 when malformed.</summary>
    private static int DecodeScalar(byte[] s, int i, int end, out int scalar)
    {
        int b0 = s[i];
        scalar = b0;
        if (b0 < 0x80)
        {
            return 1;
        }

        int length;
        int min;
        if (b0 >= 0xC2 && b0 <= 0xDF)
        {
            length = 2;
            min = 0x80;
            scalar = b0 & 0x1F;
        }
        else if (b0 >= 0xE0 && b0 <= 0xEF)
        {
            length = 3;
            min = 0x800;
            scalar = b0 & 0x0F;
        }
        else if (b0 >= 0xF0 && b0 <= 0xF4)
        {
            length = 4;
            min = 0x10000;
            scalar = b0 & 0x07;
        }
        else
        {
            return 0; // continuation byte, C0/C1 (always overlong) or F5..FF
        }

        if (end - i < length)
        {
            return 0;
        }

        for (int k = 1; k < length; k++)
        {
            int b = s[i + k];
            if ((b & 0xC0) != 0x80)
            {
                return 0;
            }

            scalar = (scalar << 6) | (b & 0x3F);
        }

        if (scalar < min || scalar > 0x10FFFF || (scalar >= 0xD800 && scalar <= 0xDFFF))
        {
            return 0;
        }

        return length;
    }

    private static void CheckRange(byte[] source, int offset, int count)
    {
        if (source == null)
        {
            throw new ArgumentNullException(nameof(source));
        }

        if (offset < 0 || count < 0 || offset > source.Length - count)
        {
            throw new ArgumentOutOfRangeException(nameof(count), "The range lies outside the buffer.");
        }
    }
}
