using System.Text;
using System.Text.Json;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Ingest.Smtp;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using MimeKit;
using Xunit;

namespace EdgeMail.Gateway.Tests.Hostile;

// Property-based fuzzing of everything a device's bytes reach without a socket: the alert parser, the alert mail
// composer and the relayed-mail rewriter. FsCheck prints the seed ("Replay: ...") of any falsified property; pass it
// to [Property(Replay = "...")] to rerun exactly that case.
public sealed class FuzzPropertyTests
{
    private static readonly SenderOptions Sender = new() { Address = "edgemail@gw.test", DisplayName = "EdgeMail", Hostname = "gw.test" };
    private static readonly MailComposer Composer = new(Sender, TemplateSet.Load(string.Empty));
    private static readonly MailboxAddress[] To = [new("Alice", "alice@example.com")];

    private static readonly HashSet<string> AlertHeaderFields = new(StringComparer.OrdinalIgnoreCase)
    {
        "Received", "From", "To", "Subject", "Date", "Auto-Submitted", "X-Auto-Response-Suppress", "MIME-Version", "Content-Type",
        "Message-ID", "X-EdgeMail-Device", "X-EdgeMail-Alert", "In-Reply-To", "References",
    };

    /// <summary>Text that stresses headers and JSON: CR, LF, NUL, other controls, quotes, colons, non-ASCII, lone surrogates, header-looking lines.</summary>
    private static Gen<string> Nasty()
    {
        Gen<string> piece = Gen.Frequency(
            (6, Gen.Choose(0x20, 0x7E).Select(c => ((char)c).ToString())),
            (3, Gen.Elements("\r\n", "\r", "\n", "\0", "\t", "\u0085", "\u2028", "\r\n\r\n", ": ", "\"", "\\", "<", ">", ",", ";", "=?utf-8?q?", "?=")),
            (3, Gen.Elements("\r\nBcc: victim@evil.example", "\nTo: victim@evil.example", "\r\n\r\n--boundary", "\r\n.\r\n", "%0D%0ABcc:", "=0D=0ABcc=3A")),
            (2, Gen.Choose(0x80, 0xFFFF).Where(c => c is < 0xD800 or > 0xDFFF).Select(c => ((char)c).ToString())),
            (1, Gen.Choose(0xD800, 0xDFFF).Select(c => ((char)c).ToString())),
            (1, Gen.Choose(0x10000, 0x10FFFF).Select(char.ConvertFromUtf32)));
        return Gen.ListOf(piece).Select(p => string.Concat(p));
    }

    private static Gen<byte[]> Bytes() => Gen.ArrayOf(Gen.Choose(0, 255).Select(b => (byte)b));

    [Property(MaxTest = 500)]
    public Property AlertParser_AnyBytes_NeverThrowsAndOnlyAcceptsWhatTheContractAllows() =>
        Prop.ForAll(Bytes().ToArbitrary(), payload =>
        {
            var result = AlertParser.Parse(payload);
            return result.Alert is null
                ? result.Reason is { Length: > 0 }
                : AlertParser.IsCode(result.Alert.Code) && Encoding.UTF8.GetByteCount(result.Alert.Text) <= AlertParser.MaxTextBytes;
        });

    [Property(MaxTest = 500)]
    public Property AlertParser_MutatedValidAlert_NeverThrows() =>
        Prop.ForAll(Gen.ListOf(Gen.Choose(0, (3 * 401 * 256) - 1).Select(n => (Kind: n % 3, Position: n / 3 % 401, Value: n / 1203))).ToArbitrary(), edits =>
        {
            var bytes = Encoding.UTF8.GetBytes(Alerts.Json("fuzz-1")).ToList();
            foreach (var (kind, position, value) in edits)
            {
                int at = bytes.Count == 0 ? 0 : position % bytes.Count;
                switch (kind)
                {
                    case 0 when bytes.Count > 0: bytes[at] = (byte)value; break;
                    case 1: bytes.Insert(at, (byte)value); break;
                    case 2 when bytes.Count > 0: bytes.RemoveAt(at); break;
                }
            }

            var result = AlertParser.Parse(bytes.ToArray());
            return result.IsValid || result.Reason is not null;
        });

    [Property(MaxTest = 300)]
    public Property ComposeAlert_HostileDeviceStrings_WriteOnlyTheKnownHeadersIn7BitShortLines() => ComposeAlertProperty();

    // The case that found the encoded-word folding defect (a literal "=?utf-8?q?" in the site and subject text).
    [Property(MaxTest = 300, Replay = "(8766986022622909760,5176296125972563577)")]
    public Property ComposeAlert_EncodedWordLookalikeFoundByFuzzing_StaysOneWellFormedSubject() => ComposeAlertProperty();

