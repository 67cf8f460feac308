using System;

namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// Reads the fields of a stored <see cref="AlertRecord"/> straight from its bytes. Create one, then
/// <see cref="Attach"/> it to each record in turn: attaching checks the whole layout once (lengths, enum bytes,
/// reserved bits, code characters, UTF-8) and remembers where the variable parts are, so the getters are plain
/// array reads and nothing is allocated. Not thread-safe; one per reading thread.
/// </summary>
public sealed class AlertRecordView
{
    private static readonly byte[] NoBytes = new byte[0];
    private readonly int[] _valueOffsets = new int[Alert.MaxValues];
    private byte[] _buffer = NoBytes;
    private int _offset;

    /// <summary>True after a successful <see cref="Attach"/>.</summary>
    public bool IsAttached { get; private set; }

    /// <summary>The buffer of the attached record.</summary>
    public byte[] Buffer => _buffer;

    /// <summary>Where the attached record starts in <see cref="Buffer"/>.</summary>
    public int Offset => _offset;

    /// <summary>The attached record's size in bytes (any bytes after it in the given length are ignored).</summary>
    public int Size { get; private set; }

    /// <summary>Raised or cleared.</summary>
    public AlertState State => (AlertState)_buffer[_offset + AlertRecord.OffsetState];

    /// <summary>How bad it is.</summary>
    public Severity Severity => (Severity)_buffer[_offset + AlertRecord.OffsetSeverity];

    /// <summary>The boot the alert was raised in.</summary>
    public uint Boot => AlertRecord.ReadUInt32(_buffer, _offset + AlertRecord.OffsetBoot);

    /// <summary>How many occurrences this record stands for (1, or more when repeats were coalesced).</summary>
    public uint Count => AlertRecord.ReadUInt32(_buffer, _offset + AlertRecord.OffsetCount);

    /// <summary>Wall-clock time of the raise in Unix milliseconds, or <see cref="AlertRecord.UnknownTime"/>.</summary>
    public long RaisedUnixMs => AlertRecord.ReadInt64(_buffer, _offset + AlertRecord.OffsetRaisedUnix);

    /// <summary>Milliseconds since the start of boot <see cref="Boot"/> at the raise.</summary>
    public long RaisedUptimeMs => AlertRecord.ReadInt64(_buffer, _offset + AlertRecord.OffsetRaisedUptime);

    /// <summary>First occurrence: Unix ms, or uptime ms in boot <see cref="Boot"/> when <see cref="FirstIsUptime"/>, or <see cref="AlertRecord.UnknownTime"/>.</summary>
    public long First => AlertRecord.ReadInt64(_buffer, _offset + AlertRecord.OffsetFirst);

    /// <summary>True when <see cref="First"/> is an uptime rather than a Unix time.</summary>
    public bool FirstIsUptime => (_buffer[_offset + AlertRecord.OffsetFlags] & AlertRecord.FlagFirstIsUptime) != 0;

    /// <summary>Last occurrence: Unix ms, or uptime ms in boot <see cref="Boot"/> when <see cref="LastIsUptime"/>, or <see cref="AlertRecord.UnknownTime"/>.</summary>
    public long Last => AlertRecord.ReadInt64(_buffer, _offset + AlertRecord.OffsetLast);

    /// <summary>True when <see cref="Last"/> is an uptime rather than a Unix time.</summary>
    public bool LastIsUptime => (_buffer[_offset + AlertRecord.OffsetFlags] & AlertRecord.FlagLastIsUptime) != 0;

    /// <summary>Index in <see cref="Buffer"/> of the code's first byte (ASCII).</summary>
    public int CodeOffset => _offset + AlertRecord.HeaderSize;

    /// <summary>Length of the code in bytes.</summary>
    public int CodeLength => _buffer[_offset + AlertRecord.OffsetCodeLength];

    /// <summary>Index in <see cref="Buffer"/> of the text's first byte (UTF-8).</summary>
    public int TextOffset => CodeOffset + CodeLength;

    /// <summary>Length of the text in bytes.</summary>
    public int TextLength => _buffer[_offset + AlertRecord.OffsetTextLength] | (_buffer[_offset + AlertRecord.OffsetTextLength + 1] << 8);

    /// <summary>How many named values the record has.</summary>
    public int ValueCount => _buffer[_offset + AlertRecord.OffsetValueCount];

