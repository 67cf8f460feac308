namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>
/// UTF-8 for MQTT strings without System.Text.Encoding (absent on nanoFramework). MQTT forbids U+0000 and
/// unpaired surrogates in strings (MQTT 3.1.1 section 1.5.3), so those are rejected rather than replaced.
/// </summary>
internal static class MqttUtf8
{
    /// <summary>Counts the UTF-8 bytes of <paramref name="text"/>.</summary>
    /// <returns>The byte count, or -1 if the text has U+0000 or an unpaired surrogate.</returns>
    public static int GetByteCount(string text)
    {
        int bytes = 0;
        int length = text.Length;
        for (int i = 0; i < length; i++)
        {
            char c = text[i];
            if (c == '\0')
            {
                return -1;
            }

            if (c < 0x80)
            {
                bytes += 1;
            }
            else if (c < 0x800)
            {
                bytes += 2;
            }
            else if (c >= 0xD800 && c <= 0xDBFF)
            {
                if (i + 1 >= length || text[i + 1] < 0xDC00 || text[i + 1] > 0xDFFF)
                {
                    return -1;
                }

                bytes += 4;
                i++;
            }
            else if (c >= 0xDC00 && c <= 0xDFFF)
            {
                return -1;
            }
            else
            {
                bytes += 3;
            }
        }

        return bytes;
    }

    /// <summary>Writes the UTF-8 bytes of text already checked by <see cref="GetByteCount"/>.</summary>
    /// <returns>The index after the last byte written.</returns>
    public static int Write(string text, byte[] buffer, int offset)
    {
        int length = text.Length;
        for (int i = 0; i < length; i++)
        {
            int c = text[i];
            if (c < 0x80)
            {
                buffer[offset++] = (byte)c;
            }
            else if (c < 0x800)
            {
                buffer[offset++] = (byte)(0xC0 | (c >> 6));
                buffer[offset++] = (byte)(0x80 | (c & 0x3F));
            }
            else if (c >= 0xD800 && c <= 0xDBFF)
            {
                int cp = 0x10000 + ((c - 0xD800) << 10) + (text[++i] - 0xDC00);
                buffer[offset++] = (byte)(0xF0 | (cp >> 18));
                buffer[offset++] = (byte)(0x80 | ((cp >> 12) & 0x3F));
                buffer[offset++] = (byte)(0x80 | ((cp >> 6) & 0x3F));
                buffer[offset++] = (byte)(0x80 | (cp & 0x3F));
            }
            else
            {
                buffer[offset++] = (byte)(0xE0 | (c >> 12));
                buffer[offset++] = (byte)(0x80 | ((c >> 6) & 0x3F));
                buffer[offset++] = (byte)(0x80 | (c & 0x3F));
            }
        }

        return offset;
    }

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
    public static string Decode(byte[] buffer, int offset, int count)
    {
        var chars = new char[count];
        int n = 0;
        int pos = offset;
        int end = offset + count;
        while (pos < end)
        {
            int b = buffer[pos++];
            int need;
            int cp;
            if (b < 0x80)
            {
                chars[n++] = (char)b;
                continue;
            }
            else if (b >= 0xC2 && b <= 0xDF)
            {
                need = 1;
                cp = b & 0x1F;
            }
            else if (b >= 0xE0 && b <= 0xEF)
            {
                need = 2;
                cp = b & 0x0F;
            }
            else if (b >= 0xF0 && b <= 0xF4)
            {
                need = 3;
                cp = b & 0x07;
            }
            else
            {
                chars[n++] = '\uFFFD';
                continue;
            }

            int start = pos;
            bool ok = end - pos >= need;
            for (int k = 0; ok && k < need; k++)
            {
                int next = buffer[pos + k];
                ok = (next & 0xC0) == 0x80;
                cp = (cp << 6) | (next & 0x3F);
            }

            int min = need == 1 ? 0x80 : need == 2 ? 0x800 : 0x10000;
            if (!ok || cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            {
                chars[n++] = '\uFFFD';
                pos = start;
                continue;
            }

            pos += need;
            if (cp >= 0x10000)
            {
                cp -= 0x10000;
                chars[n++] = (char)(0xD800 + (cp >> 10));
                chars[n++] = (char)(0xDC00 + (cp & 0x3FF));
            }
            else
            {
                chars[n++] = (char)cp;
            }
        }

        return new string(chars, 0, n);
    }
}