    private static Property ComposeAlertProperty() =>
        Prop.ForAll(Nasty().ToArbitrary(), Nasty().ToArbitrary(), Nasty().ToArbitrary(), (text, id, name) =>
        {
            string json = JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["v"] = 1, ["id"] = id.Length is > 0 and <= 40 ? id : "fuzz", ["seq"] = 1, ["state"] = "raised", ["sev"] = "warning", ["code"] = "FUZZ",
                ["text"] = text.Length <= 300 ? text : text[..300], ["values"] = new Dictionary<string, double> { [name.Length is > 0 and <= 30 ? name : "v"] = 1.5 },
            });
            var parsed = AlertParser.Parse(Encoding.UTF8.GetBytes(json));
            if (parsed.Alert is not { } alert)
            {
                return true; // rejected: never mailed
            }

            var device = new DeviceInfo("dev-1", name, text.Length > 50 ? text[..50] : text);
            byte[] wire = Composer.ComposeAlert(new AlertMail(device, alert, DateTimeOffset.UnixEpoch, "127.0.0.1:5", 7, To, "default", null), DateTimeOffset.UnixEpoch).Wire;
            var reparsed = MimeMessage.Load(new MemoryStream(wire));
            return wire.All(b => b < 0x80)
                && Lines(wire).All(l => l.Length <= 998)
                && reparsed.Headers.All(h => AlertHeaderFields.Contains(h.Field))
                && reparsed.Bcc.Count == 0 && reparsed.Cc.Count == 0
                && reparsed.To.Mailboxes.Select(m => m.Address).SequenceEqual(["alice@example.com"]);
        });

    // The composer writes header fields itself, each encoded and folded by MimeKit's Header; MimeMessage, which it
    // used before, must have written the same bytes for the same values: subject, names, ids, threading and trace.
    [Property(MaxTest = 300)]
    public Property ComposeAlert_HeaderFields_AreWhatMimeMessageWritesForTheSameValues() =>
        Prop.ForAll(Nasty().ToArbitrary(), Nasty().ToArbitrary(), Nasty().ToArbitrary(), (text, name, rcpt) =>
        {
            bool threaded = name.Length % 2 == 1;
            var alert = AlertParser.Parse(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["v"] = 1, ["id"] = "fuzz-" + text.Length, ["seq"] = 1, ["state"] = threaded ? "cleared" : "raised", ["sev"] = "critical", ["code"] = "FUZZ",
                ["text"] = text.Length <= 300 ? text : text[..300],
            }))).Alert!;
            var device = new DeviceInfo("dev-1", name, text.Length > 50 ? text[..50] : text);
            MailboxAddress[] to = [new(rcpt.Length <= 80 ? rcpt : rcpt[..80], "ops@example.com"), new("Bob", "bob@example.com")];
            string? inReplyTo = threaded ? "<dev-1.fuzz-1.alert@gw.test>" : null;
            var received = new DateTimeOffset(2026, 12, 5, 23, 59, 58, TimeSpan.Zero);
            var now = received.AddSeconds(3);
            var composed = Composer.ComposeAlert(new AlertMail(device, alert, received, "127.0.0.1:5", 7, to, "default", inReplyTo), now);
            string wire = Encoding.ASCII.GetString(composed.Wire);
            using var reparsed = MimeMessage.Load(new MemoryStream(composed.Wire));

            using var expected = new MimeMessage((IEnumerable<Header>)[]);
            expected.From.Add(new MailboxAddress(Sender.DisplayName, Sender.Address));
            expected.Date = now;
            expected.Subject = reparsed.Subject ?? string.Empty;
            expected.MessageId = composed.MessageId;
            foreach (var mailbox in to)
            {
                expected.To.Add(mailbox);
            }

            expected.Headers.Add("Auto-Submitted", "auto-generated");
            expected.Headers.Add("X-Auto-Response-Suppress", "All");
            expected.MimeVersion = new Version(1, 0);
            if (inReplyTo is not null)
            {
                expected.InReplyTo = inReplyTo;
                expected.References.Add(inReplyTo);
            }

            expected.Headers.Insert(0, HeaderId.Received, "from dev-1 ([127.0.0.1]) by gw.test (EdgeMail) with MQTT id 7; " + MimeKit.Utils.DateUtils.FormatDate(received));
            expected.Headers.Add("X-EdgeMail-Device", "dev-1");
            expected.Headers.Add("X-EdgeMail-Alert", alert.Id);
            var fields = new MemoryStream();
            expected.Headers.WriteTo(WireFormat, fields);
            string expectedFields = Encoding.ASCII.GetString(fields.ToArray())[..^2]; // without the blank line that ends a header block
            return (wire.StartsWith(expectedFields + "Content-Type: multipart/alternative; boundary=\"=-", StringComparison.Ordinal))
                .Label("expected:\n" + expectedFields + "\nwritten:\n" + wire[..Math.Min(wire.Length, expectedFields.Length + 80)]);
        });

    // The composer writes the text and HTML parts itself, reusing its encoders from mail to mail; MimeKit's BodyBuilder,
    // Prepare(7-bit, 78) and WriteTo must write the same bytes for the same texts, whichever encoding each part needs.
    [Property(MaxTest = 300)]
    public Property ComposeAlert_Body_IsWhatMimeKitWritesForTheSameTexts() =>
        Prop.ForAll(Nasty().ToArbitrary(), Nasty().ToArbitrary(), (text, site) =>
        {
            var alert = AlertParser.Parse(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["v"] = 1, ["id"] = "fuzz-" + text.Length, ["seq"] = 1, ["state"] = "raised", ["sev"] = "warning", ["code"] = "FUZZ",
                ["text"] = text.Length <= 300 ? text : text[..300],
            }))).Alert!;
            var device = new DeviceInfo("dev-1", "Device 1", site.Length > 200 ? site[..200] : site);
            byte[] wire = Composer.ComposeAlert(new AlertMail(device, alert, DateTimeOffset.UnixEpoch, "127.0.0.1:5", 7, To, "default", null), DateTimeOffset.UnixEpoch).Wire;
            using var reparsed = MimeMessage.Load(new MemoryStream(wire));
            var written = Assert.IsAssignableFrom<Multipart>(reparsed.Body);

            var expected = (Multipart)new BodyBuilder
            {
                TextBody = reparsed.TextBody!.Replace("\r\n", "\n", StringComparison.Ordinal),
                HtmlBody = reparsed.HtmlBody!.Replace("\r\n", "\n", StringComparison.Ordinal),
            }.ToMessageBody();
            expected.Boundary = written.Boundary!;
            expected.Prepare(EncodingConstraint.SevenBit, 78);
            var content = new MemoryStream();
            expected.WriteTo(WireFormat, content, contentOnly: true);

            int blank = wire.AsSpan().IndexOf("\r\n\r\n"u8) + 4;
            string body = Encoding.ASCII.GetString(wire, blank, wire.Length - blank);
            string mimeKit = Encoding.ASCII.GetString(content.ToArray());
            var encodings = written.OfType<MimePart>().Select(p => p.ContentTransferEncoding).ToList();
            return (body == mimeKit).Label($"encodings {string.Join(", ", encodings)}\nexpected:\n{mimeKit}\nwritten:\n{body}");
        });

    private static readonly FormatOptions WireFormat = new Func<FormatOptions>(() =>
    {
        var options = FormatOptions.Default.Clone();
        options.NewLineFormat = NewLineFormat.Dos;
        return options;
    })();

    [Property(MaxTest = 300)]
    public Property RelayedMail_HostileHeadersAndBytes_KeepsOneGatewayFromAndTheBody() =>
        Prop.ForAll(Nasty().ToArbitrary(), Nasty().ToArbitrary(), Bytes().ToArbitrary(), (from, subject, body) =>
        {
            byte[] raw = [.. Encoding.UTF8.GetBytes($"From: {from}\r\nSubject: {subject}\r\nBcc: victim@evil.example\r\nX-EdgeMail-Device: dev-9\r\n\r\n"), .. body];
            var submission = new Submission("dev-1", "Device 1", "127.0.0.1", "ups@lan.test", false, false, "abc", DateTimeOffset.UnixEpoch);
            var relayed = RelayedMailWriter.Rewrite(raw, submission, Sender);
            var reparsed = MimeMessage.Load(new MemoryStream(relayed.Mime));
            return reparsed.From.Mailboxes.Select(m => m.Address).SequenceEqual(["edgemail@gw.test"])
                && reparsed.Headers.Count(h => h.Id == HeaderId.From) == 1
                && reparsed.Headers[HeaderId.Bcc] is null
                && reparsed.Headers.Where(h => h.Field == "X-EdgeMail-Device").Select(h => h.Value).SequenceEqual(["dev-1"])
                && relayed.Mime.AsSpan().EndsWith(body.Length == 0 ? "\r\n\r\n"u8.ToArray() : [.. RelayedMailWriter.Normalize(body), .. "\r\n"u8]);
        });

    private static IEnumerable<string> Lines(byte[] wire) => Encoding.ASCII.GetString(wire).Split("\r\n");
}
