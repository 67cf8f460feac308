using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Operations;

/// <summary>
/// Keeps the spool and the local mailbox from growing without end: at start and then every
/// <c>Spool:HousekeepingInterval</c>, it removes finished mail and alerts older than <c>Spool:Retention</c> (in
/// chunks, so the spool's writer is never held long), gives the freed pages back to the file system, and trims the
/// local mailbox by age and to <c>Relay:MailboxMaxMegabytes</c>; kept receipts older than <c>Receipts:MaxAge</c> go too.
/// </summary>
public sealed partial class Housekeeper : SupervisedLoop
{
    private const int Chunk = 1000;
    private readonly ISpool _spool;
    private readonly IMailTransport _transport;
    private readonly GatewayOptions _options;
    private readonly TimeProvider _clock;
    private readonly GatewayMetrics _metrics;
    private readonly ILogger<Housekeeper> _logger;

    /// <summary>Creates the housekeeper.</summary>
    /// <param name="spool">Spool.</param>
    /// <param name="transport">The transport (the local mailbox is trimmed).</param>
    /// <param name="options">Retention settings.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="metrics">Removals are counted there.</param>
    /// <param name="logger">Logger.</param>
    public Housekeeper(ISpool spool, IMailTransport transport, IOptions<GatewayOptions> options, TimeProvider clock, GatewayMetrics metrics, ILogger<Housekeeper> logger)
        : base("housekeeping", clock, metrics, logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        _spool = spool;
        _transport = transport;
        _options = options.Value;
        _clock = clock;
        _metrics = metrics;
        _logger = logger;
    }

    /// <summary>Raised after each pass (tests).</summary>
    public event Action? PassCompleted;

    /// <inheritdoc />
    protected override async Task RunAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await PassAsync(stoppingToken).ConfigureAwait(false);
            }
            catch (SpoolException ex)
            {
                LogSpoolFailed(ex);
            }

            PassCompleted?.Invoke();
            await Task.Delay(_options.Spool.HousekeepingInterval, _clock, stoppingToken).ConfigureAwait(false);
        }
    }

    /// <summary>One pass: spool, then mailbox.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>What the spool pass removed.</returns>
    public async Task<PruneResult> PassAsync(CancellationToken cancellationToken)
    {
        var horizon = _clock.GetUtcNow() - _options.Spool.Retention;
        long messages = 0, alerts = 0, pages = 0;
        PruneResult round;
        do
        {
            // One chunk per transaction, each queued behind whatever the writer has waiting: alerts are never held long.
            round = await _spool.PruneAsync(horizon, Chunk, cancellationToken).ConfigureAwait(false);
            messages += round.Messages;
            alerts += round.Alerts;
            pages += round.FreedPages;
        }
        while (round.More);

        // Kept receipts a device never came back for; the alert's state stays in the console until its own retention.
        var receiptHorizon = _clock.GetUtcNow() - _options.Receipts.MaxAge;
        long receipts = 0;
        int removed;
        do
        {
            removed = await _spool.PruneReceiptsAsync(receiptHorizon, Chunk, cancellationToken).ConfigureAwait(false);
            receipts += removed;
        }
        while (removed == Chunk);

        if (receipts > 0)
        {
            _metrics.Pruned.Add(receipts, new KeyValuePair<string, object?>("kind", "receipt"));
            LogReceiptsPruned(receipts, _options.Receipts.MaxAge.TotalDays);
        }

        int files = 0;
        if (_transport is LocalMailbox mailbox)
        {
            files = mailbox.Prune(horizon, _options.Relay.MailboxMaxMegabytes * 1024 * 1024);
        }

        if (messages + alerts + files > 0)
        {
            _metrics.Pruned.Add(messages, new KeyValuePair<string, object?>("kind", "message"));
            _metrics.Pruned.Add(alerts, new KeyValuePair<string, object?>("kind", "alert"));
            _metrics.Pruned.Add(files, new KeyValuePair<string, object?>("kind", "mailbox"));
            LogPruned(messages, alerts, pages, files, _options.Spool.Retention.TotalDays);
        }

        return new PruneResult(messages, alerts, pages);
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Housekeeping removed {Messages} finished mail and {Alerts} alerts older than {Days} days ({Pages} pages freed) and {Files} mailbox files")]
    private partial void LogPruned(long messages, long alerts, long pages, int files, double days);

    [LoggerMessage(Level = LogLevel.Information, Message = "Housekeeping removed {Count} kept receipts their devices did not take within {Days} days")]
    private partial void LogReceiptsPruned(long count, double days);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Housekeeping could not use the spool; trying again next round")]
    private partial void LogSpoolFailed(Exception ex);
}
