using System.Globalization;
using System.Text.Json;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Devices;

/// <summary>
/// The dead man's switch: a device that has sent neither heartbeat nor alert for longer than its limit is the alert
/// it cannot send itself. The watch stores a <c>DEVICE_SILENT</c> alert (warning) for it, which goes to its people
/// through the normal routes and storm control, and <c>DEVICE_BACK</c> (info) when it is heard again. Each alert's id
/// comes from the silence episode (the time the device was last heard), so a restart, which checks again, finds the
/// same id already stored and sends nothing twice; episodes still open at a restart are found in the spool. How long a
/// device has been quiet is measured on the monotonic clock (<see cref="Moment"/>), so a step of the wall clock makes
/// no device silent, nor one back; the wall times are what the alerts and the console show. A disabled
/// device is not watched: disabling a silent one (or removing it) ends its silence without a <c>DEVICE_BACK</c> mail, and
/// once enabled again it has its whole limit from that moment to be heard. The end is recorded in the spool all the same,
/// as the episode's <c>DEVICE_BACK</c> stored cancelled (never routed): without it the episode stayed open there, and a
/// restart after the device was enabled again took it up, counted the device silent at once and mailed a
/// <c>DEVICE_BACK</c> for a silence long over when it was next heard. A device taken out of the configuration and put
/// back, or added at run time, has its whole limit from when the gateway found it configured (the spool records which
/// devices are watched and since when: <see cref="ISpool.WatchDevicesAsync"/>), not from when it was last heard, before.
/// </summary>
public sealed partial class SilenceWatch : SupervisedLoop
{
    /// <summary>The code of the alert raised for a silent device.</summary>
    public const string SilentCode = "DEVICE_SILENT";

    /// <summary>The code of the alert raised when it is heard again.</summary>
    public const string BackCode = "DEVICE_BACK";

    private readonly DeviceRegistry _devices;
    private readonly DevicePresence _presence;
    private readonly ISpool _spool;
    private readonly SilenceOptions _options;
    private readonly TimeProvider _clock;
    private readonly ILogger<SilenceWatch> _logger;
    private readonly Dictionary<string, Episode> _silentSince = new(StringComparer.Ordinal);

    // Under the _silentSince lock. Devices disabled (or gone), and when those enabled again were enabled: their
    // silence is measured from then, not from the last time they were heard, which was before they were refused.
    private readonly HashSet<string> _paused = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Moment> _resumed = new(StringComparer.Ordinal);

    // The devices recorded in the spool as watched (ISpool.WatchDevicesAsync), and the start that first recorded them (a
    // seed tried again after a failure keeps it); the loop's only.
    private readonly HashSet<string> _watched = new(StringComparer.Ordinal);
    private DateTimeOffset? _started;

    // Under the _silentSince lock. Silences ended by a disabling or a removal, not yet recorded as ended in the spool.
    private readonly Dictionary<string, Ended> _ended = new(StringComparer.Ordinal);
    private readonly Spool.Signal _wake = new();
    private volatile int _silentCount;

    /// <summary>Creates the watch.</summary>
    /// <param name="devices">Devices.</param>
    /// <param name="presence">When each was last heard.</param>
    /// <param name="spool">Where the alerts go.</param>
    /// <param name="options">Silence settings.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="metrics">Restarts are counted there.</param>
    /// <param name="logger">Logger.</param>
    public SilenceWatch(DeviceRegistry devices, DevicePresence presence, ISpool spool, IOptions<GatewayOptions> options, TimeProvider clock, GatewayMetrics metrics,
        ILogger<SilenceWatch> logger)
        : base("silence", clock, metrics, logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        _devices = devices;
        _presence = presence;
        _spool = spool;
        _options = options.Value.Silence;
        _clock = clock;
        _logger = logger;
        _presence.Heard += device =>
        {
            if (_silentCount > 0 && IsSilent(device))
            {
                _wake.Set(); // a silent device is back: say so now, not at the next check
            }
        };
        _devices.Changed += change =>
        {
            if (_devices.Find(change.Id) is not { Disabled: false })
            {
                Pause(change.Id);
            }
            else
            {
                Resume(change.Id, _presence.Now());
            }

            UpdateCount();
            _wake.Set();
        };
    }

    /// <summary>Raised after each check, or, the watch off, each look for devices added (tests).</summary>
    public event Action? Checked;

    /// <summary>Checks now instead of at the next interval (tests that move a fake clock).</summary>
    public void Wake() => _wake.Set();

