using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
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
/// transport that throws is a transient failure on the same backoff schedule; a result the spool fails to commit is kept
/// in memory and committed again on a back-off, the message held meanwhile (never sent again for it); a message whose
/// result cannot be recorded otherwise or whose notice cannot be written is parked with the reason, and the others keep
/// going. On a shared spool
/// an attempt keeps its claim renewed (<see cref="LeaseKeeper"/>), and a result the spool refuses because another
/// instance holds the message now is discarded: logged, with no receipt or notice.
/// </summary>
public sealed partial class DeliveryWorker : SupervisedLoop
{
    // A write recording what an attempt did (its result, or its parking) that the spool failed is tried again after
    // this, doubling up to MaxRewriteDelay, while the message stays in flight: left due, it would be sent again.
    private static readonly TimeSpan FirstRewriteDelay = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan MaxRewriteDelay = TimeSpan.FromMinutes(1);

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
    private readonly ConcurrentDictionary<long, bool> _heldBack = new();
    private readonly DomainConcurrency? _domains;
    private readonly ParkingLot _parking;
    private readonly RelayHealth _health;
    private readonly GatewayMetrics _metrics;
    private readonly SemaphoreSlim _slots;
    private readonly RelayThrottle _throttle;
    private readonly PartSent _recordPartSent;
    private readonly int _maxUnrecorded;
    private int _unrecorded;
    private bool _pausedForUnrecorded;

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
        _maxUnrecorded = _options.Relay.Concurrency * 4;
        _domains = _options.Relay.Mode.Equals("DirectMx", StringComparison.OrdinalIgnoreCase) ? new DomainConcurrency(_options.Relay.EffectiveDomainConcurrency()) : null;
        _recordPartSent = RecordPartSentAsync;
        _spool.MessagesQueued += _wake.Set;
        metrics.Meter.CreateObservableGauge("edgemail.delivery.unrecorded", () => Unrecorded, "{message}",
            "Messages attempted whose result (or parking) the spool failed to write: held in memory and written again, not sent again; lost, so sent again, if the gateway stops first");
    }

    /// <summary>Wakes the worker (tests that advance a fake clock).</summary>
    public void Wake() => _wake.Set();

    /// <summary>Attempts started so far (tests).</summary>
    public long Attempts => Interlocked.Read(ref _attempts);

    /// <summary>Attempts whose result (or parking) the spool failed to write and that wait, in memory, to write it again.</summary>
    public int Unrecorded => Volatile.Read(ref _unrecorded);

    /// <summary>Raised each time the worker has nothing due and goes to wait (tests).</summary>
    public event Action? Idle;

    private long _attempts;

    /// <inheritdoc />
    protected override async Task RunAsync(CancellationToken stoppingToken)
    {
        var running = new List<Task>();

        // A graceful stop lets attempts under way finish and record their result, for up to twice Relay:Timeout (an
        // attempt itself runs up to Relay:AttemptTimeout, longer than a service manager waits for a stop): cancelling one
        // between the relay's 250 and the commit would send that mail again later.
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
                    if (Unrecorded >= _maxUnrecorded)
                    {
                        // As many results as one round takes wait in memory for a spool that fails to write them: mail
                        // sent now would likely wait too, and every such mail goes again after a restart. Wait for one to
                        // be written (its attempt ends and wakes us).
                        if (!_pausedForUnrecorded)
                        {
                            _pausedForUnrecorded = true;
                            LogPausedForUnrecorded(Unrecorded);
                        }

                        Idle?.Invoke();
                        await _wake.WaitAsync(Timeout.InfiniteTimeSpan, _clock, stoppingToken).ConfigureAwait(false);
                        continue;
                    }

                    _pausedForUnrecorded = false;
                    var now = _clock.GetUtcNow();
                    var busy = _inFlight.Keys.Concat(_heldBack.Keys).Concat(_domains?.Waiting ?? []).ToHashSet();
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
                    List<long>? waitsNow = null;
                    foreach (var message in due)
                    {
                        if (Unrecorded >= _maxUnrecorded)
                        {
                            break; // the rest of the round waits with the others (above)
                        }

                        string[] domains = _domains is null ? [] : DomainConcurrency.Of(message);
                        if (_domains?.Full(message.RowId, domains, out bool first) is { } full)
                        {
                            // Before the throttle, which it would spend for nothing; a delivery to the domain ending lets it go.
                            if (first)
                            {
                                LogDomainFull(full, _domains.Limit, message.MessageId);
                            }

                            (waitsNow ??= []).Add(message.RowId);
                            continue;
                        }

                        if (message.PendingRecipients.Count > 0 && _throttle.TryReserve(message.PendingRecipients.Count) is { } until)
                        {
                            // Past the provider's limit: it stays queued and due, not deferred; the window decides.
                            heldUntil = until;
                            break;
                        }

                        await _slots.WaitAsync(stoppingToken).ConfigureAwait(false);
                        if (Unrecorded >= _maxUnrecorded)
                        {
                            // An attempt that freed the slot failed to write its result meanwhile.
                            _slots.Release();
                            break;
                        }

                        _inFlight[message.RowId] = true;
                        _domains?.Start(domains);
                        running.Add(AttemptAsync(message, domains, now, stoppingToken, attempts.Token));
                    }

                    if (shared && waitsNow is not null)
                    {
                        // Read as due, so claimed: another instance may send it meanwhile, and this one must not end up
                        // holding a slow domain's whole backlog.
                        await _spool.UnclaimMessagesAsync(waitsNow, stoppingToken).ConfigureAwait(false);
                    }

                    if (heldUntil is { } held)
                    {
                        Idle?.Invoke();
                        var heldFrom = _clock.GetUtcNow();
                        await _wake.WaitAsync(held - heldFrom, heldFrom, _clock, stoppingToken).ConfigureAwait(false);
                        continue;
                    }

                    if (_domains?.ReleaseIdle() == true || due.Count > 0)
                    {
                        continue;
                    }

                    // The messages in flight are left out: due already, they would have this loop wake every few
                    // milliseconds for as long as their attempts take (minutes for a slow exchanger). Each attempt wakes
                    // it when it ends.
                    var next = await _spool.NextMessageDueAsync(busy, stoppingToken).ConfigureAwait(false);
                    var from = _clock.GetUtcNow();
                    var wait = next is null ? Timeout.InfiniteTimeSpan : next.Value - from + TimeSpan.FromMilliseconds(1);
                    if (next is not null && wait <= TimeSpan.Zero)
                    {
                        // Due and not in flight, yet not handed out: it fell due since the look for due mail, or, on a
                        // shared spool, another instance's claim has it locked this instant. Look again shortly.
                        wait = TimeSpan.FromMilliseconds(50);
                    }

                    Idle?.Invoke();
                    await _wake.WaitAsync(_spool.IdleWait(wait), from, _clock, stoppingToken).ConfigureAwait(false);
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

    // The remote is done with the message (its connection is free): its domain's room goes to the mail waiting for it,
    // which stays out of the due mail until then (the message itself stays in flight until its result is written).
    private void EndDelivery(string[] domains, ref bool held)
    {
        if (held)
        {
            held = false;
            if (_domains!.End(domains))
            {
                _wake.Set();
            }
        }
    }

    // Never throws: every outcome of the attempt is turned into a recorded result or a parked message, written again
    // until the spool takes it; only a stop leaves it unwritten (the mail then goes again after the restart).
    // claimedAt: a time no later than the claim of a shared spool, from which its lease counts.
    private async Task AttemptAsync(QueuedMessage message, string[] domains, DateTimeOffset claimedAt, CancellationToken stoppingToken, CancellationToken cancellationToken)
    {
        bool slotHeld = true;
        bool domainsHeld = _domains is not null;
        bool tookUnrecorded = false;

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
            EndDelivery(domains, ref domainsHeld);
            var settled = Settle(message, results);
            tookUnrecorded = results.Any(r => r.Outcome == RecipientOutcome.Sent);
            DeliveryCommitted? committed;
            try
            {
                committed = await _spool.CommitDeliveryAsync(settled.Commit, cancellationToken).ConfigureAwait(false);
            }
            catch (SpoolException ex) when (!FailsAgain(ex))
            {
                // The mail may be with its recipients: left due, it would go to them again at every round for as long as
                // the spool fails (a full disk: every few seconds, for hours). The result is written again instead, and
                // meanwhile kept without the body.
                message = message with { Mime = [] };
                var commit = settled.Commit;
                committed = await WriteAgainAsync(message.MessageId, "the result of the attempt on", settled.Now, ex,
                    ct => _spool.CommitDeliveryAsync(commit, ct), stoppingToken, cancellationToken).ConfigureAwait(false);
            }

            tookUnrecorded = false; // written, or said so by WriteAgainAsync

            if (committed is not null)
            {
                try
                {
                    await ReportAsync(message, settled, committed, cancellationToken).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is SpoolException || ParkingLot.Contains(ex, cancellationToken))
                {
                    // The result is committed: the mail stands as recorded, and parking it now would tell its device
                    // that an alert failed that may be with its recipients (or park one that is merely deferred).
                    ReportFailed(ex, message.MessageId);
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Stopping: the message stays queued. If recipients took it and the result is not written, they get it
            // again after the restart: say so (the spool may still take a write whose wait was cancelled, so "may").
            if (tookUnrecorded)
            {
                LogTakenUnrecordedAtStop(message.MessageId, _options.Relay.Timeout * 2);
            }
        }
        catch (SpoolException ex) when (FailsAgain(ex))
        {
            // Written again, it would fail again: the result waited in memory for good, taking a place in the limit on
            // waiting results, until enough such mail paused delivery for everyone.
            await ParkAsync(message, ex.Message, null, stoppingToken, cancellationToken).ConfigureAwait(false);
        }
        catch (SpoolException ex)
        {
            LogFailed(ex);
        }
        catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
        {
            await ParkAsync(message, ParkingLot.Describe("recording the delivery", ex), ex, stoppingToken, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (lease is not null)
            {
                await lease.DisposeAsync().ConfigureAwait(false);
            }

            _inFlight.TryRemove(message.RowId, out _);
            EndDelivery(domains, ref domainsHeld);
            if (slotHeld)
            {
                _slots.Release();
            }

            _wake.Set();
        }
    }

    private async Task ParkAsync(QueuedMessage message, string reason, Exception? fault, CancellationToken stoppingToken, CancellationToken cancellationToken)
    {
        try
        {
            var triedAt = _clock.GetUtcNow();
            bool parked;
            try
            {
                parked = await _spool.ParkMessageAsync(message.RowId, reason, triedAt, cancellationToken).ConfigureAwait(false);
            }
            catch (SpoolException ex) when (!FailsAgain(ex))
            {
                // As a result that cannot be committed: left due, the mail would be sent again and again.
                message = message with { Mime = [] };
                var written = await WriteAgainAsync(message.MessageId, "the parking of", triedAt, ex,
                    async ct => new StrongBox<bool>(await _spool.ParkMessageAsync(message.RowId, reason, triedAt, ct).ConfigureAwait(false)),
                    stoppingToken, cancellationToken).ConfigureAwait(false);
                if (written is null)
                {
                    return;
                }

                parked = written.Value;
            }

            if (!parked)
            {
                LogNotParked(message.MessageId, reason);
                return;
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return; // stopping: the message stays queued
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            // Neither its result nor its parking can be written, for a reason of its own: sent again, it would end the
            // same way, again and again. It waits for the next start.
            _heldBack[message.RowId] = true;
            LogHeldBack(ex, message.MessageId, reason);
            return;
        }

        try
        {
            await _parking.MessageParkedAsync(message, reason, fault, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is SpoolException or OperationCanceledException)
        {
            LogFailed(ex);
        }
    }

    // A conflict, or data the database refuses: the same write fails the same way however often it is tried.
    private static bool FailsAgain(SpoolException ex) => ex is SpoolConflictException or SpoolDataException;

    // A write recording what an attempt did, which the spool failed: tried again FirstRewriteDelay after the failed try
    // began (triedAt; a write that took long to fail has waited that long), doubling up to MaxRewriteDelay, until the
    // spool takes it. The message stays in flight meanwhile (its attempt has not ended), so no round sends it again,
    // and the other messages go on. A stop tries once more at once; if that fails too, the write is given up (null)
    // and the mail goes again after the restart. A write that fails again (FailsAgain) or any other failure is thrown.
    private async Task<T?> WriteAgainAsync<T>(string messageId, string what, DateTimeOffset triedAt, SpoolException failure,
        Func<CancellationToken, Task<T>> write, CancellationToken stoppingToken, CancellationToken cancellationToken)
        where T : class
    {
        Interlocked.Increment(ref _unrecorded);
        try
        {
            var delay = FirstRewriteDelay;
            while (true)
            {
                if (stoppingToken.IsCancellationRequested)
                {
                    LogUnwrittenAtStop(messageId, what, failure.Message);
                    return null;
                }

                LogWriteFailed(messageId, what, failure.Message, delay.TotalSeconds);
                var wait = triedAt + delay - _clock.GetUtcNow();
                if (wait > TimeSpan.Zero)
                {
                    try
                    {
                        await Task.Delay(wait, _clock, stoppingToken).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
                    {
                        // Stopping: one more try now rather than none.
                    }
                }

                triedAt = _clock.GetUtcNow();
                try
                {
                    var written = await write(cancellationToken).ConfigureAwait(false);
                    LogWrittenAfterAll(messageId, what);
                    return written;
                }
                catch (SpoolException ex) when (!FailsAgain(ex))
                {
                    failure = ex;
                    delay = delay * 2 > MaxRewriteDelay ? MaxRewriteDelay : delay * 2;
                }
            }
        }
        finally
        {
            Interlocked.Decrement(ref _unrecorded);
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

    // What the attempt's result comes to, without I/O: expiry applied, the next attempt's time, a failure notice, the
    // receipts owed.
    private Settled Settle(QueuedMessage message, IReadOnlyList<RecipientResult> results)
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

        return new Settled(new DeliveryCommit(message.RowId, final, next, notice, kept, _receipts.MaxPerDevice, owed), failed, deferred, now, state, detail);
    }

    private async Task ReportAsync(QueuedMessage message, Settled settled, DeliveryCommitted committed, CancellationToken cancellationToken)
    {
        var (commit, failed, deferred, now, state, detail) = settled;
        var final = commit.Results;
        var next = commit.NextAttemptAt;
        var kept = commit.Receipt;
        var recorded = committed.Recorded;
        foreach (var r in final)
        {
            _metrics.MailRecipients.Add(1, new KeyValuePair<string, object?>("outcome", r.Outcome));
        }

        var observed = final.Any(r => r.NotTried) ? final.Where(r => !r.NotTried).ToList() : final;
        if (observed.Count > 0)
        {
            // A relay that refuses a recipient (550 user unknown, NXDOMAIN) works: only a relay that did not answer at
            // all marks it down, or /readyz would fail over one mistyped address until the next success. Recipients
            // deferred without a word to it (a domain held as unreachable) say nothing either way.
            bool sent = observed.Any(r => r.Outcome == RecipientOutcome.Sent);
            bool answered = observed.Any(r => !r.RelayDown);
            _health.Record(now, sent, answered, sent ? null : (answered ? observed[^1] : observed.First(r => r.RelayDown)).Reply);
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

        // The device's receipts go before the log lines: a log sink that fails must not keep them from it.
        if (recorded == DeliveryRecorded.CancelTooLate)
        {
            await PublishReceiptsAsync(kept, committed.DigestReceipts, cancellationToken).ConfigureAwait(false);
            LogCancelTooLate(message.MessageId, reply);
            return;
        }

        // A recipient refused by an earlier attempt made the alert failed (RecordedAlreadyFailed), and its device has that
        // receipt: the rest waiting or delivered now make it neither deferred nor relayed.
        if (recorded != DeliveryRecorded.RecordedAlreadyFailed)
        {
            if (state == ReceiptState.Deferred && message is { Kind: "alert", Device: { } device, AlertId: { } alertId })
            {
                await _receipts.PublishAsync(device, alertId, ReceiptState.Deferred, detail, cancellationToken).ConfigureAwait(false);
            }

            await PublishReceiptsAsync(kept, committed.DigestReceipts, cancellationToken).ConfigureAwait(false);
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

    private sealed record Settled(DeliveryCommit Commit, List<RecipientResult> Failed, bool Deferred, DateTimeOffset Now, string State, string Detail);

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

    [LoggerMessage(Level = LogLevel.Information, Message = "Mail to {Domain} waits, <{MessageId}> first: {Limit} deliveries to it are under way (Relay:DomainConcurrency); the next goes when one of them ends")]
    private partial void LogDomainFull(string domain, int limit, string messageId);

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

    [LoggerMessage(Level = LogLevel.Error, Message = "The result of the attempt on <{MessageId}> is recorded; telling of it (log, receipts, relay health) failed part way")]
    private partial void LogReportFailed(Exception ex, string messageId);

    // The failure may be the log's own (a sink that throws on every line): this line would throw too, and nothing is
    // left to tell it with.
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1031:Do not catch general exception types", Justification = "the log itself failing")]
    private void ReportFailed(Exception ex, string messageId)
    {
        try
        {
            LogReportFailed(ex, messageId);
        }
        catch (Exception)
        {
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "<{MessageId}> was not parked ({Reason}): it is no longer queued, or another instance holds it, and stands as the spool records it")]
    private partial void LogNotParked(string messageId, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The spool could not write {What} <{MessageId}> ({Error}); kept in memory and tried again within {Seconds} s; the mail is not sent again meanwhile")]
    private partial void LogWriteFailed(string messageId, string what, string error, double seconds);

    [LoggerMessage(Level = LogLevel.Information, Message = "The spool took {What} <{MessageId}> after all")]
    private partial void LogWrittenAfterAll(string messageId, string what);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Stopping with {What} <{MessageId}> not written: the spool failed it ({Error}); the mail stays queued and is sent again after the restart, with the same Message-ID")]
    private partial void LogUnwrittenAtStop(string messageId, string what, string error);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Stopping with the result of the attempt on <{MessageId}> perhaps not written: the stop's wait for attempts under way ({Budget}, twice Relay:Timeout) ran out first. If the spool did not take it, the mail stays queued and goes again after the restart, with the same Message-ID, to the recipients who took it")]
    private partial void LogTakenUnrecordedAtStop(string messageId, TimeSpan budget);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Delivery paused: the spool failed to write the outcome of {Count} attempts, kept in memory meanwhile; no further mail is sent until some are written")]
    private partial void LogPausedForUnrecorded(int count);

    [LoggerMessage(Level = LogLevel.Error, Message = "<{MessageId}> could be neither recorded nor parked ({Reason}); it is not attempted again until the gateway restarts")]
    private partial void LogHeldBack(Exception ex, string messageId, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Recipients of <{MessageId}> that have the mail could not be recorded; the attempt stops there, the recipients not yet tried are deferred")]
    private partial void LogPartSentNotRecorded(Exception ex, string messageId);

    [LoggerMessage(Level = LogLevel.Warning, Message = "<{MessageId}> was cancelled, or taken over by another instance, during the attempt; the recipients not yet tried are not sent to")]
    private partial void LogPartSentRefused(string messageId);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The transport threw while delivering <{MessageId}>; deferred as a transient failure")]
    private partial void LogTransportThrew(Exception ex, string messageId);
}
