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
/// nesting at most 3 levels, payload ≤ 4 KiB, text ≤ 1 KiB, code <c>[A-Z0-9_.-]{1,64}</c>. Unknown keys are
/// ignored so later firmware can add fields.
/// </summary>
public static class AlertParser
{
    /// <summary>Largest payload accepted, in bytes.</summary>
    public const int MaxPayloadBytes = 4096;

    /// <summary>Largest text accepted, in UTF-8 bytes.</summary>
    public const int MaxTextBytes = 1024;

    /// <summary>Deepest nesting accepted (the alert object is depth 1, <c>values</c> depth 2).</summary>
    public const int MaxDepth = 3;

    private const int MaxValues = 32;

    /// <summary>Parses one alert payload.</summary>
    /// <param name="payload">The MQTT payload.</param>
    /// <returns>The alert or the reason for rejecting it.</returns>
    public static AlertParseResult Parse(ReadOnlySpan<byte> payload)
    {
        if (payload.Length > MaxPayloadBytes)
        {
            return new(null, "payload is larger than 4 KiB", null);
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
            error = "payload is not UTF-8 JSON";
        }

        return error is not null ? new(null, error, fields.IdOrNull) : Validate(fields);
    }

    private sealed class Fields
    {
        public Dictionary<string, object?> Values { get; } = new(StringComparer.Ordinal);

        public List<KeyValuePair<string, double>> Numbers { get; } = [];

        public string? IdOrNull => Values.TryGetValue("id", out var v) && v is string s && s.Length is > 0 and <= 128 ? s : null;
    }

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
                fields.Values[key] = "object";
                var seen = new HashSet<string>(StringComparer.Ordinal);
                while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
                {
                    string name = reader.GetString()!;
                    reader.Read();
                    if (!seen.Add(name))
                    {
                        return $"duplicate key 'values.{Printable(name)}'";
                    }

                    if (reader.TokenType != JsonTokenType.Number || !reader.TryGetDouble(out double number) || !double.IsFinite(number))
                    {
                        return "values must be an object of numbers";
                    }

                    if (name.Length is 0 or > 64 || fields.Numbers.Count >= MaxValues)
                    {
                        return "values has at most 32 names of 1 to 64 characters";
                    }

                    fields.Numbers.Add(new(name, number));
                }

                continue;
            }

            switch (reader.TokenType)
            {
                case JsonTokenType.String:
                    fields.Values[key] = reader.GetString();
                    break;
                case JsonTokenType.Number:
                    fields.Values[key] = reader.TryGetInt64(out long l) ? (object)l : reader.GetDouble();
                    break;
                case JsonTokenType.True or JsonTokenType.False:
                    fields.Values[key] = reader.GetBoolean();
                    break;
                case JsonTokenType.Null:
                    fields.Values[key] = null;
                    break;
                default:
                    // An object or array under an unknown (or misused) key: walk it, bounded.
                    fields.Values[key] = reader.TokenType == JsonTokenType.StartArray ? "array" : "object";
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

    private static AlertParseResult Validate(Fields f)
    {
        var v = f.Values;
        string? id = f.IdOrNull;
        AlertParseResult Reject(string reason) => new(null, reason, id);

        if (!v.TryGetValue("v", out var version))
        {
            return Reject("v is required");
        }

        if (version is not long ver || ver != 1)
        {
            return Reject("only version 1 is known");
        }

        if (!v.TryGetValue("id", out var idValue) || idValue is null)
        {
            return Reject("id is required");
        }

        if (idValue is not string idText || idText.Length is 0 or > 128 || idText.Any(char.IsControl))
        {
            return Reject("id must be a string of 1 to 128 printable characters");
        }

        if (!v.TryGetValue("seq", out var seqValue))
        {
            return Reject("seq is required");
        }

        if (seqValue is not long seq || seq < 0)
        {
            return Reject("seq must be a non-negative integer");
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

        if (v.TryGetValue("values", out var valuesValue) && valuesValue is not null and not "object")
        {
            return Reject("values must be an object of numbers");
        }

        if (!TryTime(v, "raised", out var raised))
        {
            return Reject("raised must be an ISO-8601 time with offset, e.g. 2026-11-28T09:58:12Z");
        }

        if (!TryCount(v, "age_ms", 0, out long? ageMs))
        {
            return Reject("age_ms must be a non-negative integer");
        }

        if (!TryCount(v, "boot", 0, out long? boot))
        {
            return Reject("boot must be a non-negative integer");
        }

        if (!TryCount(v, "count", 1, out long? count))
        {
            return Reject("count must be a positive integer");
        }

        if (!TryTime(v, "first", out var first) || !TryTime(v, "last", out var last))
        {
            return Reject("first and last must be ISO-8601 times with offset");
        }

        var alert = new Alert(idText, seq, state, severity, code, text, f.Numbers, raised, ageMs, boot ?? 0, count ?? 1, first, last);
        return new(alert, null, idText);
    }

    /// <summary>True when <paramref name="code"/> matches <c>[A-Z0-9_.-]{1,64}</c>.</summary>
    /// <param name="code">The code.</param>
    /// <returns>Whether it is a valid alert code.</returns>
    public static bool IsCode(string code) =>
        code.Length is > 0 and <= 64 && code.All(c => c is (>= 'A' and <= 'Z') or (>= '0' and <= '9') or '_' or '.' or '-');

    private static bool TryCount(Dictionary<string, object?> v, string key, long min, out long? value)
    {
        value = null;
        if (!v.TryGetValue(key, out var raw) || raw is null)
        {
            return true;
        }

        if (raw is long l && l >= min)
        {
            value = l;
            return true;
        }

        return false;
    }

    private static bool TryTime(Dictionary<string, object?> v, string key, out DateTimeOffset? value)
    {
        value = null;
        if (!v.TryGetValue(key, out var raw) || raw is null)
        {
            return true;
        }

        if (raw is string s && s.Length is >= 20 and <= 40 && s[10] is 'T' or 't'
            && (s.EndsWith('Z') || s.EndsWith('z') || s[^6] is '+' or '-')
            && DateTimeOffset.TryParse(s, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var parsed))
        {
            value = parsed;
            return true;
        }

        return false;
    }

    private static string Printable(string s) =>
        new(s.Take(64).Select(c => char.IsControl(c) ? '?' : c).ToArray());
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
