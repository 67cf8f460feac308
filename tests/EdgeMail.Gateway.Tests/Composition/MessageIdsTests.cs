using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Relay;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using MimeKit;
using Xunit;

namespace EdgeMail.Gateway.Tests.Composition;

// Message-IDs are the spool's key for a mail and the local mailbox's file name: two inputs that share one lose a mail.
// The properties below are falsified with a replay seed printed by FsCheck ("Replay: ..."); pass it to
// [Property(Replay = "...")] to rerun that case.
public sealed partial class MessageIdsTests
{
    private const string Host = "gw.test";

    // RFC 5322 msg-id body: dot-atom-text "@" dot-atom-text, here from the characters the local mailbox keeps as they are.
    [GeneratedRegex(@"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*@gw\.test$")]
    private static partial Regex MsgIdRegex();

    /// <summary>Short strings from pieces that imitate separators, escapes, hash markers and kind labels, plus any UTF-16 unit.</summary>
    private static Gen<string> Tricky()
    {
        Gen<string> piece = Gen.Frequency(
            (8, Gen.Elements("", ".", "..", "_", "-", "_2E", "_5F", "_u002E", "_h", "_f", "h", "u", "n1", "a", "Z", "0", "2E", "7", "site", "pump",
                "alert", "digest", "notice", "@", "@gw.test", " ", "é", "\u202E", "\uFFFE", "\0", "\uD800", "\uDC00", "\U0001F525")),
            (1, Gen.Choose(0, 0xFFFF).Select(c => ((char)c).ToString())),
            (1, Gen.Choose(0, 15).Select(n => string.Concat(Enumerable.Repeat("ab.", 10 + n))))); // long enough to be hashed
        return Gen.Choose(0, 6).SelectMany(n => Gen.ListOf(piece, n)).Select(p => string.Concat(p));
    }

    [Theory]
    [InlineData("freezer-2", "7f3a9c21-42", "freezer-2.7f3a9c21-42.alert@gw.test")]
    [InlineData("dev-1", "ok-1", "dev-1.ok-1.alert@gw.test")]
    [InlineData("site.pump", "7", "site_2Epump.7.alert@gw.test")]
    [InlineData("site", "pump.7", "site.pump.7.alert@gw.test")]
    [InlineData("dev_1", "a..b", "dev_5F1.a_2E_2Eb.alert@gw.test")]
    [InlineData("dev-1", ".x.", "dev-1._2Ex_2E.alert@gw.test")]
    [InlineData("dev-1", "Küche 🔥", "dev-1.K_FCche_20_uD83D_uDD25.alert@gw.test")]
    [InlineData("dev-1", "", "dev-1._.alert@gw.test")]
    public void ForAlert_KnownPair_IsReadableAndEscapedOnlyWhereNeeded(string device, string alertId, string expected)
    {
        Assert.Equal(expected, MessageIds.ForAlert(device, alertId, Host));
    }

    [Fact]
    public void ForAlert_PairsThatConcatenateAlike_GetDistinctIds()
    {
        (string, string)[] pairs = [("site.pump", "7"), ("site", "pump.7"), ("site.pump.7", ""), ("", "site.pump.7"), ("site_2Epump", "7"), ("site", "_2Epump.7")];

        var ids = pairs.Select(p => MessageIds.ForAlert(p.Item1, p.Item2, Host)).ToList();

        Assert.Equal(pairs.Length, ids.Distinct(StringComparer.Ordinal).Count());
    }

    [Fact]
    public void ForAlert_IdThatLooksLikeAHash_DoesNotMeetTheHashOfALongId()
    {
        string longId = new('x', 200);
        string hashed = MessageIds.ForAlert("dev-1", longId, Host);
        string hashLabel = hashed.Split('.')[1];

        string lookalike = MessageIds.ForAlert("dev-1", hashLabel, Host);

        Assert.Matches(@"^dev-1\._h[0-9a-f]{32}\.alert@gw\.test$", hashed);
        Assert.Equal("dev-1._5F" + hashLabel[1..] + ".alert@gw.test", lookalike);
        Assert.True(hashed.Length - ".alert@gw.test".Length <= MessageIds.MaxReadableLength);
    }

    [Fact]
    public void ForDigest_AndForAlert_NeverShareAnId()
    {
        Assert.Equal("dev-1.PUMP_5FCYCLING.a-1.digest@gw.test", MessageIds.ForDigest("dev-1", "PUMP_CYCLING", "a-1", Host));
        Assert.NotEqual(MessageIds.ForAlert("dev-1", "PUMP.a-1", Host), MessageIds.ForDigest("dev-1", "PUMP", "a-1", Host));
    }

    [Fact]
    public void ForNotice_OwnMessageAndAttempt_IsReadableAndDistinctPerAttempt()
    {
        string failed = MessageIds.ForAlert("dev-1", "ok-1", Host);

        Assert.Equal("dev-1.ok-1.alert.n1.notice@gw.test", MessageIds.ForNotice(failed, 1, Host));
        Assert.Equal("dev-1.ok-1.alert.n2.notice@gw.test", MessageIds.ForNotice(failed, 2, Host));
        Assert.Equal("_f.abc_40ups.lan.n1.notice@gw.test", MessageIds.ForNotice("abc@ups.lan", 1, Host));
    }

