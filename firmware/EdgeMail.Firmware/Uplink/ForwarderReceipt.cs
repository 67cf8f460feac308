using EdgeMail.Firmware.Alerts;

namespace EdgeMail.Firmware.Uplink;

/// <summary>
/// Reads the two fields of a gateway receipt (<c>{"id","state","at","detail"}</c>, DESIGN.md Contract 1) the device
/// needs, straight from the received bytes and without allocating: a field scan, not a JSON parser. Good enough for
/// the receipts the gateway writes (flat object, string values); anything it does not understand reads as absent.
/// </summary>
public static class ForwarderReceipt
{
    /// <summary>Finds the string value of <paramref name="key"/> in a flat JSON object.</summary>
    /// <param name="buffer">The JSON bytes.</param>
    /// <param name="offset">Index of the first byte.</param>
    /// <param name="count">Number of bytes.</param>
    /// <param name="key">The key (ASCII).</param>
    /// <param name="valueOffset">Index of the value's first byte (inside the quotes).</param>
    /// <param name="valueLength">The value's length in bytes (escapes left as they are).</param>
    /// <returns>True when the key is there with a string value.</returns>
    public static bool TryFindString(byte[] buffer, int offset, int count, string key, out int valueOffset, out int valueLength)
    {
        valueOffset = 0;
        valueLength = 0;
        if (buffer == null || key == null)
        {
            return false;
        }

        int end = offset + count;
        int k = key.Length;
        for (int i = offset; i + k + 2 <= end; i++)
        {
            if (buffer[i] != '"' || buffer[i + k + 1] != '"' || !KeyMatches(buffer, i + 1, key))
            {
                continue;
            }

            int p = SkipSpace(buffer, i + k + 2, end);
            if (p >= end || buffer[p] != ':')
            {
                continue;
            }

            p = SkipSpace(buffer, p + 1, end);
            if (p >= end || buffer[p] != '"')
            {
                return false;
            }

            int start = p + 1;
            for (int q = start; q < end; q++)
            {
                if (buffer[q] == '\\')
                {
                    q++;
                    continue;
                }

                if (buffer[q] == '"')
                {
                    valueOffset = start;
                    valueLength = q - start;
                    return true;
                }
            }

            return false;
        }

        return false;
    }

    /// <summary>Whether the string value of <paramref name="key"/> equals <paramref name="expected"/> (ASCII).</summary>
    /// <param name="buffer">The JSON bytes.</param>
    /// <param name="offset">Index of the first byte.</param>
    /// <param name="count">Number of bytes.</param>
    /// <param name="key">The key.</param>
    /// <param name="expected">The value to compare with.</param>
    /// <returns>True when the value is there and equal.</returns>
    public static bool StringEquals(byte[] buffer, int offset, int count, string key, string expected)
    {
        if (!TryFindString(buffer, offset, count, key, out int vo, out int vl) || expected == null || vl != expected.Length)
        {
            return false;
        }

        return KeyMatches(buffer, vo, expected);
    }

    /// <summary>
    /// The receipt's <c>id</c> as the device wrote it (<c>7f3a9c21-42</c>: the flash epoch in 8 hex digits, '-', the
    /// sequence number in decimal).
    /// </summary>
    /// <param name="buffer">The receipt JSON.</param>
    /// <param name="offset">Index of the first byte.</param>
    /// <param name="count">Number of bytes.</param>
    /// <param name="epoch">The epoch.</param>
    /// <param name="seq">The sequence number.</param>
    /// <returns>False when the id is absent or not of that form.</returns>
    public static bool TryReadId(byte[] buffer, int offset, int count, out uint epoch, out uint seq)
    {
        epoch = 0;
        seq = 0;
        if (!TryFindString(buffer, offset, count, "id", out int vo, out int vl) || vl < 10 || vl > 19 || buffer[vo + 8] != '-')
        {
            return false;
        }

        for (int i = 0; i < 8; i++)
        {
            int c = buffer[vo + i];
            int nibble = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (nibble < 0)
            {
                return false;
            }

            epoch = (epoch << 4) | (uint)nibble;
        }

        ulong value = 0;
        for (int i = vo + 9; i < vo + vl; i++)
        {
            int c = buffer[i] - '0';
            if (c < 0 || c > 9)
            {
                return false;
            }

            value = (value * 10) + (ulong)c;
        }

        if (value > uint.MaxValue)
        {
            return false;
        }

        seq = (uint)value;
        return true;
    }

