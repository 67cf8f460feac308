using System;

namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// The compact binary form of one alert, as stored in a flash record's payload (the storage layer adds its own
/// header, sequence number and CRC around it). It keeps everything needed to write Contract 1 JSON at send time,
/// except the id, which the storage layer supplies (flash epoch and sequence number). Layout version 1, little-endian,
/// documented in <c>docs/alert-record.md</c>:
/// <code>
///  0 u8 version (1)   1 u8 state   2 u8 severity   3 u8 flags (bit0 first is uptime, bit1 last is uptime)
///  4 u32 boot         8 u32 count  12 i64 raised Unix ms (or UnknownTime)   20 i64 raised uptime ms
/// 28 i64 first       36 i64 last   44 u8 code length   45 u8 value count   46 u16 text length
/// 48 code (ASCII), text (UTF-8), then per value: u8 name length, name (ASCII), u8 scale, i64 mantissa
/// </code>
/// Every method works on the caller's buffers and allocates nothing (exceptions aside).
/// </summary>
public static class AlertRecord
{
    /// <summary>The layout version this firmware writes (and the only one it reads).</summary>
    public const byte Version = 1;

    /// <summary>The fixed part of a record, before code, text and values.</summary>
    public const int HeaderSize = 48;

    /// <summary>The largest record: 64-byte code, 1024-byte text and 8 values with 32-byte names (1472 bytes).</summary>
    public const int MaxSize = HeaderSize + Alert.MaxCodeLength + Alert.MaxTextBytes + (Alert.MaxValues * (ValueFixedSize + Alert.MaxValueNameLength));

    /// <summary>The time value meaning "not known" (the device had no wall clock, or an uptime from another boot).</summary>
    public const long UnknownTime = long.MinValue;

    /// <summary>The largest Unix time in milliseconds a record accepts: 9999-12-31T23:59:59.999Z.</summary>
    public const long MaxUnixMs = 253402300799999L;

    /// <summary>The limit of Contract 1 on one alert's JSON payload.</summary>
    public const int MaxJsonLength = 4096;

    /// <summary>
    /// Ends the text of a stored record that <see cref="CutTextToFit"/> cut so that its JSON fits
    /// <see cref="MaxJsonLength"/> (ASCII, nothing in it to escape).
    /// </summary>
    public const string CutTextMarker = " [cut by the device: this alert's JSON would exceed 4096 bytes]";

    internal const int OffsetVersion = 0;
    internal const int OffsetState = 1;
    internal const int OffsetSeverity = 2;
    internal const int OffsetFlags = 3;
    internal const int OffsetBoot = 4;
    internal const int OffsetCount = 8;
    internal const int OffsetRaisedUnix = 12;
    internal const int OffsetRaisedUptime = 20;
    internal const int OffsetFirst = 28;
    internal const int OffsetLast = 36;
    internal const int OffsetCodeLength = 44;
    internal const int OffsetValueCount = 45;
    internal const int OffsetTextLength = 46;
    internal const int FlagFirstIsUptime = 1;
    internal const int FlagLastIsUptime = 2;
    internal const int ValueFixedSize = 10; // name length, scale, mantissa

    // Upper bound of the JSON around code, text and values (longest id, seq, state, sev, times, boot, count,
    // first and last, every key and punctuation): 268 bytes counted, rounded up.
    private const int JsonOverhead = 300;

    // Upper bound of one value's JSON beyond its name: quotes, colon, comma and a 21-character number.
    private const int JsonPerValue = 25;

    /// <summary>Checks an alert against the limits of Contract 1 without allocating.</summary>
    /// <param name="alert">The alert.</param>
    /// <returns><see cref="AlertError.None"/>, or the first problem found.</returns>
    public static AlertError Check(Alert alert)
    {
        if (alert == null)
        {
            throw new ArgumentNullException(nameof(alert));
        }

        string code = alert.Code;
        if (code.Length == 0)
        {
            return AlertError.CodeEmpty;
        }

        if (code.Length > Alert.MaxCodeLength)
        {
            return AlertError.CodeTooLong;
        }

        for (int i = 0; i < code.Length; i++)
        {
            char c = code[i];
            if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
            {
                return AlertError.CodeInvalidCharacter;
            }
        }

        if (Utf8.GetByteCount(alert.Text) > Alert.MaxTextBytes)
        {
            return AlertError.TextTooLong;
        }

        if ((int)alert.Severity < 0 || (int)alert.Severity > (int)Severity.Critical
            || (int)alert.State < 0 || (int)alert.State > (int)AlertState.Cleared)
        {
            return AlertError.EnumOutOfRange;
        }

        int json = JsonOverhead + code.Length + JsonOutput.EscapedLength(alert.Text);
        for (int i = 0; i < alert.ValueCount; i++)
        {
            string name = alert.GetValueName(i);
            if (!IsValidValueName(name))
            {
                return AlertError.ValueNameInvalid;
            }

            for (int k = 0; k < i; k++)
            {
                if (alert.GetValueName(k) == name)
                {
                    return AlertError.ValueNameInvalid;
                }
            }

            int scale = alert.GetValueScale(i);
            if (scale < 0 || scale > FixedPoint.MaxScale)
            {
                return AlertError.ValueScaleOutOfRange;
            }

            json += name.Length + JsonPerValue;
        }

        return json > MaxJsonLength ? AlertError.JsonTooLarge : AlertError.None;
    }

