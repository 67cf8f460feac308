using System.Text;

namespace EdgeMail.Gateway.Tests.Hostile;

/// <summary>One payload a device (or an attacker holding a device's secret) might publish, and what must become of it.</summary>
/// <param name="Name">What it tries.</param>
/// <param name="Payload">The bytes.</param>
/// <param name="Mailed">True when it is a valid alert that must be mailed; false when it must be rejected with a reason.</param>
/// <param name="Id">Its alert id when it has a readable one.</param>
public sealed record HostileVector(string Name, byte[] Payload, bool Mailed, string? Id)
{
    public override string ToString() => Name;
}

/// <summary>
/// Extreme and invalid alert payloads beyond the shared contract's examples: values at and past every bound, times no
/// clock can hold, numbers JSON allows and no device sends, nesting, duplicates, odd Unicode, header injection.
/// </summary>
public static class HostileVectors
{
    private static int _n;

    public static IReadOnlyList<HostileVector> Extreme { get; } = Build();

    // A valid alert with some fields replaced (raw JSON text per field, null to drop it).
    private static string Alert(string id, params (string Key, string? Json)[] changes)
    {
        var fields = new List<(string Key, string Json)>
        {
            ("v", "1"), ("id", Quote(id)), ("seq", "1"), ("state", "\"raised\""), ("sev", "\"critical\""), ("code", "\"TEMP_HIGH\""),
            ("text", "\"Too warm\""), ("values", "{\"temp_c\":-9.5}"), ("raised", "\"2026-11-28T09:58:12Z\""), ("boot", "1"), ("count", "1"),
        };
        foreach (var (key, json) in changes)
        {
            int at = fields.FindIndex(f => f.Key == key);
            if (json is null)
            {
                fields.RemoveAt(at);
            }
            else if (at >= 0)
            {
                fields[at] = (key, json);
            }
            else
            {
                fields.Add((key, json));
            }
        }

        return "{" + string.Join(",", fields.Select(f => Quote(f.Key) + ":" + f.Json)) + "}";
    }

    private static string Quote(string s) => System.Text.Json.JsonSerializer.Serialize(s);

    private static List<HostileVector> Build()
    {
        var list = new List<HostileVector>();
        void Ok(string name, string json, string id) => list.Add(new(name, Encoding.UTF8.GetBytes(json), true, id));
        void Bad(string name, string json, string? id) => list.Add(new(name, Encoding.UTF8.GetBytes(json), false, id));
        string Next() => "x" + Interlocked.Increment(ref _n).ToString(System.Globalization.CultureInfo.InvariantCulture);

        string id;
        Bad("age_ms of 3,000 years", Alert(id = Next(), ("raised", null), ("age_ms", "100000000000000")), id);
        Bad("raised in year 9999", Alert(id = Next(), ("raised", "\"9999-12-31T23:59:59Z\"")), id);
        Bad("raised in year 1", Alert(id = Next(), ("raised", "\"0001-01-01T00:00:00Z\"")), id);
        Bad("raised past what DateTimeOffset holds with its offset", Alert(id = Next(), ("raised", "\"9999-12-31T23:59:59-14:00\"")), id);
        Ok("raised at +14:00", Alert(id = Next(), ("raised", "\"2026-11-29T09:58:12+14:00\"")), id);
        Ok("raised on a leap second", Alert(id = Next(), ("raised", "\"2016-12-31T23:59:60Z\"")), id);
        Ok("raised with 20 fraction digits", Alert(id = Next(), ("raised", "\"2026-11-28T09:58:12.12345678901234567890Z\"")), id);
        Ok("age_ms of nine years", Alert(id = Next(), ("raised", null), ("age_ms", "283996800000")), id);
        Bad("value of 1e308", Alert(id = Next(), ("values", "{\"x\":1e308}")), id);
        Ok("value just inside 2^63", Alert(id = Next(), ("values", "{\"x\":-9.2e18}")), id);
        Bad("number beyond double", Alert(id = Next(), ("values", "{\"x\":1e999999}")), id);
        Bad("seq of 2^53", Alert(id = Next(), ("seq", "9007199254740992")), id);
        Bad("seq of 1.5", Alert(id = Next(), ("seq", "1.5")), id);
        Ok("seq of -0", Alert(id = Next(), ("seq", "-0")), id);
        Bad("seq as a string", Alert(id = Next(), ("seq", "\"1\"")), id);
        Bad("count of 2^32", Alert(id = Next(), ("count", "4294967296")), id);
        Bad("count of 2^63", Alert(id = Next(), ("count", "9223372036854775808")), id);
        Bad("negative boot", Alert(id = Next(), ("boot", "-1")), id);
        Bad("nesting 200 deep", Alert(id = Next(), ("extra", new string('[', 200) + new string(']', 200))), id);
        Bad("nested values", Alert(id = Next(), ("values", "{\"x\":{\"y\":1}}")), id);
        Bad("33 values", Alert(id = Next(), ("values", "{" + string.Join(",", Enumerable.Range(0, 33).Select(i => $"\"v{i}\":{i}")) + "}")), id);
        Bad("duplicate key", Alert(id = Next(), ("seq", "1,\"seq\":2")), id);
        Bad("lone surrogate in text", Alert(id = Next(), ("text", "\"\\ud800 alone\"")), id);
        Bad("NaN literal", Alert(id = Next(), ("values", "{\"x\":NaN}")), null);
        Ok("right-to-left override, zero-width and emoji in text", Alert(id = Next(), ("text", Quote("\u202Egnirts\u200B \U0001F525 fire"))), id);
        Ok("header injection in text", Alert(id = Next(), ("text", Quote("hot\r\nBcc: victim@evil.example\r\n\r\nbody"))), id);
        Ok("text of exactly 1 KiB", Alert(id = Next(), ("text", Quote(new string('t', 1024)))), id);
        Bad("text of 1 KiB and one byte", Alert(id = Next(), ("text", Quote(new string('t', 1025)))), id);
        Ok("id of 128 characters", Alert(id = new string('i', 120) + Next().PadLeft(8, '0')), id);
        Bad("id with a newline", Alert("bad\nid"), "bad\nid");
        Ok("code of 64 characters", Alert(id = Next(), ("code", Quote(new string('C', 64)))), id);
        Bad("code of 65 characters", Alert(id = Next(), ("code", Quote(new string('C', 65)))), id);
        Ok("first after last (a clock set back between repeats)", Alert(id = Next(), ("count", "3"), ("first", "\"2026-11-28T10:00:00Z\""), ("last", "\"2026-11-28T09:00:00Z\"")), id);
        Ok("unknown keys", Alert(id = Next(), ("future_field", "{\"a\":1}"), ("future_list", "[1,2]")), id);
        Bad("payload of 4 KiB and one byte (not parsed, so its id is not read)", Pad(Alert(Next()), 4097), null);
        Bad("empty payload", string.Empty, null);
        Bad("a JSON array", "[1,2,3]", null);
        Bad("two objects", Alert(id = Next()) + Alert(Next()), null);
        list.Add(new HostileVector("binary garbage", [0xff, 0x00, 0xfe, 0x7b, 0x22, 0x80, 0xc3], false, null));
        return list;
    }

    private static string Pad(string json, int size) => json[..^1] + ",\"pad\":\"" + new string('p', size - json.Length - 9) + "\"}";
}
