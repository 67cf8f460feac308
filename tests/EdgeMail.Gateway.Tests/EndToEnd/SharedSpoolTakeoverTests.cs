using System.Text;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using MimeKit;
using Xunit;

namespace EdgeMail.Gateway.Tests.EndToEnd;

/// <summary>
/// A gateway on a shared PostgreSQL spool takes over what a dead instance had claimed, though nothing announces it:
/// the claims lapse silently, so an idle instance must look again at <c>Spool:PollInterval</c>.
/// </summary>
public sealed class SharedSpoolTakeoverTests
{
    [PostgresFact]
    public async Task AlertsClaimedByAnInstanceThatDied_AreRoutedAndMailedByAnIdleSurvivor_AfterTheLease()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        string[] ids = [.. Enumerable.Range(0, 5).Select(i => $"orphan-{i}")];

        // The instance that dies: stores the alerts, claims them for routing, and then nothing (SIGKILL: no stop code).
        await using var dead = PostgresSpool.Open(db.ConnectionString, fsync: true, maxBatch: 64, TimeSpan.FromSeconds(2), TimeSpan.FromMilliseconds(500), NullLogger.Instance);
        foreach (string id in ids)
        {
            await dead.AcceptAlertAsync(new IncomingAlert("dev-1", id, DateTimeOffset.UtcNow, "127.0.0.1:1", Encoding.UTF8.GetBytes(Alerts.Json(id)), null, "TEMP_HIGH", Severity: "critical"), default);
        }

        Assert.Equal(ids.Length, (await dead.NewAlertsAsync(10, default)).Count);

        // The survivor starts after every notification was sent: no new alert will come to wake it.
        await using var survivor = await TestGateway.StartAsync(c =>
        {
            c["Spool"] = new { Provider = "Postgres", db.ConnectionString, ClaimLease = "00:00:02", PollInterval = "00:00:00.500" };
            c["Relay"] = new { Mode = "Mailbox", Timeout = "00:00:01" }; // a lease must outlast an attempt (twice the timeout)
        });
        var mails = await survivor.MailAsync(ids.Length, TimeSpan.FromSeconds(30));

        var mailed = mails.Select(f => MimeMessage.Load(f).Headers["X-EdgeMail-Alert"]).Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(ids, mailed);
    }
}
