using System.Globalization;
using System.Text;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Routing;
using EdgeMail.Gateway.Spool;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using MimeKit;
using Xunit;

namespace EdgeMail.Gateway.Tests.Hostile;

// The promise behind validation at the door: whatever AlertParser accepts, the gateway can route, write as mail (alone
// and in a digest), put on the wire, read back and deliver into the local mailbox without an exception. The payloads
// come from a generator over the JSON grammar that leans on the edges: extreme and malformed numbers, dates at and
// past every limit, deep nesting, duplicate keys, escapes of lone surrogates, non-characters, NUL and bidi marks.
// A falsified case prints the payload and FsCheck's seed ("Replay: ..."); pass it to [Property(Replay = "...")].
public sealed class AlertPipelinePropertyTests : IDisposable
{
    private const string Host = "gw.test";
    private static readonly DateTimeOffset Now = new(2026, 11, 28, 10, 0, 5, TimeSpan.Zero);
    private static readonly DateTimeOffset[] ReceiveTimes = [new(2026, 11, 28, 10, 0, 0, TimeSpan.Zero), DateTimeOffset.UnixEpoch, new(2199, 12, 31, 23, 59, 59, TimeSpan.Zero)];

    // Device ids as the options validator allows them: [A-Za-z0-9_.-]{1,64}.
    private static readonly string[] Devices = ["dev-1", "site.pump", "site", "A_b-9.x", new('d', 64)];

    private static readonly GatewayOptions Options = new()
    {
        Sender = new SenderOptions { Address = "edgemail@gw.test", DisplayName = "EdgeMail", Hostname = Host },
        Users = new(StringComparer.OrdinalIgnoreCase) { ["alice"] = new UserOptions { Name = "Alice Ärger", Email = "alice@example.com" } },
        Devices = Devices.ToDictionary(d => d, d => new DeviceOptions { Name = "Küche " + d, Site = "Hall 3", Owners = ["alice"] }, StringComparer.Ordinal),
        Routes = [new RouteOptions { To = ["owners", "ops@example.com"] }],
    };

    private static readonly Router Router = new(Options);
    private static readonly MailComposer Composer = new(Options.Sender, TemplateSet.Load(string.Empty));

    private readonly string _root = Path.Combine(Path.GetTempPath(), "edgemail-pipeline-tests", Guid.NewGuid().ToString("N"));
    private readonly LocalMailbox _mailbox;

    public AlertPipelinePropertyTests() => _mailbox = new LocalMailbox(_root);

