using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Threading.Channels;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Operations;

/// <summary>The delivery worker observes every attempt: a transport that throws is retried on the backoff schedule, never in a loop.</summary>
public sealed class DeliveryContainmentTests
{
    private static readonly DateTimeOffset Start = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000);

    private static NewMessage Relay(string id) =>
        new("relay", "dev-1", null, id, "edgemail@gw.test", ["alice@example.com"], Encoding.ASCII.GetBytes("Subject: hello\r\n\r\nbody\r\n"));

    [Fact]
    public async Task TransportThatThrows_IsDeferredOnTheBackoffSchedule_NotRetriedAtOnce()
    {
        var clock = new FakeTimeProvider(Start);
        var transport = new ThrowingTransport();
        await using var gw = await TestGateway.StartAsync(
            c => c["Relay"] = new { Backoff = new[] { "00:01:00", "00:05:00" } },
            s =>
            {
                s.AddSingleton<TimeProvider>(clock);
                s.AddSingleton<IMailTransport>(transport);
            });
        var worker = gw.Host.Services.GetRequiredService<DeliveryWorker>();

        await gw.Spool.QueueMailAsync(Relay("m-1@gw.test"), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("m-1@gw.test", default))?.Attempts == 1, "the first attempt recorded");

        var state = (await gw.Spool.GetMessageAsync("m-1@gw.test", default))!;
        Assert.Equal("queued", state.Status);
        Assert.Equal(Start + TimeSpan.FromMinutes(1), state.NextAttemptAt);
        Assert.StartsWith("451 4.3.0 local error: delivering failed: InvalidCastException", state.LastReply, StringComparison.Ordinal);

        // Woken again and again before the minute is up, the worker goes back to waiting without another attempt.
        for (int i = 0; i < 3; i++)
        {
            await IdleAfterAsync(worker, worker.Wake);
        }

        Assert.Equal(1, transport.Calls);

        clock.Advance(TimeSpan.FromSeconds(61));
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("m-1@gw.test", default))?.Attempts == 2, "the second attempt, a minute later");
        Assert.Equal(2, transport.Calls);
        Assert.Equal(Start + TimeSpan.FromSeconds(61) + TimeSpan.FromMinutes(5), (await gw.Spool.GetMessageAsync("m-1@gw.test", default))!.NextAttemptAt);
    }

    [Fact]
    public async Task MessageWhoseNoticeIdIsTaken_IsParkedWithTheReason_AndOthersAreDelivered()
    {
        await using var gw = await TestGateway.StartAsync(
            c => c["Relay"] = new { Backoff = new[] { "00:01:00" } },
            s => s.AddSingleton<IMailTransport>(sp => new RejectingTransport("doomed@gw.test",
                new LocalMailbox(Path.Combine(sp.GetRequiredService<IOptions<GatewayOptions>>().Value.DataPath(), "mailbox")))));
        gw.Logs.Expect(e => e.Message.StartsWith("Parked relay mail <doomed@gw.test>", StringComparison.Ordinal));

        // A mail already holding the Message-ID the failure notice of the first attempt would take: a conflict the
        // spool must not swallow.
        await gw.Spool.QueueMailAsync(Relay(EdgeMail.Gateway.Composition.MessageIds.ForNotice("doomed@gw.test", 1, "gw.test")), default);
        await gw.Spool.QueueMailAsync(Relay("doomed@gw.test"), default);
        await gw.Spool.QueueMailAsync(Relay("fine@gw.test"), default);

        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("doomed@gw.test", default))?.Status == "parked", "the doomed mail parked");
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("fine@gw.test", default))?.Status == "sent", "the other mail sent");
        Assert.Contains("already in the spool", (await gw.Spool.GetMessageAsync("doomed@gw.test", default))!.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public async Task CancelWhileAnAttemptIsUnderWay_ThatDeferredIt_StaysCancelled_WithTheCancelsFailedReceipt_NoDeferredOneOrAnotherAttempt()
    {
        var log = new WorkerLog();
        var transport = new GatedTransport();
        await using var gw = await TestGateway.StartAsync(
            c => c["Logging"] = new { LogLevel = new Dictionary<string, string> { ["Default"] = "Warning", [typeof(DeliveryWorker).FullName!] = "Information" } },
            s =>
            {
                s.AddSingleton<ILoggerProvider>(log);
                s.AddSingleton<IMailTransport>(transport);
            });
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");
        var inbox = await ReceiptInbox.SubscribeAsync(client, "dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("c-1"));
        var attempt = await Await.Within(transport.Entered, "the attempt under way");

        Assert.Equal(HttpStatusCode.NoContent, (await api.PostAsJsonAsync($"/api/v1/queue/{attempt.RowId}/cancel", new { reason = "wrong recipients" })).StatusCode);
        transport.Finish(attempt.PendingRecipients.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, "451 4.3.0 try again later")).ToList());

        string said = await Await.Within(log.AboutAsync(attempt.MessageId), "the worker's word on the attempt");
        Assert.Contains("stays cancelled", said, StringComparison.Ordinal);
        await inbox.WaitForAsync("c-1", ReceiptState.Failed, "cancelled by the operator: wrong recipients"); // the cancel's, and the only final one
        var receipts = gw.Host.Services.GetRequiredService<ReceiptPublisher>().RecentFor("dev-1", "c-1");
        Assert.DoesNotContain(receipts, r => r.State == ReceiptState.Deferred);
        Assert.Single(receipts, r => r.State == ReceiptState.Failed);
        var detail = (await gw.Spool.MessageDetailAsync(attempt.RowId, default))!;
        Assert.Equal(("cancelled", 1), (detail.Summary.Status, detail.Summary.Attempts));
        Assert.Empty(await gw.Spool.DueMessagesAsync(DateTimeOffset.MaxValue.AddDays(-1), 10, new HashSet<long>(), default));
        Assert.Equal(1, transport.Calls);
    }

    [Fact]
    public async Task CancelOfAnAlertsQueuedMail_ThatReachedNobody_GivesItsDeviceAFailedReceiptNamingTheCancel()
    {
        var log = new WorkerLog();
        var transport = new GatedTransport();
        await using var gw = await TestGateway.StartAsync(
            c =>
            {
                c["Relay"] = new { Backoff = new[] { "01:00:00" } };
                c["Logging"] = new { LogLevel = new Dictionary<string, string> { ["Default"] = "Warning", [typeof(DeliveryWorker).FullName!] = "Information" } };
            },
            s =>
            {
                s.AddSingleton<ILoggerProvider>(log);
                s.AddSingleton<IMailTransport>(transport);
            });
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");
        var inbox = await ReceiptInbox.SubscribeAsync(client, "dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("c-2"));
        var attempt = await Await.Within(transport.Entered, "the first attempt");
        transport.Finish(attempt.PendingRecipients.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, "451 4.3.0 try again later")).ToList());
        Assert.StartsWith("Deferred", await Await.Within(log.AboutAsync(attempt.MessageId), "the worker's word on the attempt"), StringComparison.Ordinal);
        await inbox.WaitForAsync("c-2", ReceiptState.Deferred);

        var response = await api.PostAsJsonAsync($"/api/v1/queue/{attempt.RowId}/cancel", new { reason = "wrong recipients" });

        Assert.Equal(HttpStatusCode.NoContent, response.StatusCode);
        await inbox.WaitForAsync("c-2", ReceiptState.Failed, "cancelled by the operator: wrong recipients");
        Assert.Equal("cancelled", (await gw.Spool.MessageDetailAsync(attempt.RowId, default))!.Summary.Status);
    }

    [Fact]
    public async Task CancelComingTooLateForSomeRecipients_LeavesTheDeviceTheCancelsFailedReceipt_NotARelayedOne()
    {
        var log = new WorkerLog();
        var transport = new GatedTransport();
        await using var gw = await TestGateway.StartAsync(
            c =>
            {
                c["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "oncall" } } }; // alice and bob
                c["Logging"] = new { LogLevel = new Dictionary<string, string> { ["Default"] = "Warning", [typeof(DeliveryWorker).FullName!] = "Information" } };
            },
            s =>
            {
                s.AddSingleton<ILoggerProvider>(log);
                s.AddSingleton<IMailTransport>(transport);
            });
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");
        var inbox = await ReceiptInbox.SubscribeAsync(client, "dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("c-3"));
        var attempt = await Await.Within(transport.Entered, "the attempt under way");
        Assert.Equal(["alice@example.com", "bob@example.com"], attempt.PendingRecipients);

        Assert.Equal(HttpStatusCode.NoContent, (await api.PostAsJsonAsync($"/api/v1/queue/{attempt.RowId}/cancel", new { reason = "wrong recipients" })).StatusCode);
        transport.Finish([new("alice@example.com", RecipientOutcome.Sent, "250 2.0.0 queued as 7"), new("bob@example.com", RecipientOutcome.Deferred, "451 4.2.1 mailbox busy")]);

        // Bob never gets it: as for a recipient refused, the alert failed. The receipt is the cancel's, given with it.
        await inbox.WaitForAsync("c-3", ReceiptState.Failed, "cancelled by the operator: wrong recipients");
        Assert.Contains("too late for some", await Await.Within(log.AboutAsync(attempt.MessageId), "the worker's word on the attempt"), StringComparison.Ordinal);
        Assert.Equal("partial", (await gw.Spool.MessageDetailAsync(attempt.RowId, default))!.Summary.Status);
        var given = gw.Host.Services.GetRequiredService<ReceiptPublisher>().RecentFor("dev-1", "c-3");
        Assert.DoesNotContain(given, r => r.State == ReceiptState.Relayed);
        Assert.Single(given, r => r.State == ReceiptState.Failed);
        Assert.DoesNotContain(await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default), r => r.Receipt.State == ReceiptState.Relayed);
    }

    /// <summary>Pokes the worker and waits until it has nothing due and goes to wait.</summary>
    internal static async Task IdleAfterAsync(DeliveryWorker worker, Action poke)
    {
        var idle = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnIdle() => idle.TrySetResult();
        worker.Idle += OnIdle;
        try
        {
            poke();
            await Await.Within(idle.Task.ContinueWith(_ => true, TaskScheduler.Default), "the delivery worker to go idle");
        }
        finally
        {
            worker.Idle -= OnIdle;
        }
    }

    // Holds the first attempt until the test finishes it with the results it chooses.
    private sealed class GatedTransport : IMailTransport
    {
        private readonly TaskCompletionSource<QueuedMessage> _entered = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource<IReadOnlyList<RecipientResult>> _results = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _calls;

        public Task<QueuedMessage> Entered => _entered.Task;

        public int Calls => Volatile.Read(ref _calls);

        public void Finish(IReadOnlyList<RecipientResult> results) => _results.TrySetResult(results);

        public Task<IReadOnlyList<RecipientResult>> SendAsync(QueuedMessage message, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref _calls);
            _entered.TrySetResult(message);
            return _results.Task.WaitAsync(cancellationToken);
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    // The delivery worker's log lines: what it made of an attempt is the last thing it does with it.
    internal sealed class WorkerLog : ILoggerProvider
    {
        private readonly Channel<string> _lines = Channel.CreateUnbounded<string>();

        public Task<string> AboutAsync(string messageId) => ContainingAsync("<" + messageId + ">");

        /// <summary>The next line (after those already taken) that contains <paramref name="text"/>.</summary>
        public async Task<string> ContainingAsync(string text)
        {
            await foreach (string line in _lines.Reader.ReadAllAsync())
            {
                if (line.Contains(text, StringComparison.Ordinal))
                {
                    return line;
                }
            }

            throw new InvalidOperationException("the log ended");
        }

        public ILogger CreateLogger(string categoryName) =>
            categoryName == typeof(DeliveryWorker).FullName ? new Lines(_lines.Writer) : NullLogger.Instance;

        public void Dispose() => _lines.Writer.TryComplete();

        private sealed class Lines(ChannelWriter<string> writer) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                writer.TryWrite(formatter(state, exception));
        }
    }

    private sealed class ThrowingTransport : IMailTransport
    {
        private int _calls;

        public int Calls => Volatile.Read(ref _calls);

        public Task<IReadOnlyList<RecipientResult>> SendAsync(QueuedMessage message, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref _calls);
            throw new InvalidCastException("a library surprise");
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    // Fails every recipient of one message permanently (so a failure notice is due); delivers the rest to a real mailbox.
    private sealed class RejectingTransport(string doomed, LocalMailbox mailbox) : IMailTransport
    {
        public Task<IReadOnlyList<RecipientResult>> SendAsync(QueuedMessage message, CancellationToken cancellationToken) =>
            message.MessageId == doomed
                ? Task.FromResult<IReadOnlyList<RecipientResult>>(message.PendingRecipients.Select(r => new RecipientResult(r, RecipientOutcome.Failed, "550 5.1.1 no such user")).ToList())
                : mailbox.SendAsync(message, cancellationToken);

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