    /// <summary>How many devices are silent now.</summary>
    public int SilentCount => _silentCount;

    /// <summary>Whether a device is silent now.</summary>
    /// <param name="device">Device id.</param>
    /// <returns>True when silent.</returns>
    public bool IsSilent(string device)
    {
        lock (_silentSince)
        {
            return _silentSince.ContainsKey(device);
        }
    }

    /// <summary>How long a device may be quiet: its own <c>SilentAfter</c>, else three heartbeat intervals (at least the minimum), else the default.</summary>
    /// <param name="device">The device.</param>
    /// <returns>The limit.</returns>
    public TimeSpan LimitFor(Device device)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (device.SilentAfter is { } configured)
        {
            return configured;
        }

        return _presence.HeartbeatInterval(device.Id) is { } interval
            ? (interval * 3 > _options.MinimumAfter ? interval * 3 : _options.MinimumAfter)
            : _options.DefaultAfter;
    }

    /// <inheritdoc />
    protected override async Task RunAsync(CancellationToken stoppingToken)
    {
        // Off, the watch still keeps the spool's record of the devices it would watch (a statement at start, one per device
        // added at run time): a device taken out of the configuration and put back while it was off is watched anew when
        // it is turned on again. Before, that record stood still while it was off, and such a device counted as
        // configured all along: silent at once, measured from when it was last heard before it was taken out.
        if (_options.Enabled)
        {
            await SeedAsync(stoppingToken).ConfigureAwait(false);
        }
        else
        {
            await WatchAsync(_devices.All.Select(d => d.Id).ToList(), Started(), forgetOthers: true, stoppingToken).ConfigureAwait(false);
        }

        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                if (_options.Enabled)
                {
                    await CheckAsync(stoppingToken).ConfigureAwait(false);
                }
                else
                {
                    await WatchAddedAsync(_presence.Now(), stoppingToken).ConfigureAwait(false);
                }
            }
            catch (SpoolException ex)
            {
                LogSpoolFailed(ex);
            }

            Checked?.Invoke();
            await _wake.WaitAsync(_options.CheckInterval, _clock, stoppingToken).ConfigureAwait(false);
        }
    }

    // After a restart: when each device was last heard (its last alert or heartbeat in the spool), its heartbeat
    // interval (from the kept history), and which silences were announced without a DEVICE_BACK yet.
    private async Task SeedAsync(CancellationToken cancellationToken)
    {
        var since = _clock.GetUtcNow() - TimeSpan.FromDays(2);

        // Which devices were configured at the last start is known only from the spool: one that was not is new now, and a
        // silence recorded for it before it was taken out is over.
        var watchedSince = await WatchAsync(_devices.All.Select(d => d.Id).ToList(), Started(), forgetOthers: true, cancellationToken).ConfigureAwait(false);
        foreach (var activity in await _spool.DeviceActivityAsync(cancellationToken).ConfigureAwait(false))
        {
            if (new[] { activity.LastAlertAt, activity.LastStatusAt }.Max() is { } last)
            {
                _presence.Seed(activity.Device, last);
            }
        }

        var endedUnheard = new Dictionary<string, DateTimeOffset>(StringComparer.Ordinal);
        foreach (var history in await _spool.SilenceHistoryAsync(since, cancellationToken).ConfigureAwait(false))
        {
            if (history.SilenceEndedAt is { } endedAt)
            {
                endedUnheard[history.Device] = endedAt;
            }

            if (_devices.Find(history.Device) is not { } device)
            {
                if (history.OpenSilenceAlertId is { } goneId && EpisodeKey(goneId) is long goneKey)
                {
                    lock (_silentSince)
                    {
                        _ended[history.Device] = new Ended(goneKey, Ended.Removed);
                    }
                }

                continue; // no longer configured
            }

            if (history.ShortestHeartbeatGap is { } gap)
            {
                _presence.SeedHeartbeatInterval(history.Device, gap);
            }

            // A disabled device's silence ended when it was disabled (no DEVICE_BACK is mailed for it); one disabled by a
            // gateway of before, or while this one was down, is recorded as ended now. So is a silence that began before
            // the device was last watched anew (by this start, an earlier one, an addition at run time or another
            // instance): it was taken out of the configuration since, and the start without it did not get to record
            // the end. Not "watched from this start": a start that put it back and failed to record the end (or another
            // instance that recorded it first) left the next start taking the silence up, and a restart of this loop
            // ended the silence of every device first watched by this process.
            long? openKey = history.OpenSilenceAlertId is { } openId ? EpisodeKey(openId) : null;
            bool again = openKey is long openedAt && watchedSince.TryGetValue(device.Id, out var watchedFrom) && openedAt < watchedFrom.ToUnixTimeMilliseconds();
            if ((device.Disabled || again) && openKey is long endedKey)
            {
                lock (_silentSince)
                {
                    _ended[history.Device] = new Ended(endedKey, again ? Ended.TakenOut : Ended.Disabled);
                }
            }
            else if (openKey is long key)
            {
                // Its quiet began at the wall time its id names: all a restart has to measure from. Not heard since, the
                // device's own last-heard moment is that beginning (the very timestamp: only a later one is a return).
                var began = DateTimeOffset.FromUnixTimeMilliseconds(key);
                var quietSince = _presence.LastHeard(history.Device) is { } heard && heard.Wall <= began ? heard : _presence.Past(began);
                lock (_silentSince)
                {
                    _silentSince[history.Device] = new Episode(key, quietSince.Stamp);
                }
            }
        }

        // When it was enabled again is not kept, but it was no earlier than the device's last change: one changed after
        // it was last heard, not silent now, has its limit from that change (as if enabled again then), not from a time
        // before it was refused, which made it silent at once, under the id of the silence that disabling had ended.
        // Likewise one whose silence ended unheard, because it was disabled or no longer configured: its limit runs from
        // no earlier than that end. Measured from when it was last heard, its next silence took the ended one's id: a
        // duplicate, mailed to nobody, as was its return. And one the last start did not find configured: from the start
        // that found it back (or its addition at run time, recorded then), not from the end of a silence days before,
        // nor from when it was last heard, before it was taken out: either made it silent at once.
        foreach (var device in _devices.All)
        {
            var changed = new[]
            {
                _devices.ChangedAt(device.Id),
                endedUnheard.TryGetValue(device.Id, out var ended) ? ended : null,
                watchedSince.TryGetValue(device.Id, out var watched) ? watched : null,
            }.Max();

            if (!device.Disabled && changed is { } from && _presence.LastHeard(device.Id) is { } heard && heard.Wall < from)
            {
                lock (_silentSince)
                {
                    if (!_silentSince.ContainsKey(device.Id))
                    {
                        _resumed[device.Id] = _presence.Past(from);
                    }
                }
            }
        }

        UpdateCount();
    }

    private async Task CheckAsync(CancellationToken cancellationToken)
    {
        // First, so that no later silence of a device enabled again is stored before the end of its earlier one.
        await RecordEndedAsync(cancellationToken).ConfigureAwait(false);
        var now = _presence.Now();
        await WatchAddedAsync(now, cancellationToken).ConfigureAwait(false);
        foreach (var device in _devices.All)
        {
            if (!_watched.Contains(device.Id))
            {
                continue; // added since the look above: at the next check
            }

            if (device.Disabled)
            {
                Pause(device.Id); // refused at connect: nothing to miss, and a silence it was in is over
                continue;
            }

            Resume(device.Id, now); // enabled again by a way that raised no change: from now on
            Moment? resumed;
            lock (_silentSince)
            {
                resumed = _resumed.TryGetValue(device.Id, out var r) ? r : null;
            }

            if (_presence.LastHeard(device.Id) is not { } heard)
            {
                continue; // never heard from (not installed yet): nothing to miss
            }

            if (resumed is { } enabledAt && heard.Stamp >= enabledAt.Stamp)
            {
                lock (_silentSince)
                {
                    _resumed.Remove(device.Id); // heard since it was enabled again: watched as any other
                }

                resumed = null;
            }

            // Quiet since it was last heard, or since it was enabled again (the silence's id names that moment).
            var quietSince = resumed ?? heard;
            var last = heard.Wall;
            var limit = LimitFor(device);
            bool quiet = _clock.GetElapsedTime(quietSince.Stamp, now.Stamp) > limit;
            Episode? episode;
            lock (_silentSince)
            {
                episode = _silentSince.TryGetValue(device.Id, out var e) ? e : null;
            }

            if (quiet && episode is null)
            {
                long key = quietSince.Wall.ToUnixTimeMilliseconds();
                string text = $"No heartbeat or alert from {device.Name} ({device.Id}) since {last.UtcDateTime:yyyy-MM-dd HH:mm:ss} UTC"
                    + (resumed is { } watched ? $" (watched again since {watched.Wall.UtcDateTime:yyyy-MM-dd HH:mm:ss} UTC)" : string.Empty)
                    + $": silent for longer than its limit of {Describe(limit)}. Check its power, its link and the sensor itself.";
                if (!await TryRaiseAsync(device, "gw-silent-" + key.ToString(CultureInfo.InvariantCulture), SilentCode, "warning", text, now.Wall, cancellationToken).ConfigureAwait(false))
                {
                    continue;
                }

                lock (_silentSince)
                {
                    _silentSince[device.Id] = new Episode(key, quietSince.Stamp);
                }

                LogSilent(device.Id, last, limit.TotalMinutes);
            }
            else if (!quiet && episode is { } open && heard.Stamp > open.Since)
            {
                string text = $"{device.Name} ({device.Id}) is back: heard from at {last.UtcDateTime:yyyy-MM-dd HH:mm:ss} UTC after "
                    + $"{Describe(_clock.GetElapsedTime(open.Since, heard.Stamp))} of silence.";
                if (!await TryRaiseAsync(device, "gw-back-" + open.Key.ToString(CultureInfo.InvariantCulture), BackCode, "info", text, now.Wall, cancellationToken).ConfigureAwait(false))
                {
                    continue;
                }

                lock (_silentSince)
                {
                    _silentSince.Remove(device.Id);
                }

                LogBack(device.Id);
            }
        }

        lock (_silentSince)
        {
            foreach (string gone in _silentSince.Keys.Where(d => _devices.Find(d) is null).ToList())
            {
                _ended[gone] = new Ended(_silentSince[gone].Key, Ended.Removed);
                _silentSince.Remove(gone); // no longer configured: not watched
            }
        }

        UpdateCount();
    }

    // The start's time, kept by a seed tried again after a failure.
    private DateTimeOffset Started() => _started ??= DateTimeOffset.FromUnixTimeMilliseconds(_clock.GetUtcNow().ToUnixTimeMilliseconds());

    // Added at run time (the console, or another instance on the spool): watched from now, however long ago the spool last
    // heard it, which it did before the device was taken out of the configuration.
    private async Task WatchAddedAsync(Moment now, CancellationToken cancellationToken)
    {
        if (_devices.All.Where(d => !_watched.Contains(d.Id)).Select(d => d.Id).ToList() is not { Count: > 0 } added)
        {
            return;
        }

        foreach (var (id, from) in await WatchAsync(added, now.Wall, forgetOthers: false, cancellationToken).ConfigureAwait(false))
        {
            if (_presence.LastHeard(id) is { } heard && heard.Wall < from)
            {
                lock (_silentSince)
                {
                    _resumed[id] = _presence.Past(from);
                }
            }
        }
    }

    private async Task<IReadOnlyDictionary<string, DateTimeOffset>> WatchAsync(IReadOnlyCollection<string> devices, DateTimeOffset now, bool forgetOthers,
        CancellationToken cancellationToken)
    {
        var since = await _spool.WatchDevicesAsync(devices, now, forgetOthers, cancellationToken).ConfigureAwait(false);
        _watched.UnionWith(since.Keys);
        return since;
    }

    // Each ended silence is stored as its episode's DEVICE_BACK, cancelled: LastSilences no longer finds the episode
    // open, the prune may take its DEVICE_SILENT, and nobody is mailed. A later return of the same episode would be a
    // duplicate of it. Kept for the next check when the spool fails.
    private async Task RecordEndedAsync(CancellationToken cancellationToken)
    {
        List<KeyValuePair<string, Ended>> ended;
        lock (_silentSince)
        {
            if (_ended.Count == 0)
            {
                return;
            }

            ended = [.. _ended];
        }

        var at = _clock.GetUtcNow();
        foreach (var (id, end) in ended)
        {
            var device = _devices.Find(id) ?? new Device(id, string.Empty, id, string.Empty, [], Disabled: true, null, DeviceSource.Configuration);
            string why = end.Why;
            // When it ended is not known here (a removal or a disabling while the gateway was down, a start that could not
            // record it): the time given is the record's, not the end's.
            string text = $"The silence of {device.Name} ({device.Id}) ended because {why}; it was not heard from (recorded at {at.UtcDateTime:yyyy-MM-dd HH:mm:ss} UTC).";
            if (!await TryRaiseAsync(device, "gw-back-" + end.Key.ToString(CultureInfo.InvariantCulture), BackCode, "info", text, at, cancellationToken,
                $"not mailed: the silence ended because {why}, not because the device was heard from").ConfigureAwait(false))
            {
                continue;
            }

            lock (_silentSince)
            {
                if (_ended.TryGetValue(id, out var still) && still == end)
                {
                    _ended.Remove(id);
                }
            }

            LogEnded(id, why);
        }
    }

    private void Pause(string device)
    {
        lock (_silentSince)
        {
            _paused.Add(device);
            _resumed.Remove(device);
            if (_silentSince.Remove(device, out var episode))
            {
                _ended[device] = new Ended(episode.Key, Ended.Disabled);
            }
        }
    }

    private void Resume(string device, Moment at)
    {
        lock (_silentSince)
        {
            if (_paused.Remove(device))
            {
                _resumed[device] = at;
            }
        }
    }

    // One device's alert that cannot be stored for a reason other than the spool's (a SpoolException ends the whole check)
    // must not leave the devices after it unwatched: logged, and tried again at the next check, nothing recorded meanwhile.
    private async Task<bool> TryRaiseAsync(Device device, string alertId, string code, string severity, string text, DateTimeOffset now,
        CancellationToken cancellationToken, string? cancelledReason = null)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteNumber("v", 1);
            json.WriteString("id", alertId);
            json.WriteNumber("seq", 0);
            json.WriteString("state", "raised");
            json.WriteString("sev", severity);
            json.WriteString("code", code);
            json.WriteString("text", text.Length > 1000 ? text[..1000] : text);
            json.WriteString("raised", now.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture));
            json.WriteNumber("boot", 0);
            json.WriteNumber("count", 1);
            json.WriteEndObject();
        }

        // Stored under the device, by the gateway (via LOCAL): routed to its owners as any alert of it would be, and
        // not counted as a sign of life. A second store of the same episode is a duplicate and mails nobody.
        try
        {
            await _spool.AcceptAlertAsync(new IncomingAlert(device.Id, alertId, now, null, buffer.ToArray(), null, code, IngestProtocols.Local, severity, cancelledReason),
                cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (Exception ex) when (ex is not SpoolException and not OperationCanceledException)
        {
            LogRaiseFailed(ex, alertId, device.Id);
            return false;
        }
    }

    private void UpdateCount()
    {
        lock (_silentSince)
        {
            _silentCount = _silentSince.Count;
        }
    }

    private static long? EpisodeKey(string alertId) =>
        alertId.StartsWith("gw-silent-", StringComparison.Ordinal) && long.TryParse(alertId.AsSpan("gw-silent-".Length), NumberStyles.None, CultureInfo.InvariantCulture, out long ms)
            ? ms
            : null;

    // A silence: the wall time its quiet began (Unix ms, which names its alerts) and the monotonic timestamp of it.
    private readonly record struct Episode(long Key, long Since);

    // A silence ended without a return: its episode's key, and why it ended.
    private readonly record struct Ended(long Key, string Why)
    {
        public const string Disabled = "it was disabled";
        public const string Removed = "it is no longer configured";
        public const string TakenOut = "it was taken out of the configuration (it is configured again now)";
    }

    private static string Describe(TimeSpan span) =>
        span.TotalHours >= 48 ? $"{span.TotalDays:0.#} days" : span.TotalMinutes >= 120 ? $"{span.TotalHours:0.#} hours" : $"{Math.Max(1, span.TotalMinutes):0} minutes";

    [LoggerMessage(Level = LogLevel.Warning, Message = "Device {Device} is silent: last heard {Last:u}, limit {Minutes} min; DEVICE_SILENT raised")]
    private partial void LogSilent(string device, DateTimeOffset last, double minutes);

    [LoggerMessage(Level = LogLevel.Information, Message = "Device {Device} is back; DEVICE_BACK raised")]
    private partial void LogBack(string device);

    [LoggerMessage(Level = LogLevel.Information, Message = "The silence of device {Device} ended because {Why}; recorded, not mailed")]
    private partial void LogEnded(string device, string why);

    [LoggerMessage(Level = LogLevel.Error, Message = "Storing {AlertId} of device {Device} failed unexpectedly; the other devices are watched, this one is tried again at the next check")]
    private partial void LogRaiseFailed(Exception ex, string alertId, string device);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The silence watch could not use the spool; checking again later")]
    private partial void LogSpoolFailed(Exception ex);
}
