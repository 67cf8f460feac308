using System.Globalization;
using Npgsql;

namespace EdgeMail.Gateway.Spool;

/// <summary>
/// The gateway instances running on a shared PostgreSQL spool, for upgrades (docs/spool.md, "Upgrading a shared spool").
/// From schema version 8 each instance keeps a row in <c>instances</c> whose heartbeat (<c>alive_until</c>) it moves a
/// lease ahead every third of a lease; it deletes the row when it stops, and the row of one that died counts until its
/// lease has run out. An upgrade is refused while any other row is alive. Gateways of version 7 and before register
/// nowhere and cannot be changed: one is recognised by the session it keeps in <c>LISTEN</c> all its life, and by the
/// work it holds claimed. Heartbeats are stamped and judged by the database server's clock, the one clock all
/// instances share.
/// </summary>
internal static class PostgresInstances
{
    /// <summary>The server's time in Unix milliseconds, as the spool counts time.</summary>
    public const string ServerNow = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

    /// <summary>
    /// How an instance of this version listens: gateways of version 7 and before send <c>LISTEN edgemail_spool</c> alone,
    /// and only such sessions are taken for an unregistered gateway (<see cref="RefuseWhileUnregisteredRunAsync"/>).
    /// </summary>
    public const string Listen = "LISTEN edgemail_spool /* a gateway registered in instances */";

    /// <summary>The message of an instance that finds the spool upgraded past its version.</summary>
    /// <param name="what">What it found: the version, or the newer gateway that registered.</param>
    /// <param name="known">The version this gateway knows.</param>
    /// <returns>The message.</returns>
    public static string Moved(string what, int known) =>
        $"{what}, while this gateway (schema version {known}) runs on it. This instance takes no more work: its code does not know what the newer "
        + "schema's rows mean. An upgrade of a shared spool needs a full stop: stop every gateway instance, then start the new version on each "
        + "(docs/spool.md, Upgrading a shared spool).";