    /// <summary>The number of bytes <see cref="Encode"/> writes for this alert (valid or not; check with <see cref="Check(Alert)"/>).</summary>
    /// <param name="alert">The alert.</param>
    /// <returns>The record size in bytes, at most <see cref="MaxSize"/> for a valid alert.</returns>
    public static int Measure(Alert alert)
    {
        if (alert == null)
        {
            throw new ArgumentNullException(nameof(alert));
        }

        int size = HeaderSize + Utf8.GetByteCount(alert.Code) + Utf8.GetByteCount(alert.Text);
        for (int i = 0; i < alert.ValueCount; i++)
        {
            size += ValueFixedSize + Utf8.GetByteCount(alert.GetValueName(i));
        }

        return size;
    }

    /// <summary>
    /// Writes the record of a newly raised (or cleared) alert: count 1, first = last = the raise time.
    /// </summary>
    /// <param name="alert">The alert; it must pass <see cref="Check(Alert)"/>.</param>
    /// <param name="raisedUnixMs">Wall-clock time of the raise in Unix milliseconds, or <see cref="UnknownTime"/> when the device does not know the time.</param>
    /// <param name="raisedUptimeMs">Milliseconds since this boot began, at the raise (lets <c>age_ms</c> be computed later in the same boot).</param>
    /// <param name="boot">This boot's number (the device's boot counter).</param>
    /// <param name="destination">The buffer; needs <see cref="Measure"/> bytes from <paramref name="offset"/> (<see cref="MaxSize"/> always suffices).</param>
    /// <param name="offset">Where the record starts.</param>
    /// <returns>The record length in bytes.</returns>
    /// <exception cref="ArgumentException">The alert or a time is invalid, or the buffer is too small; the message says which and what to do.</exception>
    public static int Encode(Alert alert, long raisedUnixMs, long raisedUptimeMs, uint boot, byte[] destination, int offset)
    {
        AlertError error = TryEncode(alert, raisedUnixMs, raisedUptimeMs, boot, destination, offset, out int length);
        if (error != AlertError.None)
        {
            throw new ArgumentException(AlertErrors.Describe(error), error == AlertError.BufferTooSmall ? nameof(destination) : nameof(alert));
        }

        return length;
    }

