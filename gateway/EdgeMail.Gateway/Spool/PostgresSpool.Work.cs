using System.Text.Json;
using Npgsql;

namespace EdgeMail.Gateway.Spool;

/// <summary>Routing, digests, delivery and the operator's actions on the PostgreSQL spool: claimed work and fenced commits.</summary>
public sealed partial class PostgresSpool
{
    private const string AlertRow = "rowid, device, alert_id, received_at, peer, payload, via";

    private static SpooledAlert ReadAlert(NpgsqlDataReader r) =>
        new(r.GetInt64(0), r.GetString(1), r.GetString(2), FromMs(r.GetInt64(3)), Str(r, 4), (byte[])r.GetValue(5), Str(r, 6) ?? IngestProtocols.Mqtt);

    /// <inheritdoc />
    public Task<AcceptOutcome> QueueMailAsync(NewMessage message, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(message);

        // The same mail submitted to two instances at once: the unique Message-ID makes the second a duplicate.
        return WriteAsync(async (c, tx, ctx) => await InsertMessageAsync(c, tx, message, null, ctx, duplicateIsConflict: false).ConfigureAwait(false)
            ? AcceptOutcome.Stored
            : AcceptOutcome.Duplicate, cancellationToken);
    }

    /// <inheritdoc />
    public Task<(DateTimeOffset At, byte[] Payload)?> GetStatusAsync(string device, CancellationToken cancellationToken) =>
        ReadAsync(async (c, tx) => (await ListAsync(c, tx, cancellationToken, r => ((DateTimeOffset, byte[])?)(FromMs(r.GetInt64(0)), (byte[])r.GetValue(1)),
            "SELECT received_at, payload FROM device_status WHERE device=$1", device).ConfigureAwait(false)).FirstOrDefault(), cancellationToken);

    /// <summary>
    /// New alerts, oldest first, claimed for this instance: rows another instance holds under a live lease are skipped
    /// (and rows locked by a claim in progress, <c>SKIP LOCKED</c>); this instance's own claims are handed out again.
    /// </summary>
    /// <inheritdoc />
    public Task<IReadOnlyList<SpooledAlert>> NewAlertsAsync(int max, CancellationToken cancellationToken) =>
        WriteAsync<IReadOnlyList<SpooledAlert>>(async (c, tx, _) =>
        {
            var list = await ListAsync(c, tx, cancellationToken, r => Claimed(r, ReadAlert),
                $"""
                WITH picked AS (
                  SELECT rowid FROM alerts
                  WHERE status = 'new' AND (claim_until IS NULL OR claim_until < $1 OR claimed_by = $2)
                  ORDER BY rowid LIMIT $3 FOR UPDATE SKIP LOCKED)
                UPDATE alerts a SET claimed_by = $2, claim_until = $4 FROM picked WHERE a.rowid = picked.rowid
                RETURNING a.{AlertRow.Replace(", ", ", a.", StringComparison.Ordinal)}, {ClaimedSchema}
                """, NowMs, _owner, max, LeaseUntilMs).ConfigureAwait(false);
            list.Sort((x, y) => x.RowId.CompareTo(y.RowId));
            return list;
        }, cancellationToken, durable: false);