    [Theory]
    [InlineData("no-at-sign")]
    [InlineData("")]
    [InlineData("a@[192.0.2.1]")]
    [InlineData("a b@c d")]
    [InlineData("x.alert@mail.example")]
    public void ForNotice_AnyFailedId_GivesAValidIdInOurDomain(string failed)
    {
        string id = MessageIds.ForNotice(failed, 3, Host);

        Assert.Matches(@"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*@[A-Za-z0-9.-]+$", id);
        Assert.EndsWith(".n3.notice@" + Host, id, StringComparison.Ordinal);
    }

    [Property(MaxTest = 300)]
    public Property ForAlert_AnyPair_IsAValidMsgIdThatDecodesBackOrIsHashed() =>
        Prop.ForAll(Tricky().ToArbitrary(), Tricky().ToArbitrary(), (device, alertId) =>
        {
            string id = MessageIds.ForAlert(device, alertId, Host);
            string local = id[..id.LastIndexOf('@')];
            bool hashed = local.Split('.').Any(l => l.StartsWith("_h", StringComparison.Ordinal));
            return IsValid(id)
                && local.EndsWith(".alert", StringComparison.Ordinal)
                && (hashed ? local.Length - ".alert".Length <= MessageIds.MaxReadableLength : DecodeAlert(local) == (device, alertId));
        });

    // Every way of cutting one string into (device, id), keeping or dropping the character at the cut (a dot, say),
    // alerts and digests together: exactly the near-collisions a naive "device.id" join makes.
    [Property(MaxTest = 200)]
    public Property ForAlertAndForDigest_DistinctInputs_GiveDistinctIds() =>
        Prop.ForAll(Tricky().ToArbitrary(), Gen.ListOf(Gen.Zip(Tricky(), Tricky()), 8).ToArbitrary(), (joined, extra) =>
        {
            var inputs = new HashSet<(string Kind, string Device, string Code, string Id)>();
            for (int cut = 0; cut <= joined.Length; cut++)
            {
                inputs.Add(("alert", joined[..cut], string.Empty, joined[cut..]));
                if (cut < joined.Length)
                {
                    inputs.Add(("alert", joined[..cut], string.Empty, joined[(cut + 1)..]));
                    inputs.Add(("digest", joined[..cut], "X", joined[(cut + 1)..]));
                }

                inputs.Add(("alert", joined[..cut] + ".", string.Empty, joined[cut..]));
                inputs.Add(("alert", joined[..cut], string.Empty, "." + joined[cut..]));
                inputs.Add(("digest", "dev-1", joined[..cut], joined[cut..]));
                inputs.Add(("digest", joined[..cut], "X", joined[cut..]));
            }

            foreach (var (a, b) in extra)
            {
                inputs.Add(("alert", a, string.Empty, b));
                inputs.Add(("digest", a, "X", b));
                inputs.Add(("digest", a, b, "1"));
            }

            var ids = inputs.Select(i => i.Kind == "alert" ? MessageIds.ForAlert(i.Device, i.Id, Host) : MessageIds.ForDigest(i.Device, i.Code, i.Id, Host)).ToList();
            return ids.Distinct(StringComparer.Ordinal).Count() == inputs.Count && ids.All(IsWellFormed);
        });

    [Property(MaxTest = 200)]
    public Property ForNotice_DistinctFailedIdsAndAttempts_GiveDistinctIds() =>
        Prop.ForAll(Gen.ListOf(Gen.Zip(Tricky(), Gen.Choose(-2, 3)), 10).ToArbitrary(), cases =>
        {
            var inputs = new HashSet<(string Failed, int Attempt)>();
            foreach (var (text, attempt) in cases)
            {
                inputs.Add((text, attempt));
                inputs.Add((text + "@" + Host, attempt));
                inputs.Add((MessageIds.ForAlert(text, "1", Host), attempt));
                inputs.Add((text + ".n1@" + Host, attempt)); // a stem that ends like an attempt label
            }

            var ids = inputs.Select(i => MessageIds.ForNotice(i.Failed, i.Attempt, Host)).ToList();
            return ids.Distinct(StringComparer.Ordinal).Count() == inputs.Count && ids.All(IsWellFormed);
        });

    // A msg-id body, and its own file name in the local mailbox.
    private static bool IsWellFormed(string id) => MsgIdRegex().IsMatch(id) && LocalMailbox.FileName(id) == id + ".eml";

    // Well formed, and read back unchanged by MimeKit from the wire.
    private static bool IsValid(string id)
    {
        if (!IsWellFormed(id))
        {
            return false;
        }

        using var message = new MimeMessage { MessageId = id, Body = new TextPart("plain") { Text = "x" } };
        using var stream = new MemoryStream();
        message.WriteTo(stream);
        stream.Position = 0;
        using var reparsed = MimeMessage.Load(stream);
        return reparsed.MessageId == id;
    }

    // The inverse of the readable form: first label the device, the rest the alert id.
    private static (string Device, string AlertId) DecodeAlert(string local)
    {
        string body = local[..^".alert".Length];
        int dot = body.IndexOf('.', StringComparison.Ordinal);
        return (Unescape(body[..dot]), Unescape(body[(dot + 1)..]));
    }

    private static string Unescape(string label)
    {
        if (label == "_")
        {
            return string.Empty;
        }

        var sb = new StringBuilder();
        for (int i = 0; i < label.Length;)
        {
            if (label[i] != '_')
            {
                sb.Append(label[i++]);
            }
            else if (label[i + 1] == 'u')
            {
                sb.Append((char)int.Parse(label.AsSpan(i + 2, 4), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture));
                i += 6;
            }
            else
            {
                sb.Append((char)int.Parse(label.AsSpan(i + 1, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture));
                i += 3;
            }
        }

        return sb.ToString();
    }
}
