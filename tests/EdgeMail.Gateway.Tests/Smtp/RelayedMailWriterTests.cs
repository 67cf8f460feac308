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

    private static RelayedMail Rewrite(string device, string name, SenderOptions sender) =>
        RelayedMailWriter.Rewrite(Raw, new Submission(device, name, "192.0.2.7", "dev@lan.example.com", false, false, "abc123def456", Now), sender);

    private static (string Name, string Address) From(RelayedMail mail)
    {
        using var message = MimeMessage.Load(new MemoryStream(mail.Mime));
        var from = Assert.Single(message.From.Mailboxes);
        return (from.Name ?? string.Empty, from.Address);
    }
}
