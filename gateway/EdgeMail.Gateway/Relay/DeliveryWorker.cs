using System.Collections.Concurrent;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Routing;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MimeKit;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// Delivers queued mail: takes due messages from the spool, hands each to the transport (up to
/// <c>Relay:Concurrency</c> at once), records every recipient's result, retries transient failures on the
/// backoff schedule, and turns permanent failures and expiry into a failure notice to the operator and a
/// <c>failed</c> receipt. A <c>relayed</c> receipt carries the remote reply.
/// </summary>
public sealed partial class DeliveryWorker : BackgroundService
{
    private readonly ISpool _spool;
    private readonly IMailTransport _transport;
    private readonly GatewayOptions _options;
    private readonly MailComposer _composer;
    private readonly ReceiptPublisher _receipts;
    private readonly TimeProvider _clock;
    private readonly IngestPressure _pressure;
    private readonly ILogger<DeliveryWorker> _logger;
    private readonly Signal _wake = new();
    private readonly ConcurrentDictionary<long, bool> _inFlight = new();
    private readonly SemaphoreSlim _slots;

    /// <summary>Creates the worker.</summary>
    /// <param name="spool">Spool.</param>
    /// <param name="transport">Transport.</param>
    /// <param name="options">Options.</param>
    /// <param name="composer">Composer for failure notices.</param>
    /// <param name="receipts">Receipts.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="pressure">Ingest rate; delivery rounds yield to a burst.</param>
    /// <param name="logger">Logger.</param>
    public DeliveryWorker(ISpool spool, IMailTransport transport, IOptions<GatewayOptions> options, MailComposer composer,
        ReceiptPublisher receipts, TimeProvider clock, IngestPressure pressure, ILogger<DeliveryWorker> logger)
    {
        _pressure = pressure;
        _spool = spool;
        _transport = transport;
        _options = options.Value;
        _composer = composer;
        _receipts = receipts;
        _clock = clock;
        _logger = logger;
        _slots = new SemaphoreSlim(_options.Relay.Concurrency);
        _spool.MessagesQueued += _wake.Set;
    }

    /// <summary>Wakes the worker (tests that advance a fake clock).</summary>
    public void Wake() => _wake.Set();

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var running = new List<Task>();
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                running.RemoveAll(t => t.IsCompleted);
                await _pressure.YieldAsync(stoppingToken).ConfigureAwait(false);
                var due = await _spool.DueMessagesAsync(_clock.GetUtcNow(), _options.Relay.Concurrency * 4,
                    _inFlight.Keys.ToHashSet(), stoppingToken).ConfigureAwait(false);
                foreach (var message in due)
                {
                    await _slots.WaitAsync(stoppingToken).ConfigureAwait(false);
                    _inFlight[message.RowId] = true;
                    running.Add(AttemptAsync(message, stoppingToken));
                }

                if (due.Count > 0)
                {
                    continue;
                }

                var next = await _spool.NextMessageDueAsync(stoppingToken).ConfigureAwait(false);
                var wait = next is null ? Timeout.InfiniteTimeSpan : next.Value - _clock.GetUtcNow() + TimeSpan.FromMilliseconds(1);
                if (next is not null && wait <= TimeSpan.Zero)
                {
                    // Due but in flight: wait for an attempt to finish.
                    wait = TimeSpan.FromMilliseconds(50);
                }

