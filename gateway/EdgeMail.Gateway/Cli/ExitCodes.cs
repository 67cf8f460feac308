using EdgeMail.Gateway.Operations;

namespace EdgeMail.Gateway.Cli;

/// <summary>What <c>edgemail</c> exits with, for scripts (listed in <c>edgemail --help</c> and docs/gateway.md).</summary>
public static class ExitCodes
{
    /// <summary>Done; for <c>run</c>: stopped on request.</summary>
    public const int Ok = 0;

    /// <summary><c>run</c>: could not start; <c>doctor</c>: a check failed; a remote command: the gateway refused it (no such id, not queued).</summary>
    public const int Failed = 1;

    /// <summary>The configuration is invalid (the appliance's unit does not restart on it).</summary>
    public const int InvalidConfiguration = 2;

    /// <summary>The running gateway could not be reached or refused the CLI's key.</summary>
    public const int Unreachable = 3;

    /// <summary>The command line is wrong (sysexits' EX_USAGE).</summary>
    public const int Usage = 64;

    /// <summary><c>run</c>: stopped because it could not go on (sysexits' EX_SOFTWARE).</summary>
    public const int Fatal = GatewayLifetime.FatalExitCode;

    /// <summary>The exit codes as <c>--help</c> lists them.</summary>
    public const string Help =
        "Exit codes: 0 done (run: stopped on request); 1 failed (run: could not start; doctor: a check failed; devices, queue, alerts: "
        + "the gateway refused, e.g. no such id); 2 invalid configuration; 3 the gateway cannot be reached or refused the API key; "
        + "64 wrong command line; 70 run: stopped because it could not go on.";
}

/// <summary>A command's failure: what went wrong and what to do, and the exit code it means.</summary>
/// <param name="exitCode">One of <see cref="ExitCodes"/>.</param>
/// <param name="message">What failed and what to do.</param>
public sealed class CliException(int exitCode, string message) : Exception(message)
{
    /// <summary>The exit code.</summary>
    public int ExitCode { get; } = exitCode;
}
