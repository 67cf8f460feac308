using System.Text;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using MimeKit;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Routing;

public sealed class StormControlTests
{
    [Fact]
    public async Task Repeats_WithinTheWindow_BecomeOneDigestWhileClearedGoesOutPromptly()
    {
        await using var gw = await TestGateway.StartAsync(c => c["Storm"] = new { Window = "00:00:02" });
        using var client = await gw.ConnectAsync("dev-1");
        async Task Publish(string id, string state = "raised")
        {
            var ack = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
                .WithPayload(Alerts.Json(id, code: "PUMP_CYCLING", state: state)).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
            Assert.True(ack.IsSuccess);
        }

        await Publish("s-1");
        await gw.MailAsync(1);
        for (int i = 2; i <= 6; i++)
        {
            await Publish($"s-{i}");
        }

        await Publish("s-7", "cleared");
        var afterClear = await gw.MailAsync(2);
        var all = await gw.MailAsync(3, TimeSpan.FromSeconds(20));

        Assert.Equal(2, afterClear.Length);
        Assert.Contains(afterClear, f => f.Contains("s-7", StringComparison.Ordinal));
        Assert.Equal(3, all.Length);
        var digest = MimeMessage.Load(Assert.Single(all, f => f.Contains("digest", StringComparison.Ordinal)));
        Assert.Contains("repeated 5 times", digest.Subject, StringComparison.Ordinal);
        var cleared = MimeMessage.Load(Assert.Single(all, f => f.Contains("s-7", StringComparison.Ordinal)));
        Assert.Equal("dev-1.s-1.alert@gw.test", cleared.InReplyTo);
    }

