using System.Text.Json;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>What a recipient's result keeps of a reply (<see cref="RemoteReply.Clean"/>), without I/O.</summary>
public sealed class RemoteReplyTests
{
    [Theory]
    [InlineData("250 2.0.0 Ok: queued as 4ZxK2m1Q3tz9")]
    [InlineData("550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown in virtual mailbox table")]
    [InlineData("451 4.4.1 connection to 127.0.0.1:25 failed: Connection refused")]
    [InlineData("250 2.0.0 stored in /var/lib/edgemail/mailbox/new/1.eml")]
    [InlineData("550 5.7.1 Zugriff verweigert – Empfänger unbekannt 📭")]
    [InlineData("")]
    public void Clean_AReplyWithNothingToClean_IsTheSameString(string reply) => Assert.Same(reply, RemoteReply.Clean(reply));

    [Fact]
    public void Clean_AMultiLineReply_IsOneLine_TheCodeFirst_EmptyLinesDropped()
    {
        Assert.Equal("550 5.7.1 Service unavailable; client blocked / 5.7.1 see https://example.com/rbl / 5.7.1 end",
            RemoteReply.Clean("550 5.7.1 Service unavailable; client blocked\n5.7.1 see https://example.com/rbl\r\n\n5.7.1 end\n"));
    }

    [Fact]
    public void Clean_ControlCharacters_AreReplaced_ATabIsASpace()
    {
        Assert.Equal("554 5.0.0 \uFFFD\uFFFD[2Jcleared screen\uFFFDand bell\uFFFD a tab", RemoteReply.Clean("554 5.0.0 \0\u001b[2Jcleared screen\u0085and bell\a\ta tab"));
    }

    // "user unknown" made to show as "user known" by a right-to-left override, in the console or a terminal.
    [Fact]
    public void Clean_BidiControls_AreReplaced()
    {
        Assert.Equal("550 5.1.1 user \uFFFDnwonk\uFFFD", RemoteReply.Clean("550 5.1.1 user \u202Enwonk\u2069"));
    }

    [Fact]
    public void Clean_AReplyTooLong_IsCutWithAnEllipsis_NeverBetweenASurrogatePair_AndCleaningAgainChangesNothing()
    {
        string head = "550 5.1.1 " + new string('x', RemoteReply.MaxLength - 12);
        string cut = RemoteReply.Clean(head + "📭 and much more");

        Assert.Equal(head + "…", cut); // the emoji's high surrogate would have been the last character kept
        Assert.Equal(RemoteReply.MaxLength - 1, cut.Length);
        Assert.Same(cut, RemoteReply.Clean(cut));

        string flood = RemoteReply.Clean("451-4.7.1 " + string.Concat(Enumerable.Repeat("line\n", 1_000_000)));
        Assert.Equal(RemoteReply.MaxLength, flood.Length);
        Assert.StartsWith("451-4.7.1 line / line / ", flood, StringComparison.Ordinal);
        Assert.EndsWith("…", flood, StringComparison.Ordinal);
    }

    [Fact]
    public void RecipientResult_MadeAnyWay_KeepsTheCleanReply()
    {
        const string Raw = "550 5.1.1 no such\0user\n5.1.1 bye";
        const string Clean = "550 5.1.1 no such\uFFFDuser / 5.1.1 bye";
        var made = new RecipientResult("bob@example.com", RecipientOutcome.Failed, Raw);
        var changed = made with { Reply = "expired after 120 h; last reply: " + Raw };
        var read = JsonSerializer.Deserialize<RecipientResult>("""{"Address":"bob@example.com","Outcome":"failed","Reply":"550 5.1.1 no such\u0000user\n5.1.1 bye"}""")!;

        Assert.Equal(Clean, made.Reply);
        Assert.Equal("expired after 120 h; last reply: " + Clean, changed.Reply);
        Assert.Equal(Clean, read.Reply);
        Assert.Equal(made, read);
    }
}
