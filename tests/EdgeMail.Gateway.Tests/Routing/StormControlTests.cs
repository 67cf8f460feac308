using Microsoft.Extensions.DependencyInjection;
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

    // The system clock, moved by Offset (timers keep running on the system's).
    private sealed class SteppedClock : TimeProvider
    {
        public TimeSpan Offset { get; set; }

        public override DateTimeOffset GetUtcNow() => base.GetUtcNow() + Offset;
    }
}
