using System.Globalization;
using System.Text;
using System.Text.Json;

namespace EdgeMail.Gateway.Ingest;

/// <summary>The outcome of parsing an alert: either the alert or the reason it was rejected.</summary>
/// <param name="Alert">The alert, when valid.</param>
/// <param name="Reason">Why it was rejected, when invalid.</param>
/// <param name="Id">The alert id when one could be read (also for rejected alerts, for the receipt).</param>
public readonly record struct AlertParseResult(Alert? Alert, string? Reason, string? Id)
{
    /// <summary>True when the alert is valid.</summary>
    public bool IsValid => Alert is not null;
}

/// <summary>
/// Parses and validates alert JSON (Contract 1, version 1) without I/O: UTF-8 JSON object, no duplicate keys,
/// nesting at most 3 levels, payload ≤ 4 KiB, text ≤ 1 KiB, code <c>[A-Z0-9_.-]{1,64}</c>, and every field within
/// the ranges below, so that whatever it accepts can be routed, written as mail and delivered (docs/gateway.md,
/// "Alert validation"). Unknown keys are ignored so later firmware can add fields. The result depends on the
/// payload alone (no clock): the spool re-parses stored payloads and must get the same answer.
/// </summary>
public static class AlertParser
{
    /// <summary>Largest payload accepted, in bytes.</summary>
    public const int MaxPayloadBytes = 4096;

    /// <summary>
    /// What the spool keeps of a payload refused as an alert: at most <see cref="MaxPayloadBytes"/> (the broker takes
    /// packets up to 4 MiB, and every refused payload with its own digest is a row of its own, so whole payloads would
    /// let one faulty device fill the disk, and the disk guard then refuses every device). When cut, the reason says
    /// so and gives the full size.
    /// </summary>
    /// <param name="payload">The payload as sent.</param>
    /// <param name="reason">Why it is refused.</param>
    /// <returns>The payload to keep and the reason to keep with it.</returns>
    public static (ReadOnlyMemory<byte> Payload, string Reason) KeepRejected(ReadOnlyMemory<byte> payload, string reason)
    {
        ArgumentNullException.ThrowIfNull(reason);
        return payload.Length <= MaxPayloadBytes
            ? (payload, reason)
            : (payload[..MaxPayloadBytes], string.Create(CultureInfo.InvariantCulture, $"{reason} ({payload.Length} bytes{CutNote}"));
    }

    private static readonly string CutNote = string.Create(CultureInfo.InvariantCulture, $"; only the first {MaxPayloadBytes} are kept)");

    /// <summary>Whether <see cref="KeepRejected"/> cut this payload: then what is kept is not what the device sent.</summary>
    /// <param name="kept">The payload as kept.</param>
    /// <param name="reason">The reason kept with it.</param>
    /// <returns>True when only its first <see cref="MaxPayloadBytes"/> are kept.</returns>
    public static bool WasCut(ReadOnlySpan<byte> kept, string reason)
    {
        ArgumentNullException.ThrowIfNull(reason);
        return kept.Length == MaxPayloadBytes && reason.EndsWith(CutNote, StringComparison.Ordinal);
    }

