using System.Text;
using EdgeMail.Gateway.Ingest.Smtp;
using Xunit;

namespace EdgeMail.Gateway.Tests.Smtp;

/// <summary>A message with more alert parts than <see cref="SubmissionHandler.MaxAlertParts"/> is refused whole, not stored in part.</summary>
public sealed class AlertPartLimitTests
{
    private static string MailWithAlerts(string prefix, int count)
    {
        var mail = new StringBuilder("From: <dev-1@devices.test>\r\nTo: <alarms@gw.test>\r\nSubject: many alerts\r\nMIME-Version: 1.0\r\n")
            .Append("Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nAlerts attached.\r\n");
        for (int i = 1; i <= count; i++)
        {
            mail.Append("--b1\r\nContent-Type: application/vnd.edgemail.alert+json\r\n\r\n").Append(Alerts.Json($"{prefix}-{i}")).Append("\r\n");
        }

        return mail.Append("--b1--\r\n").ToString();
    }

    [Fact]
    public async Task Data_WithOneAlertPartOverTheLimit_IsRefused552NamingTheLimitAndNothingIsStored_ThenTheLimitItselfIsTaken()
    {
        await using var gw = await SmtpGateway.StartAsync();
        await using var wire = await gw.AuthenticatedAsync("dev-1");
        int limit = SubmissionHandler.MaxAlertParts;

        string refused = await wire.SendMailAsync("dev-1@devices.test", ["alarms@gw.test"], MailWithAlerts("over", limit + 1));

        Assert.StartsWith("552 5.3.4 too many alert parts: at most 16 in one message; nothing was stored", refused);
        for (int i = 1; i <= limit + 1; i++)
        {
            Assert.Null(await gw.Spool.GetAlertAsync("dev-1", $"over-{i}", default));
        }

        Assert.Equal(0, await Hostile.HostileKit.QueuedAsync(gw));

        // The same session goes on, and exactly the limit is fine.
        string taken = await wire.SendMailAsync("dev-1@devices.test", ["alarms@gw.test"], MailWithAlerts("at", limit));

        Assert.StartsWith($"250 2.0.0 alert stored ({limit} new, 0 duplicate)", taken);
        Assert.NotNull(await gw.Spool.GetAlertAsync("dev-1", $"at-{limit}", default));
    }

    [Fact]
    public void AlertParts_StopsDecodingOnePastTheLimit()
    {
        byte[] raw = Encoding.UTF8.GetBytes(MailWithAlerts("many", 40));

        Assert.Equal(SubmissionHandler.MaxAlertParts + 1, SubmissionHandler.AlertParts(raw).Count);
    }
}
