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
}
