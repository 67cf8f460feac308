using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>Provider sending limits: the throttle's windows, and the gateway keeping to them with mail waiting in the spool.</summary>
public sealed class RelayLimitsTests
{
    private static readonly DateTimeOffset Start = DateTimeOffset.Parse("2026-11-28T10:00:00Z", System.Globalization.CultureInfo.InvariantCulture);

    private static RelayThrottle Throttle(FakeTimeProvider clock, Action<RelayLimitsOptions> limits)
    {
        var options = new GatewayOptions();
        limits(options.Relay.Limits);
        return new RelayThrottle(Options.Create(options), clock, new GatewayMetrics(), NullLogger<RelayThrottle>.Instance);
    }

    [Fact]
    public void MessagesPerMinute_IsASlidingWindow()
    {
        var clock = new FakeTimeProvider(Start);
        var throttle = Throttle(clock, l => l.MessagesPerMinute = 3);

        Assert.Null(throttle.TryReserve(1));
        clock.Advance(TimeSpan.FromSeconds(20));
        Assert.Null(throttle.TryReserve(1));
        Assert.Null(throttle.TryReserve(1));
        Assert.Equal(Start + TimeSpan.FromMinutes(1), throttle.TryReserve(1)); // the first one leaves the window then
        Assert.True(throttle.Active);

        clock.Advance(TimeSpan.FromSeconds(40));
        Assert.Null(throttle.TryReserve(1));
        Assert.Equal(Start + TimeSpan.FromSeconds(80), throttle.TryReserve(1));
    }

    [Fact]
    public void RecipientsPerDay_CountsRecipientsAndWaitsForEnoughToLeaveTheWindow()
    {
        var clock = new FakeTimeProvider(Start);
        var throttle = Throttle(clock, l => l.Preset = "ExchangeOnline");

        Assert.Null(throttle.TryReserve(6_000));
        clock.Advance(TimeSpan.FromHours(1));
        Assert.Null(throttle.TryReserve(3_000));
        clock.Advance(TimeSpan.FromHours(1));
        Assert.Equal(Start + TimeSpan.FromDays(1), throttle.TryReserve(1_001)); // 10,000 a day: the first 6,000 must leave
        Assert.Null(throttle.TryReserve(1_000));
        clock.Advance(TimeSpan.FromHours(22));
        Assert.Null(throttle.TryReserve(1_001));
    }

    [Fact]
    public void StormWindow_WidensOnlyWhileMailIsHeldBack()
    {
        var clock = new FakeTimeProvider(Start);
        var throttle = Throttle(clock, l => { l.MessagesPerMinute = 1; l.StormWindowFactor = 6; });
        var window = TimeSpan.FromMinutes(10);

        Assert.Equal(window, throttle.StormWindow(window));
        Assert.Null(throttle.TryReserve(1));
        Assert.NotNull(throttle.TryReserve(1));
        Assert.Equal(TimeSpan.FromHours(1), throttle.StormWindow(window));
        Assert.Equal(TimeSpan.Zero, throttle.StormWindow(TimeSpan.Zero)); // storm control switched off stays off

        clock.Advance(TimeSpan.FromMinutes(2)); // the held mail could go a minute ago, and a minute has passed since
        Assert.Equal(window, throttle.StormWindow(window));
    }

    [Fact]
    public void Presets_FillWhatIsNotGivenAndZeroTurnsALimitOff()
    {
        Assert.Equal((30, 0, 10_000, 500), new RelayLimitsOptions { Preset = "ExchangeOnline" }.Effective());
        Assert.Equal((0, 2_000, 10_000, 100), new RelayLimitsOptions { Preset = "Google" }.Effective());
        Assert.Equal((10, 2_000, 0, 100), new RelayLimitsOptions { Preset = "Google", MessagesPerMinute = 10, RecipientsPerDay = 0 }.Effective());
    }

