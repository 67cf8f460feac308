using System.Globalization;
using System.Net;
using System.Text;
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

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// Direct MX to two domains (dnsmasq on loopback, a real SMTP server as each domain's exchanger) when the recipients the
/// first domain accepted cannot be recorded before the second is tried: the spool fails the write, or, on a shared
/// PostgreSQL spool, another instance has taken the message over. The attempt stops there: the second domain is not
/// sent to by an attempt whose first 250 is not on record, so a crash, a spool that fails the final commit too, or the
/// other instance's attempt cannot send it there a second time.
/// </summary>
public sealed class DirectMxEarlyRecordTests
{
    internal const string Alice = "alice@a.example.test";
    internal const string Bob = "bob@b.example.test";
    private static readonly DateTimeOffset Start = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000);

    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task FirstDomainCannotBeRecorded_TheAttemptStopsAndRecordsIt_TheNextAttemptSendsOnlyToTheSecondDomain()
    {
        await using var a = await SmtpTestServer.StartAsync();
        await using var b = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2"), Port = a.Port });
        using var dns = await TwoDomainsAsync();
        var clock = new FakeTimeProvider(Start);
        FaultingSpool? faults = null;
        await using var gw = await TestGateway.StartAsync(c => DirectMx(c, dns, a.Port), s =>
        {
            s.AddSingleton<TimeProvider>(clock);
            FaultingSpool.Add<DeliveryWorker>(s, f => faults = f);
        });
        var worker = gw.Host.Services.GetRequiredService<DeliveryWorker>();
        faults!.Fail(nameof(ISpool.RecordSentRecipientsAsync));

        await gw.Spool.QueueMailAsync(Mail("split-1@gw.test"), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("split-1@gw.test", default))?.Attempts == 1, "the first attempt recorded");

        // a.example.test has the mail and, with the attempt's result, it is on record; b.example.test was not tried
        // while a's 250 was on record nowhere, and waits for the next attempt.
        Assert.Equal(1, faults.Failed(nameof(ISpool.RecordSentRecipientsAsync)));
        Assert.Equal([Alice], Assert.Single(a.Received).To);
        Assert.Equal(0, b.Connections);
        var first = await DetailAsync(gw.Spool, "split-1@gw.test");
        Assert.Equal((MessageStatus.Queued, 1), (first.Summary.Status, first.Summary.Attempts));
        var alice = first.Recipients.Single(r => r.Address == Alice);
        Assert.Equal("sent", alice.Status);
        Assert.StartsWith("250 ", alice.Reply, StringComparison.Ordinal);
        var bob = first.Recipients.Single(r => r.Address == Bob);
        Assert.Equal("pending", bob.Status);
        Assert.StartsWith("451 4.3.0 ", bob.Reply, StringComparison.Ordinal);
        Assert.Contains(FaultingSpool.Message, bob.Reply, StringComparison.Ordinal);
        Assert.Equal(Start + TimeSpan.FromMinutes(1), (await gw.Spool.GetMessageAsync("split-1@gw.test", default))!.NextAttemptAt);

        clock.Advance(TimeSpan.FromMinutes(1));
        worker.Wake();
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("split-1@gw.test", default))?.Status == MessageStatus.Sent, "the second attempt recorded");

        Assert.Equal([Bob], Assert.Single(b.Received).To);
        Assert.Single(a.Received);
        var done = await DetailAsync(gw.Spool, "split-1@gw.test");
        Assert.Equal(2, done.Summary.Attempts);
        Assert.All(done.Recipients, r => Assert.Equal("sent", r.Status));
        Assert.All(done.Recipients, r => Assert.StartsWith("250 ", r.Reply, StringComparison.Ordinal));
        Assert.Equal(
            [[(Alice, "sent"), (Bob, "deferred")], [(Bob, "sent")]],
            done.Attempts.OrderBy(t => t.Attempt).Select(t => t.Results.Select(r => (r.Address, r.Outcome)).ToList()).ToList());
    }

    // A spool that just failed a write is likely to fail the next: here it fails the attempt's result too, three times.
    // The result (a's 250, b not attempted) waits in memory and is committed at the fourth try; the next attempt sends
    // to b.example.test only. Before, the worker left the mail due after a failed commit and the next attempt sent it to
    // both domains again: a.example.test got a copy for every failed commit.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task FirstDomainCannotBeRecorded_NorTheAttemptsResult_ItIsCommittedAgain_NeitherDomainGetsTheMailTwice()
    {
        await using var a = await SmtpTestServer.StartAsync();
        await using var b = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2"), Port = a.Port });
        using var dns = await TwoDomainsAsync();
        var clock = new FakeTimeProvider(Start);
        FaultingSpool? faults = null;
        await using var gw = await TestGateway.StartAsync(c => DirectMx(c, dns, a.Port), s =>
        {
            s.AddSingleton<TimeProvider>(clock);
            FaultingSpool.Add<DeliveryWorker>(s, f => faults = f);
        });
        faults!.Fail(nameof(ISpool.RecordSentRecipientsAsync));
        faults.Fail(nameof(ISpool.CommitDeliveryAsync), 3);
        faults.Called += DeliveryResultRetryTests.MinuteEachCommit(clock);

        await gw.Spool.QueueMailAsync(Mail("split-2@gw.test"), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("split-2@gw.test", default))?.Status == MessageStatus.Sent,
            "the mail sent to b.example.test by the next attempt");

        Assert.Equal((1, 3), (faults.Failed(nameof(ISpool.RecordSentRecipientsAsync)), faults.Failed(nameof(ISpool.CommitDeliveryAsync))));
        Assert.Equal([Alice], Assert.Single(a.Received).To);
        Assert.Equal([Bob], Assert.Single(b.Received).To);
        var done = await DetailAsync(gw.Spool, "split-2@gw.test");
        Assert.Equal(2, done.Summary.Attempts);
        Assert.All(done.Recipients, r => Assert.Equal("sent", r.Status));
        Assert.Equal(
            [[(Alice, "sent"), (Bob, "deferred")], [(Bob, "sent")]],
            done.Attempts.OrderBy(t => t.Attempt).Select(t => t.Results.Select(r => (r.Address, r.Outcome)).ToList()).ToList());
    }

    // The operator cancels the mail while a.example.test takes the data: a's copy is gone and stays on record, but the
    // cancel holds for the domain not yet tried.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task CancelledWhileTheFirstDomainTakesTheData_TheSecondDomainIsNotSentTo()
    {
        await using var a = await SmtpTestServer.StartAsync();
        await using var b = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2"), Port = a.Port });
        using var dns = await TwoDomainsAsync();
        await using var gw = await TestGateway.StartAsync(c => DirectMx(c, dns, a.Port), null);
        a.OnData = _ =>
        {
            long row = gw.Spool.GetMessageAsync("split-4@gw.test", default).GetAwaiter().GetResult()!.RowId;
            Assert.True(gw.Spool.CancelAsync(ParkedKinds.Message, row, "wrong recipients", 100, default).GetAwaiter().GetResult().Cancelled);
            return SmtpReply.Ok;
        };

        await gw.Spool.QueueMailAsync(Mail("split-4@gw.test"), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("split-4@gw.test", default))?.Attempts == 1, "the attempt recorded");

        Assert.Equal([Alice], Assert.Single(a.Received).To);
        Assert.Equal(0, b.Connections);
        var detail = await DetailAsync(gw.Spool, "split-4@gw.test");
        Assert.Equal(MessageStatus.Partial, detail.Summary.Status);
        Assert.Equal([(Alice, "sent"), (Bob, "failed")], detail.Recipients.Select(r => (r.Address, r.Status)).OrderBy(r => r.Address, StringComparer.Ordinal));
    }

    // The same, when the first domain defers: nothing of the attempt needs recording, and the cancel still holds for
    // the domain not yet tried.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task CancelledWhileTheFirstDomainDefers_TheSecondDomainIsNotSentTo()
    {
        await using var a = await SmtpTestServer.StartAsync();
        await using var b = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2"), Port = a.Port });
        using var dns = await TwoDomainsAsync();
        await using var gw = await TestGateway.StartAsync(c => DirectMx(c, dns, a.Port), null);
        a.OnData = _ =>
        {
            long row = gw.Spool.GetMessageAsync("split-5@gw.test", default).GetAwaiter().GetResult()!.RowId;
            Assert.True(gw.Spool.CancelAsync(ParkedKinds.Message, row, "wrong recipients", 100, default).GetAwaiter().GetResult().Cancelled);
            return new SmtpReply(451, "4.7.1 greylisted, try again later");
        };

        await gw.Spool.QueueMailAsync(Mail("split-5@gw.test"), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("split-5@gw.test", default))?.Attempts == 1, "the attempt recorded");

        Assert.Empty(a.Received);
        Assert.Equal(0, b.Connections);
        var detail = await DetailAsync(gw.Spool, "split-5@gw.test");
        Assert.Equal(MessageStatus.Cancelled, detail.Summary.Status);
        Assert.Equal([(Alice, "failed"), (Bob, "failed")], detail.Recipients.Select(r => (r.Address, r.Status)).OrderBy(r => r.Address, StringComparer.Ordinal));
    }

    // On a shared spool the attempt's claim runs out unrenewed (the instance stalled past its lease: here its clock stands
    // still while a.example.test takes the data, and the other instance's has moved on past the lease) and another
    // instance takes the message over: it will send to every recipient still pending. The first instance's record of
    // a's 250 is refused, and it must not go on to b.example.test as well.
    [PostgresFact("dnsmasq:dnsmasq-base")]
    public async Task Postgres_ClaimTakenOverWhileTheFirstDomainTakesTheData_TheSecondDomainIsLeftToTheNewHolder()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        var lease = TimeSpan.FromSeconds(10);
        var clock = new FakeTimeProvider(Start);
        var later = new FakeTimeProvider(Start + lease + TimeSpan.FromSeconds(1));
        await using var other = PostgresSpool.Open(db.ConnectionString, fsync: true, maxBatch: 64, lease, TimeSpan.FromSeconds(5), NullLogger.Instance);
        other.Clock = later;
        await using var a = await SmtpTestServer.StartAsync();
        await using var b = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2"), Port = a.Port });
        var taken = new TaskCompletionSource<IReadOnlyList<QueuedMessage>>(TaskCreationOptions.RunContinuationsAsynchronously);
        a.OnData = _ =>
        {
            taken.TrySetResult(other.DueMessagesAsync(later.GetUtcNow(), 10, new HashSet<long>(), default).GetAwaiter().GetResult());
            return SmtpReply.Ok;
        };
        using var dns = await TwoDomainsAsync();
        var log = new DeliveryContainmentTests.WorkerLog();
        await using var gw = await TestGateway.StartAsync(c =>
        {
            DirectMx(c, dns, a.Port);
            c["Spool"] = new { Provider = "Postgres", db.ConnectionString, ClaimLease = "00:00:10", PollInterval = "00:00:00.500" };
            c["Logging"] = new { LogLevel = new Dictionary<string, string> { ["Default"] = "Warning", [typeof(DeliveryWorker).FullName!] = "Information" } };
        }, s =>
        {
            s.AddSingleton<TimeProvider>(clock);
            s.AddSingleton<ILoggerProvider>(log);
        });

        await gw.Spool.QueueMailAsync(Mail("split-3@gw.test"), default);
        var theirs = Assert.Single(await Await.Within(taken.Task, "the other instance taking the message over"));
        Assert.StartsWith("<split-3@gw.test> was cancelled, or taken over",
            await Await.Within(log.AboutAsync("split-3@gw.test"), "the first instance's record of a's recipients refused"), StringComparison.Ordinal);
        Assert.StartsWith("Discarded the result of the attempt on <split-3@gw.test>",
            await Await.Within(log.AboutAsync("split-3@gw.test"), "the first instance's word on its attempt"), StringComparison.Ordinal);

        // The new holder sends to both (a's second copy is the lost claim's at-least-once window, spool.md invariant 12);
        // b.example.test gets the mail from it alone.
        Assert.Equal([Alice, Bob], theirs.PendingRecipients);
        Assert.Equal([Alice], Assert.Single(a.Received).To);
        Assert.Equal(0, b.Connections);
        var detail = (await other.MessageDetailAsync(theirs.RowId, default))!;
        Assert.Equal((MessageStatus.Queued, 0), (detail.Summary.Status, detail.Summary.Attempts));
        Assert.All(detail.Recipients, r => Assert.Equal("pending", r.Status));
        Assert.Empty(detail.Attempts);
    }

    internal static Task<Dnsmasq> TwoDomainsAsync() => Dnsmasq.StartAsync(
        "--mx-host=a.example.test,mx-a.example.test,10", "--host-record=mx-a.example.test,127.0.0.1",
        "--mx-host=b.example.test,mx-b.example.test,10", "--host-record=mx-b.example.test,127.0.0.2",
        "--local=/example.test/");

    internal static void DirectMx(Dictionary<string, object> c, Dnsmasq dns, int port) =>
        c["Relay"] = new
        {
            Mode = "DirectMx", DnsServer = "127.0.0.1:" + dns.Port.ToString(CultureInfo.InvariantCulture), MxPort = port, Timeout = "00:00:05",
            Backoff = new[] { "00:01:00" },
        };

    internal static NewMessage Mail(string id) =>
        new("relay", "dev-1", null, id, "edgemail@gw.test", [Alice, Bob], Encoding.ASCII.GetBytes($"Message-ID: <{id}>\r\nSubject: mains lost\r\n\r\nOn battery.\r\n"));

    internal static async Task<MessageDetail> DetailAsync(ISpool spool, string messageId) =>
        (await spool.MessageDetailAsync((await spool.GetMessageAsync(messageId, default))!.RowId, default))!;
}
