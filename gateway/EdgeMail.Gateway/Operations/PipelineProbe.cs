using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Hosting.Systemd;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Operations;

/// <summary>One health check's result.</summary>
/// <param name="Name">What was checked.</param>
/// <param name="Ok">Whether it passed.</param>
/// <param name="Detail">What was seen.</param>
public sealed record HealthCheck(string Name, bool Ok, string Detail);

/// <summary>
/// Proves the pipeline turns: every 10 s a round trip through the spool's writer, and a look at every supervised loop
/// (not waiting out a restart backoff). <see cref="Alive"/> (<c>/livez</c>) is the last proof being recent;
/// <see cref="Ready"/> (<c>/readyz</c>) adds the listeners, the disk and the relay. Under systemd with
/// <c>WatchdogSec=</c> set it proves at half that interval and sends <c>WATCHDOG=1</c> after each proof that passed —
/// never on an older one, so a gateway whose pipeline stopped turning is restarted by systemd after <c>WatchdogSec=</c>
/// even though its process still runs (the unit's <c>WatchdogSec=</c> is the one tolerance for a slow round).
/// </summary>
public sealed partial class PipelineProbe : BackgroundService
{
    private static readonly TimeSpan Interval = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan Stale = TimeSpan.FromSeconds(35);
    private readonly IServiceProvider _services;
    private readonly ISpool _spool;
    private readonly TimeProvider _clock;
    private readonly ILogger<PipelineProbe> _logger;
    private long _lastProof;
    private string _lastProblem = "not checked yet";

    /// <summary>Creates the probe.</summary>
    /// <param name="services">The gateway's services (loops, listeners, disk, relay).</param>
    /// <param name="spool">Spool.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="logger">Logger.</param>
    public PipelineProbe(IServiceProvider services, ISpool spool, TimeProvider clock, ILogger<PipelineProbe> logger)
    {
        _services = services;
        _spool = spool;
        _clock = clock;
        _logger = logger;
    }

    /// <summary>Raised after each successful proof (tests).</summary>
    public event Action? Proved;

    /// <summary>The pipeline turned within the last 35 s.</summary>
    public bool Alive => Interlocked.Read(ref _lastProof) is long at && at != 0 && _clock.GetElapsedTime(at) < Stale;

    /// <summary>The checks behind <c>/livez</c>.</summary>
    /// <returns>The checks.</returns>
    public IReadOnlyList<HealthCheck> Liveness() =>
        [new HealthCheck("pipeline", Alive, Alive ? "spool writer and loops turned within 35 s" : _lastProblem)];

    /// <summary>The checks behind <c>/readyz</c>: alive, listeners bound, disk above its floor, relay not failing.</summary>
    /// <returns>The checks.</returns>
    public IReadOnlyList<HealthCheck> Readiness()
    {
        var checks = new List<HealthCheck>(Liveness());
        if (_services.GetService<Ingest.EmbeddedBroker>() is { } broker && !_services.GetRequiredService<Microsoft.Extensions.Options.IOptions<Configuration.GatewayOptions>>().Value.Mqtt.IsExternal())
        {
            checks.Add(new HealthCheck("mqtt", broker.IsRunning, broker.IsRunning ? "broker accepting connections" : "broker not started"));
        }

        if (_services.GetService<Ingest.Smtp.SmtpIngest>() is { } smtp
            && _services.GetRequiredService<Microsoft.Extensions.Options.IOptions<Ingest.Smtp.SmtpIngestOptions>>().Value.Endpoints.Count is int wanted and > 0)
        {
            int bound = smtp.Endpoints.Count;
            checks.Add(new HealthCheck("smtp", bound == wanted, $"{bound} of {wanted} endpoints bound"));
        }

        var disk = _services.GetRequiredService<DiskGuard>();
        checks.Add(new HealthCheck("disk", !disk.IsLow, disk.IsLow ? "below Spool:MinFreeMegabytes: new work is refused" : "above its floor"));
        var relay = _services.GetRequiredService<RelayHealth>();
        string relayDetail = relay.LastError is { } e && !relay.Up ? $"last attempt failed at {e.At:u}: {e.Reply}"
            : relay.LastSuccess is { } ok ? $"last delivery {ok:u}"
            : relay.LastError is { } refused ? $"answering; last refusal at {refused.At:u}: {refused.Reply}"
            : "no attempt yet";
        checks.Add(new HealthCheck("relay", relay.Up, relayDetail));
        return checks;
    }

    /// <summary>Whether every readiness check passes.</summary>
    public bool Ready => Readiness().All(c => c.Ok);

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var notifier = _services.GetService<ISystemdNotifier>();
        TimeSpan? watchdog = WatchdogInterval();
        var period = watchdog is { } w && w < Interval ? w : Interval;
        while (!stoppingToken.IsCancellationRequested)
        {
            bool proved = await ProveAsync(stoppingToken).ConfigureAwait(false);
            if (watchdog is not null && notifier is not null && proved)
            {
                notifier.Notify(new ServiceState("WATCHDOG=1"));
            }

            try
            {
                await Task.Delay(period, _clock, stoppingToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private async Task<bool> ProveAsync(CancellationToken stoppingToken)
    {
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
            timeout.CancelAfter(TimeSpan.FromSeconds(30));
            await _spool.PingAsync(timeout.Token).ConfigureAwait(false);
            var stuck = _services.GetServices<IHostedService>().OfType<SupervisedLoop>().Where(l => !l.Running).Select(l => l.Name).ToList();
            if (stuck.Count > 0)
            {
                _lastProblem = "waiting to restart after a fault: " + string.Join(", ", stuck);
                return false;
            }

            Interlocked.Exchange(ref _lastProof, _clock.GetTimestamp());
            Proved?.Invoke();
            return true;
        }
        catch (Exception ex) when (ex is SpoolException or OperationCanceledException && !stoppingToken.IsCancellationRequested)
        {
            _lastProblem = "the spool's writer did not answer: " + ex.Message;
            LogNotTurning(_lastProblem);
            return false;
        }
    }

    // systemd passes WATCHDOG_USEC (and WATCHDOG_PID) when the unit has WatchdogSec=; notify at half of it.
    private static TimeSpan? WatchdogInterval()
    {
        if (!long.TryParse(Environment.GetEnvironmentVariable("WATCHDOG_USEC"), out long usec) || usec <= 0)
        {
            return null;
        }

        if (Environment.GetEnvironmentVariable("WATCHDOG_PID") is { Length: > 0 } pid && pid != Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture))
        {
            return null;
        }

        return TimeSpan.FromMicroseconds(usec / 2);
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "The pipeline is not turning: {Problem}")]
    private partial void LogNotTurning(string problem);
}
