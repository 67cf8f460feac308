using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Spool;

/// <summary>
/// Keeps this instance's claim on work it took from a shared spool (docs/spool.md, claims and leases) for as long as
/// the work is under way, as MTAs with a shared queue do: renewed every third of <c>Spool:ClaimLease</c>, so that work
/// that lasts longer than one lease is not taken over and done a second time by another instance — a delivery attempt
/// (direct MX over several domains, each exchanger allowed <c>Relay:Timeout</c> per command), a routing batch or a
/// round of storm digests (a slow database, a long pause). <see cref="Stopped"/> tells a delivery attempt when it may
/// begin no further transaction: a renewal found the claim gone (taken over, cancelled, parked), or renewals failed
/// until the lease ran out. A renewal that fails is logged and tried again; the work goes on while the lease still
/// holds. Routing and digests need no such stop: everything they do goes into a commit that is fenced on the claim.
/// </summary>
internal sealed partial class LeaseKeeper : IAsyncDisposable
{
    /// <summary>The reply of the recipients not yet tried when the message is not this instance's any more.</summary>
    public const string GoneReply = "451 4.3.0 not attempted: the mail was cancelled, or taken over by another instance, during this attempt";

    /// <summary>The reply of the recipients not yet tried when the claim ran out without a renewal.</summary>
    public const string ExpiredReply = "451 4.3.0 local error, not attempted: the claim on this mail could not be renewed (the spool failed) and its lease ran out";

    private const string AttemptStops = "the attempt under way begins no further transaction";

    private readonly Func<CancellationToken, Task<bool>> _renew;
    private readonly string _work;
    private readonly string _consequence;
    private readonly TimeSpan _lease;
    private readonly TimeProvider _clock;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private long _heldUntilTicks;
    private volatile string? _gone;
    private Task _renewing = Task.CompletedTask;

    private LeaseKeeper(Func<CancellationToken, Task<bool>> renew, string work, string consequence, DateTimeOffset claimedAt, TimeSpan lease, TimeProvider clock,
        ILogger logger)
    {
        _renew = renew;
        _work = work;
        _consequence = consequence;
        _lease = lease;
        _clock = clock;
        _logger = logger;
        _heldUntilTicks = (claimedAt + lease).UtcTicks;
    }

    /// <summary>
    /// Null while the attempt may begin another transaction; otherwise the reply with which the recipients not yet
    /// tried are deferred.
    /// </summary>
    public string? Stopped => _gone ?? (_clock.GetUtcNow().UtcTicks >= Volatile.Read(ref _heldUntilTicks) ? ExpiredReply : null);

    /// <summary>Starts keeping the claim of one delivery attempt.</summary>
    /// <param name="spool">The shared spool.</param>
    /// <param name="message">The message the attempt sends.</param>
    /// <param name="claimedAt">A time no later than the claim (its lease is counted from here).</param>
    /// <param name="lease"><c>Spool:ClaimLease</c>.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="logger">The delivery worker's logger.</param>
    /// <returns>The keeper; dispose it when the attempt's transactions are over.</returns>
    public static LeaseKeeper Start(ISpool spool, QueuedMessage message, DateTimeOffset claimedAt, TimeSpan lease, TimeProvider clock, ILogger logger) =>
        Start(ct => spool.RenewClaimAsync(message.RowId, ct), $"<{message.MessageId}>", AttemptStops, claimedAt, lease, clock, logger);

    /// <summary>Starts keeping a claim on some work.</summary>
    /// <param name="renew">Renews the claim; false when none of the work is this instance's any more.</param>
    /// <param name="work">What is claimed, for the log: <c>&lt;message-id&gt;</c>, <c>a routing batch of 3 alerts</c>.</param>
    /// <param name="consequence">What follows for the work under way when the claim is lost, for the log.</param>
    /// <param name="claimedAt">A time no later than the claim (its lease is counted from here).</param>
    /// <param name="lease"><c>Spool:ClaimLease</c>.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="logger">The logger of the component doing the work.</param>
    /// <returns>The keeper; dispose it before the work's fenced commit (a renewal racing the commit that ends the claim
    /// would only report it gone).</returns>
    public static LeaseKeeper Start(Func<CancellationToken, Task<bool>> renew, string work, string consequence, DateTimeOffset claimedAt, TimeSpan lease,
        TimeProvider clock, ILogger logger)
    {
        var keeper = new LeaseKeeper(renew, work, consequence, claimedAt, lease, clock, logger);
        keeper._renewing = keeper.RenewAsync(claimedAt + lease / 3, keeper._stop.Token);
        return keeper;
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _renewing.ConfigureAwait(false);
        _stop.Dispose();
    }

    // Never throws: a renewal that fails is logged and tried again at the next turn.
    private async Task RenewAsync(DateTimeOffset next, CancellationToken cancellationToken)
    {
        var period = _lease / 3;
        try
        {
            while (true)
            {
                // From the time it was due, not from the last turn's end: a late turn (a clock that jumped, a slow
                // renewal) renews at once.
                var wait = next - _clock.GetUtcNow();
                if (wait > TimeSpan.Zero)
                {
                    await Task.Delay(wait, _clock, cancellationToken).ConfigureAwait(false);
                }

                var asked = _clock.GetUtcNow();
                next = asked + period;
                try
                {
                    if (!await _renew(cancellationToken).ConfigureAwait(false))
                    {
                        _gone = GoneReply;
                        LogGone(_logger, _work, _consequence);
                        return;
                    }

                    // The spool counts the new lease from when it ran the renewal, never earlier than this.
                    Volatile.Write(ref _heldUntilTicks, (asked + _lease).UtcTicks);
                }
                catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
                {
                    var until = new DateTimeOffset(Volatile.Read(ref _heldUntilTicks), TimeSpan.Zero);
                    if (_clock.GetUtcNow() >= until)
                    {
                        _gone = ExpiredReply;
                        LogExpired(_logger, ex, _work, until, _consequence);
                        return;
                    }

                    LogNotRenewed(_logger, ex, _work, until);
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // The work is over, or its fenced commit comes next.
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Work} is not this instance's any more (another instance took it over, or it was cancelled or parked) while work on it was under way; {Consequence}")]
    private static partial void LogGone(ILogger logger, string work, string consequence);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The claim on {Work} could not be renewed; it holds until {Until:u}, and the work under way goes on until then")]
    private static partial void LogNotRenewed(ILogger logger, Exception ex, string work, DateTimeOffset until);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The claim on {Work} could not be renewed and ran out at {Until:u}: another instance may take it over, so {Consequence}")]
    private static partial void LogExpired(ILogger logger, Exception ex, string work, DateTimeOffset until, string consequence);
}