    /// <summary>
    /// The key a refused payload without a readable id is kept under: its digest, so that a device sending it again is
    /// answered as a duplicate instead of filling the spool.
    /// </summary>
    /// <param name="payload">The payload as sent (whole, not the part kept).</param>
    /// <returns><c>rejected-</c> and the first 16 bytes of its SHA-256, in hex.</returns>
    public static string RejectedId(ReadOnlySpan<byte> payload) =>
        "rejected-" + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(payload).AsSpan(0, 16));

    /// <summary>Largest text accepted, in UTF-8 bytes.</summary>
    public const int MaxTextBytes = 1024;

    /// <summary>Deepest nesting accepted (the alert object is depth 1, <c>values</c> depth 2).</summary>
    public const int MaxDepth = 3;

    /// <summary>Longest alert id, in UTF-16 units.</summary>
    public const int MaxIdLength = 128;

    /// <summary>Most named values in one alert (the firmware sends at most 8).</summary>
    public const int MaxValues = 32;

    /// <summary>Longest value name (the firmware's are at most 32).</summary>
    public const int MaxValueNameLength = 64;

    /// <summary>Largest <c>seq</c>: 2^53 − 1, exact in every JSON reader (the firmware's queue numbers are 32-bit).</summary>
    public const long MaxSeq = (1L << 53) - 1;

    /// <summary>Largest <c>boot</c>: the firmware's boot counter is 32-bit.</summary>
    public const long MaxBoot = uint.MaxValue;

    /// <summary>Largest <c>count</c>: the firmware's repeat counter is 32-bit and saturates there.</summary>
    public const long MaxCount = uint.MaxValue;

    /// <summary>
    /// Largest <c>age_ms</c>: ten years of 365.25 days. An age is measured within one boot, so more than that is a
    /// broken uptime counter, and the time derived from it would be meaningless.
    /// </summary>
    public const long MaxAgeMs = 315_576_000_000;

    /// <summary>Largest magnitude of a value: 2^63, what the firmware's 64-bit mantissa can hold at scale 0.</summary>
    public const double MaxValueMagnitude = 9_223_372_036_854_775_808.0;

    /// <summary>
    /// Earliest time accepted for <c>raised</c>, <c>first</c>, <c>last</c>: a day before the Unix epoch, so a device
    /// whose clock restarted at zero (a common failure of a real-time clock) still gets its alert through, in any
    /// time zone; the mail then shows the wrong time, not nothing.
    /// </summary>
    public static readonly DateTimeOffset EarliestTime = new(1969, 12, 31, 0, 0, 0, TimeSpan.Zero);

    /// <summary>Latest time accepted: no device now in service will see 2200, so a later time is a garbled clock.</summary>
    public static readonly DateTimeOffset LatestTime = new(2200, 1, 1, 0, 0, 0, TimeSpan.Zero);

    private const string TimeRange = "from 1969-12-31T00:00:00Z to 2200-01-01T00:00:00Z";

    /// <summary>Parses one alert payload.</summary>
    /// <param name="payload">The MQTT payload.</param>
    /// <returns>The alert or the reason for rejecting it.</returns>
    public static AlertParseResult Parse(ReadOnlySpan<byte> payload)
    {
        if (payload.Length > MaxPayloadBytes)
        {
            return new(null, "payload is larger than 4 KiB", null);
        }

        if (!System.Text.Unicode.Utf8.IsValid(payload))
        {
            return new(null, "payload is not UTF-8 JSON", null);
        }

        var fields = new Fields();
        string? error;
        try
        {
            error = Read(payload, fields);
        }
        catch (JsonException)
        {
            error = "payload is not UTF-8 JSON";
        }
        catch (InvalidOperationException)
        {
            // The bytes are valid UTF-8, so this is an escape that is not Unicode text.
            error = "a string holds an unpaired surrogate escape (\\uD800 to \\uDFFF)";
        }

        return error is not null ? new(null, error, fields.IdOrNull) : Validate(fields);
    }

    /// <summary>True when <paramref name="code"/> matches <c>[A-Z0-9_.-]{1,64}</c>.</summary>
    /// <param name="code">The code.</param>
    /// <returns>Whether it is a valid alert code.</returns>
    public static bool IsCode(string code) =>
        code.Length is > 0 and <= 64 && code.All(c => c is (>= 'A' and <= 'Z') or (>= '0' and <= '9') or '_' or '.' or '-');

    /// <summary>
    /// True when every character of <paramref name="s"/> is visible text: no control or format characters
    /// (bidirectional overrides, zero-width marks), no line or paragraph separators, no unpaired surrogates and
    /// no non-characters.
    /// </summary>
    /// <param name="s">The string.</param>
    /// <returns>Whether it is printable.</returns>
    public static bool IsPrintable(string s)
    {
        ArgumentNullException.ThrowIfNull(s);
        for (int i = 0; i < s.Length; i++)
        {
            if (!Rune.TryGetRuneAt(s, i, out var rune))
            {
                return false;
            }

            var category = Rune.GetUnicodeCategory(rune);
            if (category is UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator
                || (rune.Value & 0xFFFE) == 0xFFFE || rune.Value is >= 0xFDD0 and <= 0xFDEF)
            {
                return false;
            }

            i += rune.Utf16SequenceLength - 1;
        }

        return true;
    }

    private sealed class Fields
    {
        public Dictionary<string, object?> Values { get; } = new(StringComparer.Ordinal);

        public List<KeyValuePair<string, JsonNumber>> Numbers { get; } = [];

        // Also for an id the alert is rejected for (say, one with a control character): the receipt carries it back
        // exactly, JSON-escaped, so the device can tell which alert was refused.
        public string? IdOrNull => Values.TryGetValue("id", out var v) && v is string s && s.Length is > 0 and <= MaxIdLength ? s : null;
    }

    // A JSON number as sent: its text (for messages), its value as a double, and as an integer when it is one.
    private readonly record struct JsonNumber(string Text, double Value, long? Integer);

    // An object or array, walked but not kept.
    private sealed record Nested(string Kind);

    private static string? Read(ReadOnlySpan<byte> payload, Fields fields)
    {
        var reader = new Utf8JsonReader(payload, new JsonReaderOptions { MaxDepth = 16, CommentHandling = JsonCommentHandling.Disallow });
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
        {
            return "payload must be a JSON object";
        }

        while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
        {
            string key = reader.GetString()!;
            if (fields.Values.ContainsKey(key))
            {
                return $"duplicate key '{Printable(key)}'";
            }

            reader.Read();
            if (key == "values" && reader.TokenType == JsonTokenType.StartObject)
            {
                fields.Values[key] = new Nested("object");
                var seen = new HashSet<string>(StringComparer.Ordinal);
                while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
                {
                    string name = reader.GetString()!;
                    reader.Read();
                    if (!seen.Add(name))
                    {
                        return $"duplicate key 'values.{Printable(name)}'";
                    }

                    if (reader.TokenType != JsonTokenType.Number)
                    {
                        return "values must be an object of numbers";
                    }

                    fields.Numbers.Add(new(name, Number(ref reader)));
                }

                continue;
            }

            switch (reader.TokenType)
            {
                case JsonTokenType.String:
                    fields.Values[key] = reader.GetString();
                    break;
                case JsonTokenType.Number:
                    fields.Values[key] = Number(ref reader);
                    break;
                case JsonTokenType.True or JsonTokenType.False:
                    fields.Values[key] = reader.GetBoolean();
                    break;
                case JsonTokenType.Null:
                    fields.Values[key] = null;
                    break;
                default:
                    // An object or array under an unknown (or misused) key: walk it, bounded.
                    fields.Values[key] = new Nested(reader.TokenType == JsonTokenType.StartArray ? "array" : "object");
                    int depth = reader.CurrentDepth;
                    while (reader.Read() && reader.CurrentDepth > depth)
                    {
                        if (reader.CurrentDepth >= MaxDepth)
                        {
                            return "nesting is deeper than 3 levels";
                        }
                    }

                    break;
            }
        }

        if (reader.Read())
        {
            return "payload must be one JSON object";
        }

        return null;
    }

    private static JsonNumber Number(ref Utf8JsonReader reader)
    {
        // Overflow reads as ±infinity, underflow as (signed) zero; the range checks name the text as sent.
        _ = reader.TryGetDouble(out double value);
        return new(Encoding.UTF8.GetString(reader.ValueSpan), value, reader.TryGetInt64(out long integer) ? integer : null);
    }

    private static AlertParseResult Validate(Fields f)
    {
        var v = f.Values;
        string? id = f.IdOrNull;
        AlertParseResult Reject(string reason) => new(null, reason, id);

        if (!v.TryGetValue("v", out var version))
        {
            return Reject("v is required");
        }

        if (version is not JsonNumber { Integer: 1 })
        {
            return Reject("only version 1 is known");
        }

        if (!v.TryGetValue("id", out var idValue) || idValue is null)
        {
            return Reject("id is required");
        }

        if (idValue is not string idText || idText.Length is 0 or > MaxIdLength || !IsPrintable(idText))
        {
            return Reject("id must be a string of 1 to 128 printable characters");
        }

        if (!v.ContainsKey("seq"))
        {
            return Reject("seq is required");
        }

        if (Integer(v, "seq", 0, MaxSeq, " (2^53 - 1)", "seq must be a non-negative integer", out long? seq, nullable: false) is { } seqError)
        {
            return Reject(seqError);
        }

        AlertState state;
        switch (v.GetValueOrDefault("state"))
        {
            case "raised": state = AlertState.Raised; break;
            case "cleared": state = AlertState.Cleared; break;
            default: return Reject("state must be raised or cleared");
        }

        if (v.GetValueOrDefault("sev") is not ("critical" or "warning" or "info") || !Severities.TryParse((string)v["sev"]!, out var severity))
        {
            return Reject("sev must be critical, warning or info");
        }

        if (v.GetValueOrDefault("code") is not string code || !IsCode(code))
        {
            return Reject("code must match [A-Z0-9_.-]{1,64}");
        }

        string text = string.Empty;
        if (v.TryGetValue("text", out var textValue) && textValue is not null)
        {
            if (textValue is not string t)
            {
                return Reject("text must be a string");
            }

            if (Encoding.UTF8.GetByteCount(t) > MaxTextBytes)
            {
                return Reject("text is at most 1 KiB");
            }

            text = t;
        }

        if (v.TryGetValue("values", out var valuesValue) && valuesValue is not null and not Nested { Kind: "object" })
        {
            return Reject("values must be an object of numbers");
        }

        if (f.Numbers.Count > MaxValues)
        {
            return Reject($"values has {f.Numbers.Count} names; at most {MaxValues} are allowed");
        }

        var values = new List<KeyValuePair<string, double>>(f.Numbers.Count);
        foreach (var (name, number) in f.Numbers)
        {
            if (name.Length is 0 or > MaxValueNameLength || !IsPrintable(name))
            {
                return Reject($"value names must be 1 to 64 printable characters; got '{Printable(name)}'");
            }

            if (!(Math.Abs(number.Value) <= MaxValueMagnitude))
            {
                return Reject($"values.{name} must be from -2^63 to 2^63 (±9223372036854775808); got {Printable(number.Text)}");
            }

            values.Add(new(name, number.Value));
        }

        if (Time(v, "raised", out var raised) is { } raisedError)
        {
            return Reject(raisedError);
        }

        if (Integer(v, "age_ms", 0, MaxAgeMs, " (10 years)", "age_ms must be a non-negative integer", out long? ageMs) is { } ageError)
        {
            return Reject(ageError);
        }

        if (Integer(v, "boot", 0, MaxBoot, " (2^32 - 1)", "boot must be a non-negative integer", out long? boot) is { } bootError)
        {
            return Reject(bootError);
        }

        if (Integer(v, "count", 1, MaxCount, " (2^32 - 1)", "count must be a positive integer", out long? count) is { } countError)
        {
            return Reject(countError);
        }

        if (Time(v, "first", out var first) is { } firstError)
        {
            return Reject(firstError);
        }

        if (Time(v, "last", out var last) is { } lastError)
        {
            return Reject(lastError);
        }

        // first > last is accepted: the firmware stamps each repeat with the clock of the moment, and a clock that
        // was set back between two repeats (NTP correcting a fast clock) produces exactly that. The mail shows both.
        var alert = new Alert(idText, seq!.Value, state, severity, code, text, values, raised, ageMs, boot ?? 0, count ?? 1, first, last);
        return new(alert, null, idText);
    }

    // An integer in [min, max], or absent (and null when allowed). A number with a fraction or an exponent is the
    // wrong type; an integer written in full but outside the range (however large) is out of range, quoted as sent.
    private static string? Integer(Dictionary<string, object?> v, string key, long min, long max, string maxNote, string typeError, out long? value,
        bool nullable = true)
    {
        value = null;
        if (!v.TryGetValue(key, out var raw) || (raw is null && nullable))
        {
            return null;
        }

        if (raw is not JsonNumber number || !IsIntegerText(number.Text))
        {
            return typeError;
        }

        if (number.Integer is not long l || l < min || l > max)
        {
            return string.Create(CultureInfo.InvariantCulture, $"{key} must be from {min} to {max}{maxNote}; got {Printable(number.Text)}");
        }

        value = l;
        return null;
    }

    private static bool IsIntegerText(string text) => text.Length > 0 && text.AsSpan(text[0] == '-' ? 1 : 0).IndexOfAnyExceptInRange('0', '9') < 0;

    private static string? Time(Dictionary<string, object?> v, string key, out DateTimeOffset? value)
    {
        value = null;
        if (!v.TryGetValue(key, out var raw) || raw is null)
        {
            return null;
        }

        if (raw is not string s || !TryReadTime(s, out long utcTicks, out int offsetMinutes))
        {
            return $"{key} must be an ISO-8601 time with offset, e.g. 2026-11-28T09:58:12Z";
        }

        if (offsetMinutes is < -14 * 60 or > 14 * 60)
        {
            return $"{key} must have a UTC offset from -14:00 to +14:00; got {Printable(s)}";
        }

        if (utcTicks < EarliestTime.UtcTicks || utcTicks > LatestTime.UtcTicks)
        {
            return $"{key} must be {TimeRange}; got {Printable(s)}";
        }

        var offset = TimeSpan.FromMinutes(offsetMinutes);
        value = new DateTimeOffset(utcTicks + offset.Ticks, offset);
        return null;
    }

    /// <summary>
    /// Reads an RFC 3339 date-time, <c>yyyy-MM-ddTHH:mm:ss[.fraction](Z|±HH:MM)</c> (<c>T</c> and <c>Z</c> in either
    /// case), as UTC ticks, without the range limits of <see cref="DateTimeOffset"/> (the caller checks the range).
    /// A leap second (<c>:60</c>) is the first instant of the next minute; digits beyond 100 ns are dropped.
    /// </summary>
    private static bool TryReadTime(string s, out long utcTicks, out int offsetMinutes)
    {
        utcTicks = 0;
        offsetMinutes = 0;
        if (s.Length is < 20 or > 64 || s[4] != '-' || s[7] != '-' || s[10] is not ('T' or 't') || s[13] != ':' || s[16] != ':'
            || !Digits(s, 0, 4, out int year) || !Digits(s, 5, 2, out int month) || !Digits(s, 8, 2, out int day)
            || !Digits(s, 11, 2, out int hour) || !Digits(s, 14, 2, out int minute) || !Digits(s, 17, 2, out int second)
            || month is < 1 or > 12 || day < 1 || day > DateTime.DaysInMonth(Math.Max(year, 1), month) || hour > 23 || minute > 59 || second > 60)
        {
            return false;
        }

        int i = 19;
        long fraction = 0;
        if (s[i] == '.')
        {
            int start = ++i;
            while (i < s.Length && char.IsAsciiDigit(s[i]))
            {
                if (i - start < 7)
                {
                    fraction = (fraction * 10) + (s[i] - '0');
                }

                i++;
            }

            if (i == start)
            {
                return false;
            }

            for (int n = i - start; n < 7; n++)
            {
                fraction *= 10;
            }
        }

        if (i == s.Length - 1 && s[i] is 'Z' or 'z')
        {
            offsetMinutes = 0;
        }
        else if (i == s.Length - 6 && s[i] is '+' or '-' && s[i + 3] == ':' && Digits(s, i + 1, 2, out int offsetHours) && Digits(s, i + 4, 2, out int offsetMins)
            && offsetHours <= 23 && offsetMins <= 59)
        {
            offsetMinutes = (s[i] == '-' ? -1 : 1) * ((offsetHours * 60) + offsetMins);
        }
        else
        {
            return false;
        }

        // Year 0000 is valid RFC 3339 but before anything DateTime holds: give it a tick count below every bound.
        long dayTicks = year == 0 ? long.MinValue / 2 : new DateTime(year, month, day, 0, 0, 0, DateTimeKind.Utc).Ticks;
        utcTicks = dayTicks + (hour * TimeSpan.TicksPerHour) + (minute * TimeSpan.TicksPerMinute) + (second * TimeSpan.TicksPerSecond) + fraction
            - (offsetMinutes * TimeSpan.TicksPerMinute);
        return true;
    }

    private static bool Digits(string s, int start, int count, out int value)
    {
        value = 0;
        for (int i = start; i < start + count; i++)
        {
            if (!char.IsAsciiDigit(s[i]))
            {
                return false;
            }

            value = (value * 10) + (s[i] - '0');
        }

        return true;
    }

    // Untrusted text quoted in a reason (logged, stored, sent on the receipt): at most 64 characters, each one visible.
    private static string Printable(string s)
    {
        var sb = new StringBuilder(Math.Min(s.Length, 65));
        for (int i = 0; i < s.Length && sb.Length < 64; i++)
        {
            if (Rune.TryGetRuneAt(s, i, out var rune) && IsPrintable(rune.ToString()))
            {
                sb.Append(rune.ToString());
                i += rune.Utf16SequenceLength - 1;
            }
            else
            {
                sb.Append('?');
            }
        }

        return sb.ToString();
    }
}

/// <summary>Severity names as they appear in alerts and configuration.</summary>
public static class Severities
{
    /// <summary>Parses <c>info</c>, <c>warning</c> or <c>critical</c> (case-insensitive).</summary>
    /// <param name="text">The name.</param>
    /// <param name="severity">The severity.</param>
    /// <returns>True when known.</returns>
    public static bool TryParse(string? text, out Severity severity)
    {
        switch (text?.ToUpperInvariant())
        {
            case "INFO": severity = Severity.Info; return true;
            case "WARNING": severity = Severity.Warning; return true;
            case "CRITICAL": severity = Severity.Critical; return true;
            default: severity = Severity.Info; return false;
        }
    }

    /// <summary>The wire name of a severity.</summary>
    /// <param name="severity">The severity.</param>
    /// <returns><c>info</c>, <c>warning</c> or <c>critical</c>.</returns>
    public static string Name(Severity severity) => severity switch
    {
        Severity.Critical => "critical",
        Severity.Warning => "warning",
        _ => "info",
    };
}
