using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;
using static EdgeMail.Gateway.Tests.Relay.DirectMxEarlyRecordTests;

namespace EdgeMail.Gateway.Tests.Relay;

public sealed class SmarthostTests
{
    private static Task<TestGateway> StartGatewayAsync(int smtpPort) => TestGateway.StartAsync(c =>
    {
        c["Relay"] = new { Mode = "Smarthost", Host = "127.0.0.1", Port = smtpPort, Security = "None", Backoff = new[] { "00:00:00.200" }, Concurrency = 2, Timeout = "00:00:05" };
        c["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "oncall" } } };
    });

    private static readonly string[] Five = ["r1@example.com", "r2@example.com", "r3@example.com", "r4@example.com", "r5@example.com"];

    /// <summary>A gateway whose clock stands still: a deferred mail is not tried again until the test moves it past the 1 min backoff.</summary>
    private static Task<TestGateway> StartStillGatewayAsync(int smtpPort, FakeTimeProvider clock) => TestGateway.StartAsync(
        c => c["Relay"] = new { Mode = "Smarthost", Host = "127.0.0.1", Port = smtpPort, Security = "None", Timeout = "00:00:05", Backoff = new[] { "00:01:00" } },
        s => s.AddSingleton<TimeProvider>(clock));

    /// <summary>
    /// A server's recipient limit (Postfix's <c>smtpd_recipient_limit</c>, Exchange's MaxRecipientsPerMessage): the RCPTs of
    /// a transaction past <paramref name="limit"/> are answered as Postfix does.
    /// </summary>
    internal static Func<SmtpCommandSeen, SmtpReply?> RecipientLimit(int limit, int code = 452, string text = "4.5.3 Error: too many recipients")
    {
        var taken = new ConcurrentDictionary<int, int>();
        return c => c.Verb switch
        {
            "MAIL" => Reset(taken, c.Connection),
            "RCPT" when taken.AddOrUpdate(c.Connection, 1, (_, n) => n + 1) > limit => new SmtpReply(code, text),
            _ => null,
        };

        static SmtpReply? Reset(ConcurrentDictionary<int, int> taken, int connection)
        {
            taken[connection] = 0;
            return null;
        }
    }

    private static IEnumerable<(string Address, string Outcome)> Outcomes(AttemptRecord attempt) =>
        attempt.Results.Select(r => (r.Address, r.Outcome)).OrderBy(r => r.Address, StringComparer.Ordinal);

    private static QueuedMessage Mail(string id)
    {
        var now = new DateTimeOffset(2026, 12, 5, 10, 0, 0, TimeSpan.Zero);
        byte[] wire = Encoding.ASCII.GetBytes($"From: <ups-1@lan.example.com>\r\nTo: <ops@example.com>\r\nSubject: {id}\r\nMessage-ID: <{id}@lan.example.com>\r\n\r\nMains lost.\r\n");
        return new QueuedMessage(1, "relay", "ups-1", null, id + "@lan.example.com", "alerts@example.com", ["ops@example.com"], wire, 0, now, now.AddDays(5));
    }

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
        await using var sink = await SmtpTestServer.StartAsync();
        await using var gw = await StartGatewayAsync(sink.Port);

        await PublishAsync(gw, "dev-1", "ok-1");
        var (message, to) = await sink.NextAsync();

        Assert.Equal(["alice@example.com", "bob@example.com"], to.Order());
        Assert.Equal("dev-1.ok-1.alert@gw.test", message.MessageId);
        Assert.Equal("auto-generated", message.Headers["Auto-Submitted"]);
        Assert.False(sink.TryNext(out _));
    }

    [Fact]
    public async Task Relay_Smarthost4xxThen250_RetriesAndDelivers()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        int calls = 0;
        sink.OnData = _ => Interlocked.Increment(ref calls) == 1
            ? new SmtpReply(451, "4.3.0 try later")
            : new SmtpReply(250, "2.0.0 queued as Q2");
        await using var gw = await StartGatewayAsync(sink.Port);