    /// <summary>Like <see cref="Encode"/>, but reports a problem as a value instead of an exception.</summary>
    /// <param name="alert">The alert.</param>
    /// <param name="raisedUnixMs">Wall-clock time of the raise in Unix milliseconds, or <see cref="UnknownTime"/>.</param>
    /// <param name="raisedUptimeMs">Milliseconds since this boot began, at the raise.</param>
    /// <param name="boot">This boot's number.</param>
    /// <param name="destination">The buffer.</param>
    /// <param name="offset">Where the record starts.</param>
    /// <param name="length">The record length, or 0 on error.</param>
    /// <returns><see cref="AlertError.None"/> when written; otherwise why not (nothing is written).</returns>
    public static AlertError TryEncode(Alert alert, long raisedUnixMs, long raisedUptimeMs, uint boot, byte[] destination, int offset, out int length)
    {
        length = 0;
        if (destination == null)
        {
            throw new ArgumentNullException(nameof(destination));
        }

        AlertError error = Check(alert);
        if (error != AlertError.None)
        {
            return error;
        }

        if (!IsValidTime(raisedUnixMs) || raisedUptimeMs < 0)
        {
            return AlertError.TimeOutOfRange;
        }

        int size = Measure(alert);
        if (offset < 0 || offset > destination.Length || destination.Length - offset < size)
        {
            return AlertError.BufferTooSmall;
        }

        bool wall = raisedUnixMs != UnknownTime;
        long time = wall ? raisedUnixMs : raisedUptimeMs;
        int textLength = Utf8.GetByteCount(alert.Text);
        string code = alert.Code;

        destination[offset + OffsetVersion] = Version;
        destination[offset + OffsetState] = (byte)alert.State;
        destination[offset + OffsetSeverity] = (byte)alert.Severity;
        destination[offset + OffsetFlags] = (byte)(wall ? 0 : FlagFirstIsUptime | FlagLastIsUptime);
        WriteUInt32(destination, offset + OffsetBoot, boot);
        WriteUInt32(destination, offset + OffsetCount, 1);
        WriteInt64(destination, offset + OffsetRaisedUnix, raisedUnixMs);
        WriteInt64(destination, offset + OffsetRaisedUptime, raisedUptimeMs);
        WriteInt64(destination, offset + OffsetFirst, time);
        WriteInt64(destination, offset + OffsetLast, time);
        destination[offset + OffsetCodeLength] = (byte)code.Length;
        destination[offset + OffsetValueCount] = (byte)alert.ValueCount;
        destination[offset + OffsetTextLength] = (byte)textLength;
        destination[offset + OffsetTextLength + 1] = (byte)(textLength >> 8);

        int p = offset + HeaderSize;
        p += WriteAscii(code, destination, p);
        p += Utf8.Encode(alert.Text, destination, p);
        for (int i = 0; i < alert.ValueCount; i++)
        {
            string name = alert.GetValueName(i);
            destination[p++] = (byte)name.Length;
            p += WriteAscii(name, destination, p);
            destination[p++] = (byte)alert.GetValueScale(i);
            WriteInt64(destination, p, alert.GetValueMantissa(i));
            p += 8;
        }

        length = p - offset;
        return AlertError.None;
    }