    [Fact]
    public async Task Gateway_KeepsToMessagesPerMinuteWithTheRestWaitingInTheSpool()
    {
        var clock = new FakeTimeProvider(Start);
        await using var sink = await EdgeMail.Testing.Smtp.SmtpTestServer.StartAsync();
        await using var gw = await TestGateway.StartAsync(c => c["Relay"] = new
        {
            Mode = "Smarthost", Host = "127.0.0.1", Port = sink.Port, Security = "None", Concurrency = 2, Timeout = "00:00:05",
            Limits = new { MessagesPerMinute = 5 },
        }, s => s.AddSingleton<TimeProvider>(clock));
        var worker = gw.Host.Services.GetRequiredService<DeliveryWorker>();

        for (int i = 0; i < 12; i++)
        {
            await gw.Spool.QueueMailAsync(OAuth2Kit.Mail($"limited-{i:D2}"), default);
        }

        for (int window = 1; window <= 3; window++)
        {
            int expected = Math.Min(12, window * 5);
            await gw.UntilAsync(async () => (await gw.Spool.CountsAsync(default)).Messages.GetValueOrDefault(MessageStatus.Sent) >= expected, $"{expected} mails sent");
            await Operations.DeliveryContainmentTests.IdleAfterAsync(worker, worker.Wake); // held back by the limit, not still sending
            var counts = (await gw.Spool.CountsAsync(default)).Messages;
            Assert.Equal(expected, counts.GetValueOrDefault(MessageStatus.Sent));
            Assert.Equal(12 - expected, counts.GetValueOrDefault(MessageStatus.Queued));
            Assert.Equal(expected, worker.Attempts); // waiting mail is not attempted, so not deferred
            clock.Advance(TimeSpan.FromMinutes(1));
            worker.Wake(); // in case it computed its wait before the clock moved
        }

        for (int i = 0; i < 12; i++)
        {
            await sink.NextAsync();
        }

        var waiting = await gw.Spool.GetMessageAsync("limited-11@gw.test", default);
        Assert.Equal(1, waiting!.Attempts);
    }

    [Fact]
    public async Task RecipientsPerMessage_SplitsOneMailIntoSeveralTransactions()
    {
        await using var sink = await EdgeMail.Testing.Smtp.SmtpTestServer.StartAsync();
        await using var gw = await TestGateway.StartAsync(c => c["Relay"] = new
        {
            Mode = "Smarthost", Host = "127.0.0.1", Port = sink.Port, Security = "None", Timeout = "00:00:05", Limits = new { RecipientsPerMessage = 2 },
        });

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("split-1", "a@example.com", "b@example.com", "c@example.com"), default);
        var first = await sink.NextAsync();
        var second = await sink.NextAsync();

        Assert.Equal(["a@example.com", "b@example.com"], first.To);
        Assert.Equal(["c@example.com"], second.To);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("split-1@gw.test", default))!.Status == MessageStatus.Sent, "the mail recorded as sent to all three");
    }

    [Fact]
    public async Task WhileHeldBack_RepeatsOutsideTheConfiguredStormWindowStillBecomeADigest()
    {
        var clock = new FakeTimeProvider(Start);
        await using var gw = await TestGateway.StartAsync(c =>
        {
            c["Storm"] = new { Window = "00:01:00" };
            c["Relay"] = new { Limits = new { MessagesPerMinute = 1, StormWindowFactor = 10 } };
        }, s => s.AddSingleton<TimeProvider>(clock));
        var worker = gw.Host.Services.GetRequiredService<DeliveryWorker>();
        async Task PublishAsync(string id) => await gw.Spool.AcceptAlertAsync(new IncomingAlert("dev-1", id, clock.GetUtcNow(), null,
            System.Text.Encoding.UTF8.GetBytes(Alerts.Json(id, code: "PUMP_CYCLING")), null, "PUMP_CYCLING"), default); // as ingest stores it

        await PublishAsync("w-1");
        await gw.MailAsync(1);
        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("filler-1"), default); // the minute's one message is used: this one waits
        await Operations.DeliveryContainmentTests.IdleAfterAsync(worker, worker.Wake);
        Assert.True(gw.Host.Services.GetRequiredService<RelayThrottle>().Active);

        clock.Advance(TimeSpan.FromSeconds(90)); // past the configured one-minute window
        await PublishAsync("w-2");

        await gw.UntilAsync(async () => (await gw.Spool.GetAlertAsync("dev-1", "w-2", default))?.Status is "held" or "routed", "the repeat routed");
        Assert.Equal("held", (await gw.Spool.GetAlertAsync("dev-1", "w-2", default))!.Value.Status); // the widened ten-minute window holds it for a digest
    }
}
