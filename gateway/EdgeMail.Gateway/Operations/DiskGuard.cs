using System.Globalization;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Operations;

/// <summary>Bytes free to the gateway on the file system that holds <paramref name="path"/>.</summary>
/// <param name="path">A directory.</param>
/// <returns>Available bytes.</returns>
public delegate long FreeSpaceProbe(string path);

/// <summary>
/// Refuses new work before the disk is full, so that what is already accepted can still be delivered and recorded
/// (each attempt writes too). Below <c>Spool:MinFreeMegabytes</c> free on the spool's file system, ingest throws
/// <see cref="SpoolFullException"/>: MQTT answers with no PUBACK and closes the connection (the device keeps the
/// alert in flash and resends), SMTP answers <c>452 4.3.1</c>. The operator is told once per episode; the guard
/// lets work in again by itself once space is back. Free space is probed at most once a second.
/// </summary>
public sealed partial class DiskGuard
{
    private static readonly TimeSpan ProbeInterval = TimeSpan.FromSeconds(1);
    private readonly FreeSpaceProbe _probe;
    private readonly string _directory;
    private readonly long _floor;
    private readonly TimeProvider _clock;
    private readonly OperatorNotices _notices;
    private readonly GatewayMetrics _metrics;
    private readonly ILogger<DiskGuard> _logger;
    private readonly Lock _lock = new();
    private long _lastProbe;
    private long _free = long.MaxValue;
    private bool _probed;
    private bool _low;

    /// <summary>Creates the guard.</summary>
    /// <param name="probe">How free space is measured.</param>
    /// <param name="options">The floor and the spool's directory.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="notices">Where the operator is told.</param>
    /// <param name="metrics">Refusals are counted there.</param>
    /// <param name="logger">Logger.</param>
    public DiskGuard(FreeSpaceProbe probe, IOptions<GatewayOptions> options, TimeProvider clock, OperatorNotices notices, GatewayMetrics metrics, ILogger<DiskGuard> logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        var o = options.Value;
        _probe = probe;
        _directory = Path.GetDirectoryName(o.SpoolPath())!;
        _floor = o.Spool.MinFreeMegabytes * 1024 * 1024;
        _clock = clock;
        _notices = notices;
        _metrics = metrics;
        _logger = logger;
    }

    /// <summary>The probe the gateway uses: the file system's space available to this process.</summary>
    /// <param name="path">A directory on it.</param>
    /// <returns>Available bytes.</returns>
    public static long SystemProbe(string path) => new DriveInfo(path).AvailableFreeSpace;

    /// <summary>Whether new work is refused now.</summary>
    public bool IsLow
    {
        get
        {
            lock (_lock)
            {
                Refresh();
                return _low;
            }
        }
    }

    /// <summary>Throws when free space is below the floor.</summary>
    /// <exception cref="SpoolFullException">Below the floor: refuse with back-pressure.</exception>
    public void ThrowIfLow()
    {
        if (_floor <= 0)
        {
            return;
        }

        long free;
        lock (_lock)
        {
            Refresh();
            if (!_low)
            {
                return;
            }

            free = _free;
        }

        _metrics.IngestRefused.Add(1, new KeyValuePair<string, object?>("reason", "disk"));
        throw new SpoolFullException(
            $"only {Mib(free)} MiB free on {_directory}, below Spool:MinFreeMegabytes ({Mib(_floor)} MiB); new alerts and mail are refused until space is freed");
    }

    // Under the lock.
    private void Refresh()
    {
        long now = _clock.GetTimestamp();
        if (_probed && _clock.GetElapsedTime(_lastProbe, now) < ProbeInterval)
        {
            return;
        }

        _probed = true;
        _lastProbe = now;
        try
        {
            _free = _probe(_directory);
        }
        catch (IOException ex)
        {
            // Cannot tell: do not refuse on a guess; SQLite itself still fails a write that finds the disk full.
            LogProbeFailed(ex, _directory);
            _free = long.MaxValue;
        }

        bool low = _free < _floor;
        if (low && !_low)
        {
            LogLow(Mib(_free), _directory, Mib(_floor));
            _notices.Report("disk space low, new alerts are refused",
                $"only {Mib(_free)} MiB free on {_directory} (floor: Spool:MinFreeMegabytes = {Mib(_floor)}): devices keep their alerts and resend once space is freed");
        }
        else if (!low && _low)
        {
            LogRecovered(Mib(_free), _directory);
        }

        _low = low;
    }

    private static string Mib(long bytes) => (bytes / (1024 * 1024)).ToString(CultureInfo.InvariantCulture);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Only {Free} MiB free on {Directory}, below the floor of {Floor} MiB: refusing new alerts and mail (devices resend later) until space is freed")]
    private partial void LogLow(string free, string directory, string floor);

    [LoggerMessage(Level = LogLevel.Information, Message = "{Free} MiB free on {Directory} again: accepting alerts and mail")]
    private partial void LogRecovered(string free, string directory);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Cannot measure free space on {Directory}")]
    private partial void LogProbeFailed(Exception ex, string directory);
}
