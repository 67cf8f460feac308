using System.Collections.Concurrent;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Routing;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MimeKit;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// Delivers queued mail: takes due messages from the spool, hands each to the transport (up to
/// <c>Relay:Concurrency</c> at once), records every recipient's result, retries transient failures on the
/// backoff schedule, and turns permanent failures and expiry into a failure notice to the operator and a
/// <c>failed</c> receipt. A <c>relayed</c> receipt carries the remote reply. A storm digest's receipts go to each alert
/// it covers. Every attempt's outcome is observed: a
/// transport that throws is a transient failure on the same backoff schedule; a message whose result cannot be
/// recorded or whose notice cannot be written is parked with the reason, and the others keep going. On a shared spool
/// an attempt keeps its claim renewed (<see cref="LeaseKeeper"/>), and a result the spool refuses because another
/// instance holds the message now is discarded: logged, with no receipt or notice.
/// </summary>
public sealed partial class DeliveryWorker : SupervisedLoop
{
    // A message whose result could not be committed is left alone this long (the spool still says it is due).
    private static readonly TimeSpan BookkeepingBackoff = TimeSpan.FromSeconds(5);

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
    private readonly ConcurrentDictionary<long, DateTimeOffset> _coolingDown = new();
    private readonly ParkingLot _parking;
    private readonly RelayHealth _health;
    private readonly GatewayMetrics _metrics;
    private readonly SemaphoreSlim _slots;
    private readonly RelayThrottle _throttle;
    private readonly PartSent _recordPartSent;

    /// <summary>Creates the worker.</summary>
    /// <param name="spool">Spool.</param>
    /// <param name="transport">Transport.</param>
    /// <param name="options">Options.</param>
    /// <param name="composer">Composer for failure notices.</param>
    /// <param name="receipts">Receipts.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="pressure">Ingest rate; delivery rounds yield to a burst.</param>
    /// <param name="parking">Where mail that cannot be handled goes.</param>
    /// <param name="metrics">Loop restarts are counted there.</param>
    /// <param name="throttle">The provider's sending limits: mail past them stays queued until the window has room.</param>
    /// <param name="logger">Logger.</param>
    /// <param name="health">Where each attempt's outcome is recorded for the console and health checks.</param>
    public DeliveryWorker(ISpool spool, IMailTransport transport, IOptions<GatewayOptions> options, MailComposer composer,
        ReceiptPublisher receipts, TimeProvider clock, IngestPressure pressure, ParkingLot parking, GatewayMetrics metrics, RelayThrottle throttle,
        ILogger<DeliveryWorker> logger, RelayHealth health)
        : base("delivery", clock, metrics, logger)
    {
        _health = health;
        _metrics = metrics;
        ArgumentNullException.ThrowIfNull(options);
        _throttle = throttle;
        _parking = parking;
        _pressure = pressure;
        _spool = spool;
        _transport = transport;
        _options = options.Value;
        _composer = composer;
        _receipts = receipts;
        _clock = clock;
        _logger = logger;
        _slots = new SemaphoreSlim(_options.Relay.Concurrency);
        _recordPartSent = RecordPartSentAsync;
        _spool.MessagesQueued += _wake.Set;
    }

    /// <summary>Wakes the worker (tests that advance a fake clock).</summary>
    public void Wake() => _wake.Set();

    /// <summary>Attempts started so far (tests).</summary>
    public long Attempts => Interlocked.Read(ref _attempts);

    /// <summary>Raised each time the worker has nothing due and goes to wait (tests).</summary>
    public event Action? Idle;

    private long _attempts;

