using System.Collections.Concurrent;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Routing;

/// <summary>
/// Turns stored alerts into queued mail: routes each new alert, applies storm control (repeats of one
/// (device, code) within the window are held and later sent as one digest; so are its clears while it storms or flaps),
/// composes the mail and commits the decision and the mail in one spool transaction, so a crash at any point
/// either redoes the whole step or finds it done. An alert that cannot be parsed, routed or composed — an
/// exception nobody expected — is parked with the reason instead (its device gets <c>failed</c>, the operator a
/// notice) and the rest of the batch goes on: one bad alert never stops the others. On a shared spool a batch, and a
/// round of digests, keeps its claims renewed while it is under way (<see cref="LeaseKeeper"/>), and what it decided on
/// a claim another instance took over meanwhile is discarded: the commit leaves it alone, and nobody is told of it.
/// </summary>
public sealed partial class AlertProcessor : SupervisedLoop
{
    private readonly ISpool _spool;
    private readonly GatewayOptions _options;
    private readonly Router _router;
    private readonly MailComposer _composer;
    private readonly TimeProvider _clock;
    private readonly IngestPressure _pressure;
    private readonly ParkingLot _parking;
    private readonly Devices.DeviceRegistry _devices;
    private readonly ILogger<AlertProcessor> _logger;
    private readonly Signal _wake = new();
    private readonly Relay.IRelayThrottle _throttle;

    // Storm state per (device, code), null = known to have none. On a spool of its own this processor is the only writer
    // of storm state, so after the first read the spool need not be asked again (one spool round trip less per routing
    // batch). On a shared spool other instances change it at any time: it is read afresh for every batch, and each
    // decision carries the state it was made on, which the spool checks under the key's lock.
    private readonly Dictionary<(string Device, string Code), StormState?> _stormCache = [];
    private readonly bool _shared;
    // How far the held repeats of each due key have been parsed again (the last row read), across routing rounds: a
    // storm of millions is checked a batch at a time. Rows held after it were routed by this gateway, which parsed them.
    private readonly Dictionary<(string Device, string Code), long> _checkedThrough = [];
    private DateTimeOffset? _digestDue;
    private bool _digestDueKnown;
    private DateTimeOffset _digestCheckedAt;

    /// <summary>Creates the processor.</summary>
    /// <param name="spool">Spool.</param>
    /// <param name="options">Options.</param>
    /// <param name="composer">Composer.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="pressure">Ingest rate; routing yields to a burst.</param>
    /// <param name="parking">Where alerts that cannot be handled go.</param>
    /// <param name="metrics">Loop restarts are counted there.</param>
    /// <param name="devices">Device names, sites and owners.</param>
    /// <param name="throttle">While the relay's sending limits hold mail back, the storm window widens.</param>
    /// <param name="logger">Logger.</param>
    public AlertProcessor(ISpool spool, IOptions<GatewayOptions> options, MailComposer composer, TimeProvider clock, IngestPressure pressure,
        ParkingLot parking, GatewayMetrics metrics, Devices.DeviceRegistry devices, Relay.IRelayThrottle throttle, ILogger<AlertProcessor> logger)
        : base("routing", clock, metrics, logger)
    {
        _throttle = throttle;
        ArgumentNullException.ThrowIfNull(options);
        _devices = devices;
        _pressure = pressure;
        _spool = spool;
        _shared = spool.SharedPollInterval is not null;
        _options = options.Value;
        _router = new Router(_options, devices);
        _composer = composer;
        _clock = clock;
        _parking = parking;
        _logger = logger;
        _spool.AlertsStored += _wake.Set;
    }

    /// <summary>Wakes the processor (tests that advance a fake clock).</summary>
    public void Wake() => _wake.Set();

    /// <summary>How many unlisted held repeats of a digest are read and parsed again at a time (at most 4 KiB each).</summary>
    internal int CheckBatch { get; set; } = 1000;

