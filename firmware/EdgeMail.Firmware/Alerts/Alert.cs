using System;

namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// What the application fills to raise or clear an alert: code, text, severity, state and up to
/// <see cref="MaxValues"/> named numeric values. Create one per raising thread and reuse it
/// (<see cref="Reset"/>): filling it allocates nothing but the strings the application already has.
/// Limits (checked by <see cref="AlertRecord.Check(Alert)"/>): code matches <c>[A-Z0-9_.-]{1,64}</c>, text is at most
/// 1024 bytes of UTF-8, value names match <c>[A-Za-z0-9_.-]{1,32}</c> and are distinct.
/// </summary>
public sealed class Alert
{
    /// <summary>The most characters a code may have.</summary>
    public const int MaxCodeLength = 64;

    /// <summary>The most bytes of UTF-8 the text may have.</summary>
    public const int MaxTextBytes = 1024;

    /// <summary>The most named values one alert carries.</summary>
    public const int MaxValues = 8;

    /// <summary>The most characters a value name may have.</summary>
    public const int MaxValueNameLength = 32;

    private readonly string[] _names = new string[MaxValues];
    private readonly long[] _mantissas = new long[MaxValues];
    private readonly int[] _scales = new int[MaxValues];
    private string _code = string.Empty;
    private string _text = string.Empty;

    /// <summary>Creates an empty alert (info, raised, no code yet).</summary>
    public Alert()
    {
    }

    /// <summary>Creates an alert with its code, severity and text.</summary>
    /// <param name="code">The code, <c>[A-Z0-9_.-]{1,64}</c>, e.g. <c>FREEZER_TEMP_HIGH</c>.</param>
    /// <param name="severity">How bad it is.</param>
    /// <param name="text">A sentence for people, at most 1024 bytes of UTF-8.</param>
    public Alert(string code, Severity severity, string text)
    {
        Code = code;
        Severity = severity;
        Text = text;
    }

    /// <summary>The machine-readable code, <c>[A-Z0-9_.-]{1,64}</c>; null reads as empty.</summary>
    public string Code
    {
        get => _code;
        set => _code = value ?? string.Empty;
    }

    /// <summary>The sentence for people, at most 1024 bytes of UTF-8; null reads as empty. Lone surrogates become U+FFFD.</summary>
    public string Text
    {
        get => _text;
        set => _text = value ?? string.Empty;
    }

    /// <summary>How bad it is.</summary>
    public Severity Severity { get; set; }

    /// <summary>Whether the condition began or ended.</summary>
    public AlertState State { get; set; }

    /// <summary>How many named values are set.</summary>
    public int ValueCount { get; private set; }

    /// <summary>Empties the alert for reuse: no code or text, info, raised, no values.</summary>
    public void Reset()
    {
        _code = string.Empty;
        _text = string.Empty;
        Severity = Severity.Info;
        State = AlertState.Raised;
        ClearValues();
    }

    /// <summary>Removes every named value.</summary>
    public void ClearValues()
    {
        for (int i = 0; i < MaxValues; i++)
        {
            _names[i] = string.Empty;
        }

        ValueCount = 0;
    }

    /// <summary>Adds a named value given exactly as fixed point: <paramref name="mantissa"/> × 10^-<paramref name="scale"/>.</summary>
    /// <param name="name">The name, <c>[A-Za-z0-9_.-]{1,32}</c>, distinct within the alert, e.g. <c>temp_c</c>.</param>
    /// <param name="mantissa">The digits, e.g. −95 for −9.5 at scale 1.</param>
    /// <param name="scale">Digits after the point, 0..9.</param>
    /// <exception cref="InvalidOperationException">The alert already has <see cref="MaxValues"/> values.</exception>
    /// <exception cref="ArgumentException">The name is invalid or repeats one already set, or the scale is out of range.</exception>
    public void AddValue(string name, long mantissa, int scale)
    {
        if (ValueCount >= MaxValues)
        {
            throw new InvalidOperationException("An alert carries at most 8 values; call ClearValues or Reset to reuse it.");
        }

        if (!AlertRecord.IsValidValueName(name))
        {
            throw new ArgumentException("A value name must match [A-Za-z0-9_.-]{1,32}.", nameof(name));
        }

        for (int i = 0; i < ValueCount; i++)
        {
            if (_names[i] == name)
            {
                throw new ArgumentException("A value with this name is already set; names must be distinct.", nameof(name));
            }
        }

        if (scale < 0 || scale > FixedPoint.MaxScale)
        {
            throw new ArgumentOutOfRangeException(nameof(scale), "The scale must be 0..9 digits after the point.");
        }

        _names[ValueCount] = name;
        _mantissas[ValueCount] = mantissa;
        _scales[ValueCount] = scale;
        ValueCount++;
    }

    /// <summary>
    /// Adds a named value from a <see cref="double"/>, rounded to <paramref name="decimals"/> digits after the point
    /// (see <see cref="FixedPoint.ToMantissa"/> for the precision): <c>AddValue("temp_c", -9.5, 1)</c>.
    /// </summary>
    /// <param name="name">The name, <c>[A-Za-z0-9_.-]{1,32}</c>.</param>
    /// <param name="value">The number; finite.</param>
    /// <param name="decimals">Digits after the point, 0..9.</param>
    public void AddValue(string name, double value, int decimals) => AddValue(name, FixedPoint.ToMantissa(value, decimals), decimals);

    /// <summary>The name of value <paramref name="index"/> (0-based, below <see cref="ValueCount"/>).</summary>
    /// <param name="index">Which value.</param>
    /// <returns>The name.</returns>
    public string GetValueName(int index) => _names[CheckIndex(index)];

    /// <summary>The mantissa of value <paramref name="index"/>.</summary>
    /// <param name="index">Which value.</param>
    /// <returns>The mantissa.</returns>
    public long GetValueMantissa(int index) => _mantissas[CheckIndex(index)];

    /// <summary>The scale (digits after the point) of value <paramref name="index"/>.</summary>
    /// <param name="index">Which value.</param>
    /// <returns>The scale, 0..9.</returns>
    public int GetValueScale(int index) => _scales[CheckIndex(index)];

    private int CheckIndex(int index)
    {
        if (index < 0 || index >= ValueCount)
        {
            throw new ArgumentOutOfRangeException(nameof(index), "The index must be below ValueCount.");
        }

        return index;
    }
}