    /// <summary>
    /// The receipt's <c>at</c> as Unix milliseconds: <c>YYYY-MM-DDTHH:MM:SS[.fraction]Z</c> (UTC; an offset such as
    /// <c>+02:00</c> is applied).
    /// </summary>
    /// <param name="buffer">The receipt JSON.</param>
    /// <param name="offset">Index of the first byte.</param>
    /// <param name="count">Number of bytes.</param>
    /// <returns>The time, or <see cref="AlertRecord.UnknownTime"/> when absent or not understood.</returns>
    public static long ReadAt(byte[] buffer, int offset, int count)
    {
        if (!TryFindString(buffer, offset, count, "at", out int vo, out int vl))
        {
            return AlertRecord.UnknownTime;
        }

        return ParseIsoUtc(buffer, vo, vl);
    }

    /// <summary>Parses an RFC 3339 timestamp into Unix milliseconds.</summary>
    /// <param name="b">The bytes.</param>
    /// <param name="o">Index of the first byte.</param>
    /// <param name="n">Length in bytes.</param>
    /// <returns>The time, or <see cref="AlertRecord.UnknownTime"/> when the text is not such a timestamp.</returns>
    public static long ParseIsoUtc(byte[] b, int o, int n)
    {
        if (b == null || n < 20 || b[o + 4] != '-' || b[o + 7] != '-' || (b[o + 10] != 'T' && b[o + 10] != 't' && b[o + 10] != ' ')
            || b[o + 13] != ':' || b[o + 16] != ':')
        {
            return AlertRecord.UnknownTime;
        }

        int year = Digits(b, o, 4);
        int month = Digits(b, o + 5, 2);
        int day = Digits(b, o + 8, 2);
        int hour = Digits(b, o + 11, 2);
        int minute = Digits(b, o + 14, 2);
        int second = Digits(b, o + 17, 2);
        if (year < 0 || month < 1 || month > 12 || day < 1 || day > 31 || hour < 0 || hour > 23 || minute < 0 || minute > 59 || second < 0 || second > 60)
        {
            return AlertRecord.UnknownTime;
        }

        int p = o + 19;
        int end = o + n;
        long millis = 0;
        if (p < end && b[p] == '.')
        {
            p++;
            int digits = 0;
            while (p < end && b[p] >= '0' && b[p] <= '9')
            {
                if (digits < 3)
                {
                    millis = (millis * 10) + (b[p] - '0');
                }

                digits++;
                p++;
            }

            if (digits == 0)
            {
                return AlertRecord.UnknownTime;
            }

            for (int i = digits; i < 3; i++)
            {
                millis *= 10;
            }
        }

        long offsetMinutes;
        if (p == end - 1 && (b[p] == 'Z' || b[p] == 'z'))
        {
            offsetMinutes = 0;
        }
        else if (p == end - 6 && (b[p] == '+' || b[p] == '-') && b[p + 3] == ':')
        {
            int oh = Digits(b, p + 1, 2);
            int om = Digits(b, p + 4, 2);
            if (oh < 0 || om < 0)
            {
                return AlertRecord.UnknownTime;
            }

            offsetMinutes = (oh * 60) + om;
            if (b[p] == '-')
            {
                offsetMinutes = -offsetMinutes;
            }
        }
        else
        {
            return AlertRecord.UnknownTime;
        }

        long days = DaysFromCivil(year, month, day);
        long seconds = (days * 86_400) + (hour * 3600) + (minute * 60) + second - (offsetMinutes * 60);
        return (seconds * 1000) + millis;
    }

    /// <summary>Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).</summary>
    private static long DaysFromCivil(int year, int month, int day)
    {
        long y = month <= 2 ? year - 1 : year;
        long era = (y >= 0 ? y : y - 399) / 400;
        long yoe = y - (era * 400);
        long doy = ((153 * (month + (month > 2 ? -3 : 9))) + 2) / 5 + day - 1;
        long doe = (yoe * 365) + (yoe / 4) - (yoe / 100) + doy;
        return (era * 146_097) + doe - 719_468;
    }

    private static int Digits(byte[] b, int o, int n)
    {
        int v = 0;
        for (int i = 0; i < n; i++)
        {
            int c = b[o + i] - '0';
            if (c < 0 || c > 9)
            {
                return -1;
            }

            v = (v * 10) + c;
        }

        return v;
    }

    private static bool KeyMatches(byte[] b, int o, string key)
    {
        if (o + key.Length > b.Length)
        {
            return false;
        }

        for (int i = 0; i < key.Length; i++)
        {
            if (b[o + i] != key[i])
            {
                return false;
            }
        }

        return true;
    }

    private static int SkipSpace(byte[] b, int p, int end)
    {
        while (p < end && (b[p] == ' ' || b[p] == '\t' || b[p] == '\r' || b[p] == '\n'))
        {
            p++;
        }

        return p;
    }
}