    public void Dispose()
    {
        try
        {
            Directory.Delete(_root, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    [Property(MaxTest = 250)]
    public Property AcceptedPayload_RoutesComposesAndDeliversWithoutAnException() =>
        Prop.ForAll(Payload().ToArbitrary(), Setting().ToArbitrary(), (json, setting) => RunPipelineAsync(json, setting.Device, setting.ReceivedAt, setting.Repeats));

    // The generator must reach the interesting part: many payloads accepted (so the pipeline runs), many rejected.
    [Fact]
    public void Payload_FromAFixedSeed_IsAcceptedOftenEnoughAndRejectedOftenEnough()
    {
        string[] samples = Gen.Sample(Payload(), 400, new Rnd(20261128), 30);

        var reasons = samples.Select(s => AlertParser.Parse(Encoding.UTF8.GetBytes(s)).Reason ?? "accepted").ToList();

        int accepted = reasons.Count(r => r == "accepted");
        string summary = string.Join("\n", reasons.GroupBy(r => r.Split(';')[0]).OrderByDescending(g => g.Count()).Take(12).Select(g => $"{g.Count()} {g.Key}"));
        Assert.True(accepted is >= 120 and <= 330, $"{accepted} of 400 accepted; outcomes:\n{summary}\nfirst sample: {samples[0]}");
    }

    private async Task<bool> RunPipelineAsync(string json, string device, DateTimeOffset receivedAt, int repeats)
    {
        var parsed = AlertParser.Parse(Encoding.UTF8.GetBytes(json));
        if (parsed.Alert is not { } alert)
        {
            return parsed.Reason is { Length: > 0 };
        }

        var route = Router.Route(device, alert);
        var info = new DeviceInfo(device, Options.Devices[device].Name, Options.Devices[device].Site);
        string? twin = alert.State == AlertState.Cleared ? MessageIds.ForAlert(device, "twin-" + alert.Id, Host) : null;
        var single = Composer.ComposeAlert(new AlertMail(info, alert, receivedAt, "192.0.2.7:50123", 7, route.Recipients, route.Template, twin), Now);
        var held = Enumerable.Range(0, repeats).Select(i => (alert, receivedAt.AddSeconds(-i))).Reverse().ToList();
        var digest = Composer.ComposeDigest(info, held, route.Recipients, TimeSpan.FromMinutes(10), 7, single.MessageId, Now);

        return route.Recipients.Count == 2
            && await WrittenReadAndDeliveredAsync(single, MessageIds.ForAlert(device, alert.Id, Host), route.Recipients)
            && await WrittenReadAndDeliveredAsync(digest, MessageIds.ForDigest(device, alert.Code, alert.Id, Host), route.Recipients);
    }

    private async Task<bool> WrittenReadAndDeliveredAsync(ComposedMail message, string messageId, IReadOnlyList<MailboxAddress> to)
    {
        byte[] wire = message.Wire;
        using var stream = new MemoryStream(wire);
        using var reparsed = await MimeMessage.LoadAsync(stream);
        var recipients = to.Select(m => m.Address).ToList();
        var queued = new QueuedMessage(1, "alert", "dev", "a", messageId, Options.Sender.Address, recipients, wire, 0, Now, Now.AddDays(5));

        var results = await _mailbox.SendAsync(queued, CancellationToken.None);

        string file = Path.Combine(_mailbox.NewDirectory, LocalMailbox.FileName(messageId));
        return reparsed.MessageId == messageId
            && reparsed.To.Mailboxes.Select(m => m.Address).SequenceEqual(recipients)
            && wire.All(b => b < 0x80)
            && Encoding.ASCII.GetString(wire).Split("\r\n").All(line => line.Length <= 998)
            && results.All(r => r.Outcome == RecipientOutcome.Sent)
            && File.ReadAllBytes(file).AsSpan().EndsWith(wire);
    }

    // Which device sent it, when the gateway received it, and how many repeats the digest holds.
    private static Gen<(string Device, DateTimeOffset ReceivedAt, int Repeats)> Setting() =>
        from device in Gen.Elements(Devices)
        from receivedAt in Gen.Elements(ReceiveTimes)
        from repeats in Gen.Choose(1, 5)
        select (device, receivedAt, repeats);

    /// <summary>
    /// Mostly alert-shaped objects (so that many pass); some with one number or time drawn from its whole type rather
    /// than its allowed range (so that a missing bound lets through what the pipeline cannot take); any JSON at all.
    /// </summary>
    private static Gen<string> Payload() => Gen.Frequency(
        (10, AlertObject(focus: null)),
        (4, Gen.Elements("seq", "age_ms", "boot", "count", "raised", "first", "last", "values").SelectMany(AlertObject)),
        (1, AnyJson(4, hostile: true)),
        (1, Deep()));

    // Each member is drawn from values the parser must accept — their extremes included — and, once in about
    // thirty draws, from values it must refuse; so about half the alerts pass and the rest fail in every way.
    private static Gen<string> Either(Gen<string> good, Gen<string> bad) => Gen.Frequency((30, good), (1, bad));

    private static Gen<string> AlertObject(string? focus)
    {
        // The focused member: half the time a legal value, half the time anything its JSON type can hold.
        Gen<string> Wide(string key, Gen<string> usual) => key != focus ? usual : Gen.Frequency((1, usual), (1, WideValue(key)));

        Gen<string>[] members =
        [
            Member("v", Either(Gen.Constant("1"), Gen.Elements("1.0", "2", "\"1\"", "null", "1e0"))),
            Member("id", Either(
                Gen.Frequency((6, Gen.Elements("7f3a9c21-42", "a", "x-1", "00000000-0", "ffffffff-4294967295", "_h0123456789abcdef0123456789abcdef").Select(Quote)),
                    (2, JsonString(12, Printable)), (1, Gen.Constant(Quote(new string('i', 128))))),
                Gen.Frequency((2, JsonString(12, Hostile)), (1, Gen.Constant(Quote(new string('i', 129)))), (1, AnyJson(1, hostile: true))))),
            Member("seq", Wide("seq", Integer(0, 9_007_199_254_740_991))),
            Member("state", Either(Gen.Elements("\"raised\"", "\"cleared\""), Gen.Elements("\"open\"", "\"RAISED\"", "null", "1"))),
            Member("sev", Either(Gen.Elements("\"critical\"", "\"warning\"", "\"info\""), Gen.Elements("\"panic\"", "\"Info\"", "null"))),
            Member("code", Either(Code(), Gen.Elements("\"door open\"", "\"\"", Quote(new string('A', 65)), "null"))),
            Member("text", Either(
                Gen.Frequency((6, JsonString(40, Text)), (1, Gen.Constant("null")), (1, Gen.Elements(1, 1024).Select(n => Quote(new string('t', n))))),
                Gen.Frequency((2, JsonString(40, Hostile)), (1, Gen.Constant(Quote(new string('t', 1025)))), (1, AnyJson(2, hostile: true))))),
            Member("values", Wide("values", Either(Gen.Frequency((6, Values()), (1, Gen.Constant("null"))), Gen.Frequency((2, BadValues()), (1, AnyJson(2, hostile: true)))))),
            focus == "age_ms" // the age counts only without a raise time
                ? Gen.Constant(string.Empty)
                : Member("raised", Wide("raised", Either(Gen.Frequency((4, Time().Select(Quote)), (1, Gen.Constant("null"))), BadTime().Select(Quote))), present: 3),
            Member("age_ms", Wide("age_ms", Either(Gen.Frequency((3, Integer(0, 315_576_000_000)), (1, Gen.Constant("null"))), BadInteger(0, 315_576_000_000))),
                present: focus == "age_ms" ? 40 : 2),
            Member("boot", Wide("boot", Integer(0, uint.MaxValue))),
            Member("count", Wide("count", Integer(1, uint.MaxValue))),
            Member("first", Wide("first", Either(Gen.Frequency((4, Time().Select(Quote)), (1, Gen.Constant("null"))), BadTime().Select(Quote))),
                present: focus == "first" ? 40 : 1),
            Member("last", Wide("last", Either(Gen.Frequency((4, Time().Select(Quote)), (1, Gen.Constant("null"))), BadTime().Select(Quote))),
                present: focus == "last" ? 40 : 1),
        ];
        var unknownMember = Gen.Zip(JsonString(4, Printable).Select(k => k.Insert(1, "x-")), Gen.Frequency((6, AnyJson(1, hostile: false)), (1, AnyJson(3, hostile: true))))
            .Select(p => p.Item1 + ":" + p.Item2);
        var unknown = Gen.Frequency((3, Gen.Constant(0)), (1, Gen.Choose(1, 3))).SelectMany(n => Gen.ListOf(unknownMember, n));
        return Gen.CollectToList(members)
            .SelectMany(known => unknown.Select(extra => known.Where(m => m.Length > 0).Concat(extra).ToArray()))
            .SelectMany(all => Gen.Shuffle(all))
            .SelectMany(all => Gen.Frequency(
                (30, Gen.Constant(all)),
                (1, all.Length == 0 ? Gen.Constant(all) : Gen.Elements(all).Select(dup => all.Append(dup).ToArray())))) // a duplicate key
            .SelectMany(all => Gen.ListOf(Ws(), all.Length + 1).Select(ws => "{" + string.Concat(all.Select((m, i) => ws[i] + m + ws[i + 1] + (i < all.Length - 1 ? "," : string.Empty))) + "}"));
    }

    // "key":value; left out once in about forty draws, or far more often for the optional keys (weight `present` to 1).
    private static Gen<string> Member(string key, Gen<string> value, int present = 40) =>
        Gen.Frequency((present, value.Select(v => Quote(key) + ":" + v)), (1, Gen.Constant(string.Empty)));

    private static Gen<string> Ws() => Gen.Frequency((8, Gen.Constant(string.Empty)), (1, Gen.Elements(" ", "\n", "\t", "\r\n  ")));

    /// <summary>An integer in [low, high], often one of the two bounds, written as an integer.</summary>
    private static Gen<string> Integer(long low, long high) => Either(
        Gen.Frequency((4, Gen.Choose(0, 100_000).Select(i => Math.Min(high, low + i))), (1, Gen.Elements(low, high)), (1, Gen.Constant(low == 0 ? -0L : low)))
            .Select(i => i == 0 && low == 0 ? "-0" : i.ToString(CultureInfo.InvariantCulture)),
        BadInteger(low, high));

    /// <summary>Just past either bound, far past, fractional, exponent, or not a number at all.</summary>
    private static Gen<string> BadInteger(long low, long high) => Gen.Frequency(
        (3, Gen.Elements(
            (low - 1).ToString(CultureInfo.InvariantCulture), (high + 1).ToString(CultureInfo.InvariantCulture), "100000000000000", "9223372036854775807",
            "-9223372036854775808", "9223372036854775808", "-9223372036854775809", "18446744073709551616", "1" + new string('0', 400), "1.5", "1.0", "1e2",
            "-1e400", "\"7\"", "true", "[]")),
        (1, Gen.Zip(Gen.Choose(int.MinValue, int.MaxValue), Gen.Choose(int.MinValue, int.MaxValue))
            .Select(p => (((long)p.Item1 << 32) | (uint)p.Item2).ToString(CultureInfo.InvariantCulture))));

    /// <summary>Any value of the member's JSON type: integers over all of long and past it, times from year 1 to 9999, any double.</summary>
    private static Gen<string> WideValue(string key) => key switch
    {
        "raised" or "first" or "last" =>
            from ticks in Gen.Zip(Gen.Choose(0, int.MaxValue), Gen.Choose(0, int.MaxValue)).Select(p => ((long)p.Item1 << 31 | (uint)p.Item2) % DateTime.MaxValue.Ticks)
            from minutes in Gen.Elements(-14 * 60, 0, 14 * 60)
            let utc = new DateTime(ticks, DateTimeKind.Utc)
            let local = utc.AddMinutes(Math.Clamp(minutes, (DateTime.MinValue - utc).TotalMinutes, (DateTime.MaxValue - utc).TotalMinutes))
            select Quote(local.ToString("yyyy-MM-dd'T'HH:mm:ss.FFFFFFF", CultureInfo.InvariantCulture).TrimEnd('.')
                + (minutes == 0 ? "Z" : (minutes < 0 ? "-" : "+") + "14:00")),
        "values" => Gen.Zip(Gen.Choose(-99_999, 99_999), Gen.Choose(-330, 330)).Select(p => string.Create(CultureInfo.InvariantCulture, $$"""{"wide":{{p.Item1}}e{{p.Item2}}}""")),
        _ => BadInteger(0, 0),
    };

    /// <summary>Numbers the parser takes as values: up to 2^63 in magnitude, however written.</summary>
    private static Gen<string> Number() => Gen.Frequency(
        (5, Gen.Elements(
            "0", "-0", "1", "-1", "1.5", "-9.5", "1.0", "1e2", "1E+2", "-1e-2", "0.1", "5e-324", "-5e-324", "2.2250738585072014e-308", "1e-400", "-0.0",
            "9007199254740993", "9223372036854775807", "9223372036854775808", "-9223372036854775808", "9.223372036854775807e18",
            "3.14159265358979323846264338327950288419716939937510", "0." + new string('0', 400) + "1", "123456789012345678.901234567890")),
        (2, Gen.Zip(Gen.Choose(int.MinValue, int.MaxValue), Gen.Choose(int.MinValue, int.MaxValue))
            .Select(p => (((long)p.Item1 << 32) | (uint)p.Item2).ToString(CultureInfo.InvariantCulture))),
        (2, Gen.Zip(Gen.Choose(-99_999, 99_999), Gen.Choose(-330, 13)).Select(p => string.Create(CultureInfo.InvariantCulture, $"{p.Item1}e{p.Item2}"))),
        (2, Gen.Zip(Gen.Choose(int.MinValue, int.MaxValue), Gen.Choose(0, 9)).Select(p => Scaled(p.Item1, p.Item2))));

    // The firmware's way of writing a value: a mantissa and a decimal scale, digit for digit.
    private static string Scaled(long mantissa, int scale)
    {
        string digits = Math.Abs(mantissa).ToString(CultureInfo.InvariantCulture).PadLeft(scale + 1, '0');
        string text = scale == 0 ? digits : digits[..^scale] + "." + digits[^scale..];
        return (mantissa < 0 ? "-" : string.Empty) + text;
    }

    private static Gen<string> Code() =>
        Gen.Choose(1, 64).SelectMany(n => Gen.ArrayOf(Gen.Elements("ABCXYZ0189_.-".ToCharArray()), n)).Select(c => Quote(new string(c)));

    private static readonly string[] ValueNames =
        ["temp_c", "limit_c", "a", "x.y", "V-1", new('n', 64), "K\u00fcche", "🔥", "a b", "\\\"quoted\\\"", "back\\\\slash", "=?utf-8?q?x?=", "\uD83D\uDE00"];

    private static Gen<string> Values() =>
        from names in Gen.Shuffle(ValueNames)
        from n in Gen.Choose(0, 8)
        from numbers in Gen.ListOf(Number(), n)
        select "{" + string.Join(',', names.Take(n).Zip(numbers, (name, number) => Quote(name) + ":" + number)) + "}";

    private static Gen<string> BadValues() => Gen.Elements(
        """{"a":1,"a":2}""", """{"a":1e308}""", """{"a":-9223372036854777856}""", """{"a":"1"}""", """{"":1}""", """{"a\u202Eb":1}""", """{"a\u0000":1}""",
        "{" + new string('n', 65).Insert(0, "\"") + "\":1}", "{" + string.Join(',', Enumerable.Range(0, 33).Select(i => $"\"v{i}\":{i}")) + "}", """{"a":{"b":1}}""");

    /// <summary>RFC 3339 times the parser must take: from 1969-12-31T00:00:00Z to 2200-01-01T00:00:00Z, leap seconds, fractions, offsets.</summary>
    private static Gen<string> Time()
    {
        var instant = Gen.Frequency(
            (4, Gen.Choose(0, 1_000_000).Select(i => new DateTimeOffset(1969, 12, 31, 0, 0, 0, TimeSpan.Zero).AddTicks(i * 72_987_552_000L))), // the whole range
            (1, Gen.Elements(AlertParser.EarliestTime, AlertParser.LatestTime, DateTimeOffset.UnixEpoch, new DateTimeOffset(2000, 2, 29, 12, 0, 0, TimeSpan.Zero))));
        var offset = Gen.Frequency((4, Gen.Constant(0)), (1, Gen.Elements(-14 * 60, 14 * 60, 330, -570, 1)), (1, Gen.Choose(-14 * 60, 14 * 60)));
        var fraction = Gen.Frequency((3, Gen.Constant(string.Empty)), (1, Gen.Choose(1, 30).SelectMany(n => Gen.ArrayOf(Gen.Elements("0123456789".ToCharArray()), n))
            .Select(d => "." + new string(d))));
        return from t in instant
               from minutes in offset
               from f in fraction
               from z in Gen.Elements("Z", "z", "+00:00", "-00:00")
               from t2 in Gen.Elements("T", "t")
               let local = t.ToOffset(TimeSpan.FromMinutes(minutes))
               let inRange = local.UtcDateTime.Ticks - (local.UtcDateTime.Ticks % TimeSpan.TicksPerSecond) + (f.Length > 1 ? 9_999_999 : 0) <= AlertParser.LatestTime.UtcTicks
               let leap = local.Second == 59 && f.Length == 0 && local.UtcDateTime.Ticks + TimeSpan.TicksPerSecond <= AlertParser.LatestTime.UtcTicks
               select local.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture) + t2 + local.ToString("HH:mm:", CultureInfo.InvariantCulture)
                   + (leap && minutes % 2 == 0 ? "60" : local.ToString("ss", CultureInfo.InvariantCulture)) + (inRange ? f : string.Empty)
                   + (minutes == 0 ? z : local.ToString("zzz", CultureInfo.InvariantCulture));
    }

    /// <summary>Times just or far outside the range, or not RFC 3339 at all.</summary>
    private static Gen<string> BadTime() => Gen.Elements(
        "1969-12-30T23:59:59.9999999Z", "2200-01-01T00:00:00.0000001Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0000-01-01T00:00:00Z",
        "3026-11-28T09:58:12Z", "2026-11-28T09:58:12+14:01", "2026-11-28T09:58:12+24:00", "2026-02-29T00:00:00Z", "2026-13-01T00:00:00Z",
        "2026-11-28T24:00:00Z", "2026-11-28T23:60:00Z", "2026-11-28T23:59:61Z", "2026-11-28 09:58:12Z", "2026-11-28T09:58:12", "2026-11-28T09:58:12+0100",
        "2026-11-28T09:58:12.Z", "yesterday", string.Empty);

    private const int Printable = 0;
    private const int Text = 1;
    private const int Hostile = 2;

    /// <summary>
    /// A JSON string literal of up to <paramref name="pieces"/> pieces, raw or escaped in any of JSON's ways:
    /// <see cref="Printable"/> ids and names, <see cref="Text"/> adds NUL, control and invisible characters the text may
    /// hold, <see cref="Hostile"/> adds unpaired surrogate escapes and raw control characters (not JSON).
    /// </summary>
    private static Gen<string> JsonString(int pieces, int kind)
    {
        var printable = Gen.Frequency(
            (8, Gen.Choose(0x20, 0x7E).Where(c => c is not '"' and not '\\').Select(c => ((char)c).ToString())),
            (1, Gen.Elements("\\\"", "\\\\", "\\/", "=?utf-8?q?", "?=", "<", ">", "@", "\\u00e9", "\\uD83D\\uDE00", "é", "ü", "火", "🔥", "\U0010FFFD")),
            (1, Gen.Choose(0x00A1, 0xD7FF).Select(c => "\\u" + c.ToString(c % 2 == 0 ? "X4" : "x4", CultureInfo.InvariantCulture))));
        var text = Gen.Frequency(
            (6, printable),
            (1, Gen.Elements("\\b", "\\f", "\\n", "\\r", "\\t", "\\r\\nBcc: victim@evil.example", "\\u0000", "\\u0007", "\\u001b[31m")),
            (1, Gen.Elements("\\uFFFE", "\\uffff", "\\uFDD0", "\\u202E", "\\u200F", "\\u200B", "\\u2028", "\\u0085", "\u202E", "\u200F", "\uFEFF", "\u2028", "\uFFFE", "\uFDEF")));
        var piece = kind switch
        {
            Printable => printable,
            Text => text,
            _ => Gen.Frequency((6, text), (1, Gen.Elements("\\uD800", "\\udc00", "\\uDBFF\\u0041", "\u0001", "\u001F"))),
        };
        return Gen.Choose(kind == Printable ? 1 : 0, pieces).SelectMany(n => Gen.ListOf(piece, n)).Select(p => "\"" + string.Concat(p) + "\"");
    }

    /// <summary>Any JSON value, nested up to <paramref name="depth"/> levels.</summary>
    private static Gen<string> AnyJson(int depth, bool hostile)
    {
        var scalar = Gen.Frequency((3, Number()), (3, JsonString(8, hostile ? Hostile : Text)), (1, Gen.Elements("true", "false", "null")));
        if (depth <= 0)
        {
            return scalar;
        }

        var inner = AnyJson(depth - 1, hostile);
        var array = Gen.Choose(0, 3).SelectMany(n => Gen.ListOf(inner, n)).Select(items => "[" + string.Join(',', items) + "]");
        var obj = Gen.Choose(0, 3).SelectMany(n => Gen.ListOf(Gen.Zip(JsonString(4, hostile ? Hostile : Printable), inner), n))
            .Select(items => "{" + string.Join(',', items.Select(p => p.Item1 + ":" + p.Item2)) + "}");
        return Gen.Frequency((4, scalar), (1, array), (1, obj));
    }

    // Nesting far past the parser's limit, under an unknown key of an otherwise valid alert.
    private static Gen<string> Deep() =>
        Gen.Choose(2, 200).Select(n => """{"v":1,"id":"deep-1","seq":1,"state":"raised","sev":"info","code":"X","x":""" + new string('[', n) + new string(']', n) + "}");

    private static string Quote(string s) => "\"" + s + "\"";
}