    /// <inheritdoc />
    public Task<StormState?> GetStormAsync(string device, string code, CancellationToken cancellationToken) =>
        ReadAsync(async (c, tx) => (await ReadStormsAsync(c, tx, [(device, code)], cancellationToken).ConfigureAwait(false)).GetValueOrDefault((device, code)), cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyDictionary<(string Device, string Code), StormState>> GetStormsAsync(IReadOnlyCollection<(string Device, string Code)> keys, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(keys);
        return ReadAsync<IReadOnlyDictionary<(string Device, string Code), StormState>>(async (c, tx) => await ReadStormsAsync(c, tx, keys, cancellationToken).ConfigureAwait(false),
            cancellationToken);
    }

    private static async Task<Dictionary<(string Device, string Code), StormState>> ReadStormsAsync(NpgsqlConnection c, NpgsqlTransaction tx,
        IReadOnlyCollection<(string Device, string Code)> keys, CancellationToken ct)
    {
        var rows = await ListAsync(c, tx, ct, r => ((r.GetString(0), r.GetString(1)), new StormState(FromMs(r.GetInt64(2)), Str(r, 3), r.GetBoolean(4), r.GetBoolean(5))),
            """
            SELECT s.device, s.code, s.last_mail_at, s.last_raised_message_id, s.hold_clears, s.incident_open FROM storm s
            JOIN unnest($1::text[], $2::text[]) AS k(device, code) ON s.device = k.device AND s.code = k.code
            """, keys.Select(k => k.Device).ToArray(), keys.Select(k => k.Code).ToArray()).ConfigureAwait(false);
        return rows.ToDictionary(r => r.Item1, r => r.Item2);
    }

    // Storm state of these keys changes only under these locks (held to the end of the transaction), taken in one order
    // so that two instances committing overlapping keys cannot deadlock.
    private static Task LockKeysAsync(NpgsqlConnection c, NpgsqlTransaction tx, IEnumerable<(string Device, string Code)> keys, CancellationToken ct)
    {
        var distinct = keys.Distinct().ToList();
        return distinct.Count == 0
            ? Task.CompletedTask
            : ExecAsync(c, tx, ct,
                """
                SELECT pg_advisory_xact_lock(k) FROM (
                  SELECT DISTINCT hashtextextended(device || '/' || code, 0) AS k FROM unnest($1::text[], $2::text[]) AS u(device, code) ORDER BY 1) s
                """, distinct.Select(k => k.Device).ToArray(), distinct.Select(k => k.Code).ToArray());
    }

    private static bool Same(StormState? a, StormState? b) =>
        a is null || b is null
            ? a is null && b is null
            : a.LastMailAt.ToUnixTimeMilliseconds() == b.LastMailAt.ToUnixTimeMilliseconds() && a.LastRaisedMessageId == b.LastRaisedMessageId
                && a.HoldClears == b.HoldClears && a.IncidentOpen == b.IncidentOpen;

    /// <inheritdoc />
    public async Task<RoutingCommitted> CommitRoutingAsync(IReadOnlyList<RoutingCommit> commits, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(commits);
        try
        {
            // A Message-ID conflict (a bug, never routine) aborts the transaction: it is then redone with a savepoint per
            // decision, so that only that alert is parked.
            return await WriteAsync((c, tx, ctx) => CommitRoutingAsync(c, tx, ctx, commits, isolate: false, cancellationToken), cancellationToken).ConfigureAwait(false);
        }
        catch (SpoolConflictException)
        {
            return await WriteAsync((c, tx, ctx) => CommitRoutingAsync(c, tx, ctx, commits, isolate: true, cancellationToken), cancellationToken).ConfigureAwait(false);
        }
    }

    // Fenced on the claim: an alert another instance took over is theirs to decide.
    private const string ParkClaimedAlert =
        "UPDATE alerts SET status='parked', reason=$1, parked_at=$2, claimed_by=NULL, claim_until=NULL WHERE rowid=$3 AND status='new' AND claimed_by=$4";

    private async Task<RoutingCommitted> CommitRoutingAsync(NpgsqlConnection c, NpgsqlTransaction tx, WriteContext ctx, IReadOnlyList<RoutingCommit> commits,
        bool isolate, CancellationToken ct)
    {
        var keys = commits.Select(k => k.Basis is { } b ? (b.Device, b.Code) : k.StormKey).OfType<(string, string)>().ToList();
        await LockKeysAsync(c, tx, keys, ct).ConfigureAwait(false);
        var current = await ReadStormsAsync(c, tx, keys.Distinct().ToList(), ct).ConfigureAwait(false);
        List<ParkedAlert>? parked = null;
        List<long>? notHeld = null;
        var stale = new List<long>();
        foreach (var d in commits)
        {
            if (d.Status == AlertStatus.Parked)
            {
                if (await ExecAsync(c, tx, ct,
                    ParkClaimedAlert,
                    Truncate(Text(d.Reason) ?? "parked"), ctx.NowMs, d.AlertRowId, _owner).ConfigureAwait(false) == 0)
                {
                    (notHeld ??= []).Add(d.AlertRowId);
                }

                continue;
            }

            if (d.Basis is { } basis && !Same(current.GetValueOrDefault((basis.Device, basis.Code)), basis.State))
            {
                stale.Add(d.AlertRowId); // another instance changed this key's storm state since the decision was made
                continue;
            }

            if (isolate)
            {
                await tx.SaveAsync("decision", ct).ConfigureAwait(false);
            }

            try
            {
                int mine = await ExecAsync(c, tx, ct,
                    "UPDATE alerts SET status=$1, hold_until=$2, route=$3, state=$6, claimed_by=NULL, claim_until=NULL WHERE rowid=$4 AND status='new' AND claimed_by=$5",
                    d.Status, d.HoldUntil?.ToUnixTimeMilliseconds(), Text(d.Route), d.AlertRowId, _owner, d.State).ConfigureAwait(false);
                if (mine == 0)
                {
                    // Taken over by another instance after this claim's lease ran out (or already done): theirs counts.
                    (notHeld ??= []).Add(d.AlertRowId);
                    if (isolate)
                    {
                        await tx.ReleaseAsync("decision", ct).ConfigureAwait(false);
                    }

                    continue;
                }

                if (d.Message is not null)
                {
                    await InsertMessageAsync(c, tx, d.Message, d.AlertRowId, ctx, duplicateIsConflict: true).ConfigureAwait(false);
                }

                if (d.StormKey is { } key && d.Storm is not null)
                {
                    await WriteStormAsync(c, tx, key.Device, key.Code, d.Storm, releaseClaim: false, ct).ConfigureAwait(false);
                    current[key] = d.Storm;
                }

                if (isolate)
                {
                    await tx.ReleaseAsync("decision", ct).ConfigureAwait(false);
                }
            }
            catch (SpoolConflictException ex) when (isolate)
            {
                // The rollback let go of the row: fenced again, as another instance may have claimed it meanwhile.
                await tx.RollbackAsync("decision", ct).ConfigureAwait(false);
                if (await ExecAsync(c, tx, ct,
                    ParkClaimedAlert,
                    Truncate(ex.Message), ctx.NowMs, d.AlertRowId, _owner).ConfigureAwait(false) == 0)
                {
                    (notHeld ??= []).Add(d.AlertRowId);
                    continue;
                }

                (parked ??= []).Add(new ParkedAlert(d.AlertRowId, ex.Message));
            }
        }

        if (stale.Count > 0)
        {
            // Free to be routed again at once, by whichever instance reads them first, on the state as it is now.
            await ExecAsync(c, tx, ct, "UPDATE alerts SET claimed_by=NULL, claim_until=NULL WHERE rowid = ANY($1) AND status='new' AND claimed_by=$2",
                stale.ToArray(), _owner).ConfigureAwait(false);
            ctx.AlertsStored = true;
        }

        return parked is null && notHeld is null ? RoutingCommitted.All : new RoutingCommitted(parked ?? [], notHeld ?? []);
    }

    /// <inheritdoc />
    public Task<bool> RenewAlertClaimsAsync(IReadOnlyCollection<long> alertRowIds, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(alertRowIds);

        // Not durable, like the claim itself: a renewal lost in a server crash makes the alerts claimable again, and the
        // routing commit is fenced. Rows are locked in rowid order, as a routing commit updates them (its batch is sorted),
        // so a renewal and a late commit of another instance never wait on each other in a circle.
        return WriteAsync(async (c, tx, _) => await ExecAsync(c, tx, cancellationToken,
            """
            WITH mine AS (SELECT rowid FROM alerts WHERE rowid = ANY($1) AND status = 'new' AND claimed_by = $2 ORDER BY rowid FOR UPDATE)
            UPDATE alerts a SET claim_until = GREATEST(a.claim_until, $3) FROM mine WHERE a.rowid = mine.rowid
            """, alertRowIds.ToArray(), _owner, LeaseUntilMs).ConfigureAwait(false) > 0, cancellationToken, durable: false);
    }

    /// <inheritdoc />
    public Task<bool> RenewDigestClaimsAsync(IReadOnlyCollection<(string Device, string Code)> keys, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(keys);

        // The keys' locks first, as every commit that writes storm rows takes them before it touches one: a routing commit
        // writes its keys' rows in the order of its decisions, and a renewal locking them in another order while it held
        // some could wait on it in a circle.
        return WriteAsync(async (c, tx, _) =>
        {
            await LockKeysAsync(c, tx, keys, cancellationToken).ConfigureAwait(false);
            return await ExecAsync(c, tx, cancellationToken,
            """
            WITH mine AS (
              SELECT s.device, s.code FROM storm s JOIN unnest($1::text[], $2::text[]) AS k(device, code) ON s.device = k.device AND s.code = k.code
              WHERE s.claimed_by = $3 ORDER BY s.device, s.code FOR UPDATE OF s)
            UPDATE storm s SET claim_until = GREATEST(s.claim_until, $4) FROM mine WHERE s.device = mine.device AND s.code = mine.code
            """, keys.Select(k => k.Device).ToArray(), keys.Select(k => k.Code).ToArray(), _owner, LeaseUntilMs).ConfigureAwait(false) > 0;
        }, cancellationToken, durable: false);
    }

    private static Task WriteStormAsync(NpgsqlConnection c, NpgsqlTransaction tx, string device, string code, StormState storm, bool releaseClaim, CancellationToken ct) =>
        ExecAsync(c, tx, ct,
            $"""
            INSERT INTO storm(device, code, last_mail_at, last_raised_message_id, hold_clears, incident_open) VALUES($1,$2,$3,$4,$5,$6)
            ON CONFLICT (device, code) DO UPDATE SET last_mail_at=excluded.last_mail_at, last_raised_message_id=excluded.last_raised_message_id,
              hold_clears=excluded.hold_clears, incident_open=excluded.incident_open
            {(releaseClaim ? ", claimed_by=NULL, claim_until=NULL" : string.Empty)}
            """, Text(device), Text(code), storm.LastMailAt.ToUnixTimeMilliseconds(), Text(storm.LastRaisedMessageId), storm.HoldClears, storm.IncidentOpen);

    // Returns false when the Message-ID is already there and that is a duplicate (relayed mail submitted twice).
    private static async Task<bool> InsertMessageAsync(NpgsqlConnection c, NpgsqlTransaction tx, NewMessage m, long? alertRowId, WriteContext ctx, bool duplicateIsConflict)
    {
        long now = ctx.NowMs;
        object? row;
        try
        {
            row = await ScalarAsync(c, tx, CancellationToken.None,
                $"""
                INSERT INTO messages(kind, device, alert_rowid, alert_id, message_id, envelope_from, mime, created_at, expires_at, next_attempt_at, status)
                VALUES($1,$2,$3,$4,$5,$6,$7,$8,$9,$8,'queued')
                {(duplicateIsConflict ? string.Empty : "ON CONFLICT (message_id) DO NOTHING")}
                RETURNING rowid
                """,
                m.Kind, Text(m.Device), alertRowId, Text(m.AlertId), Text(m.MessageId), Text(m.EnvelopeFrom), m.Mime, now, now + (long)ctx.MaxAge.TotalMilliseconds).ConfigureAwait(false);
        }
        catch (PostgresException ex) when (ex.SqlState == UniqueViolation)
        {
            // Message-IDs are unique by construction (MessageIds); two mails with one id is a bug, and silently keeping
            // only the first would lose the second.
            throw new SpoolConflictException($"Message-ID <{m.MessageId}> ({m.Kind}) is already in the spool; the item is parked instead of losing its mail", ex);
        }

        if (row is not long rowId)
        {
            return false;
        }

        string[] recipients = m.Recipients.Distinct(StringComparer.OrdinalIgnoreCase).Select(r => Text(r)!).ToArray();
        await ExecAsync(c, tx, CancellationToken.None, "INSERT INTO recipients(message, address, status) SELECT $1, a, 'pending' FROM unnest($2::text[]) a",
            rowId, recipients).ConfigureAwait(false);
        ctx.MessagesQueued = true;
        return true;
    }

    /// <summary>
    /// Digests due, for (device, code) keys this instance claims now: the key's storm row carries the claim, so two
    /// instances never compose the same digest while the lease lasts.
    /// </summary>
    /// <inheritdoc />
    public async Task<IReadOnlyList<DueDigest>> DueDigestsAsync(DateTimeOffset now, int maxRepeats, CancellationToken cancellationToken)
    {
        long due = now.ToUnixTimeMilliseconds();
        var keys = await WriteAsync(async (c, tx, _) =>
        {
            var wanted = await ListAsync(c, tx, cancellationToken, r => (r.GetString(0), r.GetString(1)),
                """
                SELECT DISTINCT a.device, a.code FROM alerts a LEFT JOIN storm s ON s.device = a.device AND s.code = a.code
                WHERE a.status = 'held' AND a.hold_until <= $1 AND (s.claim_until IS NULL OR s.claim_until < $2 OR s.claimed_by = $3)
                LIMIT 64
                """, due, NowMs, _owner).ConfigureAwait(false);
            if (wanted.Count == 0)
            {
                return [];
            }

            string[] devices = wanted.Select(k => k.Item1).ToArray(), codes = wanted.Select(k => k.Item2).ToArray();

            // Held repeats always follow a mail, so their key has storm state; should one not, it gets a row to claim.
            await ExecAsync(c, tx, cancellationToken,
                "INSERT INTO storm(device, code, last_mail_at) SELECT * , 0 FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING", devices, codes).ConfigureAwait(false);
            return await ListAsync(c, tx, cancellationToken, r => Claimed(r, row => (row.GetString(0), row.GetString(1))),
                $"""
                WITH picked AS (
                  SELECT s.device, s.code FROM storm s JOIN unnest($1::text[], $2::text[]) AS k(device, code) ON s.device = k.device AND s.code = k.code
                  WHERE s.claim_until IS NULL OR s.claim_until < $3 OR s.claimed_by = $4
                  FOR UPDATE OF s SKIP LOCKED)
                UPDATE storm s SET claimed_by = $4, claim_until = $5 FROM picked WHERE s.device = picked.device AND s.code = picked.code
                RETURNING s.device, s.code, {ClaimedSchema}
                """, devices, codes, NowMs, _owner, LeaseUntilMs).ConfigureAwait(false);
        }, cancellationToken, durable: false).ConfigureAwait(false);
        if (keys.Count == 0)
        {
            return [];
        }

        return await ReadAsync<IReadOnlyList<DueDigest>>(async (c, tx) =>
        {
            var result = new List<DueDigest>();
            foreach (var (device, code) in keys.OrderBy(k => k.Item1, StringComparer.Ordinal).ThenBy(k => k.Item2, StringComparer.Ordinal))
            {
                var (total, through) = (await ListAsync(c, tx, cancellationToken, r => (r.GetInt64(0), r.IsDBNull(1) ? 0L : r.GetInt64(1)),
                    "SELECT COUNT(*), MAX(rowid) FROM alerts WHERE status='held' AND device=$1 AND code=$2", device, code).ConfigureAwait(false))[0];
                if (total == 0)
                {
                    continue; // digested meanwhile by the claim's previous holder
                }

                // A digest that lists every repeat would cost as much as the storm: the oldest ones, then the latest.
                int listed = total <= maxRepeats ? maxRepeats : Math.Max(1, maxRepeats - 1);
                var alerts = await ListAsync(c, tx, cancellationToken, ReadAlert,
                    $"SELECT {AlertRow} FROM alerts WHERE status='held' AND device=$1 AND code=$2 ORDER BY rowid LIMIT $3", device, code, listed).ConfigureAwait(false);
                if (total > alerts.Count)
                {
                    alerts.AddRange(await ListAsync(c, tx, cancellationToken, ReadAlert, $"SELECT {AlertRow} FROM alerts WHERE rowid=$1", through).ConfigureAwait(false));
                }

                // One pass over all of them for what the listed ones cannot tell: their severities and how many are clears.
                var groups = await ListAsync(c, tx, cancellationToken, r => (Severity: Str(r, 0), Clears: r.GetInt64(1)),
                    "SELECT severity, COUNT(*) FILTER (WHERE state='cleared') FROM alerts WHERE status='held' AND device=$1 AND code=$2 AND rowid <= $3 GROUP BY severity",
                    device, code, through).ConfigureAwait(false);
                result.Add(new DueDigest(device, code, alerts, total, through, groups.Select(g => g.Severity).OfType<string>().ToList(), groups.Sum(g => g.Clears)));
            }

            return result;
        }, cancellationToken).ConfigureAwait(false);
    }

    // Only the holder of the key's claim may end a digest; a holder whose lease was taken over finds it is not.
    private async Task<bool> HoldsKeyAsync(NpgsqlConnection c, NpgsqlTransaction tx, string device, string code, CancellationToken ct)
    {
        await LockKeysAsync(c, tx, [(device, code)], ct).ConfigureAwait(false);
        return await ScalarAsync(c, tx, ct, "SELECT claimed_by FROM storm WHERE device=$1 AND code=$2", device, code).ConfigureAwait(false) as string == _owner;
    }

    /// <inheritdoc />
    public Task<bool> CommitDigestAsync(DueDigest digest, NewMessage message, StormState storm, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(digest);
        ArgumentNullException.ThrowIfNull(message);
        ArgumentNullException.ThrowIfNull(storm);
        return WriteAsync(async (c, tx, ctx) =>
        {
            if (!await HoldsKeyAsync(c, tx, digest.Device, digest.Code, cancellationToken).ConfigureAwait(false))
            {
                return false;
            }

            await ExecAsync(c, tx, cancellationToken,
                "UPDATE alerts SET status='digested', digest_message=$4 WHERE device=$1 AND code=$2 AND status='held' AND rowid <= $3",
                digest.Device, digest.Code, digest.ThroughRowId, Text(message.MessageId)).ConfigureAwait(false);
            await InsertMessageAsync(c, tx, message, null, ctx, duplicateIsConflict: true).ConfigureAwait(false);
            await WriteStormAsync(c, tx, digest.Device, digest.Code, storm, releaseClaim: true, cancellationToken).ConfigureAwait(false);
            return true;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<bool> UnrouteDigestAsync(DueDigest digest, string route, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(digest);
        ArgumentNullException.ThrowIfNull(route);
        return WriteAsync(async (c, tx, _) =>
        {
            if (!await HoldsKeyAsync(c, tx, digest.Device, digest.Code, cancellationToken).ConfigureAwait(false))
            {
                return false;
            }

            await ExecAsync(c, tx, cancellationToken,
                "UPDATE alerts SET status='unrouted', route=$4 WHERE device=$1 AND code=$2 AND status='held' AND rowid <= $3",
                digest.Device, digest.Code, digest.ThroughRowId, Text(route)).ConfigureAwait(false);
            await ExecAsync(c, tx, cancellationToken, "UPDATE storm SET claimed_by=NULL, claim_until=NULL WHERE device=$1 AND code=$2",
                digest.Device, digest.Code).ConfigureAwait(false);
            return true;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<SpooledAlert>> HeldRepeatsAsync(DueDigest digest, long afterRowId, int max, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(digest);
        return ReadAsync<IReadOnlyList<SpooledAlert>>(async (c, tx) => await ListAsync(c, tx, cancellationToken, ReadAlert,
            $"SELECT {AlertRow} FROM alerts WHERE status='held' AND device=$1 AND code=$2 AND rowid > $3 AND rowid <= $4 ORDER BY rowid LIMIT $5",
            digest.Device, digest.Code, afterRowId, digest.ThroughRowId, max).ConfigureAwait(false), cancellationToken);
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<long>> ParkRepeatsAsync(DueDigest digest, IReadOnlyList<ParkedAlert> repeats, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(digest);
        ArgumentNullException.ThrowIfNull(repeats);
        return WriteAsync<IReadOnlyList<long>>(async (c, tx, ctx) =>
        {
            if (repeats.Count == 0 || !await HoldsKeyAsync(c, tx, digest.Device, digest.Code, cancellationToken).ConfigureAwait(false))
            {
                return [];
            }

            // The claim stays: the digest of the repeats still held is this instance's to send next.
            return await ListAsync(c, tx, cancellationToken, r => r.GetInt64(0),
                """
                UPDATE alerts a SET status='parked', reason=p.reason, parked_at=$3 FROM unnest($1::bigint[], $2::text[]) AS p(rowid, reason)
                WHERE a.rowid = p.rowid AND a.device=$4 AND a.code=$5 AND a.status='held' RETURNING a.rowid
                """,
                repeats.Select(r => r.AlertRowId).ToArray(), repeats.Select(r => Truncate(Text(r.Reason)!)).ToArray(), ctx.NowMs, digest.Device, digest.Code).ConfigureAwait(false);
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<string>> ParkDigestAsync(DueDigest digest, string reason, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(digest);
        ArgumentNullException.ThrowIfNull(reason);
        return WriteAsync<IReadOnlyList<string>>(async (c, tx, ctx) =>
        {
            if (!await HoldsKeyAsync(c, tx, digest.Device, digest.Code, cancellationToken).ConfigureAwait(false))
            {
                return [];
            }

            var parked = await ListAsync(c, tx, cancellationToken, r => r.GetString(0),
                "UPDATE alerts SET status='parked', reason=$1, parked_at=$2 WHERE device=$3 AND code=$4 AND status='held' AND rowid <= $5 RETURNING alert_id",
                Truncate(Text(reason)!), ctx.NowMs, digest.Device, digest.Code, digest.ThroughRowId).ConfigureAwait(false);
            await ExecAsync(c, tx, cancellationToken, "UPDATE storm SET claimed_by=NULL, claim_until=NULL WHERE device=$1 AND code=$2",
                digest.Device, digest.Code).ConfigureAwait(false);
            return parked;
        }, cancellationToken);
    }

    /// <summary>The earliest held digest this instance could claim: one another instance holds counts from its lease's end.</summary>
    /// <inheritdoc />
    public Task<DateTimeOffset?> NextDigestDueAsync(CancellationToken cancellationToken) =>
        ReadAsync(async (c, tx) => await ScalarAsync(c, tx, cancellationToken,
            """
            SELECT MIN(GREATEST(a.hold_until, CASE WHEN s.claimed_by <> $1 THEN COALESCE(s.claim_until, 0) ELSE 0 END))
            FROM alerts a LEFT JOIN storm s ON s.device = a.device AND s.code = a.code WHERE a.status = 'held'
            """, _owner).ConfigureAwait(false) is long ms ? FromMs(ms) : (DateTimeOffset?)null, cancellationToken);

    /// <summary>Queued mail due now, claimed for this instance (see <see cref="NewAlertsAsync"/>), with its pending recipients.</summary>
    /// <inheritdoc />
    public Task<IReadOnlyList<QueuedMessage>> DueMessagesAsync(DateTimeOffset now, int max, IReadOnlySet<long> exclude, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(exclude);
        return WriteAsync<IReadOnlyList<QueuedMessage>>(async (c, tx, _) =>
        {
            var claimed = await ListAsync(c, tx, cancellationToken,
                r => Claimed(r, row => (Message: new QueuedMessage(row.GetInt64(0), row.GetString(1), Str(row, 2), Str(row, 3), row.GetString(4), row.GetString(5), [],
                    (byte[])row.GetValue(6), row.GetInt32(7), FromMs(row.GetInt64(8)), FromMs(row.GetInt64(9))), Due: row.GetInt64(10))),
                $"""
                WITH picked AS (
                  SELECT rowid FROM messages
                  WHERE status = 'queued' AND next_attempt_at <= $1 AND (claim_until IS NULL OR claim_until < $2 OR claimed_by = $3) AND rowid <> ALL($4)
                  ORDER BY next_attempt_at, rowid LIMIT $5 FOR UPDATE SKIP LOCKED)
                UPDATE messages m SET claimed_by = $3, claim_until = $6 FROM picked WHERE m.rowid = picked.rowid
                RETURNING m.rowid, m.kind, m.device, m.alert_id, m.message_id, m.envelope_from, m.mime, m.attempts, m.created_at, m.expires_at, m.next_attempt_at, {ClaimedSchema}
                """, now.ToUnixTimeMilliseconds(), NowMs, _owner, exclude.ToArray(), max, LeaseUntilMs).ConfigureAwait(false);
            if (claimed.Count == 0)
            {
                return [];
            }

            var list = claimed.OrderBy(m => m.Due).ThenBy(m => m.Message.RowId).Select(m => m.Message).ToList();

            var recipients = (await ListAsync(c, tx, cancellationToken, r => (r.GetInt64(0), r.GetString(1)),
                "SELECT message, address FROM recipients WHERE message = ANY($1) AND status='pending' ORDER BY message, address COLLATE \"C\"",
                list.Select(m => m.RowId).ToArray()).ConfigureAwait(false)).ToLookup(r => r.Item1, r => r.Item2);
            return list.Select(m => m with { PendingRecipients = recipients[m.RowId].ToList() }).ToList();
        }, cancellationToken, durable: false);
    }

    /// <summary>The earliest time queued mail is due for this instance: mail another instance holds counts from its lease's end.</summary>
    /// <inheritdoc />
    public Task<DateTimeOffset?> NextMessageDueAsync(IReadOnlySet<long> exclude, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(exclude);
        return ReadAsync(async (c, tx) => await ScalarAsync(c, tx, cancellationToken,
            "SELECT MIN(CASE WHEN claimed_by <> $1 AND claim_until > next_attempt_at THEN claim_until ELSE next_attempt_at END) FROM messages WHERE status='queued' AND rowid <> ALL($2)",
            _owner, exclude.ToArray()).ConfigureAwait(false) is long ms ? FromMs(ms) : (DateTimeOffset?)null, cancellationToken);
    }

    /// <summary>Records recipients delivered to while the attempt goes on, only while this instance still holds the message's claim.</summary>
    /// <inheritdoc />
    public Task<bool> RecordSentRecipientsAsync(long rowId, IReadOnlyList<RecipientResult> sent, CancellationToken cancellationToken)
    {
        SpoolArguments.OnlySent(sent);
        return WriteAsync(async (c, tx, _) =>
        {
            var rows = await ListAsync(c, tx, cancellationToken, r => (Status: r.GetString(0), Holder: Str(r, 1)),
                "SELECT status, claimed_by FROM messages WHERE rowid=$1 FOR UPDATE", rowId).ConfigureAwait(false);
            if (rows is not [{ Status: MessageStatus.Queued } row] || row.Holder != _owner)
            {
                return false; // taken over after the lease ran out (the holder now sends what is pending), or cancelled
            }

            await ExecAsync(c, tx, cancellationToken,
                """
                UPDATE recipients r SET status='sent', reply=u.reply
                FROM unnest($2::text[], $3::text[]) AS u(address, reply) WHERE r.message = $1 AND r.address = u.address
                """, rowId, sent.Select(r => Text(r.Address)).ToArray(), sent.Select(r => Text(r.Reply)).ToArray()).ConfigureAwait(false);
            return true;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task UnclaimMessagesAsync(IReadOnlyCollection<long> rowIds, CancellationToken cancellationToken) =>
        rowIds.Count == 0 ? Task.CompletedTask : WriteAsync(async (c, tx, ctx) =>
        {
            // Claims only, like taking them (durable=false); the others look at once.
            ctx.MessagesQueued = await ExecAsync(c, tx, cancellationToken,
                "UPDATE messages SET claimed_by = NULL, claim_until = NULL WHERE rowid = ANY($1) AND claimed_by = $2 AND status = 'queued'",
                rowIds.ToArray(), _owner).ConfigureAwait(false) > 0;
            return true;
        }, cancellationToken, durable: false);

    /// <inheritdoc />
    public Task<bool> RenewClaimAsync(long rowId, CancellationToken cancellationToken) =>
        // Durable: a renewal lost in a server crash would let another instance take over an attempt still under way.
        // GREATEST: a clock that stepped back never shortens a claim.
        WriteAsync(async (c, tx, _) => await ExecAsync(c, tx, cancellationToken,
            "UPDATE messages SET claim_until = GREATEST(claim_until, $1) WHERE rowid = $2 AND status = 'queued' AND claimed_by = $3",
            LeaseUntilMs, rowId, _owner).ConfigureAwait(false) == 1, cancellationToken);

    /// <summary>Records an attempt's results, only while this instance still holds the message's claim.</summary>
    /// <inheritdoc />
    public Task<DeliveryCommitted> CommitDeliveryAsync(DeliveryCommit commit, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(commit);
        return WriteAsync(async (c, tx, ctx) =>
        {
            var rows = await ListAsync(c, tx, cancellationToken,
                r => (Attempts: r.GetInt32(0), Status: r.GetString(1), Holder: Str(r, 2), Kind: r.GetString(3), Device: Str(r, 4), MessageId: r.GetString(5)),
                "SELECT attempts, status, claimed_by, kind, device, message_id FROM messages WHERE rowid=$1 FOR UPDATE", commit.RowId).ConfigureAwait(false);
            if (rows.Count == 0)
            {
                return DeliveryCommitted.Of(DeliveryRecorded.Ignored);
            }

            var (attempts, current, holder, kind, device, messageId) = rows[0];
            if (current == MessageStatus.Cancelled)
            {
                return await RecordAfterCancelAsync(c, tx, ctx, commit, attempts, cancellationToken).ConfigureAwait(false);
            }

            if (current != MessageStatus.Queued || holder != _owner)
            {
                return DeliveryCommitted.Of(DeliveryRecorded.Ignored); // taken over after the lease ran out: the other instance records its own attempt
            }

            await InsertAttemptAsync(c, tx, ctx, commit, attempts, cancellationToken).ConfigureAwait(false);
            if (commit.Results.Count > 0)
            {
                await ExecAsync(c, tx, cancellationToken,
                    """
                    UPDATE recipients r SET status = CASE WHEN u.outcome IN ('sent', 'failed') THEN u.outcome ELSE r.status END, reply = u.reply
                    FROM unnest($2::text[], $3::text[], $4::text[]) AS u(address, outcome, reply) WHERE r.message = $1 AND r.address = u.address
                    """, commit.RowId, commit.Results.Select(r => Text(r.Address)).ToArray(), commit.Results.Select(r => r.Outcome).ToArray(),
                    commit.Results.Select(r => Text(r.Reply)).ToArray()).ConfigureAwait(false);
            }

            var (pending, failed, sent) = (await ListAsync(c, tx, cancellationToken, r => (r.GetInt64(0), r.GetInt64(1), r.GetInt64(2)),
                "SELECT COUNT(*) FILTER (WHERE status='pending'), COUNT(*) FILTER (WHERE status='failed'), COUNT(*) FILTER (WHERE status='sent') FROM recipients WHERE message=$1",
                commit.RowId).ConfigureAwait(false))[0];
            string status = pending > 0 ? MessageStatus.Queued : failed == 0 ? MessageStatus.Sent : sent == 0 ? MessageStatus.Failed : MessageStatus.Partial;
            await ExecAsync(c, tx, cancellationToken,
                """
                UPDATE messages SET status=$1, attempts=attempts+1, last_reply=$2, next_attempt_at=COALESCE($3, next_attempt_at), finished_at=$4,
                  claimed_by=NULL, claim_until=NULL
                WHERE rowid=$5
                """, status, Text(commit.Results.Count > 0 ? commit.Results[^1].Reply : null), commit.NextAttemptAt?.ToUnixTimeMilliseconds(),
                pending > 0 ? null : ctx.NowMs, commit.RowId).ConfigureAwait(false);
            if (commit.Notice is not null)
            {
                await InsertMessageAsync(c, tx, commit.Notice, null, ctx, duplicateIsConflict: true).ConfigureAwait(false);
            }

            if (DeliveryReceipts.FailedBefore(failed, commit))
            {
                return DeliveryCommitted.Of(DeliveryRecorded.RecordedAlreadyFailed);
            }

            if (commit.Receipt is not null)
            {
                await KeepAsync(c, tx, commit.Receipt, commit.ReceiptsPerDevice, ctx.NowMs, cancellationToken).ConfigureAwait(false);
            }

            return new DeliveryCommitted(DeliveryRecorded.Recorded,
                await GiveDigestReceiptsAsync(c, tx, ctx, commit, kind, device, messageId, cancellationToken).ConfigureAwait(false));
        }, cancellationToken);
    }

    // Looked up only for a digest's result: a single alert's mail pays nothing for it.
    private static async Task<IReadOnlyList<KeptReceipt>> GiveDigestReceiptsAsync(NpgsqlConnection c, NpgsqlTransaction tx, WriteContext ctx, DeliveryCommit commit,
        string kind, string? device, string messageId, CancellationToken ct)
    {
        if (commit.DigestReceipt is not { } owed || kind != "digest" || device is null)
        {
            return [];
        }

        var receipts = new List<KeptReceipt>();
        foreach (string alertId in await AlertsOfAsync(c, tx, kind, device, null, messageId, commit.ReceiptsPerDevice, ct).ConfigureAwait(false))
        {
            var receipt = owed.For(device, alertId);
            if (owed.IsFinal)
            {
                await KeepAsync(c, tx, receipt, commit.ReceiptsPerDevice, ctx.NowMs, ct).ConfigureAwait(false);
            }

            receipts.Add(receipt);
        }

        return receipts;
    }

    private static Task InsertAttemptAsync(NpgsqlConnection c, NpgsqlTransaction tx, WriteContext ctx, DeliveryCommit commit, int attempts, CancellationToken ct) =>
        ExecAsync(c, tx, ct,
            "INSERT INTO attempts(message, attempt, at, results) VALUES($1,$2,$3,$4) ON CONFLICT (message, attempt) DO UPDATE SET at=excluded.at, results=excluded.results",
            commit.RowId, attempts + 1, ctx.NowMs, JsonSerializer.Serialize(commit.Results));

    // The operator cancelled the message while this attempt was under way (the cancel also ended the claim). The attempt
    // happened and stays on record; whether the cancel stands depends on whether the attempt had already delivered the mail.
    private static async Task<DeliveryCommitted> RecordAfterCancelAsync(NpgsqlConnection c, NpgsqlTransaction tx, WriteContext ctx, DeliveryCommit commit, int attempts,
        CancellationToken ct)
    {
        await InsertAttemptAsync(c, tx, ctx, commit, attempts, ct).ConfigureAwait(false);
        string? lastReply = Text(commit.Results.Count > 0 ? commit.Results[^1].Reply : null);
        var sent = commit.Results.Where(r => r.Outcome == "sent").ToList();
        if (sent.Count == 0)
        {
            // The cancel's failed receipt, kept with it, stands.
            await ExecAsync(c, tx, ct, "UPDATE messages SET attempts=attempts+1, last_reply=COALESCE($1, last_reply) WHERE rowid=$2", lastReply, commit.RowId).ConfigureAwait(false);
            return DeliveryCommitted.Of(DeliveryRecorded.CancelStood);
        }

        await ExecAsync(c, tx, ct,
            """
            UPDATE recipients r SET status='sent', reply=u.reply
            FROM unnest($2::text[], $3::text[]) AS u(address, reply) WHERE r.message = $1 AND r.address = u.address
            """, commit.RowId, sent.Select(r => Text(r.Address)).ToArray(), sent.Select(r => Text(r.Reply)).ToArray()).ConfigureAwait(false);
        var (status, kind, device, alertId, messageId) = (await ListAsync(c, tx, ct, r => (r.GetString(0), r.GetString(1), Str(r, 2), Str(r, 3), r.GetString(4)),
            """
            UPDATE messages SET attempts=attempts+1, last_reply=$1, reason=$2 || COALESCE(reason, ''),
              status=CASE WHEN EXISTS (SELECT 1 FROM recipients WHERE message=$3 AND status<>'sent') THEN 'partial' ELSE 'sent' END
            WHERE rowid=$3
            RETURNING status, kind, device, alert_id, message_id
            """, lastReply, SpoolReasons.CancelTooLate, commit.RowId).ConfigureAwait(false))[0];
        if (status == MessageStatus.Partial)
        {
            return DeliveryCommitted.Of(DeliveryRecorded.CancelTooLateForSome);
        }

        // Everyone has the mail after all: the failed receipts the cancel owed are withdrawn (the device may have one
        // already; the relayed that follows is the last word).
        if (device is not null && CancelReceipts.Concerns(kind))
        {
            var alerts = await AlertsOfAsync(c, tx, kind, device, alertId, messageId, commit.ReceiptsPerDevice, ct).ConfigureAwait(false);
            await ExecAsync(c, tx, ct, "DELETE FROM receipts WHERE device=$1 AND alert_id = ANY($2) AND state='failed'", device, alerts.ToArray()).ConfigureAwait(false);
        }

        if (commit.Receipt is not null)
        {
            await KeepAsync(c, tx, commit.Receipt, commit.ReceiptsPerDevice, ctx.NowMs, ct).ConfigureAwait(false);
        }

        return new DeliveryCommitted(DeliveryRecorded.CancelTooLate, await GiveDigestReceiptsAsync(c, tx, ctx, commit, kind, device, messageId, ct).ConfigureAwait(false));
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<ManagedDevice>> ManagedDevicesAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<ManagedDevice>>(async (c, tx) => await ListAsync(c, tx, cancellationToken,
            r => new ManagedDevice(r.GetString(0), Str(r, 1), Str(r, 2), Str(r, 3), r.IsDBNull(4) ? null : JsonSerializer.Deserialize<List<string>>(r.GetString(4)),
                r.GetBoolean(5), r.IsDBNull(6) ? null : TimeSpan.FromMilliseconds(r.GetInt64(6)), FromMs(r.GetInt64(7))),
            "SELECT id, secret, name, site, owners, disabled, silent_after_ms, updated_at FROM devices ORDER BY id COLLATE \"C\"").ConfigureAwait(false), cancellationToken);

    /// <inheritdoc />
    public Task SaveDeviceAsync(ManagedDevice device, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(device);
        return WriteAsync((c, tx, _) => ExecAsync(c, tx, cancellationToken,
            """
            INSERT INTO devices(id, secret, name, site, owners, disabled, silent_after_ms, updated_at) VALUES($1,$2,$3,$4,$5,$6,$7,$8)
            ON CONFLICT (id) DO UPDATE SET secret=excluded.secret, name=excluded.name, site=excluded.site, owners=excluded.owners, disabled=excluded.disabled,
              silent_after_ms=excluded.silent_after_ms, updated_at=excluded.updated_at
            """, device.Id, device.SecretHash, Text(device.Name), Text(device.Site), device.Owners is null ? null : JsonSerializer.Serialize(device.Owners),
            device.Disabled, device.SilentAfter is { } after ? (long)after.TotalMilliseconds : null, device.UpdatedAt.ToUnixTimeMilliseconds()), cancellationToken);
    }

    /// <inheritdoc />
    public Task<MessageState?> GetMessageAsync(string messageId, CancellationToken cancellationToken) =>
        ReadAsync(async (c, tx) => (await ListAsync(c, tx, cancellationToken,
            r => new MessageState(r.GetInt64(0), r.GetString(1), r.GetString(2), r.GetInt32(3), FromMs(r.GetInt64(4)), Str(r, 5), Str(r, 6)),
            "SELECT rowid, kind, status, attempts, next_attempt_at, last_reply, reason FROM messages WHERE message_id=$1", Text(messageId)).ConfigureAwait(false)).FirstOrDefault(),
            cancellationToken);

    /// <inheritdoc />
    public Task<bool> ParkMessageAsync(long rowId, string reason, DateTimeOffset parkedAt, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(reason);

        // Parked already by this park: written again after its commit's answer was lost (the connection broke as it
        // committed), which still counts; another instance's park of the same mail has its own time.
        return WriteAsync(async (c, tx, _) => 1 == await ExecAsync(c, tx, cancellationToken,
            "UPDATE messages SET status='parked', reason=$1, parked_at=$2, claimed_by=NULL, claim_until=NULL WHERE rowid=$3 AND ((status='queued' AND (claimed_by IS NULL OR claimed_by=$4)) OR (status='parked' AND reason=$1 AND parked_at=$2))",
            Truncate(Text(reason)!), parkedAt.ToUnixTimeMilliseconds(), rowId, _owner).ConfigureAwait(false), cancellationToken);
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<string>> DigestAlertIdsAsync(string device, string messageId, int max, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<string>>(async (c, tx) => await AlertsOfAsync(c, tx, "digest", Text(device)!, null, Text(messageId)!, max, cancellationToken).ConfigureAwait(false),
            cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<ParkedItem>> ParkedAsync(int max, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<ParkedItem>>(async (c, tx) => await ListAsync(c, tx, cancellationToken,
            r => new ParkedItem(r.GetString(0), r.GetInt64(1), Str(r, 2), Str(r, 3), FromMs(r.IsDBNull(4) ? 0 : r.GetInt64(4)), Str(r, 5) ?? string.Empty),
            """
            SELECT * FROM (
              SELECT 'alert' AS kind, rowid, device, alert_id AS reference, parked_at, reason FROM alerts WHERE status='parked'
              UNION ALL
              SELECT 'message', rowid, device, message_id, parked_at, reason FROM messages WHERE status='parked') p
            ORDER BY parked_at DESC NULLS LAST LIMIT $1
            """, max).ConfigureAwait(false), cancellationToken);

    /// <inheritdoc />
    public Task<bool> ReleaseAsync(string kind, long rowId, CancellationToken cancellationToken) =>
        WriteAsync(async (c, tx, ctx) =>
        {
            int changed = kind switch
            {
                ParkedKinds.Alert => await ExecAsync(c, tx, cancellationToken,
                    "UPDATE alerts SET status='new', reason=NULL, parked_at=NULL, claimed_by=NULL, claim_until=NULL WHERE rowid=$1 AND status='parked'", rowId).ConfigureAwait(false),
                ParkedKinds.Message => await ExecAsync(c, tx, cancellationToken,
                    $"""
                    UPDATE messages SET status='queued', reason=NULL, parked_at=NULL, next_attempt_at=$2, expires_at=GREATEST(expires_at, $3), claimed_by=NULL, claim_until=NULL
                    WHERE rowid=$1 AND status='parked' AND kind<>'{QuarantinedMail.Kind}'
                    """, rowId, ctx.NowMs, ctx.NowMs + (long)ctx.MaxAge.TotalMilliseconds).ConfigureAwait(false),
                _ => throw new ArgumentException($"kind must be '{ParkedKinds.Alert}' or '{ParkedKinds.Message}', not '{kind}'", nameof(kind)),
            };
            ctx.AlertsStored |= changed > 0 && kind == ParkedKinds.Alert;
            ctx.MessagesQueued |= changed > 0 && kind == ParkedKinds.Message;
            return changed > 0;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<CancelResult> CancelAsync(string kind, long rowId, string reason, int receiptsPerDevice, CancellationToken cancellationToken)
    {
        if (kind is not (ParkedKinds.Alert or ParkedKinds.Message))
        {
            throw new ArgumentException($"kind must be '{ParkedKinds.Alert}' or '{ParkedKinds.Message}', not '{kind}'", nameof(kind));
        }

        ArgumentNullException.ThrowIfNull(reason);
        return WriteAsync(async (c, tx, ctx) =>
        {
            string why = Truncate(Text(reason)!);
            if (kind == ParkedKinds.Alert)
            {
                var alert = await ListAsync(c, tx, cancellationToken, r => (Device: r.GetString(0), AlertId: r.GetString(1)),
                    "UPDATE alerts SET status='cancelled', reason=$2 WHERE rowid=$1 AND status='parked' RETURNING device, alert_id", rowId, why).ConfigureAwait(false);
                return alert.Count == 0
                    ? CancelResult.NotCancelled
                    : new CancelResult(true, await KeepCancelReceiptsAsync(c, tx, alert[0].Device, [alert[0].AlertId], why, receiptsPerDevice, ctx, cancellationToken).ConfigureAwait(false));
            }

            var message = await ListAsync(c, tx, cancellationToken, r => (Kind: r.GetString(0), Device: Str(r, 1), AlertId: Str(r, 2), MessageId: r.GetString(3)),
                """
                UPDATE messages SET status='cancelled', reason=$2, finished_at=$3, claimed_by=NULL, claim_until=NULL WHERE rowid=$1 AND status IN ('parked', 'queued')
                RETURNING kind, device, alert_id, message_id
                """, rowId, why, ctx.NowMs).ConfigureAwait(false);
            if (message.Count == 0)
            {
                return CancelResult.NotCancelled;
            }

            int failed = await ExecAsync(c, tx, cancellationToken, "UPDATE recipients SET status='failed', reply=$2 WHERE message=$1 AND status='pending'",
                rowId, SpoolReasons.Cancelled + why).ConfigureAwait(false);
            var (messageKind, device, alertId, messageId) = message[0];
            if (failed == 0 || device is null || !CancelReceipts.Concerns(messageKind))
            {
                return new CancelResult(true, []);
            }

            var alerts = await AlertsOfAsync(c, tx, messageKind, device, alertId, messageId, receiptsPerDevice, cancellationToken).ConfigureAwait(false);
            return new CancelResult(true, await KeepCancelReceiptsAsync(c, tx, device, alerts, why, receiptsPerDevice, ctx, cancellationToken).ConfigureAwait(false));
        }, cancellationToken);
    }

    // The alerts a mail is about: an alert mail's own; a digest's held alerts (the newest ones, as many as a device keeps
    // receipts of -- a storm can put millions in one digest, and the cap would drop the rest in the same transaction).
    private static async Task<List<string>> AlertsOfAsync(NpgsqlConnection c, NpgsqlTransaction tx, string kind, string device, string? alertId, string messageId, int max,
        CancellationToken ct)
    {
        if (kind != "digest")
        {
            return alertId is null ? [] : [alertId];
        }

        var ids = await ListAsync(c, tx, ct, r => r.GetString(0), "SELECT alert_id FROM alerts WHERE device=$1 AND digest_message=$2 ORDER BY rowid DESC LIMIT $3",
            device, messageId, (long)Math.Max(1, max)).ConfigureAwait(false);
        ids.Reverse(); // kept oldest first: should the cap trim the device's oldest rows, the newest alerts keep theirs
        return ids;
    }

    private static async Task<List<KeptReceipt>> KeepCancelReceiptsAsync(NpgsqlConnection c, NpgsqlTransaction tx, string device, IReadOnlyList<string> alertIds, string why,
        int receiptsPerDevice, WriteContext ctx, CancellationToken ct)
    {
        var kept = new List<KeptReceipt>(alertIds.Count);
        foreach (string alertId in alertIds)
        {
            var receipt = CancelReceipts.For(device, alertId, ctx.Now, why);
            if (await KeepAsync(c, tx, receipt, receiptsPerDevice, ctx.NowMs, ct).ConfigureAwait(false))
            {
                kept.Add(receipt);
            }
        }

        return kept;
    }

    /// <summary>
    /// Removes what finished before the horizon (see <see cref="ISpool.PruneAsync"/>). Rows another instance's
    /// housekeeper is removing at the same moment are skipped (<c>SKIP LOCKED</c>); PostgreSQL's autovacuum reuses the
    /// space, so no pages are counted as freed here.
    /// </summary>
    /// <inheritdoc />
    public async Task<PruneResult> PruneAsync(DateTimeOffset before, int maxRows, CancellationToken cancellationToken)
    {
        long horizon = before.ToUnixTimeMilliseconds();
        long heartbeatHorizon = NowMs - (long)HeartbeatRetention.TotalMilliseconds;
        long openHorizon = StormRetention.OpenIncidentHorizonMs(before, Clock.GetUtcNow());
        var (messages, alerts, more) = await WriteAsync(async (c, tx, _) =>
        {
            long[] doomed = (await ListAsync(c, tx, cancellationToken, r => r.GetInt64(0),
                "SELECT rowid FROM messages WHERE finished_at < $1 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED", horizon, maxRows).ConfigureAwait(false)).ToArray();
            int m = 0;
            if (doomed.Length > 0)
            {
                await ExecAsync(c, tx, cancellationToken, "DELETE FROM attempts WHERE message = ANY($1)", doomed).ConfigureAwait(false);
                await ExecAsync(c, tx, cancellationToken, "DELETE FROM recipients WHERE message = ANY($1)", doomed).ConfigureAwait(false);
                m = await ExecAsync(c, tx, cancellationToken, "DELETE FROM messages WHERE rowid = ANY($1)", doomed).ConfigureAwait(false);
            }

            // Alerts that are finished (everything but new, held and parked: a parked alert waits for the operator, who
            // may release it whatever its age) and that no mail refers to any more: neither its own mail nor a storm
            // digest that covers it, which finds its alerts by digest_message to give each its receipt when it is
            // delivered, fails, is parked or cancelled -- and a parked digest waits for the operator whatever its age.
            // Keeping an alert row is what de-duplicates a retransmission; by the horizon the device has long had its PUBACK.
            // A device's open silence stays, and the record that its last silence ended unheard (SilenceSql.NotAKeptSilence).
            int a = await ExecAsync(c, tx, cancellationToken,
                $"""
                DELETE FROM alerts WHERE rowid IN (
                  SELECT rowid FROM alerts WHERE received_at < $1 AND status NOT IN ('new', 'held', 'parked')
                    AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.alert_rowid = alerts.rowid)
                    AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.message_id = alerts.digest_message)
                    AND {SilenceSql.NotAKeptSilence}
                  ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                """, horizon, maxRows).ConfigureAwait(false);
            // An open incident's state is what its clear threads onto (the raise's Message-ID): kept longer, but not for ever.
            int st = await ExecAsync(c, tx, cancellationToken,
                """
                DELETE FROM storm WHERE (device, code) IN (
                  SELECT device, code FROM storm WHERE last_mail_at < $1 AND (NOT incident_open OR last_mail_at < $3)
                    AND NOT EXISTS (SELECT 1 FROM alerts WHERE alerts.device = storm.device AND alerts.code = storm.code AND alerts.status = 'held')
                  LIMIT $2 FOR UPDATE SKIP LOCKED)
                """, horizon, maxRows, openHorizon).ConfigureAwait(false);
            int h = await ExecAsync(c, tx, cancellationToken,
                "DELETE FROM heartbeats WHERE (device, at) IN (SELECT device, at FROM heartbeats WHERE at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                Math.Max(horizon, heartbeatHorizon), maxRows).ConfigureAwait(false);
            return ((long)m, (long)a, doomed.Length >= maxRows || a >= maxRows || st >= maxRows || h >= maxRows);
        }, cancellationToken).ConfigureAwait(false);
        return new PruneResult(messages, alerts, 0, more);
    }

    /// <inheritdoc />
    public Task<SpoolCounts> CountsAsync(CancellationToken cancellationToken) =>
        ReadAsync(async (c, tx) => new SpoolCounts(
            (await ListAsync(c, tx, cancellationToken, r => (r.GetString(0), r.GetInt64(1)), "SELECT status, COUNT(*) FROM alerts GROUP BY status").ConfigureAwait(false))
                .ToDictionary(x => x.Item1, x => x.Item2, StringComparer.Ordinal),
            (await ListAsync(c, tx, cancellationToken, r => (r.GetString(0), r.GetInt64(1)), "SELECT status, COUNT(*) FROM messages GROUP BY status").ConfigureAwait(false))
                .ToDictionary(x => x.Item1, x => x.Item2, StringComparer.Ordinal)), cancellationToken);

    /// <inheritdoc />
    public Task<(string Status, string? Reason)?> GetAlertAsync(string device, string alertId, CancellationToken cancellationToken) =>
        ReadAsync(async (c, tx) => (await ListAsync(c, tx, cancellationToken, r => ((string, string?)?)(r.GetString(0), Str(r, 1)),
            "SELECT status, reason FROM alerts WHERE device=$1 AND alert_id=$2", Text(device), Text(alertId)).ConfigureAwait(false)).FirstOrDefault(), cancellationToken);
}
