using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Operations;

/// <summary>
/// A background loop that survives its own faults. Faults of one item are the loop's business (it parks the item
/// and goes on); an exception that still escapes <see cref="RunAsync"/> is logged, counted and the loop restarted
/// after a backoff that doubles from 1 s to 1 min (and starts over once the loop has run 5 min without a fault), so
/// a fault that repeats costs little and never takes the host down.
/// </summary>
public abstract partial class SupervisedLoop : BackgroundService
{
    private static readonly TimeSpan FirstBackoff = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan MaxBackoff = TimeSpan.FromMinutes(1);
    private static readonly TimeSpan HealthyAfter = TimeSpan.FromMinutes(5);
    private readonly string _name;
    private readonly TimeProvider _clock;
    private readonly GatewayMetrics _metrics;
    private readonly ILogger _logger;

    /// <summary>Creates the loop.</summary>
    /// <param name="name">Its name in logs and metrics.</param>
    /// <param name="clock">Clock for the backoff.</param>
    /// <param name="metrics">Where restarts are counted.</param>
    /// <param name="logger">Logger.</param>
    protected SupervisedLoop(string name, TimeProvider clock, GatewayMetrics metrics, ILogger logger)
    {
        _name = name;
        _clock = clock;
        _metrics = metrics;
        _logger = logger;
    }

    /// <summary>Restarts so far.</summary>
    public int Restarts { get; private set; }

    /// <summary>False while the loop waits to be restarted after a fault.</summary>
    public bool Running { get; private set; } = true;

    /// <summary>The loop's name.</summary>
    public string Name => _name;

    /// <summary>The loop itself; returns when <paramref name="stoppingToken"/> is cancelled.</summary>
    /// <param name="stoppingToken">Cancelled when the host stops.</param>
    /// <returns>A task that completes when the loop ends.</returns>
    protected abstract Task RunAsync(CancellationToken stoppingToken);

    /// <inheritdoc />
    protected sealed override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var backoff = FirstBackoff;
        while (!stoppingToken.IsCancellationRequested)
        {
            long started = _clock.GetTimestamp();
            try
            {
                await RunAsync(stoppingToken).ConfigureAwait(false);
                return;
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
#pragma warning disable CA1031 // Whatever escapes the loop, the loop comes back; the exception is logged with its stack.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                if (_clock.GetElapsedTime(started) > HealthyAfter)
                {
                    backoff = FirstBackoff;
                }

                Restarts++;
                Running = false;
                _metrics.LoopRestarts.Add(1, new KeyValuePair<string, object?>("loop", _name));
                LogRestarting(ex, _name, backoff.TotalSeconds);
            }

            try
            {
                await Task.Delay(backoff, _clock, stoppingToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            backoff = backoff * 2 > MaxBackoff ? MaxBackoff : backoff * 2;
            Running = true;
        }
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "The {Loop} loop failed unexpectedly; restarting it in {Seconds} s")]
    private partial void LogRestarting(Exception ex, string loop, double seconds);
}
