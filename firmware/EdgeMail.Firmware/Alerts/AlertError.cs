namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// Why an alert, or a stored alert record, was refused. <see cref="None"/> means valid.
/// <see cref="AlertErrors.Describe"/> turns a value into a sentence for logs and exception messages.
/// </summary>
public enum AlertError
{
    /// <summary>Valid.</summary>
    None = 0,

    /// <summary>The code is empty.</summary>
    CodeEmpty,

    /// <summary>The code is longer than <see cref="Alert.MaxCodeLength"/> characters.</summary>
    CodeTooLong,

    /// <summary>The code has a character outside <c>[A-Z0-9_.-]</c>.</summary>
    CodeInvalidCharacter,

    /// <summary>The text is longer than <see cref="Alert.MaxTextBytes"/> bytes of UTF-8.</summary>
    TextTooLong,

    /// <summary>A value name is empty, too long, has a character outside <c>[A-Za-z0-9_.-]</c>, or repeats another.</summary>
    ValueNameInvalid,

    /// <summary>A value's decimal scale is outside 0..<see cref="FixedPoint.MaxScale"/>.</summary>
    ValueScaleOutOfRange,

    /// <summary>The severity or state is not one of the defined enum members.</summary>
    EnumOutOfRange,

    /// <summary>The alert's JSON could exceed the 4 KiB payload limit of Contract 1 (text full of control characters).</summary>
    JsonTooLarge,

    /// <summary>A time is neither <see cref="AlertRecord.UnknownTime"/> nor within 1970-01-01..9999-12-31, or an uptime is negative.</summary>
    TimeOutOfRange,

    /// <summary>The destination buffer cannot hold the record.</summary>
    BufferTooSmall,

    /// <summary>The record's first byte names a layout version this firmware does not know.</summary>
    RecordVersionUnknown,

    /// <summary>The record's bytes are inconsistent (lengths, enum bytes, reserved bits, characters or UTF-8).</summary>
    RecordMalformed,
}

/// <summary>Sentences for <see cref="AlertError"/> values.</summary>
public static class AlertErrors
{
    /// <summary>Describes an error in one sentence that says what was expected.</summary>
    /// <param name="error">The error.</param>
    /// <returns>A constant English sentence (no allocation).</returns>
    public static string Describe(AlertError error)
    {
        switch (error)
        {
            case AlertError.None:
                return "The alert is valid.";
            case AlertError.CodeEmpty:
                return "The alert code is empty; it must match [A-Z0-9_.-]{1,64}.";
            case AlertError.CodeTooLong:
                return "The alert code is longer than 64 characters; it must match [A-Z0-9_.-]{1,64}.";
            case AlertError.CodeInvalidCharacter:
                return "The alert code has a character outside [A-Z0-9_.-]; use upper-case letters, digits, '_', '.' or '-'.";
            case AlertError.TextTooLong:
                return "The alert text is longer than 1024 bytes of UTF-8; shorten it.";
            case AlertError.ValueNameInvalid:
                return "A value name is empty, longer than 32 characters, repeats another name, or has a character outside [A-Za-z0-9_.-].";
            case AlertError.ValueScaleOutOfRange:
                return "A value's decimal scale is outside 0..9.";
            case AlertError.EnumOutOfRange:
                return "The severity or state is not a defined value.";
            case AlertError.JsonTooLarge:
                return "The alert's JSON could exceed the 4096-byte payload limit (control characters in the text escape to 6 bytes each); shorten the text.";
            case AlertError.TimeOutOfRange:
                return "A time is neither AlertRecord.UnknownTime nor Unix milliseconds within 1970..9999, or an uptime is negative.";
            case AlertError.BufferTooSmall:
                return "The destination buffer is too small; size it with AlertRecord.Measure or AlertRecord.MaxSize.";
            case AlertError.RecordVersionUnknown:
                return "The record's layout version (first byte) is not one this firmware knows.";
            case AlertError.RecordMalformed:
                return "The record's bytes are inconsistent: lengths, enum bytes, reserved bits, code characters or UTF-8.";
            default:
                return "Unknown alert error.";
        }
    }
}
