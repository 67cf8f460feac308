using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Operations;

/// <summary>
/// The one place that decides the gateway cannot go on: it records a failure exit code and stops the host, so
/// the process ends non-zero and the service manager (systemd's <c>Restart=on-failure</c>) and the operator see
/// it. Faults of one item or one loop never come here: they park the item or restart the loop.
/// </summary>
public sealed partial class GatewayLifetime
{
    /// <summary>Exit code: a condition the gateway cannot recover from while running (EX_SOFTWARE).</summary>
    public const int FatalExitCode = 70;

    private readonly IHostApplicationLifetime _lifetime;
    private readonly ILogger<GatewayLifetime> _logger;
    private int _exitCode;

    /// <summary>Creates the lifetime.</summary>
    /// <param name="lifetime">The host's lifetime.</param>
    /// <param name="logger">Logger.</param>
    public GatewayLifetime(IHostApplicationLifetime lifetime, ILogger<GatewayLifetime> logger)
    {
        _lifetime = lifetime;
        _logger = logger;
    }

    /// <summary>The process's exit code: 0 unless <see cref="Fail"/> was called.</summary>
    public int ExitCode => Volatile.Read(ref _exitCode);

    /// <summary>Stops the gateway with <see cref="FatalExitCode"/>; the first reason wins.</summary>
    /// <param name="reason">What happened and what to do.</param>
    /// <param name="exception">The cause, if any.</param>
    public void Fail(string reason, Exception? exception = null)
    {
        if (Interlocked.CompareExchange(ref _exitCode, FatalExitCode, 0) == 0)
        {
            LogFatal(exception, reason);
            _lifetime.StopApplication();
        }
    }

    [LoggerMessage(Level = LogLevel.Critical, Message = "The gateway cannot continue and stops: {Reason}")]
    private partial void LogFatal(Exception? exception, string reason);
}
