using System.Net;
using System.Net.Sockets;
using EdgeMail.Testing;
using MQTTnet;
using MQTTnet.Protocol;
using SmtpServer.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

public sealed class SmarthostTests
{
    private static Task<TestGateway> StartGatewayAsync(int smtpPort) => TestGateway.StartAsync(c =>
    {
        c["Relay"] = new { Mode = "Smarthost", Host = "127.0.0.1", Port = smtpPort, Security = "None", Backoff = new[] { "00:00:00.200" }, Concurrency = 2, Timeout = "00:00:05" };
        c["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "oncall" } } };
    });

    private static async Task PublishAsync(TestGateway gw, string device, string alertId)
    {
        using var client = await gw.ConnectAsync(device);
        var ack = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic($"edgemail/v1/{device}/alert")
            .WithPayload(Alerts.Json(alertId)).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess);
    }

    [Fact]
    public async Task Relay_SmarthostAnswers250_DeliversToEveryRecipientOnce()
    {
        await using var sink = new SmtpSink();
        await using var gw = await StartGatewayAsync(sink.Port);

        await PublishAsync(gw, "dev-1", "ok-1");
        var (message, to) = await sink.NextAsync();

        Assert.Equal(["alice@example.com", "bob@example.com"], to.Order());
        Assert.Equal("dev-1.ok-1.alert@gw.test", message.MessageId);
        Assert.Equal("auto-generated", message.Headers["Auto-Submitted"]);
        Assert.False(sink.Received.Reader.TryRead(out _));
    }

    [Fact]
    public async Task Relay_Smarthost4xxThen250_RetriesAndDelivers()
    {
        await using var sink = new SmtpSink();
        int calls = 0;
        sink.Reply = _ => Interlocked.Increment(ref calls) == 1
            ? new SmtpResponse(SmtpReplyCode.Aborted, "4.3.0 try later")
            : new SmtpResponse(SmtpReplyCode.Ok, "2.0.0 queued as Q2");
        await using var gw = await StartGatewayAsync(sink.Port);

        await PublishAsync(gw, "dev-1", "retry-1");
        var (message, _) = await sink.NextAsync();

        Assert.Equal("dev-1.retry-1.alert@gw.test", message.MessageId);
        Assert.Equal(2, calls);
    }

    [Fact]
    public async Task Relay_Smarthost5xx_FailsAndNotifiesTheOperator()
    {
        await using var sink = new SmtpSink();
        sink.Reply = m => (m.Subject ?? string.Empty).StartsWith("Undeliverable", StringComparison.Ordinal)
            ? new SmtpResponse(SmtpReplyCode.Ok, "2.0.0 ok")
            : new SmtpResponse(SmtpReplyCode.TransactionFailed, "5.7.1 rejected by policy");
        await using var gw = await StartGatewayAsync(sink.Port);
        using var device = await gw.ConnectAsync("dev-1");
        var failed = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        device.ApplicationMessageReceivedAsync += e =>
        {
            string json = e.ApplicationMessage.ConvertPayloadToString();
            if (json.Contains("\"failed\"", StringComparison.Ordinal))
            {
                failed.TrySetResult(json);
            }

            return Task.CompletedTask;
        };
        await device.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);

        await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
            .WithPayload(Alerts.Json("bounce-1")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        var (notice, to) = await sink.NextAsync();

        Assert.Equal(["ops@example.com"], to);
        Assert.Contains("5.7.1 rejected by policy", notice.TextBody, StringComparison.Ordinal);
        Assert.Contains("554", await Await.Within(failed.Task, "the failed receipt"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Relay_OneRecipientRefused_OthersStillGetTheMail()
    {
        await using var sink = new SmtpSink();
        sink.Refuse.Add("bob@example.com");
        await using var gw = await StartGatewayAsync(sink.Port);

        await PublishAsync(gw, "dev-2", "partial-1");
        var first = await sink.NextAsync();
        var second = await sink.NextAsync();

        var alert = first.Message.MessageId!.Contains("notice", StringComparison.Ordinal) ? second : first;
        var notice = first.Message.MessageId!.Contains("notice", StringComparison.Ordinal) ? first : second;
        Assert.Equal(["alice@example.com"], alert.To);
        Assert.Contains("bob@example.com", notice.Message.TextBody, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Relay_SmarthostDropsThenIsDownThenUp_DeliversOnceItIsBack()
    {
        int port = SmtpSink.FreePort();
        var dropped = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var dropper = new TcpListener(IPAddress.Loopback, port);
        dropper.Start();
        var dropping = Task.Run(async () =>
        {
            using var socket = await dropper.AcceptSocketAsync();
            socket.Send("220 flaky.test ESMTP\r\n"u8);
            socket.Close();
            dropped.TrySetResult();
        });
        await using var gw = await StartGatewayAsync(port);

        await PublishAsync(gw, "dev-3", "flaky-1");
        await Await.Within(dropped.Task.ContinueWith(_ => true), "the first attempt to reach the dropping server");
        dropper.Stop();
        await dropping;
        await using var sink = new SmtpSink(port);
        var (message, _) = await sink.NextAsync();

        Assert.Equal("dev-3.flaky-1.alert@gw.test", message.MessageId);
    }
}
