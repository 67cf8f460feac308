using System.Globalization;

namespace EdgeMail.Gateway.Devices;

/// <summary>
/// What a device's name and site may be, wherever they are set (the configuration's <c>Devices</c>, the console and
/// <c>edgemail devices add</c> through its API). They go into every alert mail (subject, text, the From phrase of
/// relayed mail) and the console: mail shows at most <see cref="MaxLength"/> characters of each, and a control
/// character has no place on a header line, so a value that mail would have to clip or change is refused instead.
/// </summary>
public static class DeviceText
{
    /// <summary>Most characters (UTF-16 code units: an emoji counts two) of a name or a site; mail clips there.</summary>
    public const int MaxLength = 200;

    /// <summary>Why a name or site cannot be taken, and the fix; null when it can (null and empty can: the defaults apply).</summary>
    /// <param name="value">The name or site.</param>
    /// <returns>The problem (to follow the value's key, e.g. <c>name: is 201 characters long…</c>) and its fix, or null.</returns>
    public static (string Problem, string Fix)? Problem(string? value)
    {
        if (value is null)
        {
            return null;
        }

        if (value.Length > MaxLength)
        {
            return ($"is {value.Length.ToString(CultureInfo.InvariantCulture)} characters long, over the limit of {MaxLength.ToString(CultureInfo.InvariantCulture)}",
                $"shorten it to at most {MaxLength.ToString(CultureInfo.InvariantCulture)} characters");
        }

        for (int i = 0; i < value.Length; i++)
        {
            char c = value[i];
            if (char.IsControl(c) || c is '\u2028' or '\u2029')
            {
                return ($"contains a line break or another control character ({Describe(c, i)})", "write it on one line, without tabs or control characters");
            }

            if (char.IsHighSurrogate(c) && i + 1 < value.Length && char.IsLowSurrogate(value[i + 1]))
            {
                i++;
            }
            else if (char.IsSurrogate(c))
            {
                return ($"contains half of a surrogate pair ({Describe(c, i)}), which is no character", "give it as valid Unicode text");
            }
        }

        return null;
    }

    private static string Describe(char c, int index) =>
        $"U+{((int)c).ToString("X4", CultureInfo.InvariantCulture)} at character {(index + 1).ToString(CultureInfo.InvariantCulture)}";
}