                await _wake.WaitAsync(wait, _clock, stoppingToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                break;
            }
            catch (SpoolException ex)
            {
                LogFailed(ex);
                await _wake.WaitAsync(TimeSpan.FromSeconds(5), _clock, stoppingToken).ConfigureAwait(false);
            }
        }

        await Task.WhenAll(running).ConfigureAwait(false);
    }

    private async Task AttemptAsync(QueuedMessage message, CancellationToken cancellationToken)
    {
        bool slotHeld = true;
        try
        {
            await Task.Yield();
            var results = message.PendingRecipients.Count == 0
                ? []
                : await _transport.SendAsync(message, cancellationToken).ConfigureAwait(false);

            // The connection is free once the remote answered: let the next message use it while this result waits
            // for its group commit (the message stays in flight, so it is not picked up again meanwhile).
            _slots.Release();
            slotHeld = false;
            await RecordAsync(message, results, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Stopping: the message stays queued.
        }
        catch (SpoolException ex)
        {
            LogFailed(ex);
        }
        finally
        {
            _inFlight.TryRemove(message.RowId, out _);
            if (slotHeld)
            {
                _slots.Release();
            }

            _wake.Set();
        }
    }

    private async Task RecordAsync(QueuedMessage message, IReadOnlyList<RecipientResult> results, CancellationToken cancellationToken)
    {
        var now = _clock.GetUtcNow();
        var final = new List<RecipientResult>(results.Count);
        foreach (var r in results)
        {
            final.Add(r.Outcome == RecipientOutcome.Deferred && now >= message.ExpiresAt
                ? r with { Outcome = RecipientOutcome.Failed, Reply = $"expired after {(now - message.CreatedAt).TotalHours:0} h; last reply: {r.Reply}" }
                : r);
        }

        bool deferred = final.Any(r => r.Outcome == RecipientOutcome.Deferred);
        var failed = final.Where(r => r.Outcome == RecipientOutcome.Failed).ToList();
        DateTimeOffset? next = null;
        if (deferred)
        {
            var schedule = _options.Relay.EffectiveBackoff();
            next = now + schedule[Math.Min(message.Attempts, schedule.Count - 1)];
            if (next > message.ExpiresAt)
            {
                next = message.ExpiresAt;
            }
        }

        NewMessage? notice = null;
        if (failed.Count > 0 && message.Kind != "notice")
        {
            notice = ComposeNotice(message, failed, now);
        }

        await _spool.CommitDeliveryAsync(new DeliveryCommit(message.RowId, final, next, notice), cancellationToken).ConfigureAwait(false);

        string reply = final.Count > 0 ? final[^1].Reply : string.Empty;
        if (failed.Count > 0)
        {
            LogBounced(message.MessageId, string.Join("; ", failed.Select(f => f.Address + ": " + f.Reply)));
        }
        else if (deferred)
        {
            LogDeferred(message.MessageId, reply, next!.Value);
        }
        else
        {
            LogDelivered(message.MessageId, reply);
        }

        if (message.Kind == "alert" && message.Device is not null && message.AlertId is not null)
        {
            if (failed.Count > 0)
            {
                _receipts.Publish(message.Device, message.AlertId, ReceiptState.Failed, failed[0].Reply);
            }
            else if (deferred)
            {
                _receipts.Publish(message.Device, message.AlertId, ReceiptState.Deferred, final.First(r => r.Outcome == RecipientOutcome.Deferred).Reply);
            }
            else
            {
                _receipts.Publish(message.Device, message.AlertId, ReceiptState.Relayed, reply);
            }
        }
    }

    private NewMessage? ComposeNotice(QueuedMessage message, List<RecipientResult> failed, DateTimeOffset now)
    {
        var router = new Router(_options);
        var operatorMailbox = router.Resolve(_options.Sender.Operator.Length > 0 ? _options.Sender.Operator : _options.Sender.Address);
        if (operatorMailbox is null)
        {
            return null;
        }

        string subject;
        using (var stream = new MemoryStream(message.Mime))
        {
            using var failedMessage = MimeMessage.Load(stream);
            subject = failedMessage.Subject ?? string.Empty;
        }

        using var notice = _composer.ComposeFailureNotice(message.MessageId, subject, failed.Select(f => (f.Address, f.Reply)).ToList(), operatorMailbox, now);
        return new NewMessage("notice", message.Device, message.AlertId, notice.MessageId!, string.Empty, [operatorMailbox.Address], MailComposer.ToWire(notice));
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        _slots.Dispose();
        base.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Delivered <{MessageId}>: {Reply}")]
    private partial void LogDelivered(string messageId, string reply);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Deferred <{MessageId}>: {Reply}; next attempt at {Next:u}")]
    private partial void LogDeferred(string messageId, string reply, DateTimeOffset next);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Failed <{MessageId}>: {Failures}; the operator is told")]
    private partial void LogBounced(string messageId, string failures);

    [LoggerMessage(Level = LogLevel.Error, Message = "Delivery bookkeeping failed; retrying")]
    private partial void LogFailed(Exception ex);
}
