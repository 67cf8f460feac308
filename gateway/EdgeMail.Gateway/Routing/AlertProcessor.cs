using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Routing;

/// <summary>
/// Turns stored alerts into queued mail: routes each new alert, applies storm control (repeats of one
/// (device, code) within the window are held and later sent as one digest; cleared alerts go out at once),
/// composes the mail and commits the decision and the mail in one spool transaction, so a crash at any point
/// either redoes the whole step or finds it done.
/// </summary>
public sealed partial class AlertProcessor : BackgroundService
{
    private readonly ISpool _spool;
    private readonly GatewayOptions _options;
    private readonly Router _router;
    private readonly MailComposer _composer;
    private readonly TimeProvider _clock;
    private readonly IngestPressure _pressure;
    private readonly ILogger<AlertProcessor> _logger;
    private readonly Signal _wake = new();

    // Storm state per (device, code), null = known to have none. This processor is the only writer of storm state,
    // so after the first read the spool need not be asked again (one spool round trip less per routing batch).
    private readonly Dictionary<(string Device, string Code), StormState?> _stormCache = [];
    private DateTimeOffset? _digestDue;
    private bool _digestDueKnown;

    /// <summary>Creates the processor.</summary>
    /// <param name="spool">Spool.</param>
    /// <param name="options">Options.</param>
    /// <param name="composer">Composer.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="pressure">Ingest rate; routing yields to a burst.</param>
    /// <param name="logger">Logger.</param>
    public AlertProcessor(ISpool spool, IOptions<GatewayOptions> options, MailComposer composer, TimeProvider clock, IngestPressure pressure, ILogger<AlertProcessor> logger)
    {
        _pressure = pressure;
        _spool = spool;
        _options = options.Value;
        _router = new Router(_options);
        _composer = composer;
        _clock = clock;
        _logger = logger;
        _spool.AlertsStored += _wake.Set;
    }