    /// <summary>How many such batches one round of <see cref="DigestDueAsync"/> reads before it lets new alerts be routed.</summary>
    internal int MaxCheckBatches { get; set; } = 16;

    /// <inheritdoc />
    protected override async Task RunAsync(CancellationToken stoppingToken)
    {
        // After a restart nothing cached can be trusted: the spool is the truth.
        _stormCache.Clear();
        _checkedThrough.Clear();
        _digestDueKnown = false;
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await _pressure.YieldAsync(stoppingToken).ConfigureAwait(false);
                int routed = await RouteNewAsync(stoppingToken).ConfigureAwait(false);
                if (!_digestDueKnown || (_digestDue is { } due && due <= _clock.GetUtcNow()))
                {
                    // Only when a digest can be due: under load this saves a spool round trip per routing batch.
                    await DigestDueAsync(stoppingToken).ConfigureAwait(false);
                    _digestDue = await _spool.NextDigestDueAsync(stoppingToken).ConfigureAwait(false);
                    _digestDueKnown = true;
                    _digestCheckedAt = _clock.GetUtcNow();
                }

                if (routed > 0)
                {
                    continue;
                }

                var next = _digestDue;
                var from = _clock.GetUtcNow();
                var wait = next is null ? Timeout.InfiniteTimeSpan : next.Value - from + TimeSpan.FromMilliseconds(1);
                await _wake.WaitAsync(_spool.IdleWait(wait), from, _clock, stoppingToken).ConfigureAwait(false);
                if (_spool.SharedPollInterval is { } poll && _clock.GetUtcNow() - _digestCheckedAt >= poll)
                {
                    // Another instance may have held alerts back for a digest and died: look again at the poll interval.
                    _digestDueKnown = false;
                }
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (SpoolException ex)
            {
                // The spool cannot read or commit now (disk, I/O): nothing was lost, the alerts stay new. Try again later.
                _stormCache.Clear();
                _digestDueKnown = false;
                LogSpoolFailed(ex);
                await _wake.WaitAsync(TimeSpan.FromSeconds(5), _clock, stoppingToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Routes one batch of new alerts.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>How many alerts were handled.</returns>
    internal async Task<int> RouteNewAsync(CancellationToken cancellationToken)
    {
        var claimedAt = _clock.GetUtcNow();
        var alerts = await _spool.NewAlertsAsync(256, cancellationToken).ConfigureAwait(false);
        if (alerts.Count == 0)
        {
            return 0;
        }

        var faults = new Dictionary<long, Exception>();
        var storms = new Dictionary<(string, string), StormState?>();
        var commits = new List<RoutingCommit>(alerts.Count);
        var unrouted = new Dictionary<long, string>();

        // Reading storm state, rendering templates, building and signing the mail of a batch can outlast the lease (a
        // slow database, a long pause): its claims are kept meanwhile. Not past this: the commit is fenced on them.
        LeaseKeeper? lease = null;
        if (_shared)
        {
            long[] rows = [.. alerts.Select(a => a.RowId)];
            lease = LeaseKeeper.Start(ct => _spool.RenewAlertClaimsAsync(rows, ct), $"the routing batch of {alerts.Count} alerts from alert {alerts[0].AlertId} of {alerts[0].Device}",
                LeftToTheHolder, claimedAt, _options.Spool.ClaimLease, _clock, _logger);
        }

        try
        {
            await DecideAsync(alerts, faults, storms, commits, unrouted, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (lease is not null)
            {
                await lease.DisposeAsync().ConfigureAwait(false);
            }
        }

        var committed = await _spool.CommitRoutingAsync(commits, cancellationToken).ConfigureAwait(false);
        foreach (var (key, state) in storms)
        {
            _stormCache[key] = state;
        }

        if (committed.Parked.Count > 0 || committed.NotHeld.Count > 0)
        {
            _stormCache.Clear(); // a decision rolled back or fenced out may have changed a cached state
        }

        // Another instance took these over after their claim ran out: its decisions count, and it tells of them.
        var notHeld = committed.NotHeld.ToHashSet();
        if (notHeld.Count > 0)
        {
            LogRoutingDiscarded(notHeld.Count, alerts.Count);
        }

        var byRow = alerts.ToDictionary(a => a.RowId);
        foreach (var (row, code) in unrouted)
        {
            if (!notHeld.Contains(row)) // the commit parks only on a Message-ID conflict, and an unrouted alert has no mail
            {
                LogUnrouted(byRow[row].Device, byRow[row].AlertId, code);
            }
        }

        foreach (var c in commits.Where(c => c.Status == AlertStatus.Parked && !notHeld.Contains(c.AlertRowId)))
        {
            var stored = byRow[c.AlertRowId];
            await _parking.AlertParkedAsync("route", stored.Device, stored.AlertId, c.Reason!, faults.GetValueOrDefault(c.AlertRowId)).ConfigureAwait(false);
        }

        foreach (var p in committed.Parked)
        {
            var stored = byRow[p.AlertRowId];
            await _parking.AlertParkedAsync("route", stored.Device, stored.AlertId, p.Reason, null).ConfigureAwait(false);
        }

        return alerts.Count;
    }

    private const string LeftToTheHolder = "what another instance took over is left to it: the commit leaves those alone, and nothing of them is told";

    // The batch's decisions, in its order; faults, storm states and the codes of alerts found unrouted (told once the
    // commit stands) as they come.
    private async Task DecideAsync(IReadOnlyList<SpooledAlert> alerts, Dictionary<long, Exception> faults, Dictionary<(string, string), StormState?> storms,
        List<RoutingCommit> commits, Dictionary<long, string> unrouted, CancellationToken cancellationToken)
    {
        var parsedAlerts = new Alert?[alerts.Count];
        var failures = new string?[alerts.Count];
        var keys = new HashSet<(string Device, string Code)>();
        for (int i = 0; i < alerts.Count; i++)
        {
            try
            {
                var parsed = AlertParser.Parse(alerts[i].Payload);
                parsedAlerts[i] = parsed.Alert;
                if (parsed.Alert is null)
                {
                    // Stored as new, so it passed validation when it came; a stricter gateway since then refuses it.
                    failures[i] = NoLongerValid(parsed.Reason);
                }
            }
            catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
            {
                failures[i] = ParkingLot.Describe("parsing", ex);
                faults[alerts[i].RowId] = ex;
            }

            if (parsedAlerts[i] is { } a)
            {
                keys.Add((alerts[i].Device, a.Code));
            }
        }

        // One read for the storm state of every (device, code) in the batch not seen before, not one round trip each.
        // Kept across batches on a shared spool, a state another instance changed since would be decided on again and
        // again: each such decision found stale, released, claimed again and decided on the same cached state.
        if (_shared || _stormCache.Count > 100_000)
        {
            _stormCache.Clear();
        }

        keys.RemoveWhere(_stormCache.ContainsKey);
        if (keys.Count > 0)
        {
            var known = await _spool.GetStormsAsync(keys, cancellationToken).ConfigureAwait(false);
            foreach (var key in keys)
            {
                _stormCache[key] = known.TryGetValue(key, out var state) ? state : null;
            }
        }

        for (int i = 0; i < alerts.Count; i++)
        {
            var stored = alerts[i];
            if (failures[i] is { } failure)
            {
                commits.Add(new RoutingCommit(stored.RowId, AlertStatus.Parked, null, null, null, null, failure));
                continue;
            }

            var alert = parsedAlerts[i]!;

            try
            {
                var decision = Decide(stored, alert, storms);
                commits.Add(decision);
                if (decision.Status == AlertStatus.Unrouted)
                {
                    unrouted[stored.RowId] = alert.Code;
                }
            }
            catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
            {
                faults[stored.RowId] = ex;
                commits.Add(new RoutingCommit(stored.RowId, AlertStatus.Parked, null, null, null, null, ParkingLot.Describe("routing or composing", ex)));
            }
        }
    }

    // The routing decision for one valid alert; throws for an alert that cannot be composed. The shared state
    // (storms, the next digest time) changes only once nothing more can throw.
    private RoutingCommit Decide(SpooledAlert stored, Alert alert, Dictionary<(string, string), StormState?> storms)
    {
        var route = _router.Route(stored.Device, alert);
        if (route.Recipients.Count == 0)
        {
            return new RoutingCommit(stored.RowId, AlertStatus.Unrouted, null, null, null, null, Route: route.Explanation);
        }

        var key = (stored.Device, alert.Code);
        if (!storms.TryGetValue(key, out var storm))
        {
            storm = _stormCache[key];
        }

        // Held or mailed, the decision rests on this state; a shared spool commits it only while the state is still this.
        // Alone on its spool nobody else changes it, and the check is left out.
        var basis = _shared ? new StormBasis(stored.Device, alert.Code, storm) : null;
        var window = _throttle.StormWindow(_options.Storm.Window);
        bool raised = alert.State == AlertState.Raised;

        // Judged when it is routed, not when it was received: an alert released from parking (or retried, or from
        // released quarantined mail) was received long before; counted from then, it went out beside the pair's latest
        // mail and moved that mail back in time, so the next repeat went out too.
        var now = _clock.GetUtcNow();

        // Within the window after the pair's last mail, a raise, a clear or a digest. Routed "before" it (the clock was
        // stepped back, NTP or an operator), it is not held until the old window's end, which could be days away.
        bool inWindow = window > TimeSpan.Zero && storm is not null
            && now >= storm.LastMailAt && now < storm.LastMailAt + window;

        // A clear is held only while the pair storms, so that the common raised ... cleared pair stays two prompt mails.
        if (inWindow && storm is not null && (raised || storm.HoldClears))
        {
            var holdUntil = storm.LastMailAt + window;
            if (_digestDue is null || holdUntil < _digestDue)
            {
                _digestDue = holdUntil;
            }

            // Written only when it changes: the first repeat held, not every one of a storm.
            var holding = storm.HoldClears ? null : storm with { HoldClears = true };
            storms[key] = holding ?? storm;
            return new RoutingCommit(stored.RowId, AlertStatus.Held, holdUntil, null, holding is null ? null : key, holding,
                Route: $"{route.Explanation} (held by storm control until {holdUntil:u})", Basis: basis, State: raised ? "raised" : "cleared");
        }

        var mail = new AlertMail(Device(stored.Device), alert, stored.ReceivedAt, stored.Peer, stored.RowId, route.Recipients, route.Template,
            raised ? null : storm?.LastRaisedMessageId, stored.Via);
        var composed = _composer.ComposeAlert(mail, now);
        var queued = new NewMessage("alert", stored.Device, alert.Id, composed.MessageId, _options.Sender.Address,
            route.Recipients.Select(r => r.Address).ToList(), composed.Wire);

        // A clear within the window after the last mail ended a short incident, the way a flap looks: a window starts from
        // it, so a raise soon after is held. A clear after that ended a long incident and resets the pair, as a clear always
        // did, so that a new incident after it is mailed at once.
        var next = raised
            ? new StormState(now, "<" + composed.MessageId + ">", IncidentOpen: true)
            : new StormState(inWindow ? now : DateTimeOffset.UnixEpoch, storm?.LastRaisedMessageId);
        storms[key] = next;
        return new RoutingCommit(stored.RowId, AlertStatus.Routed, null, queued, key, next, Route: route.Explanation, Basis: basis);
    }

    /// <summary>
    /// Sends the digests whose window has closed. A digest is handled as a single alert would be when it cannot be
    /// mailed: parked with its repeats when none of them passes validation any more or it cannot be composed, its
    /// repeats left unrouted when its route names nobody now. A repeat that no longer passes among others that do is
    /// parked on its own, listed in the digest or not, and the digest goes out with the others.
    /// </summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task.</returns>
    internal async Task DigestDueAsync(CancellationToken cancellationToken)
    {
        var now = _clock.GetUtcNow();
        if (_checkedThrough.Count > 100_000)
        {
            _checkedThrough.Clear(); // keys whose digest another instance sent; checking again only costs time
        }

        var budget = new CheckBudget(MaxCheckBatches);
        bool again;
        int passes = 0;
        do
        {
            again = false;
            var claimedAt = _clock.GetUtcNow();
            var due = await _spool.DueDigestsAsync(now, _options.Storm.DigestMaxRepeats, cancellationToken).ConfigureAwait(false);
            if (due.Count == 0)
            {
                break;
            }

            // Up to 64 keys are claimed at once and composed one after the other: the ones still to come keep their
            // claims meanwhile, however long the others take.
            var open = new ConcurrentDictionary<(string Device, string Code), bool>(due.Select(d => KeyValuePair.Create((d.Device, d.Code), true)));
            LeaseKeeper? lease = null;
            if (_shared)
            {
                lease = LeaseKeeper.Start(ct => RenewDigestClaimsAsync(open, ct), $"the digests of {due.Count} (device, code) keys from {due[0].Device}/{due[0].Code}",
                    LeftToTheHolder, claimedAt, _options.Spool.ClaimLease, _clock, _logger);
            }

            try
            {
                foreach (var digest in due)
                {
                    again |= await DigestAsync(digest, now, open, budget, cancellationToken).ConfigureAwait(false);
                }
            }
            finally
            {
                if (lease is not null)
                {
                    await lease.DisposeAsync().ConfigureAwait(false);
                }
            }
        }
        // Bounded, as the batches of unlisted repeats read are: a storm of a million held repeats with invalid ones spread
        // among them would otherwise keep new alerts from being routed while it is read and parked. What is left is still
        // due, and is taken up again after the next routing batch.
        while (again && ++passes < MaxDigestPasses);
    }

    // A key leaves the open ones before its commit begins, which ends its claim (or keeps it for the digest of the rest,
    // claimed again by the next pass). A renewal that found none of the keys it asked for held is a loss only when one
    // of them is still open after it: that one's commit had not begun when the renewal ran.
    private async Task<bool> RenewDigestClaimsAsync(ConcurrentDictionary<(string Device, string Code), bool> open, CancellationToken cancellationToken)
    {
        var keys = open.Keys.ToList();
        return keys.Count == 0 || await _spool.RenewDigestClaimsAsync(keys, cancellationToken).ConfigureAwait(false) || !keys.Any(open.ContainsKey);
    }

    // One due digest, decided and committed; returns whether it parked repeats (the digest of the rest is read again).
    private async Task<bool> DigestAsync(DueDigest digest, DateTimeOffset now, ConcurrentDictionary<(string Device, string Code), bool> open,
        CheckBudget budget, CancellationToken cancellationToken)
    {
        var key = (digest.Device, digest.Code);
        IReadOnlyList<(Alert Alert, DateTimeOffset ReceivedAt)> repeats = [];
        DigestDecision? decision;
        try
        {
            (repeats, decision) = ParseListed(digest);
        }
        catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
        {
            decision = new DigestDecision(null, Refused: ParkingLot.Describe("composing the digest", ex), Fault: ex);
        }

        // The repeats it lists pass, so the digest goes out: the others ("... and N more") are read and parsed too, a batch
        // at a time, and each that no longer passes is parked on its own as a listed one is (its claim kept meanwhile).
        // Until all are read it waits, still due: taken up again after the next routing batch once this round's batches
        // are spent.
        if (decision is null && digest.Omitted > 0)
        {
            var check = await CheckUnlistedAsync(digest, budget, cancellationToken).ConfigureAwait(false);
            if (check != Checked.All)
            {
                open.TryRemove(key, out _);
                return check == Checked.Parked; // read again, for counts, severities and clears without the parked ones
            }
        }

        StormState? storm = null;
        if (decision is null)
        {
            storm = await _spool.GetStormAsync(digest.Device, digest.Code, cancellationToken).ConfigureAwait(false);
            try
            {
                decision = DecideDigest(digest, repeats, storm, now);
            }
            catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
            {
                decision = new DigestDecision(null, Refused: ParkingLot.Describe("composing the digest", ex), Fault: ex);
            }
        }

        open.TryRemove(key, out _);
        if (decision.Invalid is { } invalid)
        {
            // Parked first, in a commit of their own, and the digest read again: the spool's counts, severities and
            // clears of what is still held then leave them out, and the repeats loaded in their place are checked
            // too. Safe to die in between: a parked repeat is no longer held, so no digest counts it, and the ones
            // still held are due and make their digest on the next pass; parking again parks nothing twice.
            return await ParkRepeatsAsync(digest, invalid, digest.Alerts, cancellationToken).ConfigureAwait(false) > 0;
        }

        if (decision.Refused is { } refused)
        {
            await ParkDigestAsync(digest, refused, decision.Fault, cancellationToken).ConfigureAwait(false);
            return false;
        }

        _checkedThrough.Remove(key);
        if (decision.Mail is not { } queued)
        {
            // Nothing went out, so the storm state stays as it was.
            if (await _spool.UnrouteDigestAsync(digest, decision.Route!, cancellationToken).ConfigureAwait(false))
            {
                LogUnroutedDigest(digest.Device, digest.Code, digest.Total);
            }
            else
            {
                LogDigestDiscarded(digest.Total, digest.Code, digest.Device, "leaving them unrouted");
            }

            return false;
        }

        // A digest with a clear in it says the pair flaps: its clears in the next window join the next digest. Its latest
        // repeat says whether the incident is still open.
        var after = new StormState(now, storm?.LastRaisedMessageId, HoldClears: digest.Clears > 0, IncidentOpen: decision.IncidentOpen);
        try
        {
            if (await _spool.CommitDigestAsync(digest, queued, after, cancellationToken).ConfigureAwait(false))
            {
                LogDigest(digest.Device, digest.Code, digest.Total);
                _stormCache[(digest.Device, digest.Code)] = after;
            }
            else
            {
                LogDigestDiscarded(digest.Total, digest.Code, digest.Device, $"its digest <{queued.MessageId}>");
            }
        }
        catch (SpoolConflictException ex)
        {
            await ParkDigestAsync(digest, ex.Message, null, cancellationToken).ConfigureAwait(false);
        }

        return false;
    }

    // What a due digest comes to: its mail, and whether its latest repeat leaves the incident open; or, as for a single
    // alert, the reason it is parked (Refused) or the route that names nobody (Route, the mail then null); or the loaded
    // repeats that no longer pass validation while others do (Invalid), each to be parked on its own before the digest is
    // decided again.
    private sealed record DigestDecision(NewMessage? Mail, string? Refused = null, string? Route = null, IReadOnlyList<ParkedAlert>? Invalid = null,
        Exception? Fault = null, bool IncidentOpen = false);

    private enum Checked
    {
        // Every repeat the digest covers passes: it can go out as it was read.
        All,

        // Some were parked: the digest is to be read again.
        Parked,

        // Not all read yet (this round's batches are spent, or the key's claim went to another instance).
        Pending,
    }

    private sealed class CheckBudget(int batches)
    {
        public int Batches { get; set; } = batches;
    }

    // Parses again, a batch at a time, the held repeats of the digest it does not list, and parks each that no longer
    // passes as a listed one is parked; how far it got is kept across rounds.
    private async Task<Checked> CheckUnlistedAsync(DueDigest digest, CheckBudget budget, CancellationToken cancellationToken)
    {
        var key = (digest.Device, digest.Code);
        bool parkedAny = false;
        while (_checkedThrough.GetValueOrDefault(key) < digest.ThroughRowId)
        {
            if (budget.Batches == 0)
            {
                return Checked.Pending;
            }

            budget.Batches--;
            var batch = await _spool.HeldRepeatsAsync(digest, _checkedThrough.GetValueOrDefault(key), CheckBatch, cancellationToken).ConfigureAwait(false);
            var invalid = new List<ParkedAlert>();
            foreach (var repeat in batch)
            {
                try
                {
                    if (AlertParser.Parse(repeat.Payload) is { Alert: null } refused)
                    {
                        invalid.Add(new ParkedAlert(repeat.RowId, NoLongerValid(refused.Reason)));
                    }
                }
                catch (Exception ex) when (ParkingLot.Contains(ex, cancellationToken))
                {
                    invalid.Add(new ParkedAlert(repeat.RowId, ParkingLot.Describe("parsing", ex)));
                }
            }

            if (invalid.Count > 0)
            {
                if (await ParkRepeatsAsync(digest, invalid, batch, cancellationToken).ConfigureAwait(false) < invalid.Count)
                {
                    // Not all of them were still held by this instance (a shared spool's claim taken over): whoever holds
                    // the key now checks them itself, and this instance starts again should the key come back to it.
                    _checkedThrough.Remove(key);
                    return Checked.Pending;
                }

                parkedAny = true;
            }

            _checkedThrough[key] = batch.Count < CheckBatch ? digest.ThroughRowId : batch[^1].RowId;
        }

        return parkedAny ? Checked.Parked : Checked.All;
    }

    // The repeats the digest lists, parsed again; with the decision when they cannot all be (Refused when none passes,
    // Invalid when some do not).
    private static (IReadOnlyList<(Alert Alert, DateTimeOffset ReceivedAt)> Repeats, DigestDecision? Refusal) ParseListed(DueDigest digest)
    {
        var parsed = digest.Alerts.Select(a => (Stored: a, Result: AlertParser.Parse(a.Payload))).ToList();
        var repeats = parsed
            .Where(r => r.Result.Alert is not null)
            .Select(r => (r.Result.Alert!, r.Stored.ReceivedAt))
            .ToList();
        if (repeats.Count == 0)
        {
            return (repeats, new DigestDecision(null, Refused: "the held repeats no longer pass validation: " + parsed[0].Result.Reason));
        }

        if (repeats.Count < parsed.Count)
        {
            // A stricter gateway refuses some of them: neither listed nor counted in a digest that mails the others, but
            // parked as a single alert is.
            return (repeats, new DigestDecision(null, Invalid: parsed
                .Where(r => r.Result.Alert is null)
                .Select(r => new ParkedAlert(r.Stored.RowId, NoLongerValid(r.Result.Reason)))
                .ToList()));
        }

        return (repeats, null);
    }

    // The mail of a digest whose repeats all pass, or the route that names nobody.
    private DigestDecision DecideDigest(DueDigest digest, IReadOnlyList<(Alert Alert, DateTimeOffset ReceivedAt)> repeats, StormState? storm, DateTimeOffset now)
    {
        // Routes select by minimum severity, so the highest among the repeats (listed or not) reaches everyone any of
        // them would have: the latest repeat's severity alone would leave out whom a held critical one goes to.
        var highest = repeats.Max(r => r.Alert.Severity);
        foreach (string name in digest.Severities ?? [])
        {
            if (Severities.TryParse(name, out var severity) && severity > highest)
            {
                highest = severity;
            }
        }

        var route = _router.Route(digest.Device, repeats[^1].Alert with { Severity = highest });
        if (route.Recipients.Count == 0)
        {
            return new DigestDecision(null, Route: route.Explanation);
        }

        var composed = _composer.ComposeDigest(Device(digest.Device), repeats, route.Recipients, _throttle.StormWindow(_options.Storm.Window),
            digest.Alerts[0].RowId, storm?.LastRaisedMessageId, now, digest.Alerts[0].Via, digest.Omitted, digest.Clears);
        return new DigestDecision(new NewMessage("digest", digest.Device, null, composed.MessageId, _options.Sender.Address,
            route.Recipients.Select(r => r.Address).ToList(), composed.Wire), IncidentOpen: repeats[^1].Alert.State == AlertState.Raised);
    }

    // Returns how many it parked: when it did, the digest of the rest is read again. The repeats come from read.
    private async Task<int> ParkRepeatsAsync(DueDigest digest, IReadOnlyList<ParkedAlert> invalid, IReadOnlyList<SpooledAlert> read, CancellationToken cancellationToken)
    {
        var parked = (await _spool.ParkRepeatsAsync(digest, invalid, cancellationToken).ConfigureAwait(false)).ToHashSet();
        var byRow = read.ToDictionary(a => a.RowId);
        foreach (var repeat in invalid.Where(r => parked.Contains(r.AlertRowId)))
        {
            await _parking.AlertParkedAsync("digest", digest.Device, byRow[repeat.AlertRowId].AlertId, repeat.Reason, null).ConfigureAwait(false);
        }

        return parked.Count;
    }

    private async Task ParkDigestAsync(DueDigest digest, string reason, Exception? fault, CancellationToken cancellationToken)
    {
        _checkedThrough.Remove((digest.Device, digest.Code));
        var parked = await _spool.ParkDigestAsync(digest, reason, cancellationToken).ConfigureAwait(false);
        _digestDueKnown = false;
        if (parked.Count == 0)
        {
            // Nothing was held any more under this instance's claim (a spool of its own always parks what it just read).
            LogDigestDiscarded(digest.Total, digest.Code, digest.Device, "parking them: " + reason);
            return;
        }

        string what = $"a digest of {digest.Total} repeats of {digest.Code}: {reason}";
        await _parking.AlertParkedAsync("digest", digest.Device, digest.Alerts[0].AlertId, what, fault).ConfigureAwait(false);
        foreach (string alertId in parked)
        {
            if (alertId != digest.Alerts[0].AlertId)
            {
                await _parking.ReceiptAsync(digest.Device, alertId, reason).ConfigureAwait(false);
            }
        }
    }

    private const int MaxDigestPasses = 8;

    private static string NoLongerValid(string? reason) => "the alert no longer passes validation: " + reason;

    private DeviceInfo Device(string id) => _devices.Find(id) is { } d
        ? new DeviceInfo(id, d.Name, d.Site)
        : new DeviceInfo(id, id, string.Empty);

    [LoggerMessage(Level = LogLevel.Information, Message = "No route for alert {AlertId} ({Code}) from {Device}; kept as unrouted")]
    private partial void LogUnrouted(string device, string alertId, string code);

    [LoggerMessage(Level = LogLevel.Information, Message = "No route for the digest of {Count} repeats of {Code} from {Device}; kept as unrouted")]
    private partial void LogUnroutedDigest(string device, string code, long count);

    [LoggerMessage(Level = LogLevel.Information, Message = "Storm control: {Count} repeats of {Code} from {Device} go out as one digest")]
    private partial void LogDigest(string device, string code, long count);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Discarded the routing of {Count} of the batch's {Total} alerts: their claim ran out and another instance holds them now (or decided them already)")]
    private partial void LogRoutingDiscarded(int count, int total);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Discarded {Decision} for the {Count} held repeats of {Code} from {Device}: the claim on them ran out and another instance holds them now")]
    private partial void LogDigestDiscarded(long count, string code, string device, string decision);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Routing could not use the spool; retrying in 5 s")]
    private partial void LogSpoolFailed(Exception ex);
}
