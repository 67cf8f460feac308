using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// Keeps a delivery attempt's claim on a shared spool (docs/spool.md, claims and leases) for as long as the attempt is
/// under way, as MTAs with a shared queue do: renewed every third of <c>Spool:ClaimLease</c>, so that an attempt longer
/// than one lease (direct MX over several domains, each exchanger allowed <c>Relay:Timeout</c> per command) is not
/// taken over and sent a second time by another instance. <see cref="Stopped"/> tells the attempt when it may begin no
/// further transaction: a renewal found the claim gone (taken over, cancelled, parked), or renewals failed until the
/// lease ran out. A renewal that fails is logged and tried again; the attempt goes on while the lease still holds.
/// </summary>
internal sealed partial class LeaseKeeper : IAsyncDisposable
{
    /// <summary>The reply of the recipients not yet tried when the message is not this instance's any more.</summary>
    public const string GoneReply = "451 4.3.0 not attempted: the mail was cancelled, or taken over by another instance, during this attempt";

    /// <summary>The reply of the recipients not yet tried when the claim ran out without a renewal.</summary>
    public const string ExpiredReply = "451 4.3.0 local error, not attempted: the claim on this mail could not be renewed (the spool failed) and its lease ran out";

    private readonly ISpool _spool;
    private readonly QueuedMessage _message;
    private readonly TimeSpan _lease;
    private readonly TimeProvider _clock;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private long _heldUntilTicks;
    private volatile string? _gone;
    private Task _renewing = Task.CompletedTask;

    private LeaseKeeper(ISpool spool, QueuedMessage message, DateTimeOffset claimedAt, TimeSpan lease, TimeProvider clock, ILogger logger)
    {
        _spool = spool;
        _message = message;
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

    /// <summary>Starts keeping the claim of one attempt.</summary>
    /// <param name="spool">The shared spool.</param>
    /// <param name="message">The message the attempt sends.</param>
    /// <param name="claimedAt">A time no later than the claim (its lease is counted from here).</param>
    /// <param name="lease"><c>Spool:ClaimLease</c>.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="logger">The delivery worker's logger.</param>
    /// <returns>The keeper; dispose it when the attempt's transactions are over.</returns>
    public static LeaseKeeper Start(ISpool spool, QueuedMessage message, DateTimeOffset claimedAt, TimeSpan lease, TimeProvider clock, ILogger logger)
    {
        var keeper = new LeaseKeeper(spool, message, claimedAt, lease, clock, logger);
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
                    if (!await _spool.RenewClaimAsync(_message.RowId, cancellationToken).ConfigureAwait(false))
                    {
                        _gone = GoneReply;
                        LogGone(_logger, _message.MessageId);
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
                        LogExpired(_logger, ex, _message.MessageId, until);
                        return;
                    }

                    LogNotRenewed(_logger, ex, _message.MessageId, until);
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // The attempt's transactions are over.
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "<{MessageId}> is not this instance's any more (another instance took it over, or it was cancelled or parked) while an attempt was under way; the attempt begins no further transaction")]
    private static partial void LogGone(ILogger logger, string messageId);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The claim on <{MessageId}> could not be renewed; it holds until {Until:u}, and the attempt under way goes on until then")]
    private static partial void LogNotRenewed(ILogger logger, Exception ex, string messageId, DateTimeOffset until);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The claim on <{MessageId}> could not be renewed and ran out at {Until:u}: another instance may take it over, so the attempt under way begins no further transaction")]
    private static partial void LogExpired(ILogger logger, Exception ex, string messageId, DateTimeOffset until);
}