    /// <summary>
    /// Tells whether <paramref name="alert"/> repeats the stored record: same code, state and severity. The queue
    /// coalesces such repeats into the stored record with <see cref="AddRepeat"/> (the first text and values are kept).
    /// </summary>
    /// <param name="record">The buffer holding a valid record.</param>
    /// <param name="offset">Where the record starts.</param>
    /// <param name="alert">The new alert.</param>
    /// <returns>True when it is a repeat.</returns>
    public static bool IsRepeatOf(byte[] record, int offset, Alert alert)
    {
        if (record == null || alert == null)
        {
            throw new ArgumentNullException(record == null ? nameof(record) : nameof(alert));
        }

        string code = alert.Code;
        if (record[offset + OffsetState] != (byte)alert.State || record[offset + OffsetSeverity] != (byte)alert.Severity
            || record[offset + OffsetCodeLength] != code.Length)
        {
            return false;
        }

        for (int i = 0; i < code.Length; i++)
        {
            if (record[offset + HeaderSize + i] != code[i])
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// Counts one more repeat into a record held in RAM: count + 1 (saturating), and <c>last</c> becomes this repeat's
    /// time — its Unix time when known, else its uptime when it happened in the record's boot, else unknown. The
    /// record's size does not change, so the caller can rewrite it in place in its buffer before appending it again.
    /// </summary>
    /// <param name="record">The buffer holding a valid record.</param>
    /// <param name="offset">Where the record starts.</param>
    /// <param name="raisedUnixMs">Wall-clock time of the repeat, or <see cref="UnknownTime"/>.</param>
    /// <param name="raisedUptimeMs">Uptime of the repeat in milliseconds.</param>
    /// <param name="boot">The boot the repeat happened in.</param>
    /// <exception cref="ArgumentException">A time is out of range.</exception>
    public static void AddRepeat(byte[] record, int offset, long raisedUnixMs, long raisedUptimeMs, uint boot)
    {
        if (record == null)
        {
            throw new ArgumentNullException(nameof(record));
        }

        if (!IsValidTime(raisedUnixMs) || raisedUptimeMs < 0)
        {
            throw new ArgumentException(AlertErrors.Describe(AlertError.TimeOutOfRange), nameof(raisedUnixMs));
        }

        uint count = ReadUInt32(record, offset + OffsetCount);
        if (count != uint.MaxValue)
        {
            WriteUInt32(record, offset + OffsetCount, count + 1);
        }

        int flags = record[offset + OffsetFlags] & ~FlagLastIsUptime;
        long last = raisedUnixMs;
        if (last == UnknownTime && boot == ReadUInt32(record, offset + OffsetBoot))
        {
            last = raisedUptimeMs;
            flags |= FlagLastIsUptime;
        }

        record[offset + OffsetFlags] = (byte)flags;
        WriteInt64(record, offset + OffsetLast, last);
    }

    /// <summary>
    /// Makes a stored record whose JSON could exceed <see cref="MaxJsonLength"/> fit, in place: its text is cut at a
    /// character boundary and ends with <see cref="CutTextMarker"/>; code, values and times are kept, and the values move
    /// up behind the shorter text. <see cref="Encode"/> never writes such a record (<see cref="AlertError.JsonTooLarge"/>),
    /// but every rule of the layout holds for one whose text is full of control characters (each escapes to 6 bytes), so
    /// one left on flash by firmware that did not check is read, not refused: the alert still reaches a person.
    /// </summary>
    /// <param name="view">Attached to the record (in a writable buffer, e.g. the store's RAM copy).</param>
    /// <param name="size">The record's size afterwards (<see cref="AlertRecordView.Size"/> when nothing was cut).</param>
    /// <returns>True when the text was cut: then attach the view again before reading the record through it.</returns>
    public static bool CutTextToFit(AlertRecordView view, out int size)
    {
        if (view == null)
        {
            throw new ArgumentNullException(nameof(view));
        }

        byte[] b = view.Buffer;
        int text = view.TextOffset;
        int textLength = view.TextLength;
        int escapedText = JsonOutput.EscapedLength(b, text, textLength);
        int others = JsonOverhead + view.CodeLength;
        for (int i = 0; i < view.ValueCount; i++)
        {
            others += JsonPerValue + view.GetValueNameLength(i);
        }

        size = view.Size;
        if (others + escapedText <= MaxJsonLength)
        {
            return false;
        }

        // The longest prefix of whole characters whose escaped bytes, with the marker's, fit; never longer than the
        // text it replaces, so the record does not grow.
        int budget = MaxJsonLength - others - CutTextMarker.Length;
        int limit = textLength - CutTextMarker.Length;
        int cut = 0;
        int used = 0;
        for (int i = 0; i < textLength && i <= limit; i++)
        {
            byte c = b[text + i];
            if ((c & 0xC0) != 0x80)
            {
                cut = i; // a character starts here: the bytes before it are whole characters
            }

            used += JsonOutput.EscapedLength(c);
            if (used > budget)
            {
                break;
            }
        }

        int end = view.Offset + view.Size;
        int valuesAt = text + textLength;
        int newTextLength = cut + WriteAscii(CutTextMarker, b, text + cut);
        Array.Copy(b, valuesAt, b, text + newTextLength, end - valuesAt);
        b[view.Offset + OffsetTextLength] = (byte)newTextLength;
        b[view.Offset + OffsetTextLength + 1] = (byte)(newTextLength >> 8);
        size -= textLength - newTextLength;
        return true;
    }

    /// <summary>Tells whether a name fits <c>[A-Za-z0-9_.-]{1,32}</c>.</summary>
    internal static bool IsValidValueName(string name)
    {
        if (name == null || name.Length == 0 || name.Length > Alert.MaxValueNameLength)
        {
            return false;
        }

        for (int i = 0; i < name.Length; i++)
        {
            if (!IsNameByte(name[i]))
            {
                return false;
            }
        }

        return true;
    }

    internal static bool IsNameByte(int c) =>
        (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';

    internal static bool IsCodeByte(int c) =>
        (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';

    internal static bool IsValidTime(long unixMs) => unixMs == UnknownTime || (unixMs >= 0 && unixMs <= MaxUnixMs);

    internal static uint ReadUInt32(byte[] b, int p) =>
        b[p] | ((uint)b[p + 1] << 8) | ((uint)b[p + 2] << 16) | ((uint)b[p + 3] << 24);

    internal static long ReadInt64(byte[] b, int p) =>
        (long)(ReadUInt32(b, p) | ((ulong)ReadUInt32(b, p + 4) << 32));

    private static void WriteUInt32(byte[] b, int p, uint v)
    {
        b[p] = (byte)v;
        b[p + 1] = (byte)(v >> 8);
        b[p + 2] = (byte)(v >> 16);
        b[p + 3] = (byte)(v >> 24);
    }

    private static void WriteInt64(byte[] b, int p, long v)
    {
        WriteUInt32(b, p, (uint)v);
        WriteUInt32(b, p + 4, (uint)((ulong)v >> 32));
    }

    private static int WriteAscii(string s, byte[] b, int p)
    {
        for (int i = 0; i < s.Length; i++)
        {
            b[p + i] = (byte)s[i];
        }

        return s.Length;
    }
}