    /// <summary>
    /// Registers this instance before it upgrades the spool, unless another is alive: then nothing changes and the
    /// upgrade is refused, naming them. The table lock keeps a running instance's heartbeat from passing in between: it
    /// heartbeats before (and is seen alive here) or after (and then finds this newer instance registered, and stops).
    /// </summary>
    /// <param name="c">The migrating connection.</param>
    /// <param name="owner">This instance.</param>
    /// <param name="version">The version this build knows.</param>
    /// <param name="lease">This instance's lease.</param>
    /// <param name="found">The spool's version.</param>
    /// <param name="ct">Cancellation.</param>
    /// <returns>A task.</returns>
    public static async Task RegisterToUpgradeAsync(NpgsqlConnection c, string owner, int version, TimeSpan lease, int found, CancellationToken ct)
    {
        await using var tx = await c.BeginTransactionAsync(ct).ConfigureAwait(false);
        await ExecAsync(c, tx, ct, "LOCK TABLE instances IN SHARE ROW EXCLUSIVE MODE").ConfigureAwait(false);
        await ExecAsync(c, tx, ct, $"DELETE FROM instances WHERE alive_until < {ServerNow}").ConfigureAwait(false);
        var alive = new List<string>();
        await using (var read = Cmd(c, tx, $"SELECT owner, version, started_at, {ServerNow} - seen_at FROM instances WHERE owner <> $1 ORDER BY started_at", owner))
        await using (var r = await read.ExecuteReaderAsync(ct).ConfigureAwait(false))
        {
            while (await r.ReadAsync(ct).ConfigureAwait(false))
            {
                alive.Add(string.Create(CultureInfo.InvariantCulture,
                    $"instance {r.GetString(0)} (schema version {r.GetInt32(1)}, started {Time(r.GetInt64(2))}, last heartbeat {r.GetInt64(3) / 1000.0:0.#} s ago)"));
            }
        }

        if (alive.Count > 0)
        {
            throw Refused(found, version, alive, lease);
        }

        await UpsertAsync(c, tx, owner, version, lease, ct).ConfigureAwait(false);
        await tx.CommitAsync(ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Refuses to upgrade a spool of version 7 or before while a gateway of that version runs on it: one that keeps its
    /// <c>LISTEN</c> session open in this database, or holds claimed work whose lease has not run out.
    /// </summary>
    /// <param name="c">The migrating connection.</param>
    /// <param name="found">The spool's version.</param>
    /// <param name="version">The version this build knows.</param>
    /// <param name="lease">This instance's lease.</param>
    /// <param name="ct">Cancellation.</param>
    /// <returns>A task.</returns>
    public static async Task RefuseWhileUnregisteredRunAsync(NpgsqlConnection c, int found, int version, TimeSpan lease, CancellationToken ct)
    {
        var running = new List<string>();
        await using (var sessions = Cmd(c, null, """
            SELECT pid, COALESCE(host(client_addr), 'a local socket'), backend_start FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ~* '^\s*LISTEN\s+"?edgemail_spool"?\s*;?\s*$'
            ORDER BY backend_start
            """))
        await using (var r = await sessions.ExecuteReaderAsync(ct).ConfigureAwait(false))
        {
            while (await r.ReadAsync(ct).ConfigureAwait(false))
            {
                running.Add(string.Create(CultureInfo.InvariantCulture,
                    $"a gateway of schema version {found} or before, listening on session pid {r.GetInt32(0)} from {r.GetString(1)} since {r.GetDateTime(2):yyyy-MM-dd HH:mm:ss}Z"));
            }
        }

        // No index on claim_until: a scan, once, at the upgrade.
        await using (var claims = Cmd(c, null, $"""
            SELECT claimed_by, MAX(claim_until) FROM (
              SELECT claimed_by, claim_until FROM alerts WHERE claim_until > {ServerNow}
              UNION ALL SELECT claimed_by, claim_until FROM messages WHERE claim_until > {ServerNow}
              UNION ALL SELECT claimed_by, claim_until FROM storm WHERE claim_until > {ServerNow}) AS live
            WHERE claimed_by IS NOT NULL GROUP BY claimed_by ORDER BY claimed_by
            """))
        await using (var r = await claims.ExecuteReaderAsync(ct).ConfigureAwait(false))
        {
            while (await r.ReadAsync(ct).ConfigureAwait(false))
            {
                running.Add($"instance {r.GetString(0)}, which holds claimed work until {Time(r.GetInt64(1))}");
            }
        }

        if (running.Count > 0)
        {
            throw Refused(found, version, running, lease);
        }
    }

    /// <summary>Registers this instance (or renews its row), and removes the rows of instances that died.</summary>
    /// <param name="c">Connection.</param>
    /// <param name="owner">This instance.</param>
    /// <param name="version">The version this build knows.</param>
    /// <param name="lease">This instance's lease.</param>
    /// <param name="ct">Cancellation.</param>
    /// <returns>A task.</returns>
    public static async Task RegisterAsync(NpgsqlConnection c, string owner, int version, TimeSpan lease, CancellationToken ct)
    {
        await using var tx = await c.BeginTransactionAsync(ct).ConfigureAwait(false);
        await ExecAsync(c, tx, ct, $"DELETE FROM instances WHERE alive_until < {ServerNow}").ConfigureAwait(false);
        await UpsertAsync(c, tx, owner, version, lease, ct).ConfigureAwait(false);
        await tx.CommitAsync(ct).ConfigureAwait(false);
    }

    /// <summary>
    /// One heartbeat: looks whether the spool moved past this instance's version, or a newer gateway registered to
    /// upgrade it, and otherwise moves this instance's <c>alive_until</c> a lease ahead.
    /// </summary>
    /// <param name="c">Connection.</param>
    /// <param name="owner">This instance.</param>
    /// <param name="version">The version this build knows.</param>
    /// <param name="lease">This instance's lease.</param>
    /// <param name="ct">Cancellation.</param>
    /// <returns>Null, or what moved the spool past this instance (<see cref="Moved"/>).</returns>
    public static async Task<string?> HeartbeatAsync(NpgsqlConnection c, string owner, int version, TimeSpan lease, CancellationToken ct)
    {
        await using var tx = await c.BeginTransactionAsync(ct).ConfigureAwait(false);

        // The version first: a newer schema may have changed instances itself.
        await using (var read = Cmd(c, tx, "SELECT MAX(version) FROM schema_version"))
        {
            if (await read.ExecuteScalarAsync(ct).ConfigureAwait(false) is int schema && schema > version)
            {
                return Moved($"The PostgreSQL spool was upgraded to schema version {schema}", version);
            }
        }

        // Waits while an instance that starts looks for running ones (its table lock), and then sees it below.
        await UpsertAsync(c, tx, owner, version, lease, ct).ConfigureAwait(false);
        await using (var newer = Cmd(c, tx, $"SELECT owner, version FROM instances WHERE version > $1 AND alive_until >= {ServerNow} ORDER BY version DESC LIMIT 1", version))
        await using (var r = await newer.ExecuteReaderAsync(ct).ConfigureAwait(false))
        {
            if (await r.ReadAsync(ct).ConfigureAwait(false))
            {
                return Moved($"A gateway of schema version {r.GetInt32(1)} ({r.GetString(0)}) started on the PostgreSQL spool to upgrade it", version);
            }
        }

        await tx.CommitAsync(ct).ConfigureAwait(false);
        return null;
    }

    /// <summary>Removes this instance's row (a graceful stop, or a start that failed); best effort: otherwise it runs out.</summary>
    /// <param name="c">Connection.</param>
    /// <param name="owner">This instance.</param>
    /// <returns>A task.</returns>
    public static async Task LeaveAsync(NpgsqlConnection c, string owner)
    {
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await ExecAsync(c, null, timeout.Token, "DELETE FROM instances WHERE owner = $1", owner).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is NpgsqlException or InvalidOperationException or OperationCanceledException)
        {
            // Its heartbeat runs out after a lease.
        }
    }

    /// <summary>Removes this instance's row in a transaction of the caller's (a graceful stop).</summary>
    /// <param name="c">Connection.</param>
    /// <param name="tx">Transaction.</param>
    /// <param name="owner">This instance.</param>
    /// <param name="ct">Cancellation.</param>
    /// <returns>A task.</returns>
    public static Task LeaveAsync(NpgsqlConnection c, NpgsqlTransaction tx, string owner, CancellationToken ct) =>
        ExecAsync(c, tx, ct, "DELETE FROM instances WHERE owner = $1", owner);

    private static Task UpsertAsync(NpgsqlConnection c, NpgsqlTransaction tx, string owner, int version, TimeSpan lease, CancellationToken ct) =>
        ExecAsync(c, tx, ct, $"""
            INSERT INTO instances(owner, version, started_at, seen_at, alive_until) VALUES($1, $2, {ServerNow}, {ServerNow}, {ServerNow} + $3)
            ON CONFLICT (owner) DO UPDATE SET version = excluded.version, seen_at = excluded.seen_at, alive_until = excluded.alive_until
            """, owner, version, (long)lease.TotalMilliseconds);

    private static SpoolException Refused(int found, int version, List<string> running, TimeSpan lease) => new(
        $"Not upgrading the PostgreSQL spool from schema version {found} to {version}: other gateway instances run on it: {string.Join("; ", running)}. "
        + "Those instances would go on handling rows whose meaning the upgrade changes. An upgrade of a shared spool needs a full stop: "
        + "stop every gateway instance on this spool, then start the new version (docs/spool.md, Upgrading a shared spool). "
        + string.Create(CultureInfo.InvariantCulture, $"An instance that died counts until its heartbeat or its claims run out, a lease (Spool:ClaimLease, {lease}) after its last; ")
        + "a session left open by a machine that is gone can be ended with SELECT pg_terminate_backend(pid).");

    private static string Time(long unixMs) => DateTimeOffset.FromUnixTimeMilliseconds(unixMs).UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss'Z'", CultureInfo.InvariantCulture);

    private static NpgsqlCommand Cmd(NpgsqlConnection c, NpgsqlTransaction? tx, string sql, params object[] args)
    {
        var command = new NpgsqlCommand(sql, c, tx);
        foreach (object arg in args)
        {
            command.Parameters.Add(new NpgsqlParameter { Value = arg });
        }

        return command;
    }

    private static async Task ExecAsync(NpgsqlConnection c, NpgsqlTransaction? tx, CancellationToken ct, string sql, params object[] args)
    {
        await using var command = Cmd(c, tx, sql, args);
        await command.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
    }
}