    /// <summary>
    /// Checks the record at <paramref name="offset"/> and, when it is valid, attaches the view to it.
    /// </summary>
    /// <param name="buffer">The buffer holding the record.</param>
    /// <param name="offset">Where the record starts.</param>
    /// <param name="length">The bytes available for it (the payload length); trailing padding is allowed.</param>
    /// <returns><see cref="AlertError.None"/>, <see cref="AlertError.RecordVersionUnknown"/> or <see cref="AlertError.RecordMalformed"/>. On error the view is detached.</returns>
    public AlertError Attach(byte[] buffer, int offset, int length)
    {
        IsAttached = false;
        if (buffer == null)
        {
            throw new ArgumentNullException(nameof(buffer));
        }

        if (offset < 0 || length < 0 || offset > buffer.Length - length)
        {
            throw new ArgumentOutOfRangeException(nameof(length), "The record range lies outside the buffer.");
        }

        if (length < 1)
        {
            return AlertError.RecordMalformed;
        }

        if (buffer[offset] != AlertRecord.Version)
        {
            return AlertError.RecordVersionUnknown;
        }

        if (length < AlertRecord.HeaderSize
            || buffer[offset + AlertRecord.OffsetState] > (byte)AlertState.Cleared
            || buffer[offset + AlertRecord.OffsetSeverity] > (byte)Severity.Critical
            || (buffer[offset + AlertRecord.OffsetFlags] & ~(AlertRecord.FlagFirstIsUptime | AlertRecord.FlagLastIsUptime)) != 0)
        {
            return AlertError.RecordMalformed;
        }

        int codeLength = buffer[offset + AlertRecord.OffsetCodeLength];
        int valueCount = buffer[offset + AlertRecord.OffsetValueCount];
        int textLength = buffer[offset + AlertRecord.OffsetTextLength] | (buffer[offset + AlertRecord.OffsetTextLength + 1] << 8);
        int end = offset + length;
        int p = offset + AlertRecord.HeaderSize;
        if (codeLength < 1 || codeLength > Alert.MaxCodeLength || textLength > Alert.MaxTextBytes || valueCount > Alert.MaxValues
            || end - p < codeLength + textLength
            || AlertRecord.ReadUInt32(buffer, offset + AlertRecord.OffsetCount) == 0
            || !AlertRecord.IsValidTime(AlertRecord.ReadInt64(buffer, offset + AlertRecord.OffsetRaisedUnix))
            || AlertRecord.ReadInt64(buffer, offset + AlertRecord.OffsetRaisedUptime) < 0
            || !IsValidOccurrence(buffer, offset + AlertRecord.OffsetFirst)
            || !IsValidOccurrence(buffer, offset + AlertRecord.OffsetLast))
        {
            return AlertError.RecordMalformed;
        }

        for (int i = 0; i < codeLength; i++)
        {
            if (!AlertRecord.IsCodeByte(buffer[p + i]))
            {
                return AlertError.RecordMalformed;
            }
        }

        p += codeLength;
        if (!Utf8.IsValid(buffer, p, textLength))
        {
            return AlertError.RecordMalformed;
        }

        p += textLength;
        for (int v = 0; v < valueCount; v++)
        {
            if (end - p < 1)
            {
                return AlertError.RecordMalformed;
            }

            int nameLength = buffer[p];
            if (nameLength < 1 || nameLength > Alert.MaxValueNameLength || end - p < AlertRecord.ValueFixedSize + nameLength
                || buffer[p + 1 + nameLength] > FixedPoint.MaxScale)
            {
                return AlertError.RecordMalformed;
            }

            for (int i = 0; i < nameLength; i++)
            {
                if (!AlertRecord.IsNameByte(buffer[p + 1 + i]))
                {
                    return AlertError.RecordMalformed;
                }
            }

            _valueOffsets[v] = p;
            p += AlertRecord.ValueFixedSize + nameLength;
        }

        _buffer = buffer;
        _offset = offset;
        Size = p - offset;
        IsAttached = true;
        return AlertError.None;
    }

    /// <summary>Index in <see cref="Buffer"/> of value <paramref name="index"/>'s name (ASCII).</summary>
    /// <param name="index">Which value, below <see cref="ValueCount"/>.</param>
    /// <returns>The index of the name's first byte.</returns>
    public int GetValueNameOffset(int index) => ValueAt(index) + 1;

    /// <summary>Length in bytes of value <paramref name="index"/>'s name.</summary>
    /// <param name="index">Which value.</param>
    /// <returns>The length.</returns>
    public int GetValueNameLength(int index) => _buffer[ValueAt(index)];

    /// <summary>Digits after the point of value <paramref name="index"/>.</summary>
    /// <param name="index">Which value.</param>
    /// <returns>The scale, 0..9.</returns>
    public int GetValueScale(int index)
    {
        int p = ValueAt(index);
        return _buffer[p + 1 + _buffer[p]];
    }

    /// <summary>Mantissa of value <paramref name="index"/>.</summary>
    /// <param name="index">Which value.</param>
    /// <returns>The mantissa.</returns>
    public long GetValueMantissa(int index)
    {
        int p = ValueAt(index);
        return AlertRecord.ReadInt64(_buffer, p + 2 + _buffer[p]);
    }

    /// <summary>The code as a new string (allocates; for tests and diagnostics).</summary>
    /// <returns>The code.</returns>
    public string DecodeCode() => Utf8.Decode(_buffer, CheckAttached().CodeOffset, CodeLength);

    /// <summary>The text as a new string (allocates; for tests and diagnostics).</summary>
    /// <returns>The text.</returns>
    public string DecodeText() => Utf8.Decode(_buffer, CheckAttached().TextOffset, TextLength);

    /// <summary>Value <paramref name="index"/>'s name as a new string (allocates; for tests and diagnostics).</summary>
    /// <param name="index">Which value.</param>
    /// <returns>The name.</returns>
    public string DecodeValueName(int index) => Utf8.Decode(_buffer, GetValueNameOffset(index), GetValueNameLength(index));

    private static bool IsValidOccurrence(byte[] buffer, int p)
    {
        long time = AlertRecord.ReadInt64(buffer, p);
        return time == AlertRecord.UnknownTime || (time >= 0 && time <= AlertRecord.MaxUnixMs);
    }

    private AlertRecordView CheckAttached()
    {
        if (!IsAttached)
        {
            throw new InvalidOperationException("The view is not attached to a valid record; call Attach first.");
        }

        return this;
    }

    private int ValueAt(int index)
    {
        CheckAttached();
        if (index < 0 || index >= ValueCount)
        {
            throw new ArgumentOutOfRangeException(nameof(index), "The index must be below ValueCount.");
        }

        return _valueOffsets[index];
    }
}
