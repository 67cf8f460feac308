using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Spool;

/// <summary>
/// This instance's heartbeat in <c>instances</c>, and what keeps it from working on a schema newer than its code
/// (docs/spool.md, "Upgrading a shared spool"). An upgrade is refused while this heartbeat is alive, so the schema moves
/// under a running instance only when its heartbeat lapsed (it could not reach the database, or it was paused for a
/// lease) or the version was changed by hand. Each heartbeat looks at the version; a write after this instance went
/// half a lease without one heartbeats first; and every claim reads the version in its own statement. Once the schema
/// is newer, the instance takes no more work: every write fails with the reason, and <see cref="SchemaMoved"/> is raised
/// once (the gateway then stops, exit code 70).
/// </summary>
public sealed partial class PostgresSpool
{
    // The claims' statements return it beside each row claimed: read in the same snapshot as the claim.
    private const string ClaimedSchema = "(SELECT MAX(version) FROM schema_version)";

    private readonly SemaphoreSlim _heartbeat = new(1, 1);
    private long _confirmedUntilMs;
    private string? _schemaMoved;

    /// <summary>
    /// Raised once, with what happened and what to do, when the spool's schema is found newer than this build's: this
    /// instance takes no more work from then on.
    /// </summary>
    public event Action<string>? SchemaMoved;

    private TimeSpan HeartbeatInterval => Lease / 3;

    private async Task HeartbeatLoopAsync(CancellationToken stop)
    {
        bool failing = false;
        var next = HeartbeatInterval; // registered a moment ago, in Open
        while (true)
        {
            try
            {
                await Task.Delay(next, Clock, stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            next = HeartbeatInterval;
            try
            {
                await HeartbeatAsync(onlyIfDue: false, stop).ConfigureAwait(false);
                if (failing)
                {
                    LogHeartbeatBack();
                    failing = false;
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
#pragma warning disable CA1031 // The heartbeat must outlive any one failure; a missed one is logged and tried again soon.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                if (Volatile.Read(ref _schemaMoved) is not null)
                {
                    return;
                }

                if (!failing)
                {
                    LogHeartbeatFailed(ex, Lease);
                    failing = true;
                }

                next = TimeSpan.FromTicks(Math.Min(TimeSpan.FromSeconds(1).Ticks, next.Ticks));
            }
        }
    }

    // Before every write. The heartbeat loop keeps this instance confirmed; a write after it went without for half a
    // lease (others take it for dead after a whole one) heartbeats first.
    private ValueTask EnsureSchemaKnownAsync(CancellationToken ct)
    {
        ThrowIfSchemaMoved();
        return NowMs < Volatile.Read(ref _confirmedUntilMs) ? ValueTask.CompletedTask : new ValueTask(HeartbeatAsync(onlyIfDue: true, ct));
    }

    private async Task HeartbeatAsync(bool onlyIfDue, CancellationToken ct)
    {
        await _heartbeat.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            ThrowIfSchemaMoved();
            long started = NowMs;
            if (onlyIfDue && started < Volatile.Read(ref _confirmedUntilMs))
            {
                return;
            }

            string? moved;
            try
            {
                await using var c = await _data.OpenConnectionAsync(ct).ConfigureAwait(false);
                moved = await PostgresInstances.HeartbeatAsync(c, _owner, _knownVersion, Lease, ct).ConfigureAwait(false);
            }
            catch (Exception ex) when (IsSpoolFailure(ex))
            {
                throw Wrap(ex);
            }

            if (moved is not null)
            {
                throw SchemaHasMoved(moved);
            }

            ConfirmedNow(started);
        }
        finally
        {
            _heartbeat.Release();
        }
    }

    // Confirmed for half a lease from then: others take an instance for stopped only after a whole one.
    private void ConfirmedNow(long? fromMs = null) =>
        Volatile.Write(ref _confirmedUntilMs, (fromMs ?? NowMs) + ((long)Lease.TotalMilliseconds / 2));

    // A claim's rows carry the schema version their statement saw (ClaimedSchema, the last column).
    private T Claimed<T>(Npgsql.NpgsqlDataReader r, Func<Npgsql.NpgsqlDataReader, T> read)
    {
        int schema = r.GetInt32(r.FieldCount - 1);
        if (schema > _knownVersion)
        {
            throw SchemaHasMoved(PostgresInstances.Moved($"The PostgreSQL spool was upgraded to schema version {schema}", _knownVersion));
        }

        return read(r);
    }

    private void ThrowIfSchemaMoved()
    {
        if (Volatile.Read(ref _schemaMoved) is { } moved)
        {
            throw new SpoolException(moved);
        }
    }

    private SpoolException SchemaHasMoved(string moved)
    {
        if (Interlocked.CompareExchange(ref _schemaMoved, moved, null) is null)
        {
            LogSchemaMoved(moved);
            SchemaMoved?.Invoke(moved);
        }

        return new SpoolException(Volatile.Read(ref _schemaMoved)!);
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "{Reason}")]
    private partial void LogSchemaMoved(string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "This instance's heartbeat on the PostgreSQL spool failed; it is tried again every second. a write heartbeats first once the last heartbeat is half a lease ({Lease}) old, and after a whole lease other instances take this one for stopped")]
    private partial void LogHeartbeatFailed(Exception ex, TimeSpan lease);

    [LoggerMessage(Level = LogLevel.Information, Message = "This instance's heartbeat on the PostgreSQL spool is back")]
    private partial void LogHeartbeatBack();
}
