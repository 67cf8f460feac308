using System.Text;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest.Smtp;
using MimeKit;
using Xunit;

namespace EdgeMail.Gateway.Tests.Smtp;

/// <summary>The gateway's From on a device's relayed mail names that device and the sender as configured now.</summary>
public sealed class RelayedMailWriterTests
{
    private static readonly DateTimeOffset Now = new(2026, 12, 5, 10, 0, 0, TimeSpan.Zero);
    private static readonly byte[] Raw = Encoding.ASCII.GetBytes("From: <dev@lan.example.com>\r\nSubject: s\r\n\r\nbody");

    [Fact]
    public void Rewrite_FromNamesEachDeviceAndTheCurrentSender()
    {
        var sender = new SenderOptions { Address = "alerts@example.com", DisplayName = "EdgeMail", Hostname = "gw1.example.com" };
        var renamed = new SenderOptions { Address = "alarms@example.org", DisplayName = "Plant \u00c4 alarms", Hostname = "gw1.example.com" };

        var first = From(Rewrite("ups-1", "UPS 1", sender));
        var again = From(Rewrite("ups-1", "UPS 1", sender));
        var other = From(Rewrite("fridge-2", "Fridge 2", sender));
        var changed = From(Rewrite("ups-1", "UPS 1", renamed));

        Assert.Equal(("UPS 1 via EdgeMail", "alerts@example.com"), first);
        Assert.Equal(first, again);
        Assert.Equal(("Fridge 2 via EdgeMail", "alerts@example.com"), other);
        Assert.Equal(("UPS 1 via Plant \u00c4 alarms", "alarms@example.org"), changed);
    }

    [Fact]
    public void Rewrite_DropsContentLength_WhichNoSmtpHopSends()
    {
        byte[] raw = Encoding.ASCII.GetBytes("From: <dev@lan.example.com>\r\nSubject: s\r\nContent-Length: 4\r\ncontent-length:4\r\n\r\nbody");

        var relayed = RelayedMailWriter.Rewrite(raw, new Submission("ups-1", "UPS 1", "192.0.2.7", "dev@lan.example.com", false, false, "abc123def456", Now),
            new SenderOptions { Address = "alerts@example.com", Hostname = "gw1.example.com" });

        Assert.DoesNotContain("content-length", Encoding.ASCII.GetString(relayed.Mime), StringComparison.OrdinalIgnoreCase);
        Assert.Contains("Subject: s\r\n", Encoding.ASCII.GetString(relayed.Mime), StringComparison.Ordinal);
    }

    // Pinned: a resubmission that straddles an upgrade must still find the mail it repeats.
    [Fact]
    public void Rewrite_SpoolKeyOfMailWithAMessageId_IsTheDevicesIdAndContent_AsEver()
    {
        byte[] raw = Encoding.ASCII.GetBytes("From: <dev@lan.example.com>\r\nMessage-ID: <m.1@lan.example.com>\r\nSubject: s\r\n\r\nbody");
        var sender = new SenderOptions { Address = "alerts@example.com", Hostname = "gw1.example.com" };

        var first = RelayedMailWriter.Rewrite(raw, new Submission("ups-1", "UPS 1", "192.0.2.7", "dev@lan.example.com", false, false, "abc123def456", Now), sender);
        var later = RelayedMailWriter.Rewrite(raw, new Submission("ups-1", "UPS 1", "192.0.2.8", "", true, true, "0123456789ab", Now.AddHours(1)), sender);

        Assert.Equal("619c475b57ee3a869b36ee63ee5e7374.relay@gw1.example.com", first.SpoolKey);
        Assert.Equal(first.SpoolKey, later.SpoolKey);
    }