    /// <summary>Wakes the processor (tests that advance a fake clock).</summary>
    public void Wake() => _wake.Set();

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
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
                }

                if (routed > 0)
                {
                    continue;
                }

                var next = _digestDue;
                var wait = next is null ? Timeout.InfiniteTimeSpan : next.Value - _clock.GetUtcNow() + TimeSpan.FromMilliseconds(1);
                await _wake.WaitAsync(wait, _clock, stoppingToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex) when (ex is SpoolException or InvalidOperationException)
            {
                _stormCache.Clear();
                _digestDueKnown = false;
                LogFailed(ex);
                await _wake.WaitAsync(TimeSpan.FromSeconds(5), _clock, stoppingToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Routes one batch of new alerts.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>How many alerts were handled.</returns>
    internal async Task<int> RouteNewAsync(CancellationToken cancellationToken)
    {
        var alerts = await _spool.NewAlertsAsync(256, cancellationToken).ConfigureAwait(false);
        if (alerts.Count == 0)
        {
            return 0;
        }

        var parsedAlerts = new Alert?[alerts.Count];
        var keys = new HashSet<(string Device, string Code)>();
        for (int i = 0; i < alerts.Count; i++)
        {
            parsedAlerts[i] = AlertParser.Parse(alerts[i].Payload).Alert;
            if (parsedAlerts[i] is { } a)
            {
                keys.Add((alerts[i].Device, a.Code));
            }
        }

        // One read for the storm state of every (device, code) in the batch not seen before, not one round trip each.
        if (_stormCache.Count > 100_000)
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

        var storms = new Dictionary<(string, string), StormState?>();

        var commits = new List<RoutingCommit>(alerts.Count);
        var window = _options.Storm.Window;
        for (int i = 0; i < alerts.Count; i++)
        {
            var stored = alerts[i];
            if (parsedAlerts[i] is not { } alert)
            {
                commits.Add(new RoutingCommit(stored.RowId, AlertStatus.Rejected, null, null, null, null));
                continue;
            }

            var route = _router.Route(stored.Device, alert);
            if (route.Recipients.Count == 0)
            {
                LogUnrouted(stored.Device, alert.Id, alert.Code);
                commits.Add(new RoutingCommit(stored.RowId, AlertStatus.Unrouted, null, null, null, null));
                continue;
            }

            var key = (stored.Device, alert.Code);
            if (!storms.TryGetValue(key, out var storm))
            {
                storm = _stormCache[key];
            }

            if (alert.State == AlertState.Raised && window > TimeSpan.Zero && storm is not null && stored.ReceivedAt < storm.LastMailAt + window)
            {
                var holdUntil = storm.LastMailAt + window;
                commits.Add(new RoutingCommit(stored.RowId, AlertStatus.Held, holdUntil, null, null, null));
                if (_digestDue is null || holdUntil < _digestDue)
                {
                    _digestDue = holdUntil;
                }

                storms[key] = storm;
                continue;
            }

            var mail = new AlertMail(Device(stored.Device), alert, stored.ReceivedAt, stored.Peer, stored.RowId, route.Recipients, route.Template,
                alert.State == AlertState.Cleared ? storm?.LastRaisedMessageId : null, stored.Via);
            using var message = _composer.ComposeAlert(mail, _clock.GetUtcNow());
            var queued = new NewMessage("alert", stored.Device, alert.Id, message.MessageId!, _options.Sender.Address,
                route.Recipients.Select(r => r.Address).ToList(), MailComposer.ToWire(message));
            var next = alert.State == AlertState.Raised
                ? new StormState(stored.ReceivedAt, "<" + message.MessageId + ">")
                : new StormState(DateTimeOffset.UnixEpoch, storm?.LastRaisedMessageId);
            storms[key] = next;
            commits.Add(new RoutingCommit(stored.RowId, AlertStatus.Routed, null, queued, key, next));
        }

        await _spool.CommitRoutingAsync(commits, cancellationToken).ConfigureAwait(false);
        foreach (var (key, state) in storms)
        {
            _stormCache[key] = state;
        }

        return alerts.Count;
    }

    /// <summary>Sends the digests whose window has closed.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task.</returns>
    internal async Task DigestDueAsync(CancellationToken cancellationToken)
    {
        var now = _clock.GetUtcNow();
        foreach (var digest in await _spool.DueDigestsAsync(now, cancellationToken).ConfigureAwait(false))
        {
            var repeats = digest.Alerts
                .Select(a => (Parsed: AlertParser.Parse(a.Payload).Alert, a.ReceivedAt))
                .Where(r => r.Parsed is not null)
                .Select(r => (r.Parsed!, r.ReceivedAt))
                .ToList();
            var storm = await _spool.GetStormAsync(digest.Device, digest.Code, cancellationToken).ConfigureAwait(false);
            NewMessage? queued = null;
            if (repeats.Count > 0)
            {
                var route = _router.Route(digest.Device, repeats[^1].Item1);
                if (route.Recipients.Count > 0)
                {
                    using var message = _composer.ComposeDigest(Device(digest.Device), repeats, route.Recipients, _options.Storm.Window,
                        digest.Alerts[0].RowId, storm?.LastRaisedMessageId, now, digest.Alerts[0].Via);
                    queued = new NewMessage("digest", digest.Device, null, message.MessageId!, _options.Sender.Address,
                        route.Recipients.Select(r => r.Address).ToList(), MailComposer.ToWire(message));
                }
            }

            LogDigest(digest.Device, digest.Code, digest.Alerts.Count);
            var after = new StormState(now, storm?.LastRaisedMessageId);
            await _spool.CommitDigestAsync(digest, queued, after, cancellationToken).ConfigureAwait(false);
            _stormCache[(digest.Device, digest.Code)] = after;
        }
    }

    private DeviceInfo Device(string id) => _options.Devices.TryGetValue(id, out var d)
        ? new DeviceInfo(id, d.Name.Length > 0 ? d.Name : id, d.Site)
        : new DeviceInfo(id, id, string.Empty);

    [LoggerMessage(Level = LogLevel.Information, Message = "No route for alert {AlertId} ({Code}) from {Device}; kept as unrouted")]
    private partial void LogUnrouted(string device, string alertId, string code);

    [LoggerMessage(Level = LogLevel.Information, Message = "Storm control: {Count} repeats of {Code} from {Device} go out as one digest")]
    private partial void LogDigest(string device, string code, int count);

    [LoggerMessage(Level = LogLevel.Error, Message = "Routing failed; retrying in 5 s")]
    private partial void LogFailed(Exception ex);
}