        await PublishAsync(gw, "dev-1", "retry-1");
        var (message, _) = await sink.NextAsync();

        Assert.Equal("dev-1.retry-1.alert@gw.test", message.MessageId);
        Assert.Equal(2, calls);
    }

    [Fact]
    public async Task Relay_Smarthost5xx_FailsAndNotifiesTheOperator()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        sink.OnData = m => (m.Message.Subject ?? string.Empty).StartsWith("Undeliverable", StringComparison.Ordinal)
            ? new SmtpReply(250, "2.0.0 ok")
            : new SmtpReply(554, "5.7.1 rejected by policy");
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
    public async Task Relay_SmarthostGreylistsMailFrom_PipelinedRecipientsAreRetriedNotBounced()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        int mailCommands = 0;
        // Greylisting answers MAIL FROM; the RCPTs pipelined behind it then get a "bad sequence" 5xx that is not about them.
        sink.OnCommand = c => c.Verb == "MAIL" && Interlocked.Increment(ref mailCommands) == 1 ? new SmtpReply(451, "4.7.1 greylisted, try again later") : null;
        await using var gw = await StartGatewayAsync(sink.Port);

        await PublishAsync(gw, "dev-1", "grey-1");
        var (message, to) = await sink.NextAsync();

        Assert.Equal("dev-1.grey-1.alert@gw.test", message.MessageId);
        Assert.Equal(["alice@example.com", "bob@example.com"], to.Order());
        Assert.Equal(2, mailCommands);
        Assert.False(sink.TryNext(out _)); // no bounce notice to the operator
    }

    [Fact]
    public async Task Relay_SmarthostDropsTheConnectionAfterData_RetriesAndDelivers()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        sink.OnData = m => m.Number == 1 ? SmtpReply.Drop : SmtpReply.Ok;
        await using var gw = await StartGatewayAsync(sink.Port);

        await PublishAsync(gw, "dev-1", "cut-1");
        var (message, to) = await sink.NextAsync();

        // Whether the first copy was taken is unknown to the gateway: it must send again, not give up.
        Assert.Equal("dev-1.cut-1.alert@gw.test", message.MessageId);
        Assert.Equal(["alice@example.com", "bob@example.com"], to.Order());
        Assert.Equal([SmtpReply.Drop, SmtpReply.Ok], sink.Messages.Select(m => m.Reply));
        Assert.All(sink.Messages, m => Assert.Equal(message.MessageId, m.Message.MessageId));
    }

    [Fact]
    public async Task Relay_SmarthostNeverAnswersTheEndOfData_OtherMailGoesMeanwhile_AndItIsSentAgainAfterTheTimeout()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        var hanging = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        sink.OnData = m =>
        {
            if (m.Message.MessageId == "dev-1.hung-1.alert@gw.test" && hanging.TrySetResult())
            {
                return SmtpReply.Hang;
            }

            return SmtpReply.Ok;
        };
        await using var gw = await StartGatewayAsync(sink.Port);

        await PublishAsync(gw, "dev-1", "hung-1");
        await hanging.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await PublishAsync(gw, "dev-2", "other-1");

        // The hung transaction holds one connection for Relay:Timeout (5 s); the other mail takes the second.
        var first = await sink.NextAsync();
        Assert.Equal("dev-2.other-1.alert@gw.test", first.Message.MessageId);

        // Unanswered, the first copy may or may not have been taken: it is sent again on a new connection, not bounced.
        var second = await sink.NextAsync();
        Assert.Equal("dev-1.hung-1.alert@gw.test", second.Message.MessageId);
        Assert.NotEqual(sink.Messages.First(m => m.Reply == SmtpReply.Hang).Connection, second.Connection);
        Assert.Equal(["dev-1.hung-1.alert@gw.test", "dev-2.other-1.alert@gw.test", "dev-1.hung-1.alert@gw.test"],
            sink.Messages.Select(m => m.Message.MessageId));
        Assert.False(sink.TryNext(out _)); // no failure notice to the operator
    }

    // A 552 about the mailbox (not the transaction's recipient count) is as final as a 550.
    [Theory]
    [InlineData(550, "5.1.1 mailbox unavailable")]
    [InlineData(552, "5.2.2 mailbox full")]
    public async Task Relay_OneRecipientRefused_OthersStillGetTheMail(int code, string text)
    {
        await using var sink = await SmtpTestServer.StartAsync();
        sink.Recipients["bob@example.com"] = new SmtpReply(code, text);
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
    public async Task Relay_OneRecipientRefusedTheOther452TwiceThenAccepted_TheDeviceIsToldFailed_AndNeitherDeferredNorRelayedFollows()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        sink.Recipients["bob@example.com"] = new SmtpReply(550, "5.1.1 mailbox unavailable");
        int aliceTries = 0;
        // A server's recipient limit: alice is to be tried again in a later transaction (twice).
        sink.OnCommand = c => c.Verb == "RCPT" && c.Argument == "alice@example.com" && Interlocked.Increment(ref aliceTries) <= 2
            ? new SmtpReply(452, "4.5.3 too many recipients")
            : null;
        await using var gw = await StartGatewayAsync(sink.Port);
        using var device = await gw.ConnectAsync("dev-2");
        var receipts = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var second = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        device.ApplicationMessageReceivedAsync += e =>
        {
            string json = e.ApplicationMessage.ConvertPayloadToString();
            receipts.Enqueue(json);
            if (json.Contains("\"id\":\"after-1\"", StringComparison.Ordinal) && json.Contains("\"relayed\"", StringComparison.Ordinal))
            {
                second.TrySetResult();
            }

            return Task.CompletedTask;
        };
        await device.SubscribeAsync("edgemail/v1/dev-2/receipt", MqttQualityOfServiceLevel.AtLeastOnce);

        await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-2/alert")
            .WithPayload(Alerts.Json("split-1")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("dev-2.split-1.alert@gw.test", default))?.Status == MessageStatus.Partial, "the mail finished");

        // Receipts go out in order: once a later alert's relayed is in, one for split-1 would have come before it.
        sink.Recipients.Clear();
        await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-2/alert")
            .WithPayload(Alerts.Json("after-1")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        await Await.Within(second.Task.ContinueWith(_ => true), "the later alert's relayed receipt");

        Assert.Equal(["alice@example.com"], sink.Received.Single(m => m.Message.MessageId == "dev-2.split-1.alert@gw.test").To);
        var states = receipts.Select(r => System.Text.Json.JsonDocument.Parse(r).RootElement)
            .Where(r => r.GetProperty("id").GetString() == "split-1").Select(r => r.GetProperty("state").GetString());
        Assert.Equal(["accepted", "failed"], states); // bob's refusal is the last word: alice's wait and copy change nothing
    }

    // RFC 5321 4.5.3.1.10: the recipients past a server's limit are sent in a new transaction, at once, not a backoff
    // step later. Each transaction's recipients are on record before the next begins, so none gets the mail twice. The
    // same section asks a client to read an older server's 552 for it as the 452 it means: not a bounce.
    [Theory]
    [InlineData(452, "4.5.3 Error: too many recipients")]
    [InlineData(552, "5.5.3 Too many recipients")]
    [InlineData(552, "Too many recipients for this message")]
    public async Task Relay_SmarthostTakesTwoRecipientsPerTransaction_The452dRestFollowAtOnceOnTheSameConnection_EachGetsItOnce(int code, string text)
    {
        await using var sink = await SmtpTestServer.StartAsync();
        sink.OnCommand = RecipientLimit(2, code, text);
        await using var gw = await StartStillGatewayAsync(sink.Port, new FakeTimeProvider(DateTimeOffset.FromUnixTimeSeconds(1_800_000_000)));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("limit-1", Five), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("limit-1@gw.test", default))?.Attempts == 1, "the first attempt recorded");

        Assert.Equal([["r1@example.com", "r2@example.com"], ["r3@example.com", "r4@example.com"], ["r5@example.com"]], sink.Received.Select(m => m.To).ToList());
        Assert.All(sink.Received, m => Assert.Equal(1, m.Connection));
        Assert.Equal(1, sink.Connections);
        var detail = await DetailAsync(gw.Spool, "limit-1@gw.test");
        Assert.Equal(MessageStatus.Sent, detail.Summary.Status);
        Assert.All(detail.Recipients, r => Assert.Equal("sent", r.Status));
        Assert.All(detail.Recipients, r => Assert.StartsWith("250 ", r.Reply, StringComparison.Ordinal));
        Assert.Equal(Five.Select(r => (r, "sent")), Outcomes(Assert.Single(detail.Attempts)));
    }

    // A follow-up transaction that delivers to nobody ends the attempt: a server that turns every recipient away for now
    // is not asked again and again, and its recipients wait for the Relay:Backoff step as any deferral does.
    [Fact]
    public async Task Relay_Smarthost452sEveryRecipientOfTheFollowUp_TheyWaitForTheBackoffStep_ThenEachGetsItOnce()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        int rcpts = 0;
        sink.OnCommand = c => c.Verb == "RCPT" && Interlocked.Increment(ref rcpts) > 1 ? new SmtpReply(452, "4.5.3 Error: too many recipients") : null;
        var clock = new FakeTimeProvider(DateTimeOffset.FromUnixTimeSeconds(1_800_000_000));
        await using var gw = await StartStillGatewayAsync(sink.Port, clock);
        string[] four = ["r1@example.com", "r2@example.com", "r3@example.com", "r4@example.com"];

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("limit-2", four), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("limit-2@gw.test", default))?.Attempts == 1, "the first attempt recorded");

        Assert.Equal([["r1@example.com"]], sink.Received.Select(m => m.To).ToList());
        Assert.Equal(2, sink.Commands.Count(c => c.Verb == "MAIL"));
        var first = await DetailAsync(gw.Spool, "limit-2@gw.test");
        Assert.Equal((MessageStatus.Queued, clock.GetUtcNow() + TimeSpan.FromMinutes(1)), (first.Summary.Status, first.Summary.NextAttemptAt));
        Assert.Equal([("r1@example.com", "sent"), ("r2@example.com", "deferred"), ("r3@example.com", "deferred"), ("r4@example.com", "deferred")],
            Outcomes(Assert.Single(first.Attempts)));
        Assert.All(first.Attempts[0].Results.Where(r => r.Outcome == RecipientOutcome.Deferred), r => Assert.StartsWith("452 4.5.3 Error: too many recipients", r.Reply, StringComparison.Ordinal));

        sink.OnCommand = null;
        clock.Advance(TimeSpan.FromMinutes(1));
        gw.Host.Services.GetRequiredService<DeliveryWorker>().Wake();
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("limit-2@gw.test", default))?.Status == MessageStatus.Sent, "the second attempt recorded");

        Assert.Equal([["r1@example.com"], ["r2@example.com", "r3@example.com", "r4@example.com"]], sink.Received.Select(m => m.To).ToList());
        var done = await DetailAsync(gw.Spool, "limit-2@gw.test");
        Assert.Equal(2, done.Summary.Attempts);
        Assert.All(done.Recipients, r => Assert.Equal("sent", r.Status));
    }

    [Fact]
    public async Task Relay_SmarthostDropsThenIsDownThenUp_DeliversOnceItIsBack()
    {
        var dropped = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var flaky = await SmtpTestServer.StartAsync(new() { ServerName = "flaky.test" });
        flaky.OnCommand = _ =>
        {
            dropped.TrySetResult();
            return SmtpReply.Drop; // the greeting, then the connection is gone
        };
        int port = flaky.Port;
        await using var gw = await StartGatewayAsync(port);

        await PublishAsync(gw, "dev-3", "flaky-1");
        await Await.Within(dropped.Task.ContinueWith(_ => true), "the first attempt to reach the dropping server");
        await flaky.DisposeAsync();
        Assert.Empty(flaky.Messages);
        using var down = HoldPort(port);
        await using var sink = await SmtpTestServer.StartAsync(new() { Port = port });
        down.Dispose();
        var (message, _) = await sink.NextAsync();

        Assert.Equal("dev-3.flaky-1.alert@gw.test", message.MessageId);
    }

    // The smarthost is down, its port held by a socket bound but not listening: connections are refused, and the OS cannot
    // give the port to a connection as its own local one (a loopback connect to a port nobody holds can connect to itself,
    // and the server coming back could then not bind). Both sockets reuse the address, so the server binds beside it.
    private static Socket HoldPort(int port)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        socket.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, port));
        return socket;
    }

    [Fact]
    public async Task Relay_KeptConnectionClosedWith421_TheNextMailGoesAtOnceOnAFreshConnection()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        int mailCommands = 0;
        // Postfix ends an idle session with "421 4.4.2 ... timeout exceeded" and closes: the relay reads that 421 as
        // the reply to its next MAIL FROM on the kept connection.
        sink.OnCommand = c => c.Verb == "MAIL" && Interlocked.Increment(ref mailCommands) == 2
            ? new SmtpReply(421, "4.4.2 sink.test Error: timeout exceeded") { Closes = true }
            : null;
        await using var relay = new SmtpRelay(new RelayOptions { Host = "127.0.0.1", Port = sink.Port, Security = "None", Timeout = TimeSpan.FromSeconds(5) }, "gw.test");

        var first = await relay.SendAsync(Mail("one"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);
        var second = await relay.SendAsync(Mail("two"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);

        Assert.All(first.Concat(second), r => Assert.Equal(RecipientOutcome.Sent, r.Outcome));
        Assert.Equal(["one@lan.example.com", "two@lan.example.com"], sink.Received.Select(m => m.Message.MessageId));
        Assert.Equal([1, 2], sink.Received.Select(m => m.Connection));
    }

    [Fact]
    public async Task Relay_SmarthostGreets554_TheMailIsDeferredNotBounced()
    {
        // A 5xx greeting turns down the gateway's session (its address on a block list, say), not this recipient.
        await using var sink = await SmtpTestServer.StartAsync(new() { Greeting = () => "554 sink.test 5.7.1 client host blocked" });
        await using var relay = new SmtpRelay(new RelayOptions { Host = "127.0.0.1", Port = sink.Port, Security = "None", Timeout = TimeSpan.FromSeconds(5) }, "gw.test");

        var result = Assert.Single(await relay.SendAsync(Mail("one"), CancellationToken.None).WaitAsync(Await.DefaultTimeout));

        Assert.Equal(RecipientOutcome.Deferred, result.Outcome);
        Assert.Equal($"451 4.4.1 127.0.0.1:{sink.Port} refused the session: 554 sink.test 5.7.1 client host blocked", result.Reply);
        Assert.Empty(sink.Commands);
    }

    [Fact]
    public async Task Relay_SmarthostNeverAnswersQuit_StoppingTheRelayEndsItsConnectionsWithoutThrowing()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        sink.OnCommand = c => c.Verb == "QUIT" ? SmtpReply.Hang : null;
        var relay = new SmtpRelay(new RelayOptions { Host = "127.0.0.1", Port = sink.Port, Security = "None", Timeout = TimeSpan.FromSeconds(1) }, "gw.test");
        var sent = await relay.SendAsync(Mail("one"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);

        // The kept connection ends with a QUIT that gets no answer: MailKit's read times out (TimeoutException).
        await relay.DisposeAsync().AsTask().WaitAsync(Await.DefaultTimeout);

        Assert.All(sent, r => Assert.Equal(RecipientOutcome.Sent, r.Outcome));
        Assert.Contains(sink.Commands, c => c.Verb == "QUIT");
    }
}
