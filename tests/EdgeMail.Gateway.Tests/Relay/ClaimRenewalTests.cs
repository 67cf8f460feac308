using System.Globalization;
using System.Net;
using System.Text;
using EdgeMail.Gateway.Receipts;
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
/// A delivery attempt on a shared PostgreSQL spool keeps its claim while it is under way (renewed every third of
/// <c>Spool:ClaimLease</c>), and a result the spool fences out because another instance holds the message now is
/// discarded. The gateway's clock is a fake one that the exchangers' scripts move on while they take the data; the lease
/// (10 s) is on that clock, the SMTP timeouts on the real one.
/// </summary>
public sealed class ClaimRenewalTests
{
    private const string Carol = "carol@c.example.test";
    private static readonly DateTimeOffset Start = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000);
    private static readonly TimeSpan Lease = TimeSpan.FromSeconds(10);

    // Direct MX over two domains; a.example.test holds the data while the clock runs a third of a lease on, four times:
    // past the lease the attempt began with. At each step another instance looks for due mail, as its poll would.
    [PostgresFact("dnsmasq:dnsmasq-base")]
    public async Task Postgres_AnAttemptOutlastingItsLease_KeepsItsClaim_AnotherInstancePollingMeanwhileTakesNothing_TheMailArrivesOnce()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        var clock = new FakeTimeProvider(Start);
        await using var other = PostgresSpool.Open(db.ConnectionString, fsync: true, maxBatch: 64, Lease, TimeSpan.FromSeconds(5), NullLogger.Instance);
        other.Clock = clock;
        await using var a = await SmtpTestServer.StartAsync();
        await using var b = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2"), Port = a.Port });
        using var dns = await TwoDomainsAsync();
        var log = new DeliveryContainmentTests.WorkerLog();
        TestGateway? started = null;
        var takenOver = new List<QueuedMessage>();
        a.OnData = _ =>
        {
            var holding = started!;
            string holder = ((PostgresSpool)holding.Spool).Owner;
            for (int step = 1; step <= 4; step++)
            {
                clock.Advance(Lease / 3 + TimeSpan.FromMilliseconds(1));
                long until = clock.GetUtcNow().ToUnixTimeMilliseconds() + (long)Lease.TotalMilliseconds;
                holding.UntilAsync(async () => await HeldAsync(db, "renew-1@gw.test", holder, until), $"the holder renewing its claim at step {step}").GetAwaiter().GetResult();
                takenOver.AddRange(other.DueMessagesAsync(clock.GetUtcNow(), 10, new HashSet<long>(), default).GetAwaiter().GetResult());
            }

            return SmtpReply.Ok;
        };
        await using var gw = started = await StartAsync(db, dns, a.Port, clock, log);

        await gw.Spool.QueueMailAsync(Mail("renew-1@gw.test"), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("renew-1@gw.test", default))?.Status == MessageStatus.Sent, "the attempt recorded");

        Assert.True(clock.GetUtcNow() > Start + Lease);
        Assert.Empty(takenOver);
        Assert.Equal([Alice], Assert.Single(a.Received).To);
        Assert.Equal([Bob], Assert.Single(b.Received).To);
        var detail = await DetailAsync(gw.Spool, "renew-1@gw.test");
        Assert.Equal(1, detail.Summary.Attempts);
        Assert.All(detail.Recipients, r => Assert.Equal("sent", r.Status));
        Assert.StartsWith("Delivered <renew-1@gw.test>", await Await.Within(log.AboutAsync("renew-1@gw.test"), "the worker's word on the attempt"), StringComparison.Ordinal);
        Assert.Empty(await other.DueMessagesAsync(clock.GetUtcNow(), 10, new HashSet<long>(), default));
    }

    // Renewals fail (the spool cannot write): the attempt goes on while the lease it holds lasts — b.example.test is sent
    // to after a failed renewal — and begins no transaction once it ran out, when another instance may be sending.
    [PostgresFact("dnsmasq:dnsmasq-base")]
    public async Task Postgres_RenewalsFailing_TheAttemptGoesOnWhileTheLeaseHolds_ThenBeginsNoFurtherTransaction()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        var clock = new FakeTimeProvider(Start);
        await using var a = await SmtpTestServer.StartAsync();
        await using var b = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.2"), Port = a.Port });
        await using var c = await SmtpTestServer.StartAsync(new() { Address = IPAddress.Parse("127.0.0.3"), Port = a.Port });
        using var dns = await Dnsmasq.StartAsync(
            "--mx-host=a.example.test,mx-a.example.test,10", "--host-record=mx-a.example.test,127.0.0.1",
            "--mx-host=b.example.test,mx-b.example.test,10", "--host-record=mx-b.example.test,127.0.0.2",
            "--mx-host=c.example.test,mx-c.example.test,10", "--host-record=mx-c.example.test,127.0.0.3",
            "--local=/example.test/");
        var log = new DeliveryContainmentTests.WorkerLog();
        a.OnData = _ =>
        {
            clock.Advance(Lease / 3 + TimeSpan.FromMilliseconds(1));
            Assert.StartsWith("The claim on <renew-2@gw.test> could not be renewed; it holds until",
                Await.Within(log.AboutAsync("renew-2@gw.test"), "the first renewal failing").GetAwaiter().GetResult(), StringComparison.Ordinal);
            return SmtpReply.Ok;
        };
        b.OnData = _ =>
        {
            clock.Advance(Lease);
            Assert.StartsWith("The claim on <renew-2@gw.test> could not be renewed and ran out",
                Await.Within(log.AboutAsync("renew-2@gw.test"), "a renewal failing past the lease").GetAwaiter().GetResult(), StringComparison.Ordinal);
            return SmtpReply.Ok;
        };
        FaultingSpool? faults = null;
        await using var gw = await StartAsync(db, dns, a.Port, clock, log,
            s => FaultingSpool.Add<DeliveryWorker>(s, f => faults = f));
        faults!.Fail(nameof(ISpool.RenewClaimAsync), 100);

        await gw.Spool.QueueMailAsync(new NewMessage("relay", "dev-1", null, "renew-2@gw.test", "edgemail@gw.test", [Alice, Bob, Carol],
            Encoding.ASCII.GetBytes("Message-ID: <renew-2@gw.test>\r\nSubject: mains lost\r\n\r\nOn battery.\r\n")), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("renew-2@gw.test", default))?.Attempts == 1, "the attempt recorded");

        Assert.Equal([Alice], Assert.Single(a.Received).To);
        Assert.Equal([Bob], Assert.Single(b.Received).To);
        Assert.Equal(0, c.Connections);
        var detail = await DetailAsync(gw.Spool, "renew-2@gw.test");
        Assert.Equal(MessageStatus.Queued, detail.Summary.Status);
        Assert.Equal([(Alice, "sent"), (Bob, "sent"), (Carol, "pending")], detail.Recipients.Select(r => (r.Address, r.Status)).OrderBy(r => r.Address, StringComparer.Ordinal));
        Assert.Equal(LeaseKeeper.ExpiredReply, detail.Recipients.Single(r => r.Address == Carol).Reply);
        Assert.StartsWith("Deferred <renew-2@gw.test>", await Await.Within(log.AboutAsync("renew-2@gw.test"), "the worker's word on the attempt"), StringComparison.Ordinal);
    }

    // The holder stalled past its lease (its clock stands still while the smarthost takes the data; the other
    // instance's has moved on) and another instance took the alert's mail over. The holder's result is fenced out: it
    // must not tell the device anything — the new holder's attempt is the one recorded and receipted. Then the new
    // holder hands the mail back (a graceful stop), and the first instance, once its own attempt is over, sends it
    // again: the device hears from that attempt only.
    [PostgresFact]
    public async Task Postgres_AResultFencedOutByATakeover_IsDiscarded_NoDeliveredLine_NoReceiptToTheDevice()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        var clock = new FakeTimeProvider(Start);
        var later = new FakeTimeProvider(Start + Lease + TimeSpan.FromSeconds(1));
        var other = PostgresSpool.Open(db.ConnectionString, fsync: true, maxBatch: 64, Lease, TimeSpan.FromSeconds(5), NullLogger.Instance);
        await using var closeOther = other;
        other.Clock = later;
        await using var sink = await SmtpTestServer.StartAsync();
        var taken = new TaskCompletionSource<IReadOnlyList<QueuedMessage>>(TaskCreationOptions.RunContinuationsAsynchronously);
        sink.OnData = _ =>
        {
            if (!taken.Task.IsCompleted)
            {
                taken.TrySetResult(other.DueMessagesAsync(later.GetUtcNow(), 10, new HashSet<long>(), default).GetAwaiter().GetResult());
            }

            return SmtpReply.Ok;
        };
        var log = new DeliveryContainmentTests.WorkerLog();
        await using var gw = await TestGateway.StartAsync(c =>
        {
            c["Relay"] = new { Mode = "Smarthost", Host = "127.0.0.1", sink.Port, Security = "None", Timeout = "00:00:05" };
            c["Spool"] = new { Provider = "Postgres", db.ConnectionString, ClaimLease = "00:00:10", PollInterval = "00:00:00.500" };
            c["Logging"] = new { LogLevel = new Dictionary<string, string> { ["Default"] = "Warning", [typeof(DeliveryWorker).FullName!] = "Information" } };
        }, s =>
        {
            s.AddSingleton<TimeProvider>(clock);
            s.AddSingleton<ILoggerProvider>(log);
        });
        using var client = await gw.ConnectAsync("dev-1");
        var inbox = await ReceiptInbox.SubscribeAsync(client, "dev-1");

        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("fenced-1"));
        var theirs = Assert.Single(await Await.Within(taken.Task, "the other instance taking the mail over"));
        string said = await Await.Within(log.AboutAsync(theirs.MessageId), "the first holder's word on its attempt");

        Assert.StartsWith($"Discarded the result of the attempt on <{theirs.MessageId}> (250 ", said, StringComparison.Ordinal);
        Assert.Contains("its claim ran out and another instance holds it", said, StringComparison.Ordinal);

        await other.DisposeAsync();
        Assert.StartsWith($"Delivered <{theirs.MessageId}>", await Await.Within(log.AboutAsync(theirs.MessageId), "the second attempt, after the mail was handed back"),
            StringComparison.Ordinal);
        await inbox.WaitForAsync("fenced-1", ReceiptState.Relayed);
        Assert.Equal(2, sink.Received.Count); // the lost claim's at-least-once window (spool.md invariant 12)
        var given = gw.Host.Services.GetRequiredService<ReceiptPublisher>().RecentFor("dev-1", "fenced-1");
        Assert.Single(given, r => r.State == ReceiptState.Relayed);
        Assert.DoesNotContain(given, r => r.State is ReceiptState.Deferred or ReceiptState.Failed);
        Assert.Equal(1, inbox.Count("fenced-1", ReceiptState.Relayed));
        var detail = (await gw.Spool.MessageDetailAsync(theirs.RowId, default))!;
        Assert.Equal((MessageStatus.Sent, 1), (detail.Summary.Status, detail.Summary.Attempts));
    }

    private static Task<TestGateway> StartAsync(TestDatabase db, Dnsmasq dns, int mxPort, TimeProvider clock, ILoggerProvider log,
        Action<IServiceCollection>? services = null) =>
        TestGateway.StartAsync(c =>
        {
            DirectMx(c, dns, mxPort);
            c["Spool"] = new { Provider = "Postgres", db.ConnectionString, ClaimLease = Lease.ToString("c", CultureInfo.InvariantCulture), PollInterval = "00:00:00.500" };
            c["Logging"] = new { LogLevel = new Dictionary<string, string> { ["Default"] = "Warning", [typeof(DeliveryWorker).FullName!] = "Information" } };
        }, s =>
        {
            s.AddSingleton(clock);
            s.AddSingleton(log);
            services?.Invoke(s);
        });

    // The claim as the database has it: this holder's, ending no earlier than until (Unix ms).
    private static async Task<bool> HeldAsync(TestDatabase db, string messageId, string holder, long until) =>
        await db.ScalarAsync($"SELECT COUNT(*) FROM messages WHERE message_id = '{messageId}' AND claimed_by = '{holder}' AND claim_until >= {until}") is 1L;
}
