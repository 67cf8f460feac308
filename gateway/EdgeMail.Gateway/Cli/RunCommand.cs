using System.CommandLine;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Operations;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Cli;

/// <summary><c>edgemail run</c>, also what the executable does without a command: the gateway service itself.</summary>
public static partial class RunCommand
{
    /// <summary>Adds <c>run</c>, and makes it the root's own action.</summary>
    /// <param name="root">The root command.</param>
    /// <param name="options">The shared options.</param>
    /// <param name="io">Standard streams.</param>
    public static void Add(Command root, CliOptions options, CliIO io)
    {
        ArgumentNullException.ThrowIfNull(root);
        var run = new Command("run", "Run the gateway (the default without a command): MQTT and SMTP ingest, the spool, relaying, the console; stops on SIGTERM or Ctrl+C")
        {
            TreatUnmatchedTokensAsErrors = false,
        };
        run.Note("Exit codes: 0 stopped on request; 1 could not start (a port in use, the spool cannot be opened); 2 the configuration is invalid "
            + "(the appliance's unit does not restart then); 70 stopped because it could not go on.");
        root.Subcommands.Add(run);
        CliCommand.SetAction(run, options, io, (c, _) => RunAsync(c));
        CliCommand.SetAction(root, options, io, (c, _) => RunAsync(c));
    }

    private static async Task<int> RunAsync(CliContext c)
    {
        var config = c.Configuration();
        try
        {
            // Validated before the start as the start validates: a configuration error then exits 2 whatever it is (a
            // missing file, bad JSON, a value of the wrong type), never 1, which systemd would retry.
            using var host = GatewayHost.CreateBuilder(config.HostArguments()).Build();
            if (await GatewayConfig.ValidateAsync(host.Services, default).ConfigureAwait(false) is { Count: > 0 } problems)
            {
                await ReportAsync(c, problems).ConfigureAwait(false);
                return ExitCodes.InvalidConfiguration;
            }

            ThreadScheduling.Report(host.Services.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(ThreadScheduling)));
            var lifetime = host.Services.GetRequiredService<GatewayLifetime>();
            await RunHostAsync(host).ConfigureAwait(false);
            return lifetime.ExitCode;
        }
        catch (OptionsValidationException ex)
        {
            await ReportAsync(c, ex.Failures).ConfigureAwait(false);
            return ExitCodes.InvalidConfiguration;
        }
        catch (Exception ex) when (ex is FileNotFoundException or InvalidDataException or ConfigFileException)
        {
            await ReportAsync(c, [GatewayConfig.Explain(ex)]).ConfigureAwait(false);
            return ExitCodes.InvalidConfiguration;
        }
#pragma warning disable CA1031 // Whatever stopped the start, say it in one line and exit non-zero instead of aborting with a crash dump.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            await c.Io.Error.WriteLineAsync($"{EdgemailCli.Name}: cannot start: {ex.Message}").ConfigureAwait(false);
            return ExitCodes.Failed;
        }
    }

    /// <summary>
    /// Starts the host and runs it until it is told to stop (SIGTERM, Ctrl+C, <see cref="IHostApplicationLifetime.StopApplication"/>),
    /// then stops it. A start that fails or is stopped part-way still stops the services: the host itself stops them
    /// only after a start that completed, and the delivery worker may already have mail under way whose result must be
    /// written (left unwritten, the mail goes again after the next start). A stop requested while starting returns
    /// normally; any other failure to start is thrown, itself, once the services have stopped. A service that fails to
    /// stop is logged, and does not turn a stop into a failure nor hide why the start failed.
    /// </summary>
    internal static async Task RunHostAsync(IHost host)
    {
        ArgumentNullException.ThrowIfNull(host);
        var stopping = host.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping;
        var logger = host.Services.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(RunCommand));
        try
        {
            await host.StartAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            bool stopRequested = stopping.IsCancellationRequested; // before StopAsync, which requests one itself
            await StopAsync(host, logger).ConfigureAwait(false);
            if (ex is OperationCanceledException && stopRequested)
            {
                return; // SIGTERM (systemctl stop) while the services were still starting: a stop on request
            }

            throw;
        }

        var told = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using (stopping.Register(() => told.TrySetResult()))
        {
            await told.Task.ConfigureAwait(false);
        }

        await StopAsync(host, logger).ConfigureAwait(false);
    }

    private static async Task StopAsync(IHost host, ILogger logger)
    {
        try
        {
            await host.StopAsync().ConfigureAwait(false);
        }
#pragma warning disable CA1031 // Whatever a service's stop throws, the others have been stopped; say it and go on.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            LogStopFailed(logger, ex);
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "A service did not stop cleanly; the others have stopped")]
    private static partial void LogStopFailed(ILogger logger, Exception exception);

    private static async Task ReportAsync(CliContext c, IEnumerable<string> problems)
    {
        await c.Io.Error.WriteLineAsync($"{EdgemailCli.Name}: the configuration is invalid:").ConfigureAwait(false);
        foreach (string problem in problems)
        {
            await c.Io.Error.WriteLineAsync("  - " + problem).ConfigureAwait(false);
        }
    }
}
