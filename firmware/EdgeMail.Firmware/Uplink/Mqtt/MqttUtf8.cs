using EdgeMail.Firmware.Alerts;

namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>
/// MQTT strings as UTF-8, on top of the firmware's own <see cref="Utf8"/> codec (no System.Text.Encoding on
/// nanoFramework). MQTT forbids U+0000 and unpaired surrogates in strings (MQTT 3.1.1 section 1.5.3), so those are
/// rejected here rather than replaced; topics are compared with received bytes without allocating.
/// </summary>
internal static class MqttUtf8
{
    /// <summary>Counts the UTF-8 bytes of <paramref name="text"/>.</summary>
    /// <returns>The byte count, or -1 if the text has U+0000 or an unpaired surrogate.</returns>
    public static int GetByteCount(string text)
    {
        int length = text.Length;
        for (int i = 0; i < length; i++)
        {
            char c = text[i];
            if (c == '\0' || (c >= 0xDC00 && c <= 0xDFFF))
            {
                return -1;
            }

            if (c >= 0xD800 && c <= 0xDBFF)
            {
                if (i + 1 >= length || text[i + 1] < 0xDC00 || text[i + 1] > 0xDFFF)
                {
                    return -1;
                }

                i++;
            }
        }

        return Utf8.GetByteCount(text);
    }

    /// <summary>Writes the UTF-8 bytes of text already checked by <see cref="GetByteCount"/>.</summary>
    /// <returns>The index after the last byte written.</returns>
    public static int Write(string text, byte[] buffer, int offset) => offset + Utf8.Encode(text, buffer, offset);

    /// <summary>Compares UTF-8 bytes with a string without allocating.</summary>
    public static bool Equals(byte[] buffer, int offset, int count, string text)
    {
        int pos = offset;
        int end = offset + count;
        int length = text.Length;
        for (int i = 0; i < length; i++)
        {
            int c = text[i];
            if (c < 0x80)
            {
                if (pos >= end || buffer[pos++] != c)
                {
                    return false;
                }

                continue;
            }

            int cp = c;
            int n;
            if (c < 0x800)
            {
                n = 2;
            }
            else if (c >= 0xD800 && c <= 0xDBFF && i + 1 < length)
            {
                cp = 0x10000 + ((c - 0xD800) << 10) + (text[++i] - 0xDC00);
                n = 4;
            }
            else
            {
                n = 3;
            }

            if (end - pos < n)
            {
                return false;
            }

            int first = n == 2 ? 0xC0 | (cp >> 6) : n == 3 ? 0xE0 | (cp >> 12) : 0xF0 | (cp >> 18);
            if (buffer[pos++] != first)
            {
                return false;
            }

            for (int shift = (n - 2) * 6; shift >= 0; shift -= 6)
            {
                if (buffer[pos++] != (0x80 | ((cp >> shift) & 0x3F)))
                {
                    return false;
                }
            }
        }

        return pos == end;
    }

    /// <summary>Decodes UTF-8 into a new string (allocates; not for hot paths). Invalid sequences become U+FFFD.</summary>
    public static string Decode(byte[] buffer, int offset, int count) => Utf8.Decode(buffer, offset, count);
}
