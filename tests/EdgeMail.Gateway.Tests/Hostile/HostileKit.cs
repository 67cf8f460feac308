using System.Net;
using EdgeMail.Gateway.Tests.Smtp;
using Xunit;

namespace EdgeMail.Gateway.Tests.Hostile;

/// <summary>The checks every hostile case ends with: the service still serves a well-behaved device, and no mail left for anyone but the gateway's people.</summary>
public static class HostileKit
{
    /// <summary>The gateway's people (users of <see cref="TestGateway.WriteConfig"/> and the operator).</summary>
    public static readonly string[] OurPeople = ["alice@example.com", "bob@example.com", "ops@example.com"];

    /// <summary>A well-behaved device (from 127.0.0.3, so per-source limits hit by the attacker on 127.0.0.1 do not apply) can still submit.</summary>
    public static async Task AssertStillServesAsync(TestGateway gw)
    {
        var (wire, greeting) = await SmtpWire.ConnectAsync(gw.StartTls(), IPAddress.Parse("127.0.0.3"));
        await using var _ = wire;
        Assert.StartsWith("220", greeting);
        await wire.CommandAsync("EHLO good.device");
        Assert.StartsWith("220", await wire.StartTlsAsync());
        await wire.CommandAsync("EHLO good.device");
        Assert.StartsWith("235", await wire.AuthPlainAsync("dev-2", TestGateway.Secret));
        Assert.StartsWith("250", await wire.SendMailAsync("dev-2@devices.test", ["alice@example.com"], SmtpGateway.PlainMail("still here", "fine")));
    }

    /// <summary>Every envelope recipient in the mailbox (first line of each .eml) is one of ours.</summary>
    public static void AssertNoMailForStrangers(TestGateway gw)
    {
        if (!Directory.Exists(gw.MailboxNew))
        {
            return;
        }

        foreach (string file in Directory.GetFiles(gw.MailboxNew))
        {
            string first = File.ReadLines(file).First();
            Assert.StartsWith("X-EdgeMail-Envelope-To:", first);
            foreach (string rcpt in first["X-EdgeMail-Envelope-To:".Length..].Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            {
                Assert.Contains(rcpt.Trim('<', '>'), OurPeople);
            }
        }
    }

    /// <summary>Waits for the mailbox file of a mail the gateway answered <c>250 2.0.0 queued as &lt;key&gt;</c>.</summary>
    public static async Task<string> DeliveredAsync(TestGateway gw, string reply)
    {
        var match = System.Text.RegularExpressions.Regex.Match(reply, "queued as <([^>]+)>");
        Assert.True(match.Success, reply);
        string file = Path.Combine(gw.MailboxNew, EdgeMail.Gateway.Relay.LocalMailbox.FileName(match.Groups[1].Value));
        var deadline = DateTime.UtcNow + Testing.Await.DefaultTimeout;
        while (!File.Exists(file))
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting for " + file);
            try
            {
                // Woken by the next mail to land, or after half a second to look again for this one.
                await gw.MailAsync(Directory.Exists(gw.MailboxNew) ? Directory.GetFiles(gw.MailboxNew).Length + 1 : 1, TimeSpan.FromMilliseconds(500));
            }
            catch (TimeoutException)
            {
                // Observed here: a timed-out wait left unobserved fails whichever test host next checks for such faults.
            }
        }

        return file;
    }

    /// <summary>Messages in the spool (all kinds).</summary>
    public static async Task<long> QueuedAsync(TestGateway gw) => (await gw.Spool.CountsAsync(default)).Messages.Values.Sum();
}
