using System.Text;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.Smtp;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using MimeKit;
using Xunit;

namespace EdgeMail.Gateway.Tests.EndToEnd;

/// <summary>Gateways in process on one shared PostgreSQL spool: taking over a dead instance's work, SMTP ingest on any instance.</summary>
public sealed class SharedSpoolGatewayTests
{
    // A dead instance's claims lapse silently, with no notification: an idle instance must look again at Spool:PollInterval.
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

    [PostgresFact]
    public async Task AnAlertSubmittedOverSmtpToOneInstance_AndAgainToAnother_IsStoredOnceAndMailedOnce()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        void Shared(Dictionary<string, object> c) => c["Spool"] = new { Provider = "Postgres", db.ConnectionString };
        await using var a = await SmtpGateway.StartAsync(tweak: Shared);
        await using var b = await SmtpGateway.StartAsync(tweak: Shared);

        // The device lost the first 250 and its load balancer sends the retry to the other instance.
        await using (var toA = await a.AuthenticatedAsync("dev-1"))
        {
            Assert.StartsWith("250 2.0.0 alert stored (1 new", await toA.SendMailAsync("dev-1@devices.test", ["alarms@gw.test"], SmtpGateway.AlertMail("lb-1")));
        }

        await using (var toB = await b.AuthenticatedAsync("dev-1"))
        {
            Assert.StartsWith("250 2.0.0 alert stored (0 new, 1 duplicate)", await toB.SendMailAsync("dev-1@devices.test", ["alarms@gw.test"], SmtpGateway.AlertMail("lb-1")));
        }

        // Whichever instance routed it mailed it; then nothing is left to send anywhere.
        Task<string[]> atA = a.MailAsync(1), atB = b.MailAsync(1);
        var first = await Task.WhenAny(atA, atB);
        _ = (first == atA ? atB : atA).ContinueWith(t => t.Exception, TaskScheduler.Default); // the other times out or ends with its folder
        await first;
        var counts = await a.Spool.CountsAsync(default);
        Assert.Equal(1L, counts.Alerts.Values.Sum());
        Assert.Equal(1L, counts.Messages.Values.Sum());
        Assert.Equal(1, Directory.GetFiles(a.MailboxNew, "*.eml").Length + (Directory.Exists(b.MailboxNew) ? Directory.GetFiles(b.MailboxNew, "*.eml").Length : 0));
    }

    // An idle gateway learns at its next heartbeat that the spool was upgraded under it (by a newer gateway that could
    // not see it, or by hand), and stops with the fatal exit code instead of handling the next rows by the old rules.
    [PostgresFact]
    public async Task AGatewayWhoseSpoolWasUpgradedUnderIt_StopsWithTheFatalExitCode()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        await using var gateway = await TestGateway.StartAsync(c =>
        {
            c["Spool"] = new { Provider = "Postgres", db.ConnectionString, ClaimLease = "00:00:03", PollInterval = "00:00:01" };
            c["Relay"] = new { Mode = "Mailbox", Timeout = "00:00:01" }; // a lease must outlast an attempt (twice the timeout)
        });
        int newer = PostgresSchema.CurrentVersion + 1;
        gateway.Logs.Expect(e => $"{e.Message} {e.Exception?.Message}".Contains($"schema version {newer}", StringComparison.Ordinal));
        var stopping = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var registration = gateway.Host.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping.Register(() => stopping.TrySetResult(true));

        await db.ScalarAsync($"INSERT INTO schema_version(version) VALUES({newer})");

        await Await.Within(stopping.Task, "the gateway to stop");
        Assert.Equal(GatewayLifetime.FatalExitCode, gateway.Host.Services.GetRequiredService<GatewayLifetime>().ExitCode);
        Assert.Contains(gateway.Logs.Errors, e => e.Level == LogLevel.Critical && e.Message.Contains($"schema version {newer}", StringComparison.Ordinal));
    }
}