    /// <inheritdoc />
    protected override async Task RunAsync(CancellationToken stoppingToken)
    {
        var running = new List<Task>();

        // A graceful stop lets attempts under way finish and record their result (an attempt is bounded by twice
        // Relay:Timeout): cancelling one between the relay's 250 and the commit would send that mail again later.
        using var attempts = new CancellationTokenSource();
        var attemptBudget = _options.Relay.Timeout * 2;
        await using var drain = stoppingToken.Register(() => attempts.CancelAfter(attemptBudget));
        try
        {
            while (!stoppingToken.IsCancellationRequested)
            {
                try
                {
                    running.RemoveAll(t => t.IsCompleted); // AttemptAsync observes its own faults
                    await _pressure.YieldAsync(stoppingToken).ConfigureAwait(false);
                    var now = _clock.GetUtcNow();
                    foreach (var (row, until) in _coolingDown)
                    {
                        if (until <= now)
                        {
                            _coolingDown.TryRemove(row, out _);
                        }
                    }

                    var busy = _inFlight.Keys.Concat(_coolingDown.Keys).ToHashSet();
                    // On a shared spool a claim lasts Spool:ClaimLease and is renewed by the attempt that sends it: claim
                    // only what can be sent now, so that no claim runs out while the message waits here for a connection
                    // and another instance sends it too. With every connection busy, wait for one before claiming.
                    bool shared = _spool.SharedPollInterval is not null;
                    if (shared && _slots.CurrentCount == 0)
                    {
                        await _slots.WaitAsync(stoppingToken).ConfigureAwait(false);
                        _slots.Release();
                        continue;
                    }

                    int max = shared ? _slots.CurrentCount : _options.Relay.Concurrency * 4;
                    var due = await _spool.DueMessagesAsync(now, max, busy, stoppingToken).ConfigureAwait(false);
                    DateTimeOffset? heldUntil = null;
                    foreach (var message in due)
                    {
                        if (message.PendingRecipients.Count > 0 && _throttle.TryReserve(message.PendingRecipients.Count) is { } until)
                        {
                            // Past the provider's limit: it stays queued and due, not deferred; the window decides.
                            heldUntil = until;
                            break;
                        }

                        await _slots.WaitAsync(stoppingToken).ConfigureAwait(false);
                        _inFlight[message.RowId] = true;
                        running.Add(AttemptAsync(message, now, attempts.Token));
                    }

                    if (heldUntil is { } held)
                    {
                        Idle?.Invoke();
                        await _wake.WaitAsync(held - _clock.GetUtcNow(), _clock, stoppingToken).ConfigureAwait(false);
                        continue;
                    }

                    if (due.Count > 0)
                    {
                        continue;
                    }

                    var next = await _spool.NextMessageDueAsync(stoppingToken).ConfigureAwait(false);
                    var wait = next is null ? Timeout.InfiniteTimeSpan : next.Value - _clock.GetUtcNow() + TimeSpan.FromMilliseconds(1);
                    if (next is not null && wait <= TimeSpan.Zero)
                    {
                        // Due but in flight or cooling down: wait for an attempt to finish (it wakes us) or a cool-down to end.
                        wait = _coolingDown.IsEmpty ? TimeSpan.FromMilliseconds(50) : _coolingDown.Values.Min() - _clock.GetUtcNow();
                    }

                    Idle?.Invoke();
                    await _wake.WaitAsync(_spool.IdleWait(wait), _clock, stoppingToken).ConfigureAwait(false);
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
        }
        finally
        {
            await Task.WhenAll(running).ConfigureAwait(false);
        }
    }

    // Never throws: every outcome of the attempt is turned into a recorded result, a cool-down or a parked message.
    // claimedAt: a time no later than the claim of a shared spool, from which its lease counts.
    private async Task AttemptAsync(QueuedMessage message, DateTimeOffset claimedAt, CancellationToken cancellationToken)
    {
        bool slotHeld = true;

        // One spool user (SQLite) holds no claims: nothing to renew, and the cached delegate.
        LeaseKeeper? lease = null;
        try
        {
            await Task.Yield();
            Interlocked.Increment(ref _attempts);
            IReadOnlyList<RecipientResult> results;
            try
            {
                PartSent partSent = _recordPartSent;
                if (_spool.SharedPollInterval is not null && message.PendingRecipients.Count > 0)
                {
                    var keeper = lease = LeaseKeeper.Start(_spool, message, claimedAt, _options.Spool.ClaimLease, _clock, _logger);
                    partSent = (m, sent, ct) => RecordPartSentAsync(m, sent, keeper, ct);
                }

                results = message.PendingRecipients.Count == 0
                    ? []
                    : await _transport.SendAsync(message, partSent, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
            {
                // The transport promises per-recipient results; one that throws anyway (a bug, a library's surprise)
                // is a transient failure of this attempt, retried on the normal schedule.
                LogTransportThrew(ex, message.MessageId);
                string reply = "451 4.3.0 local error: " + ParkingLot.Describe("delivering", ex);
                results = message.PendingRecipients.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, reply) { RelayDown = true }).ToList();
            }

            // The attempt's transactions are over; its result is committed fenced on the claim, which needs no renewal
            // past this point (a renewal racing the commit that ends the claim would only report it gone).
            if (lease is not null)
            {
                await lease.DisposeAsync().ConfigureAwait(false);
                lease = null;
            }

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
        catch (SpoolConflictException ex)
        {
            await ParkAsync(message, ex.Message, null, cancellationToken).ConfigureAwait(false);
        }
        catch (SpoolException ex)
        {
            // The result is not recorded; the spool still says the message is due. Leave it alone for a while
            // instead of sending it again at once, in a loop.
            LogFailed(ex);
            _coolingDown[message.RowId] = _clock.GetUtcNow() + BookkeepingBackoff;
        }
        catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
        {
            await ParkAsync(message, ParkingLot.Describe("recording the delivery", ex), ex, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (lease is not null)
            {
                await lease.DisposeAsync().ConfigureAwait(false);
            }

            _inFlight.TryRemove(message.RowId, out _);
            if (slotHeld)
            {
                _slots.Release();
            }

            _wake.Set();
        }
    }

    private async Task ParkAsync(QueuedMessage message, string reason, Exception? fault, CancellationToken cancellationToken)
    {
        try
        {
            await _spool.ParkMessageAsync(message.RowId, reason, cancellationToken).ConfigureAwait(false);
            await _parking.MessageParkedAsync(message, reason, fault, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is SpoolException or OperationCanceledException)
        {
            LogFailed(ex);
            _coolingDown[message.RowId] = _clock.GetUtcNow() + BookkeepingBackoff;
        }
    }

    // A transport that sends in several transactions (direct MX, one per domain; a smarthost, one per
    // Relay:Limits:RecipientsPerMessage recipients) hands over what each delivered before the next begins, which may
    // take minutes: recorded now, a crash meanwhile does not send it again. Only what was sent is: a failed or deferred
    // recipient is simply asked again after a crash, and its failure notice goes with the attempt's result. The
    // attempt's result still lists these recipients (its attempt row is complete).
    // When they cannot be recorded, the attempt stops and the recipients not yet tried are deferred: until a result is
    // committed the next attempt sends to every recipient again, and a spool that just failed a write may well fail
    // the attempt's result too, so going on would risk a second copy for those recipients as well. A message cancelled
    // or taken over by another instance (its lease ran out) is no longer this attempt's to send to anyone else; on a
    // shared spool the attempt's lease keeper knows that too, or that its claim ran out unrenewed, before any record.
    private Task<string?> RecordPartSentAsync(QueuedMessage message, IReadOnlyList<RecipientResult> sent, CancellationToken cancellationToken) =>
        RecordPartSentAsync(message, sent, null, cancellationToken);

    private async Task<string?> RecordPartSentAsync(QueuedMessage message, IReadOnlyList<RecipientResult> sent, LeaseKeeper? lease, CancellationToken cancellationToken)
    {
        if (sent.Count > 0)
        {
            try
            {
                if (!await _spool.RecordSentRecipientsAsync(message.RowId, sent, cancellationToken).ConfigureAwait(false))
                {
                    LogPartSentRefused(message.MessageId);
                    return LeaseKeeper.GoneReply;
                }
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                // Thrown into the transport, this would turn the whole attempt into a transient failure, the recipients
                // that have the mail included: the attempt's result records them, with the rest deferred.
                LogPartSentNotRecorded(ex, message.MessageId);
                return "451 4.3.0 local error, not attempted: " + ParkingLot.Describe("recording the recipients an earlier transaction delivered to", ex);
            }
        }

        if (lease?.Stopped is { } stopped)
        {
            return stopped;
        }

        // Before the next connection or transaction, with nothing to record: a cancel since the last transaction ends
        // the attempt here too (on a shared spool a cancel also ends the claim, but the lease keeper sees that only at
        // its next renewal). A read per connection of a parted attempt; if it fails the attempt goes on, as it would have.
        if (sent.Count == 0)
        {
            try
            {
                if (await _spool.GetMessageAsync(message.MessageId, cancellationToken).ConfigureAwait(false) is { Status: MessageStatus.Cancelled })
                {
                    LogPartSentRefused(message.MessageId);
                    return LeaseKeeper.GoneReply;
                }
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                LogCancelCheckFailed(ex, message.MessageId);
            }
        }

        return null;
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

        // A final receipt is kept with the result, in the same transaction: the device gets it even if it is away now
        // and the gateway restarts before it comes back (the broker's sessions live in memory). A digest owes the same
        // receipt to each alert it covers, which only the spool can name.
        var (state, detail) = failed.Count > 0 ? (ReceiptState.Failed, failed[0].Reply)
            : !deferred ? (ReceiptState.Relayed, final.Count > 0 ? final[^1].Reply : string.Empty)
            : (ReceiptState.Deferred, final.First(r => r.Outcome == RecipientOutcome.Deferred).Reply);
        KeptReceipt? kept = null;
        DigestReceipt? owed = null;
        if (message is { Kind: "alert", Device: { } keptDevice, AlertId: { } keptAlert } && state != ReceiptState.Deferred)
        {
            kept = new KeptReceipt(keptDevice, keptAlert, state, now, detail);
        }
        else if (message is { Kind: "digest", Device: not null })
        {
            owed = new DigestReceipt(state, now, detail);
        }

        var committed = await _spool.CommitDeliveryAsync(new DeliveryCommit(message.RowId, final, next, notice, kept, _receipts.MaxPerDevice, owed), cancellationToken)
            .ConfigureAwait(false);
        var recorded = committed.Recorded;
        foreach (var r in final)
        {
            _metrics.MailRecipients.Add(1, new KeyValuePair<string, object?>("outcome", r.Outcome));
        }

        if (final.Count > 0)
        {
            // A relay that refuses a recipient (550 user unknown, NXDOMAIN) works: only a relay that did not answer at
            // all marks it down, or /readyz would fail over one mistyped address until the next success.
            bool sent = final.Any(r => r.Outcome == RecipientOutcome.Sent);
            bool answered = final.Any(r => !r.RelayDown);
            _health.Record(now, sent, answered, sent ? null : (answered ? final[^1] : final.First(r => r.RelayDown)).Reply);
        }

        string reply = final.Count > 0 ? final[^1].Reply : string.Empty;
        if (recorded == DeliveryRecorded.Ignored)
        {
            // Fenced out: the message's claim ran out during the attempt and another instance holds it now, whose own
            // attempt is the one recorded, noticed and receipted. A receipt from this one could contradict it (a
            // deferred after its relayed).
            LogDiscarded(message.MessageId, reply);
            return;
        }

        if (recorded is DeliveryRecorded.CancelStood or DeliveryRecorded.CancelTooLateForSome)
        {
            // The device's receipt is the cancel's: kept and published with it (a partial delivery is a failed alert,
            // as a recipient refused is), not this attempt's.
            if (recorded == DeliveryRecorded.CancelStood)
            {
                LogCancelStood(message.MessageId, reply);
            }
            else
            {
                LogCancelTooLateForSome(message.MessageId, reply);
            }

            return;
        }

        if (recorded == DeliveryRecorded.CancelTooLate)
        {
            LogCancelTooLate(message.MessageId, reply);
            await PublishReceiptsAsync(kept, committed.DigestReceipts, cancellationToken).ConfigureAwait(false);
            return;
        }

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

        if (recorded == DeliveryRecorded.RecordedAlreadyFailed)
        {
            // A recipient refused by an earlier attempt made the alert failed, and its device has that receipt: the rest
            // waiting or delivered now make it neither deferred nor relayed.
            return;
        }

        if (state == ReceiptState.Deferred && message is { Kind: "alert", Device: { } device, AlertId: { } alertId })
        {
            await _receipts.PublishAsync(device, alertId, ReceiptState.Deferred, detail, cancellationToken).ConfigureAwait(false);
        }

        await PublishReceiptsAsync(kept, committed.DigestReceipts, cancellationToken).ConfigureAwait(false);
    }

    // The final ones are kept already (committed with the result); a digest's deferred ones are courtesies.
    private async Task PublishReceiptsAsync(KeptReceipt? kept, IReadOnlyList<KeptReceipt> digestReceipts, CancellationToken cancellationToken)
    {
        if (kept is not null)
        {
            await _receipts.PublishKeptAsync(kept, cancellationToken).ConfigureAwait(false);
        }

        foreach (var receipt in digestReceipts)
        {
            if (receipt.State == ReceiptState.Deferred)
            {
                await _receipts.PublishAsync(receipt.Device, receipt.AlertId, receipt.State, receipt.Detail, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                await _receipts.PublishKeptAsync(receipt, cancellationToken).ConfigureAwait(false);
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

        using var notice = _composer.ComposeFailureNotice(message.MessageId, subject, failed.Select(f => (f.Address, f.Reply)).ToList(), operatorMailbox, now,
            message.Attempts + 1);
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

    [LoggerMessage(Level = LogLevel.Information, Message = "<{MessageId}> was cancelled while an attempt was under way, which delivered it to nobody ({Reply}): it stays cancelled")]
    private partial void LogCancelStood(string messageId, string reply);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The cancel of <{MessageId}> came too late: the attempt under way had delivered it ({Reply}); recorded as sent")]
    private partial void LogCancelTooLate(string messageId, string reply);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The cancel of <{MessageId}> came too late for some recipients: the attempt under way had delivered it to them ({Reply}); recorded as partial, the others stay cancelled")]
    private partial void LogCancelTooLateForSome(string messageId, string reply);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not read whether <{MessageId}> was cancelled before its next connection; the attempt goes on")]
    private partial void LogCancelCheckFailed(Exception ex, string messageId);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Discarded the result of the attempt on <{MessageId}> ({Reply}): the message is no longer this attempt's to record (on a shared spool: its claim ran out and another instance holds it and records its own); no receipt, no notice")]
    private partial void LogDiscarded(string messageId, string reply);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Delivery bookkeeping could not use the spool; retrying later")]
    private partial void LogFailed(Exception ex);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Recipients of <{MessageId}> that have the mail could not be recorded; the attempt stops there, the recipients not yet tried are deferred")]
    private partial void LogPartSentNotRecorded(Exception ex, string messageId);

    [LoggerMessage(Level = LogLevel.Warning, Message = "<{MessageId}> was cancelled, or taken over by another instance, during the attempt; the recipients not yet tried are not sent to")]
    private partial void LogPartSentRefused(string messageId);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The transport threw while delivering <{MessageId}>; deferred as a transient failure")]
    private partial void LogTransportThrew(Exception ex, string messageId);
}
