using System.Text;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Routing;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.Receipts;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
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
    public async Task Flapping_FirstRaiseAndClearGoOutAtOnce_ThenOneDigestPerWindowWithTheCountsAndTheStateNow()
    {
        // A float switch at a pump station: raise, clear, raise, clear... Before, every clear reset storm control, so
        // each change was a mail of its own, two a minute for as long as it flapped.
        var clock = new SteppedClock();
        await using var gw = await TestGateway.StartAsync(c => c["Storm"] = new { Window = "00:10:00" }, s => s.AddSingleton<TimeProvider>(clock));
        using var client = await gw.ConnectAsync("dev-1");

        await PublishAsync(client, "f-1");
        await gw.MailAsync(1);
        await PublishAsync(client, "f-2", "cleared"); // nothing says yet that it flaps: the usual pair, both at once
        await gw.MailAsync(2);
        await PublishAsync(client, "f-3");
        await PublishAsync(client, "f-4", "cleared");
        await PublishAsync(client, "f-5");
        await PublishAsync(client, "f-6", "cleared");
        Assert.Equal(["held", "held", "held", "held"], await DecidedAsync(gw, "f-3", "f-4", "f-5", "f-6"));

        CloseWindow(gw, clock, TimeSpan.FromMinutes(10));
        var first = MimeMessage.Load(Assert.Single(await gw.MailAsync(3), f => f.Contains(".f-3.digest", StringComparison.Ordinal)));

        // It goes on flapping in the next window, and stops there in the raised state.
        await PublishAsync(client, "f-7");
        await PublishAsync(client, "f-8", "cleared");
        await PublishAsync(client, "f-9");
        Assert.Equal(["held", "held", "held"], await DecidedAsync(gw, "f-7", "f-8", "f-9"));
        CloseWindow(gw, clock, TimeSpan.FromMinutes(10));
        var second = MimeMessage.Load(Assert.Single(await gw.MailAsync(4), f => f.Contains(".f-7.digest", StringComparison.Ordinal)));

        Assert.Equal("[CLEARED] dev-1 @ Hall 3: PUMP_CYCLING flapping: 2 raises, 2 clears in 10 min", first.Subject);
        Assert.Equal("[CRITICAL] dev-1 @ Hall 3: PUMP_CYCLING flapping: 2 raises, 1 clear in 10 min", second.Subject);
        Assert.Equal(("dev-1.f-1.alert@gw.test", "dev-1.f-1.alert@gw.test"), (first.InReplyTo, second.InReplyTo)); // the last raised mail
        string firstText = first.TextBody ?? string.Empty;
        Assert.Contains("Now: cleared", firstText, StringComparison.Ordinal);
        Assert.Contains("Now: raised", second.TextBody, StringComparison.Ordinal);
        Assert.Equal(2, firstText.Split("/cleared]").Length - 1); // each change listed
        Assert.Equal(4, (await gw.Spool.CountsAsync(default)).Messages.Values.Sum()); // raise, clear, two digests: nothing else
    }

    [Fact]
    public async Task RaiseThenClear_WithoutFlapping_AreTwoPromptMails_TheClearThreadedOntoTheRaise()
    {
        var clock = new SteppedClock();
        await using var gw = await TestGateway.StartAsync(c => c["Storm"] = new { Window = "00:10:00" }, s => s.AddSingleton<TimeProvider>(clock));
        using var client = await gw.ConnectAsync("dev-1");

        await PublishAsync(client, "p-1");
        await gw.MailAsync(1);
        await PublishAsync(client, "p-2", "cleared");
        var both = await gw.MailAsync(2);

        Assert.Equal(["routed", "routed"], await DecidedAsync(gw, "p-1", "p-2"));
        var cleared = MimeMessage.Load(Assert.Single(both, f => f.Contains("p-2", StringComparison.Ordinal)));
        Assert.StartsWith("[CLEARED]", cleared.Subject, StringComparison.Ordinal);
        Assert.Equal("dev-1.p-1.alert@gw.test", cleared.InReplyTo);
    }

    [Fact]
    public async Task Raise_RightAfterTheClearOfAnIncidentLongerThanTheWindow_IsMailedAtOnce()
    {
        // Only a clear within the window after the raise (a short incident: a flap) makes the next raise wait.
        var clock = new SteppedClock();
        await using var gw = await TestGateway.StartAsync(c => c["Storm"] = new { Window = "00:10:00" }, s => s.AddSingleton<TimeProvider>(clock));
        using var client = await gw.ConnectAsync("dev-1");

        await PublishAsync(client, "l-1");
        await gw.MailAsync(1);
        clock.Offset = TimeSpan.FromMinutes(30);
        await PublishAsync(client, "l-2", "cleared");
        await PublishAsync(client, "l-3");

        Assert.Equal(["routed", "routed"], await DecidedAsync(gw, "l-2", "l-3"));
        Assert.Equal(3, (await gw.MailAsync(3)).Length);
    }

    [Fact]
    public async Task ClearThatEndsAStorm_ArrivesInTheDigestAtTheWindowsEnd_ThreadedOntoTheRaise()
    {
        var clock = new SteppedClock();
        await using var gw = await TestGateway.StartAsync(c => c["Storm"] = new { Window = "00:10:00" }, s => s.AddSingleton<TimeProvider>(clock));
        using var client = await gw.ConnectAsync("dev-1");

        await PublishAsync(client, "s-1");
        await gw.MailAsync(1);
        await PublishAsync(client, "s-2");
        await PublishAsync(client, "s-3");
        await PublishAsync(client, "s-4", "cleared");
        Assert.Equal(["held", "held", "held"], await DecidedAsync(gw, "s-2", "s-3", "s-4")); // the clear joins the repeats it ends

        CloseWindow(gw, clock, TimeSpan.FromMinutes(10));
        var all = await gw.MailAsync(2);

        var digest = MimeMessage.Load(Assert.Single(all, f => f.Contains(".s-2.digest", StringComparison.Ordinal)));
        Assert.Equal("[CLEARED] dev-1 @ Hall 3: PUMP_CYCLING flapping: 2 raises, 1 clear in 10 min", digest.Subject);
        Assert.Equal("dev-1.s-1.alert@gw.test", digest.InReplyTo);
        Assert.Equal(2, (await gw.Spool.CountsAsync(default)).Messages.Values.Sum());
    }

    [Fact]
    public Task Clear_OfAnIncidentRaisedLongerAgoThanTheRetention_IsStillThreadedOntoTheRaise_AfterPruningAndARestart() =>
        ClearAfterPruningAsync(_ => { });

    [PostgresFact]
    public async Task SharedSpool_Clear_OfAnIncidentRaisedLongerAgoThanTheRetention_IsStillThreadedOntoTheRaise_AfterPruningAndARestart()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        await ClearAfterPruningAsync(c => c["Spool"] = new { Provider = "Postgres", db.ConnectionString });
    }

    // The raise is mailed, then nothing is heard of the pair for 40 days (Spool:Retention 30); the gateway restarts, so
    // routing reads storm state from the spool, and the housekeeper prunes before the clear comes. Before, pruning took
    // the pair's storm row with the raise's Message-ID, and the clear went out unthreaded. The restarted gateway relays
    // to an SMTP server: its local mailbox would be pruned by the housekeeper's first pass, which runs at start beside
    // the test and, 40 days ahead of the files' real times, takes every file written meanwhile.
    private static async Task ClearAfterPruningAsync(Action<Dictionary<string, object>> spool)
    {
        var clock = new SteppedClock();
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        void Config(Dictionary<string, object> c)
        {
            c["Storm"] = new { Window = "00:10:00" };
            spool(c);
        }

        var first = await TestGateway.StartAsync(Config, s => s.AddSingleton<TimeProvider>(clock), dataDir: dataDir);
        using (var client = await first.ConnectAsync("dev-1"))
        {
            await PublishAsync(client, "k-1");
            await first.MailAsync(1);
        }

        await first.StopAsync();

        clock.Offset = TimeSpan.FromDays(40);
        await using var sink = await SmtpTestServer.StartAsync();
        await using var gw = await TestGateway.StartAsync(c =>
        {
            Config(c);
            c["Relay"] = new { Mode = "Smarthost", Host = "127.0.0.1", Port = sink.Port, Security = "None" };
        }, s => s.AddSingleton<TimeProvider>(clock), dataDir: dataDir);
        await gw.Host.Services.GetRequiredService<Housekeeper>().PassAsync(default);
        using var device = await gw.ConnectAsync("dev-1");
        await PublishAsync(device, "k-2", "cleared");

        // Silence warnings for the 40 days without a heartbeat go out too: the clear's mail is found by its Message-ID.
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("dev-1.k-2.alert@gw.test", default))?.Status == MessageStatus.Sent, "the clear mailed");
        var cleared = Assert.Single(sink.Received, m => m.Message.MessageId == "dev-1.k-2.alert@gw.test").Message;
        Assert.StartsWith("[CLEARED]", cleared.Subject, StringComparison.Ordinal);
        Assert.Equal("dev-1.k-1.alert@gw.test", cleared.InReplyTo);
    }

    [Fact]
    public async Task Flapping_WithStormControlOff_SendsEveryChangeAtOnce()
    {
        await using var gw = await TestGateway.StartAsync(c => c["Storm"] = new { Window = "00:00:00" });
        using var client = await gw.ConnectAsync("dev-1");

        await PublishAsync(client, "o-1");
        await PublishAsync(client, "o-2", "cleared");
        await PublishAsync(client, "o-3");
        await PublishAsync(client, "o-4", "cleared");

        Assert.Equal(["routed", "routed", "routed", "routed"], await DecidedAsync(gw, "o-1", "o-2", "o-3", "o-4"));
        var all = await gw.MailAsync(4);
        Assert.Equal(4, all.Length);
        var last = MimeMessage.Load(Assert.Single(all, f => f.Contains("o-4", StringComparison.Ordinal)));
        Assert.Equal("dev-1.o-3.alert@gw.test", last.InReplyTo);
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
        string dataDir = await HeldBeforeAsync(("v-2", Stale("v-2")), ("v-3", Stale("v-3")), ("v-4", Stale("v-4")));

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

    [Fact]
    public async Task Digest_WithOneHeldRepeatNoLongerValid_ListsAndCountsTheOthers_AndParksThatOneAsASingleAlert()
    {
        // Before, the one that no longer passes was counted in the digest ("repeated 3 times") and marked digested with
        // the others: neither mailed nor parked, and its device was never told.
        string dataDir = await HeldBeforeAsync(
            ("v-2", Alerts.Json("v-2", code: "PUMP_CYCLING", text: "first repeat")),
            ("v-3", Stale("v-3")),
            ("v-4", Alerts.Json("v-4", code: "PUMP_CYCLING", text: "latest repeat")));

        await using var gw = await TestGateway.StartAsync(c => c["Storm"] = new { Window = "00:10:00" }, null, dataDir: dataDir);
        gw.Logs.Expect(e => e.Message.StartsWith("Parked alert v-3 from dev-1", StringComparison.Ordinal));

        var mail = await gw.MailAsync(2);
        var digest = MimeMessage.Load(Assert.Single(mail, f => f.Contains(".v-2.digest", StringComparison.Ordinal)));
        var notice = MimeMessage.Load(Assert.Single(mail, f => !f.Contains(".digest", StringComparison.Ordinal)));
        Assert.Equal("[CRITICAL] dev-1 @ Hall 3: PUMP_CYCLING repeated 2 times", digest.Subject);
        Assert.Equal("ops@example.com", Assert.Single(notice.To.Mailboxes).Address);
        Assert.Contains("first repeat", digest.TextBody, StringComparison.Ordinal);
        Assert.Contains("latest repeat", digest.TextBody, StringComparison.Ordinal);
        Assert.DoesNotContain("more ...", digest.TextBody, StringComparison.Ordinal);
        Assert.Contains("v-3", notice.TextBody, StringComparison.Ordinal);

        Assert.Equal(["digested", "parked", "digested"], await StatusesAsync(gw.Spool, "v-2", "v-3", "v-4"));
        var parked = Assert.Single(await gw.Spool.ParkedAsync(10, default));
        Assert.Equal("v-3", parked.Reference);
        Assert.StartsWith("the alert no longer passes validation: ", parked.Reason, StringComparison.Ordinal);
        await gw.UntilAsync(async () => (await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Any(r => r.Receipt.State == "failed"), "v-3's failed receipt");
        var failed = Assert.Single(await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default), r => r.Receipt.State == "failed");
        Assert.Equal(("v-3", "parked: " + parked.Reason), (failed.Receipt.AlertId, failed.Receipt.Detail));
    }

    [Fact]
    public async Task Digest_WhoseOldestListedRepeatNoLongerValidates_CountsOnlyTheRest_AndListsOneThatWasNotListedBefore()
    {
        // With room for two, v-2 and the latest are listed; v-2 parked, the digest is read again and lists v-3 instead.
        string dataDir = await HeldBeforeAsync(
            ("v-2", Stale("v-2")),
            ("v-3", Alerts.Json("v-3", code: "PUMP_CYCLING", text: "second repeat")),
            ("v-4", Alerts.Json("v-4", code: "PUMP_CYCLING", text: "third repeat")),
            ("v-5", Alerts.Json("v-5", code: "PUMP_CYCLING", text: "latest repeat")));

        await using var gw = await TestGateway.StartAsync(c => c["Storm"] = new { Window = "00:10:00", DigestMaxRepeats = 2 }, null, dataDir: dataDir);
        gw.Logs.Expect(e => e.Message.StartsWith("Parked alert v-2 from dev-1", StringComparison.Ordinal));

        var digest = MimeMessage.Load(Assert.Single(await gw.MailAsync(2), f => f.Contains(".v-3.digest", StringComparison.Ordinal)));
        Assert.Equal("[CRITICAL] dev-1 @ Hall 3: PUMP_CYCLING repeated 3 times", digest.Subject);
        Assert.Contains("second repeat", digest.TextBody, StringComparison.Ordinal);
        Assert.Contains("... and 1 more ...", digest.TextBody, StringComparison.Ordinal);
        Assert.Contains("latest repeat", digest.TextBody, StringComparison.Ordinal);
        Assert.Equal(["parked", "digested", "digested", "digested"], await StatusesAsync(gw.Spool, "v-2", "v-3", "v-4", "v-5"));
    }

    [Fact]
    public async Task Digest_WithAHeldRepeatNoLongerValidAmongTheOnesItDoesNotList_ParksThatOne_AndCountsOnlyTheRest()
    {
        // With room for two, v-2 and the latest are listed and v-3 .. v-5 are "and 3 more". Before, only the listed ones
        // were parsed again: v-4 was counted with the others and marked digested, and its device told the digest's fate.
        string dataDir = await HeldBeforeAsync(
            ("v-2", Alerts.Json("v-2", code: "PUMP_CYCLING", text: "first repeat")),
            ("v-3", Alerts.Json("v-3", code: "PUMP_CYCLING")),
            ("v-4", Stale("v-4")),
            ("v-5", Alerts.Json("v-5", code: "PUMP_CYCLING")),
            ("v-6", Alerts.Json("v-6", code: "PUMP_CYCLING", text: "latest repeat")));

        await using var gw = await TestGateway.StartAsync(c => c["Storm"] = new { Window = "00:10:00", DigestMaxRepeats = 2 }, null, dataDir: dataDir);
        gw.Logs.Expect(e => e.Message.StartsWith("Parked alert v-4 from dev-1", StringComparison.Ordinal));

        var mail = await gw.MailAsync(2);
        var digest = MimeMessage.Load(Assert.Single(mail, f => f.Contains(".v-2.digest", StringComparison.Ordinal)));
        var notice = MimeMessage.Load(Assert.Single(mail, f => !f.Contains(".digest", StringComparison.Ordinal)));
        Assert.Equal("[CRITICAL] dev-1 @ Hall 3: PUMP_CYCLING repeated 4 times", digest.Subject);
        Assert.Contains("... and 2 more ...", digest.TextBody, StringComparison.Ordinal);
        Assert.Contains("v-4", notice.TextBody, StringComparison.Ordinal);
        Assert.Equal(["digested", "digested", "parked", "digested", "digested"], await StatusesAsync(gw.Spool, "v-2", "v-3", "v-4", "v-5", "v-6"));
        Assert.StartsWith("the alert no longer passes validation: ", Assert.Single(await gw.Spool.ParkedAsync(10, default)).Reason, StringComparison.Ordinal);
        await gw.UntilAsync(async () => (await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Any(r => r.Receipt.State == "failed"), "v-4's failed receipt");
        Assert.Equal("v-4", Assert.Single(await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default), r => r.Receipt.State == "failed").Receipt.AlertId);
    }

    // The same on a shared PostgreSQL spool: the repeat is parked by the holder of the key's claim, which keeps it for the
    // digest of the rest.
    [PostgresFact]
    public async Task SharedSpool_DigestWithOneHeldRepeatNoLongerValid_ListsAndCountsTheOthers_AndParksThatOne()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        await using var gw = await TestGateway.StartAsync(SharedStormConfig);
        gw.Logs.Expect(e => e.Message.StartsWith("Parked alert v-3 from dev-1", StringComparison.Ordinal));
        await using var spool = OpenShared(db);
        await HoldAsync(spool,
            ("v-2", Alerts.Json("v-2", code: "PUMP_CYCLING", text: "first repeat")),
            ("v-3", Stale("v-3")),
            ("v-4", Alerts.Json("v-4", code: "PUMP_CYCLING", text: "latest repeat")));
        var processor = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, spool);

        await processor.DigestDueAsync(default);

        Assert.Equal(["digested", "parked", "digested"], await StatusesAsync(spool, "v-2", "v-3", "v-4"));
        Assert.StartsWith("the alert no longer passes validation: ", (await spool.GetAlertAsync("dev-1", "v-3", default))?.Reason, StringComparison.Ordinal);
        var queued = Assert.Single(await spool.DueMessagesAsync(DateTimeOffset.MaxValue.AddDays(-1), 10, new HashSet<long>(), default));
        var digest = MimeMessage.Load(new MemoryStream(queued.Mime));
        Assert.Equal(("digest", "[CRITICAL] dev-1 @ Hall 3: PUMP_CYCLING repeated 2 times"), (queued.Kind, digest.Subject));
        Assert.Contains("first repeat", digest.TextBody, StringComparison.Ordinal);
        Assert.Contains("latest repeat", digest.TextBody, StringComparison.Ordinal);
        var failed = Assert.Single(await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)); // kept before the digest was committed
        Assert.Equal(("v-3", "failed"), (failed.Receipt.AlertId, failed.Receipt.State));
        Assert.Null(await spool.NextDigestDueAsync(default));
    }

    // A storm larger than a round's batches, with repeats that no longer pass spread through it: each round reads at most
    // its batches and parks what they hold, and the digest waits until every repeat is read, then counts only the others.
    [Fact]
    public async Task Digest_OfAStormCheckedABatchAtATime_ParksEveryRepeatThatNoLongerPasses_AndGoesOutOnceAllAreRead()
    {
        await using var gw = await TestGateway.StartAsync(c => c["Storm"] = new { Window = "00:10:00", DigestMaxRepeats = 2 });
        gw.Logs.Expect(e => e.Message.StartsWith("Parked alert b-", StringComparison.Ordinal));
        string dir = Path.Combine(gw.DataDir, "storm");
        Directory.CreateDirectory(dir);
        await using var spool = SqliteSpool.Open(Path.Combine(dir, "spool.db"), fsync: true, maxBatch: 64, NullLogger.Instance);
        string[] ids = [.. Enumerable.Range(1, 20).Select(i => $"b-{i:00}")];
        string[] stale = ["b-04", "b-11", "b-19"];
        await HoldAsync(spool, [.. ids.Select(id => (id, stale.Contains(id) ? Stale(id) : Alerts.Json(id, code: "PUMP_CYCLING")))]);
        var processor = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, spool);
        processor.CheckBatch = 3;
        processor.MaxCheckBatches = 2;

        await processor.DigestDueAsync(default);

        Assert.Equal(["parked", "held", "held"], await StatusesAsync(spool, stale)); // six of twenty read
        Assert.Empty(await spool.DueMessagesAsync(DateTimeOffset.MaxValue.AddDays(-1), 10, new HashSet<long>(), default));
        int rounds = 1;
        while ((await spool.CountsAsync(default)).Alerts.ContainsKey(AlertStatus.Held) && rounds < 10)
        {
            await processor.DigestDueAsync(default);
            rounds++;
        }

        Assert.Equal(4, rounds); // twenty rows, six a round
        Assert.Equal(["parked", "parked", "parked"], await StatusesAsync(spool, stale));
        var queued = Assert.Single(await spool.DueMessagesAsync(DateTimeOffset.MaxValue.AddDays(-1), 10, new HashSet<long>(), default));
        var digest = MimeMessage.Load(new MemoryStream(queued.Mime));
        Assert.Equal("[CRITICAL] dev-1 @ Hall 3: PUMP_CYCLING repeated 17 times", digest.Subject);
        Assert.Contains("... and 15 more ...", digest.TextBody, StringComparison.Ordinal);
    }

    // The same on a shared PostgreSQL spool, the unlisted repeats read by the holder of the key's claim.
    [PostgresFact]
    public async Task SharedSpool_DigestWithAHeldRepeatNoLongerValidAmongTheOnesItDoesNotList_ParksThatOne_AndCountsOnlyTheRest()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        await using var gw = await TestGateway.StartAsync(c =>
        {
            SharedStormConfig(c);
            c["Storm"] = new { Window = "00:10:00", DigestMaxRepeats = 2 };
        });
        gw.Logs.Expect(e => e.Message.StartsWith("Parked alert v-4 from dev-1", StringComparison.Ordinal));
        await using var spool = OpenShared(db);
        await HoldAsync(spool,
            ("v-2", Alerts.Json("v-2", code: "PUMP_CYCLING")),
            ("v-3", Alerts.Json("v-3", code: "PUMP_CYCLING")),
            ("v-4", Stale("v-4")),
            ("v-5", Alerts.Json("v-5", code: "PUMP_CYCLING")),
            ("v-6", Alerts.Json("v-6", code: "PUMP_CYCLING")));
        var processor = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, spool);

        await processor.DigestDueAsync(default);

        Assert.Equal(["digested", "digested", "parked", "digested", "digested"], await StatusesAsync(spool, "v-2", "v-3", "v-4", "v-5", "v-6"));
        var queued = Assert.Single(await spool.DueMessagesAsync(DateTimeOffset.MaxValue.AddDays(-1), 10, new HashSet<long>(), default));
        Assert.Equal("[CRITICAL] dev-1 @ Hall 3: PUMP_CYCLING repeated 4 times", MimeMessage.Load(new MemoryStream(queued.Mime)).Subject);
        var failed = Assert.Single(await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)); // kept before the digest was committed
        Assert.Equal(("v-4", "failed"), (failed.Receipt.AlertId, failed.Receipt.State));
        Assert.Null(await spool.NextDigestDueAsync(default));
    }

    // Two instances on one PostgreSQL spool: A has read the pair's storm state (none) when B mails a raise of it; A's
    // next raise of the pair must be held as the repeat it is, not mailed on the state A read before.
    [PostgresFact]
    public async Task SharedSpool_ARaiseAfterAnotherInstanceMailedThePair_IsHeld_NotMailedOnTheStateThisInstanceReadBefore()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        await using var gw = await TestGateway.StartAsync(SharedStormConfig);
        await using var spoolA = OpenShared(db);
        await using var spoolB = OpenShared(db);
        var a = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, spoolA);
        var b = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, spoolB);

        await RouteOneAsync(a, spoolA, "i-1", "info"); // unrouted (below every route), but A has read the pair's state
        await RouteOneAsync(b, spoolB, "r-2", "critical");
        await RouteOneAsync(a, spoolA, "r-3", "critical");

        Assert.Equal(["unrouted", "routed", "held"], await StatusesAsync(spoolA, "i-1", "r-2", "r-3"));
        Assert.Equal(1L, (await spoolA.CountsAsync(default)).Messages.Values.Sum());
    }

    // B mails a raise of the pair (received just before A's) after A read its state and before A commits its own
    // decision: A's decision is dropped, and the next batch decides again on the state as it is now, not on what A read.
    [PostgresFact]
    public async Task SharedSpool_ADecisionMadeOnStateAnotherInstanceChangedMeanwhile_IsDecidedAgainOnTheCurrentState()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        await using var gw = await TestGateway.StartAsync(SharedStormConfig);
        await using var spoolA = OpenShared(db);
        await using var spoolB = OpenShared(db);
        var b = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, spoolB);
        var first = TimeProvider.System.GetUtcNow();
        var race = new RacingThrottle(() => RouteOneAsync(b, spoolB, "r-2", "critical", first));
        var a = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, spoolA, race);

        await RouteOneAsync(a, spoolA, "r-1", "critical", first.AddSeconds(1));
        Assert.Equal(["new", "routed"], await StatusesAsync(spoolA, "r-1", "r-2"));
        Assert.Equal(1, await a.RouteNewAsync(default));

        Assert.Equal(["held", "routed"], await StatusesAsync(spoolA, "r-1", "r-2"));
        Assert.Equal(1L, (await spoolA.CountsAsync(default)).Messages.Values.Sum());
    }

    [Fact]
    public Task ReleasedRaise_IsJudgedAtTheTimeItIsRouted_AndNeverMovesThePairsLastMailBack() => ReleasedRaiseAsync(null);

    [PostgresFact]
    public async Task SharedSpool_ReleasedRaise_IsJudgedAtTheTimeItIsRouted_AndNeverMovesThePairsLastMailBack()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        await ReleasedRaiseAsync(db);
    }

    // A raise parked a minute after the pair's first mail is released half an hour later, a minute after the pair mailed
    // again. Before, it was judged by when it was received: "before" that mail, as if the clock had been stepped back, so
    // it was mailed at once, and the pair's last mail moved back to its receipt, so the next repeat was mailed too.
    private static async Task ReleasedRaiseAsync(TestDatabase? db)
    {
        var clock = new SteppedClock();
        await using var gw = await TestGateway.StartAsync(SharedStormConfig);
        ISpool spool;
        if (db is null)
        {
            string dir = Path.Combine(gw.DataDir, "storm");
            Directory.CreateDirectory(dir);
            var sqlite = SqliteSpool.Open(Path.Combine(dir, "spool.db"), fsync: true, maxBatch: 64, NullLogger.Instance);
            sqlite.Clock = clock;
            spool = sqlite;
        }
        else
        {
            spool = OpenShared(db, clock);
        }

        await using var disposeSpool = spool;
        var processor = ActivatorUtilities.CreateInstance<AlertProcessor>(gw.Host.Services, spool, (TimeProvider)clock);
        var t0 = clock.GetUtcNow();
        await RouteOneAsync(processor, spool, "r-1", "critical", t0);
        await spool.AcceptAlertAsync(new IncomingAlert("dev-1", "r-2", t0.AddMinutes(1), "127.0.0.1:1",
            Encoding.UTF8.GetBytes(Alerts.Json("r-2", code: "PUMP_CYCLING")), null, "PUMP_CYCLING", Severity: "critical"), default);
        var parked = Assert.Single(await spool.NewAlertsAsync(10, default));
        await spool.CommitRoutingAsync([new RoutingCommit(parked.RowId, AlertStatus.Parked, null, null, null, null, "a template that ran away")], default);

        clock.Offset = TimeSpan.FromMinutes(30);
        var routing = clock.GetUtcNow();
        await RouteOneAsync(processor, spool, "r-3", "critical", routing);
        var routed = clock.GetUtcNow();
        clock.Offset = TimeSpan.FromMinutes(31);
        Assert.True(await spool.ReleaseAsync(ParkedKinds.Alert, parked.RowId, default));
        Assert.Equal(1, await processor.RouteNewAsync(default));

        Assert.Equal(["routed", "held", "routed"], await StatusesAsync(spool, "r-1", "r-2", "r-3"));
        var storm = (await spool.GetStormsAsync([("dev-1", "PUMP_CYCLING")], default))[("dev-1", "PUMP_CYCLING")];
        Assert.InRange(storm.LastMailAt.ToUnixTimeMilliseconds(), routing.ToUnixTimeMilliseconds(), routed.ToUnixTimeMilliseconds()); // r-3's mail

        clock.Offset = TimeSpan.FromMinutes(32);
        await RouteOneAsync(processor, spool, "r-4", "critical", clock.GetUtcNow());
        Assert.Equal("held", (await spool.GetAlertAsync("dev-1", "r-4", default))?.Status);
        Assert.Equal(2L, (await spool.CountsAsync(default)).Messages.Values.Sum());
    }

    [Fact]
    public async Task Digest_DeliveredToEveryone_GivesEachAlertItCoversARelayedReceipt_WithTheRelaysReply()
    {
        var clock = new SteppedClock();
        await using var sink = await SmtpTestServer.StartAsync();
        await using var gw = await TestGateway.StartAsync(StormThrough(sink.Port), s => s.AddSingleton<TimeProvider>(clock));
        using var client = await gw.ConnectAsync("dev-1");
        var inbox = await ReceiptInbox.SubscribeAsync(client, "dev-1");
        await PublishAsync(client, "d-1");
        await inbox.WaitForAsync("d-1", ReceiptState.Relayed);
        string[] repeats = ["d-2", "d-3", "d-4", "d-5"];
        foreach (string id in repeats)
        {
            await PublishAsync(client, id);
        }

        Assert.Equal(["held", "held", "held", "held"], await DecidedAsync(gw, repeats));
        CloseWindow(gw, clock, TimeSpan.FromMinutes(10));

        foreach (string id in repeats)
        {
            var relayed = await inbox.WaitForAsync(id, ReceiptState.Relayed);
            Assert.StartsWith("250", relayed.GetProperty("detail").GetString(), StringComparison.Ordinal);
        }

        Assert.Single(sink.Received, m => (m.Message.MessageId ?? string.Empty).Contains(".d-2.digest", StringComparison.Ordinal));
        await gw.UntilAsync(async () => (await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Count == 0, "the receipts removed after the device's PUBACKs");
        Assert.All(repeats, id => Assert.Equal((1, 0), (inbox.Count(id, ReceiptState.Relayed), inbox.Count(id, ReceiptState.Failed))));
        await client.DisconnectAsync();
    }

    [Fact]
    public Task Digest_RefusedPermanently_GivesEachAlertAFailedReceiptWithTheReply_KeptForADeviceAwayAcrossARestart() =>
        RefusedDigestAcrossARestartAsync(_ => { });

    // The same on a PostgreSQL spool, which finds the digest's alerts and keeps their receipts in its own transaction.
    [PostgresFact]
    public async Task SharedSpool_Digest_RefusedPermanently_GivesEachAlertAFailedReceiptWithTheReply_KeptForADeviceAwayAcrossARestart()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        await RefusedDigestAcrossARestartAsync(c => c["Spool"] = new { Provider = "Postgres", db.ConnectionString });
    }

    // The relay takes single alerts and refuses digests (5xx at the end of the data). The device raises a storm, has its
    // PUBACKs and goes away; the digest is refused while it is away, and the gateway restarts before it comes back.
    private static async Task RefusedDigestAcrossARestartAsync(Action<Dictionary<string, object>> spool)
    {
        var clock = new SteppedClock();
        await using var sink = await SmtpTestServer.StartAsync();
        sink.OnData = m => (m.Message.MessageId ?? string.Empty).Contains(".digest", StringComparison.Ordinal) ? new SmtpReply(554, "5.7.1 storm digests refused here") : SmtpReply.Ok;
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        void Config(Dictionary<string, object> c)
        {
            StormThrough(sink.Port)(c);
            spool(c);
        }

        var first = await TestGateway.StartAsync(Config, s => s.AddSingleton<TimeProvider>(clock), dataDir: dataDir);
        using var device = new MqttClientFactory().CreateMqttClient();
        await device.ConnectAsync(KeptReceiptTests.Persistent(first, "dev-1"));
        var inbox = await ReceiptInbox.SubscribeAsync(device, "dev-1");
        await PublishAsync(device, "x-1");
        await inbox.WaitForAsync("x-1", ReceiptState.Relayed);
        string[] repeats = ["x-2", "x-3", "x-4"];
        foreach (string id in repeats)
        {
            await PublishAsync(device, id);
        }

        Assert.Equal(["held", "held", "held"], await DecidedAsync(first, repeats));
        await inbox.WaitForAsync("x-4", ReceiptState.Accepted); // nothing in flight to it as it leaves
        await device.DisconnectAsync();

        CloseWindow(first, clock, TimeSpan.FromMinutes(10));
        await first.UntilAsync(async () => (await first.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Count(r => r.Receipt.State == ReceiptState.Failed) == 3,
            "a failed receipt kept for each alert of the refused digest");
        var kept = await first.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default);
        Assert.Equal(repeats, kept.Where(r => r.Receipt.State == ReceiptState.Failed).Select(r => r.Receipt.AlertId).Order(StringComparer.Ordinal));
        Assert.All(repeats, id => Assert.Equal(0, inbox.Count(id, ReceiptState.Failed)));
        await first.StopAsync();

        await using var second = await TestGateway.StartAsync(Config, s => s.AddSingleton<TimeProvider>(clock), dataDir: dataDir);
        await device.ConnectAsync(KeptReceiptTests.Persistent(second, "dev-1"));
        await device.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);

        foreach (string id in repeats)
        {
            var failed = await inbox.WaitForAsync(id, ReceiptState.Failed);
            Assert.StartsWith("554 5.7.1 storm digests refused here", failed.GetProperty("detail").GetString(), StringComparison.Ordinal);
        }

        await second.UntilAsync(async () => (await second.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Count == 0, "the receipts removed after the device's PUBACKs");
        Assert.All(repeats, id => Assert.Equal((1, 0), (inbox.Count(id, ReceiptState.Failed), inbox.Count(id, ReceiptState.Relayed))));
        await device.DisconnectAsync();
    }

    // A digest mail the delivery worker parks (here its failure notice's Message-ID is taken, a conflict the spool must
    // not swallow): each alert it covers is told its mail is parked, as a single alert's parked mail tells its own.
    [Fact]
    public async Task DigestMailParkedByTheWorker_GivesEachAlertItCoversAFailedReceiptSayingParked()
    {
        var clock = new SteppedClock();
        await using var sink = await SmtpTestServer.StartAsync();
        sink.OnData = m => (m.Message.MessageId ?? string.Empty).Contains(".digest", StringComparison.Ordinal) ? new SmtpReply(554, "5.7.1 storm digests refused here") : SmtpReply.Ok;
        await using var gw = await TestGateway.StartAsync(StormThrough(sink.Port), s => s.AddSingleton<TimeProvider>(clock));
        gw.Logs.Expect(e => e.Message.StartsWith("Parked digest mail <", StringComparison.Ordinal));
        string digest = MessageIds.ForDigest("dev-1", "PUMP_CYCLING", "p-2", "gw.test");
        await gw.Spool.QueueMailAsync(new NewMessage("relay", "dev-1", null, MessageIds.ForNotice(digest, 1, "gw.test"), "edgemail@gw.test", ["alice@example.com"],
            Encoding.ASCII.GetBytes("Subject: in the way\r\n\r\nbody\r\n")), default);
        using var device = await gw.ConnectAsync("dev-1");
        var inbox = await ReceiptInbox.SubscribeAsync(device, "dev-1");
        await PublishAsync(device, "p-1");
        await inbox.WaitForAsync("p-1", ReceiptState.Relayed);
        string[] repeats = ["p-2", "p-3", "p-4"];
        foreach (string id in repeats)
        {
            await PublishAsync(device, id);
        }

        Assert.Equal(["held", "held", "held"], await DecidedAsync(gw, repeats));

        CloseWindow(gw, clock, TimeSpan.FromMinutes(10));

        foreach (string id in repeats)
        {
            var failed = await inbox.WaitForAsync(id, ReceiptState.Failed);
            Assert.StartsWith("parked: ", failed.GetProperty("detail").GetString(), StringComparison.Ordinal);
        }

        Assert.Equal(MessageStatus.Parked, (await gw.Spool.GetMessageAsync(digest, default))?.Status);
    }

    // Storm control with a 10 minute window, mail through a real SMTP server.
    private static Action<Dictionary<string, object>> StormThrough(int port) => c =>
    {
        KeptReceiptTests.Relay(port)(c);
        c["Storm"] = new { Window = "00:10:00" };
    };

    internal static void SharedStormConfig(Dictionary<string, object> c)
    {
        c["Storm"] = new { Window = "00:10:00" };
        c["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "warning", To = new[] { "owners" } } };
    }

    internal static PostgresSpool OpenShared(TestDatabase db, TimeProvider? clock = null, TimeSpan? lease = null)
    {
        var spool = PostgresSpool.Open(db.ConnectionString, fsync: true, maxBatch: 64, lease ?? TimeSpan.FromMinutes(2), TimeSpan.FromSeconds(5), NullLogger.Instance);
        spool.Clock = clock ?? TimeProvider.System;
        return spool;
    }

    private static async Task RouteOneAsync(AlertProcessor processor, ISpool spool, string id, string severity, DateTimeOffset? receivedAt = null)
    {
        await spool.AcceptAlertAsync(new IncomingAlert("dev-1", id, receivedAt ?? TimeProvider.System.GetUtcNow(), "127.0.0.1:1",
            Encoding.UTF8.GetBytes(Alerts.Json(id, code: "PUMP_CYCLING", sev: severity)), null, "PUMP_CYCLING", Severity: severity), default);
        Assert.Equal(1, await processor.RouteNewAsync(default));
    }

    // A payload an older gateway held that this one no longer accepts (no severity, no text).
    private static string Stale(string id) => $$"""{"v":1,"id":"{{id}}","state":"raised","code":"PUMP_CYCLING"}""";

    // Repeats of dev-1's PUMP_CYCLING held, as a gateway that validated less held them, in a spool the gateway then starts
    // on; their window closed a minute ago.
    private static async Task<string> HeldBeforeAsync(params (string Id, string Payload)[] repeats)
    {
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dataDir);
        await using var spool = SqliteSpool.Open(Path.Combine(dataDir, "spool.db"), fsync: true, maxBatch: 64, NullLogger.Instance);
        await HoldAsync(spool, repeats);
        return dataDir;
    }

    internal static async Task HoldAsync(ISpool spool, params (string Id, string Payload)[] repeats)
    {
        var heldUntil = TimeProvider.System.GetUtcNow().AddMinutes(-1);
        foreach (var (id, payload) in repeats)
        {
            await spool.AcceptAlertAsync(new IncomingAlert("dev-1", id, heldUntil.AddMinutes(-5), null, Encoding.UTF8.GetBytes(payload), null, "PUMP_CYCLING"), default);
        }

        var stored = await spool.NewAlertsAsync(repeats.Length, default);
        await spool.CommitRoutingAsync([.. stored.Select(a => new RoutingCommit(a.RowId, AlertStatus.Held, heldUntil, null, null, null))], default);
    }

    internal static async Task<string[]> StatusesAsync(ISpool spool, params string[] ids)
    {
        var statuses = new string[ids.Length];
        for (int i = 0; i < ids.Length; i++)
        {
            statuses[i] = (await spool.GetAlertAsync("dev-1", ids[i], default))?.Status ?? "missing";
        }

        return statuses;
    }

    // The storm window is asked for after the storm state was read and before the decision is committed: the first
    // time, another instance's routing runs there.
    internal sealed class RacingThrottle(Func<Task> race) : IRelayThrottle
    {
        private Func<Task>? _race = race;

        public TimeSpan StormWindow(TimeSpan configured)
        {
            if (Interlocked.Exchange(ref _race, null) is { } run)
            {
                Task.Run(run).GetAwaiter().GetResult();
            }

            return configured;
        }
    }

    private static async Task PublishAsync(IMqttClient client, string id, string state = "raised")
    {
        var ack = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
            .WithPayload(Alerts.Json(id, code: "PUMP_CYCLING", state: state)).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess);
    }

    // What routing decided for each alert of dev-1, once it decided them all.
    private static async Task<string[]> DecidedAsync(TestGateway gw, params string[] ids)
    {
        var statuses = new string[ids.Length];
        await gw.UntilAsync(async () =>
        {
            for (int i = 0; i < ids.Length; i++)
            {
                statuses[i] = (await gw.Spool.GetAlertAsync("dev-1", ids[i], default))?.Status ?? "missing";
            }

            return !statuses.Contains("new");
        }, "routing to decide " + string.Join(", ", ids));
        return statuses;
    }

    // Steps the clock to the end of the storm window; the router, asleep until then by the system's timers, is woken.
    private static void CloseWindow(TestGateway gw, SteppedClock clock, TimeSpan window)
    {
        clock.Offset += window;
        gw.Host.Services.GetRequiredService<AlertProcessor>().Wake();
    }

    // The system clock, moved by Offset (timers keep running on the system's).
    private sealed class SteppedClock : TimeProvider
    {
        public TimeSpan Offset { get; set; }

        public override DateTimeOffset GetUtcNow() => base.GetUtcNow() + Offset;
    }
}