    // The parser is kept per thread: what one mail left in it (a header block it gave up on, a huge one) must not show in
    // the next mail's rewrite.
    [Fact]
    public void Rewrite_AfterMailsThatAreNotHeaderBlocks_WritesTheNextMailAsOnItsOwn()
    {
        byte[] good = Encoding.ASCII.GetBytes("From: <dev@lan.example.com>\r\nMessage-ID: <m.2@lan.example.com>\r\nSubject: s\r\n\r\nbody");
        var alone = RelayedMailWriter.Rewrite(good, SubmittedBy("ups-1"), Sender);
        byte[] huge = Encoding.ASCII.GetBytes("Subject: " + new string('x', 200_000) + "\r\nFrom: <a@b.c>\r\n\r\nbody");
        foreach (byte[] bad in new[] { Encoding.ASCII.GetBytes("not a header\r\nat all\r\n"), Encoding.ASCII.GetBytes(": \r\n\r\nx"), huge, [0xFF, 0xFE, 0x0D, 0x0A] })
        {
            RelayedMailWriter.Rewrite(bad, SubmittedBy("ups-1"), Sender);
        }

        var after = RelayedMailWriter.Rewrite(good, SubmittedBy("ups-1"), Sender);

        Assert.Equal(Encoding.ASCII.GetString(alone.Mime), Encoding.ASCII.GetString(after.Mime));
        Assert.Equal(alone.SpoolKey, after.SpoolKey);
    }

    // A mail whose lines end in bare LF is rewritten with CRLF, and the array it came in is left as it was (the
    // quarantine keeps it as submitted).
    [Fact]
    public void Rewrite_OfBareLfMail_WritesCrlf_AndLeavesTheSubmittedBytesAlone()
    {
        byte[] raw = Encoding.ASCII.GetBytes("From: <dev@lan.example.com>\nSubject: s\n\nline 1\nline 2");
        byte[] copy = [.. raw];

        var relayed = RelayedMailWriter.Rewrite(raw, SubmittedBy("ups-1"), Sender);

        Assert.Equal(copy, raw);
        Assert.EndsWith("\r\n\r\nline 1\r\nline 2\r\n", Encoding.ASCII.GetString(relayed.Mime), StringComparison.Ordinal);
        Assert.DoesNotMatch("[^\r]\n", Encoding.ASCII.GetString(relayed.Mime));
    }

    [Fact]
    public void QuarantineKey_WithAMessageId_IsTheSameForTheSameMailOfTheSameDevice_WhateverTheSession()
    {
        byte[] raw = Encoding.ASCII.GetBytes("From: <dev@lan.example.com>\r\nMessage-ID: <m.1@lan.example.com>\r\nSubject: s\r\n\r\nbody");

        string first = RelayedMailWriter.QuarantineKey(raw, "ups-1", "abc123def456", Now, "gw1.example.com");
        string resent = RelayedMailWriter.QuarantineKey(raw, "ups-1", "0123456789ab", Now.AddMinutes(5), "gw1.example.com");
        string otherDevice = RelayedMailWriter.QuarantineKey(raw, "ups-2", "abc123def456", Now, "gw1.example.com");
        string otherContent = RelayedMailWriter.QuarantineKey([.. raw, (byte)'!'], "ups-1", "abc123def456", Now, "gw1.example.com");

        Assert.Matches("^[0-9a-f]{32}\\.quarantined@gw1\\.example\\.com$", first);
        Assert.Equal(first, resent);
        Assert.Equal(4, new[] { first, otherDevice, otherContent, RelayedMailWriter.Rewrite(raw, SubmittedBy("ups-1"), Sender).SpoolKey }.Distinct().Count());
    }

    [Fact]
    public void QuarantineKey_WithoutAMessageId_IsUniquePerSubmission()
    {
        Assert.NotEqual(RelayedMailWriter.QuarantineKey(Raw, "ups-1", "abc123def456", Now, "gw1.example.com"),
            RelayedMailWriter.QuarantineKey(Raw, "ups-1", "abc123def456", Now, "gw1.example.com"));
    }

    private static readonly SenderOptions Sender = new() { Address = "alerts@example.com", Hostname = "gw1.example.com" };

    private static Submission SubmittedBy(string device) => new(device, device, "192.0.2.7", "dev@lan.example.com", false, false, "abc123def456", Now);

    private static RelayedMail Rewrite(string device, string name, SenderOptions sender) =>
        RelayedMailWriter.Rewrite(Raw, new Submission(device, name, "192.0.2.7", "dev@lan.example.com", false, false, "abc123def456", Now), sender);

    private static (string Name, string Address) From(RelayedMail mail)
    {
        using var message = MimeMessage.Load(new MemoryStream(mail.Mime));
        var from = Assert.Single(message.From.Mailboxes);
        return (from.Name ?? string.Empty, from.Address);
    }
}