    [Fact]
    public async Task Digest_OfRepeatsOfMixedSeverity_GoesToEveryoneTheMostSevereRepeatIsRoutedTo()
    {
        // Warnings go to Bob, criticals to Alice too: a held critical repeat must reach Alice even when the latest
        // repeat in the digest is a warning.
        await using var gw = await TestGateway.StartAsync(c =>
        {
            c["Storm"] = new { Window = "00:00:02" };
            c["Routes"] = new object[]
            {
                new { Devices = "*", Codes = "*", MinSeverity = "warning", To = new[] { "bob" } },
                new { Devices = "*", Codes = "*", MinSeverity = "critical", To = new[] { "alice" } },
            };
        });
        using var client = await gw.ConnectAsync("dev-1");
        async Task Publish(string id, string sev)
        {
            var ack = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
                .WithPayload(Alerts.Json(id, code: "PUMP_CYCLING", sev: sev)).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
            Assert.True(ack.IsSuccess);
        }

        await Publish("m-1", "critical");
        await gw.MailAsync(1);
        await Publish("m-2", "critical");
        await Publish("m-3", "warning");
        var all = await gw.MailAsync(2, TimeSpan.FromSeconds(20));

        var digest = MimeMessage.Load(Assert.Single(all, f => f.Contains("digest", StringComparison.Ordinal)));
        Assert.Contains("repeated 2 times", digest.Subject, StringComparison.Ordinal);
        Assert.Equal(["alice@example.com", "bob@example.com"], digest.To.Mailboxes.Select(m => m.Address).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task Raise_AfterTheClockWasSteppedBack_IsMailedAtOnce_NotHeldUntilTheOldWindowEnds()
    {
        var clock = new SteppedClock();
        await using var gw = await TestGateway.StartAsync(c => c["Storm"] = new { Window = "00:10:00" },
            services => services.AddSingleton<TimeProvider>(clock));
        using var client = await gw.ConnectAsync("dev-1");
        async Task Publish(string id)
        {
            var ack = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
                .WithPayload(Alerts.Json(id, code: "PUMP_CYCLING")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
            Assert.True(ack.IsSuccess);
        }

        await Publish("c-1");
        await gw.MailAsync(1);
        clock.Offset = TimeSpan.FromDays(-1); // NTP corrects a clock that ran a day ahead
        await Publish("c-2");

        var all = await gw.MailAsync(2); // held, it would have waited a day and ten minutes
        Assert.Contains(all, f => f.Contains("c-2", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Digest_WhoseRouteNoLongerNamesAnyone_LeavesItsRepeatsUnrouted_AsASingleAlertIs()
    {
        var clock = new SteppedClock();
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        var before = await TestGateway.StartAsync(c => c["Storm"] = new { Window = "00:10:00" }, s => s.AddSingleton<TimeProvider>(clock), dataDir: dataDir);
        using (var client = await before.ConnectAsync("dev-1"))
        {
            await PublishAsync(client, "u-1");
            await before.MailAsync(1);
            await PublishAsync(client, "u-2");
            await PublishAsync(client, "u-3");
            await before.UntilAsync(async () => (await before.Spool.CountsAsync(default)).Alerts.GetValueOrDefault("held") == 2, "two repeats held");
        }

        await before.StopAsync();

        // The device's owners, whom the only route names, are taken away; the window closes while the gateway is down.
        clock.Offset = TimeSpan.FromMinutes(11);
        await using var gw = await TestGateway.StartAsync(c =>
        {
            c["Storm"] = new { Window = "00:10:00" };
            c["Devices"] = new Dictionary<string, object> { ["dev-1"] = new { Secret = SecretHash.Create(TestGateway.Secret, 1000), Owners = Array.Empty<string>() } };
        }, s => s.AddSingleton<TimeProvider>(clock), dataDir: dataDir);
        await gw.UntilAsync(async () => !(await gw.Spool.CountsAsync(default)).Alerts.ContainsKey("held"), "the held repeats handled");
        using (var client = await gw.ConnectAsync("dev-1"))
        {
            await PublishAsync(client, "u-4"); // a single alert now: nobody to tell
            await gw.UntilAsync(async () => (await gw.Spool.GetAlertAsync("dev-1", "u-4", default))?.Status != "new", "u-4 routed");
        }

        Assert.Equal(("unrouted", "unrouted", "unrouted"), (
            (await gw.Spool.GetAlertAsync("dev-1", "u-2", default))?.Status,
            (await gw.Spool.GetAlertAsync("dev-1", "u-3", default))?.Status,
            (await gw.Spool.GetAlertAsync("dev-1", "u-4", default))?.Status));
        var repeat = Assert.Single(await gw.Spool.QueryAlertsAsync(new AlertQuery(Device: "dev-1"), default), a => a.AlertId == "u-3");
        Assert.Contains("nobody", (await gw.Spool.AlertJourneyAsync(repeat.RowId, default))!.Route, StringComparison.Ordinal);
        Assert.Single(Directory.GetFiles(gw.MailboxNew, "*.eml")); // u-1's mail only
    }

    [Fact]
    public async Task Digest_WhoseHeldRepeatsNoLongerValidate_ParksThem_WithAFailedReceiptForEachAndANotice()
    {
        // Held by a gateway that validated less: the repeats are in the spool, their window closed, none passes now.
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dataDir);
        var heldUntil = TimeProvider.System.GetUtcNow().AddMinutes(-1);
        await using (var spool = SqliteSpool.Open(Path.Combine(dataDir, "spool.db"), fsync: true, maxBatch: 64, NullLogger.Instance))
        {
            foreach (string id in new[] { "v-2", "v-3", "v-4" })
            {
                byte[] payload = Encoding.UTF8.GetBytes($$"""{"v":1,"id":"{{id}}","state":"raised","code":"PUMP_CYCLING"}""");
                await spool.AcceptAlertAsync(new IncomingAlert("dev-1", id, heldUntil.AddMinutes(-5), null, payload, null, "PUMP_CYCLING"), default);
            }

            var stored = await spool.NewAlertsAsync(10, default);
            await spool.CommitRoutingAsync([.. stored.Select(a => new RoutingCommit(a.RowId, AlertStatus.Held, heldUntil, null, null, null))], default);
        }

        await using var gw = await TestGateway.StartAsync(c => c["Storm"] = new { Window = "00:10:00", DigestMaxRepeats = 2 }, null, dataDir: dataDir);
        gw.Logs.Expect(e => e.Message.StartsWith("Parked alert v-2 from dev-1", StringComparison.Ordinal));

        await gw.UntilAsync(async () => (await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Count == 3, "a receipt kept for each repeat");
        var receipts = await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default);
        Assert.Equal(["v-2", "v-3", "v-4"], receipts.Where(r => r.Receipt.State == "failed").Select(r => r.Receipt.AlertId).Order(StringComparer.Ordinal));
        Assert.Equal(3, (await gw.Spool.ParkedAsync(10, default)).Count);
        Assert.All(await gw.Spool.ParkedAsync(10, default), p => Assert.Contains("no longer pass", p.Reason, StringComparison.Ordinal));
        var notice = MimeMessage.Load(Assert.Single(await gw.MailAsync(1)));
        Assert.Equal("ops@example.com", Assert.Single(notice.To.Mailboxes).Address);
    }

    private static async Task PublishAsync(IMqttClient client, string id)
    {
        var ack = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
            .WithPayload(Alerts.Json(id, code: "PUMP_CYCLING")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess);
    }

    // The system clock, moved by Offset (timers keep running on the system's).
    private sealed class SteppedClock : TimeProvider
    {
        public TimeSpan Offset { get; set; }

        public override DateTimeOffset GetUtcNow() => base.GetUtcNow() + Offset;
    }
}
