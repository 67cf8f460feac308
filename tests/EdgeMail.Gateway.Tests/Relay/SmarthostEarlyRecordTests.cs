using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.Operations;
using EdgeMail.Gateway.Tests.Spool;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using Xunit;
using static EdgeMail.Gateway.Tests.Relay.DirectMxEarlyRecordTests;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// A smarthost mail to five recipients with <c>Relay:Limits:RecipientsPerMessage</c> 2 goes out in three transactions
/// (a real SMTP server on loopback). As direct MX does per domain, the recipients each transaction but the last
/// delivered to are recorded before the next begins, and the attempt stops there when they cannot be (a spool error,
/// the mail cancelled, its claim on a shared spool taken over): a later attempt never sends an earlier transaction's
/// recipients the mail again, and a cancel holds for the transactions not yet begun.
/// </summary>
public sealed class SmarthostEarlyRecordTests
{
    private static readonly string[] Five = ["r1@example.com", "r2@example.com", "r3@example.com", "r4@example.com", "r5@example.com"];
    private static readonly DateTimeOffset Start = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000);

    // The spool fails the attempt's result three times: what the first two transactions delivered is on record all the
    // same, the result (r5 greylisted) is committed at the fourth try, and the next attempt sends only to r5. (Before,
    // the worker left the mail due after a failed commit and the next attempt sent all five again; the first two
    // transactions' recipients got it once only because their early record had held.)
    [Fact]
    public async Task AttemptsResultCannotBeRecorded_ItIsCommittedAgain_TheNextAttemptSendsOnlyToTheRecipientItDeferred_NoneGetsTheMailTwice()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        int r5Asked = 0;
        sink.OnCommand = c => c is { Verb: "RCPT", Argument: "r5@example.com" } && Interlocked.Increment(ref r5Asked) == 1
            ? new SmtpReply(451, "4.7.1 greylisted, try again later")
            : null;
        var clock = new FakeTimeProvider(Start);
        FaultingSpool? faults = null;
        await using var gw = await TestGateway.StartAsync(c => Smarthost(c, sink.Port), s =>
        {
            s.AddSingleton<TimeProvider>(clock);
            FaultingSpool.Add<DeliveryWorker>(s, f => faults = f);
        });
        faults!.Fail(nameof(ISpool.CommitDeliveryAsync), 3);
        faults.Called += DeliveryResultRetryTests.MinuteEachCommit(clock);

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("chunks-1", Five), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("chunks-1@gw.test", default))?.Status == MessageStatus.Sent,
            "the mail sent to r5 by the next attempt");

        Assert.Equal(3, faults.Failed(nameof(ISpool.CommitDeliveryAsync)));
        Assert.Equal([["r1@example.com", "r2@example.com"], ["r3@example.com", "r4@example.com"], ["r5@example.com"]], sink.Received.Select(m => m.To).ToList());
        var done = await DetailAsync(gw.Spool, "chunks-1@gw.test");
        Assert.Equal(2, done.Summary.Attempts); // the first attempt's result is on record, r5 deferred in it
        Assert.All(done.Recipients, r => Assert.Equal("sent", r.Status));
    }

    // The record of the first transaction's recipients fails: the attempt stops, its result records them and defers
    // the rest; the next attempt sends only to those.
    [Fact]
    public async Task FirstTransactionCannotBeRecorded_TheAttemptStopsAndRecordsIt_TheNextAttemptSendsOnlyToTheRest()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        var clock = new FakeTimeProvider(Start);
        FaultingSpool? faults = null;
        await using var gw = await TestGateway.StartAsync(c => Smarthost(c, sink.Port), s =>
        {
            s.AddSingleton<TimeProvider>(clock);
            FaultingSpool.Add<DeliveryWorker>(s, f => faults = f);
        });
        var worker = gw.Host.Services.GetRequiredService<DeliveryWorker>();
        faults!.Fail(nameof(ISpool.RecordSentRecipientsAsync));

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("chunks-2", Five), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("chunks-2@gw.test", default))?.Attempts == 1, "the first attempt recorded");

        Assert.Equal(1, faults.Failed(nameof(ISpool.RecordSentRecipientsAsync)));
        Assert.Equal(["r1@example.com", "r2@example.com"], Assert.Single(sink.Received).To);
        var first = await DetailAsync(gw.Spool, "chunks-2@gw.test");
        Assert.Equal((MessageStatus.Queued, 1), (first.Summary.Status, first.Summary.Attempts));
        Assert.Equal(
            [("r1@example.com", "sent"), ("r2@example.com", "sent"), ("r3@example.com", "pending"), ("r4@example.com", "pending"), ("r5@example.com", "pending")],
            first.Recipients.Select(r => (r.Address, r.Status)).OrderBy(r => r.Address, StringComparer.Ordinal));
        Assert.All(first.Recipients.Where(r => r.Status == "pending"), r =>
        {
            Assert.StartsWith("451 4.3.0 local error, not attempted: ", r.Reply, StringComparison.Ordinal);
            Assert.Contains(FaultingSpool.Message, r.Reply, StringComparison.Ordinal);
        });

        clock.Advance(TimeSpan.FromMinutes(1));
        worker.Wake();
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("chunks-2@gw.test", default))?.Status == MessageStatus.Sent, "the second attempt recorded");

        Assert.Equal([["r1@example.com", "r2@example.com"], ["r3@example.com", "r4@example.com"], ["r5@example.com"]], sink.Received.Select(m => m.To).ToList());
        var done = await DetailAsync(gw.Spool, "chunks-2@gw.test");
        Assert.Equal(2, done.Summary.Attempts);
        Assert.All(done.Recipients, r => Assert.Equal("sent", r.Status));
    }

    // The operator cancels the mail while the smarthost takes the first transaction's data: that copy is gone and
    // stays on record, the cancel holds for the rest.
    [Fact]
    public async Task CancelledWhileTheFirstTransactionTakesTheData_TheOthersAreNotSent()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        await using var gw = await TestGateway.StartAsync(c => Smarthost(c, sink.Port), null);
        sink.OnData = m =>
        {
            if (m.Number == 1)
            {
                CancelNow(gw.Spool, "chunks-3@gw.test");
            }

            return SmtpReply.Ok;
        };

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("chunks-3", Five), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("chunks-3@gw.test", default))?.Attempts == 1, "the attempt recorded");

        Assert.Equal(["r1@example.com", "r2@example.com"], Assert.Single(sink.Messages).To);
        var detail = await DetailAsync(gw.Spool, "chunks-3@gw.test");
        Assert.Equal(MessageStatus.Partial, detail.Summary.Status);
        Assert.Equal(
            [("r1@example.com", "sent"), ("r2@example.com", "sent"), ("r3@example.com", "failed"), ("r4@example.com", "failed"), ("r5@example.com", "failed")],
            detail.Recipients.Select(r => (r.Address, r.Status)).OrderBy(r => r.Address, StringComparer.Ordinal));
    }

    // The same when the first transaction is deferred: nothing needs recording, and the cancel still holds.
    [Fact]
    public async Task CancelledWhileTheFirstTransactionIsDeferred_TheOthersAreNotSent()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        await using var gw = await TestGateway.StartAsync(c => Smarthost(c, sink.Port), null);
        sink.OnData = m =>
        {
            if (m.Number == 1)
            {
                CancelNow(gw.Spool, "chunks-4@gw.test");
            }

            return new SmtpReply(451, "4.7.1 greylisted, try again later");
        };

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("chunks-4", Five), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("chunks-4@gw.test", default))?.Attempts == 1, "the attempt recorded");

        Assert.Empty(sink.Received);
        Assert.Equal(["r1@example.com", "r2@example.com"], Assert.Single(sink.Messages).To);
        var detail = await DetailAsync(gw.Spool, "chunks-4@gw.test");
        Assert.Equal(MessageStatus.Cancelled, detail.Summary.Status);
        Assert.All(detail.Recipients, r => Assert.Equal("failed", r.Status));
    }

    // On a shared spool the attempt's claim runs out unrenewed (its clock stands still while the smarthost takes the
    // first transaction's data; the other instance's has moved past the lease) and another instance takes the mail
    // over: it will send to every recipient still pending. The first instance's record is refused, and it begins no
    // further transaction.
    [PostgresFact]
    public async Task Postgres_ClaimTakenOverWhileTheFirstTransactionTakesTheData_TheOthersAreLeftToTheNewHolder()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        var lease = TimeSpan.FromSeconds(10);
        var clock = new FakeTimeProvider(Start);
        var later = new FakeTimeProvider(Start + lease + TimeSpan.FromSeconds(1));
        await using var other = PostgresSpool.Open(db.ConnectionString, fsync: true, maxBatch: 64, lease, TimeSpan.FromSeconds(5), NullLogger.Instance);
        other.Clock = later;
        await using var sink = await SmtpTestServer.StartAsync();
        var taken = new TaskCompletionSource<IReadOnlyList<QueuedMessage>>(TaskCreationOptions.RunContinuationsAsynchronously);
        sink.OnData = _ =>
        {
            taken.TrySetResult(other.DueMessagesAsync(later.GetUtcNow(), 10, new HashSet<long>(), default).GetAwaiter().GetResult());
            return SmtpReply.Ok;
        };
        var log = new DeliveryContainmentTests.WorkerLog();
        await using var gw = await TestGateway.StartAsync(c =>
        {
            Smarthost(c, sink.Port);
            c["Spool"] = new { Provider = "Postgres", db.ConnectionString, ClaimLease = "00:00:10", PollInterval = "00:00:00.500" };
            c["Logging"] = new { LogLevel = new Dictionary<string, string> { ["Default"] = "Warning", [typeof(DeliveryWorker).FullName!] = "Information" } };
        }, s =>
        {
            s.AddSingleton<TimeProvider>(clock);
            s.AddSingleton<ILoggerProvider>(log);
        });

        await gw.Spool.QueueMailAsync(OAuth2Kit.Mail("chunks-5", Five), default);
        var theirs = Assert.Single(await Await.Within(taken.Task, "the other instance taking the mail over"));
        Assert.StartsWith("<chunks-5@gw.test> was cancelled, or taken over",
            await Await.Within(log.AboutAsync("chunks-5@gw.test"), "the first instance's record of the first transaction refused"), StringComparison.Ordinal);
        Assert.StartsWith("Discarded the result of the attempt on <chunks-5@gw.test>",
            await Await.Within(log.AboutAsync("chunks-5@gw.test"), "the first instance's word on its attempt"), StringComparison.Ordinal);

        Assert.Equal(Five, theirs.PendingRecipients);
        Assert.Equal(["r1@example.com", "r2@example.com"], Assert.Single(sink.Messages).To);
        var detail = (await other.MessageDetailAsync(theirs.RowId, default))!;
        Assert.Equal((MessageStatus.Queued, 0), (detail.Summary.Status, detail.Summary.Attempts));
        Assert.All(detail.Recipients, r => Assert.Equal("pending", r.Status));
    }

    private static void Smarthost(Dictionary<string, object> c, int port) =>
        c["Relay"] = new
        {
            Mode = "Smarthost", Host = "127.0.0.1", Port = port, Security = "None", Timeout = "00:00:05", Backoff = new[] { "00:01:00" },
            Limits = new { RecipientsPerMessage = 2 },
        };

    // From the server's script, while the gateway's transaction waits for its reply.
    private static void CancelNow(ISpool spool, string messageId)
    {
        long row = spool.GetMessageAsync(messageId, default).GetAwaiter().GetResult()!.RowId;
        Assert.True(spool.CancelAsync(ParkedKinds.Message, row, "wrong recipients", 100, default).GetAwaiter().GetResult().Cancelled);
    }
}
