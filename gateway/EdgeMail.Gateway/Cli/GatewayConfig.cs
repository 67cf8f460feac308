using System.Text.Json;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Web;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Cli;

/// <summary>
/// The gateway's configuration as the CLI sees it: <c>--config FILE</c> (else <c>EDGEMAIL_CONFIG</c>), then
/// <c>EDGEMAIL_Section__Key</c> variables, then <c>--Section:Key=value</c> overrides — the order <c>run</c> uses.
/// </summary>
/// <param name="File">The configuration file given, or null.</param>
/// <param name="Overrides">The <c>--Section:Key=value</c> arguments.</param>
public sealed record GatewayConfig(string? File, IReadOnlyList<string> Overrides)
{
    /// <summary>The environment variable naming the configuration file when <c>--config</c> is not given.</summary>
    public const string FileVariable = "EDGEMAIL_CONFIG";

    /// <summary>The configuration file in use: <see cref="File"/>, else <c>EDGEMAIL_CONFIG</c>.</summary>
    public string? EffectiveFile => File ?? (Environment.GetEnvironmentVariable(FileVariable) is { Length: > 0 } env ? env : null);

    /// <summary>Where the configuration comes from, for messages.</summary>
    public string Describe => EffectiveFile is { } file ? Path.GetFullPath(file) : "no configuration file (defaults)";

    /// <summary>The arguments <see cref="GatewayHost.CreateBuilder"/> gets: those of <c>run</c>.</summary>
    /// <returns>The arguments.</returns>
    public string[] HostArguments() => File is null ? [.. Overrides] : ["--config", File, .. Overrides];

    /// <summary>
    /// The options without validation: enough to find the data directory and the console of a running gateway, or
    /// the spool, even when something else in the file is wrong.
    /// </summary>
    /// <returns>Gateway and console options.</returns>
    /// <exception cref="CliException">The file cannot be read, or a value cannot be converted.</exception>
    public (GatewayOptions Gateway, ConsoleOptions Console) Read()
    {
        try
        {
            var configuration = Sources().Build();
            var gateway = new GatewayOptions();
            configuration.Bind(gateway);
            var console = new ConsoleOptions();
            configuration.GetSection(ConsoleOptions.Section).Bind(console);
            return (gateway, console);
        }
        catch (Exception ex) when (IsConfigurationError(ex))
        {
            // A value the binder cannot convert: each such key with its fix, as 'run' reports them.
            var problems = ex is InvalidOperationException ? ConfigurationKeysValidator.Check(((IConfigurationRoot)Sources().Build()).Providers) : [];
            throw new CliException(ExitCodes.InvalidConfiguration, problems.Count == 0 ? Explain(ex)
                : "the configuration is invalid:" + string.Concat(problems.Select(p => Environment.NewLine + "  - " + p)));
        }
    }

    /// <summary>
    /// Builds the gateway's host as <c>run</c> does, without starting it, and validates every option as the start
    /// would. Without a configuration file and without devices, <c>run</c> would make a demo configuration: that is
    /// reported (<see cref="ConfigCheck.Demo"/>) instead of written.
    /// </summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The host and the problems.</returns>
    public async Task<ConfigCheck> CheckAsync(CancellationToken cancellationToken)
    {
        if (EffectiveFile is null && !Sources().Build().GetSection("Devices").GetChildren().Any())
        {
            return new ConfigCheck(null, [], Demo: true);
        }

        IHost? host = null;
        try
        {
            host = GatewayHost.CreateBuilder(HostArguments()).Build();
            return new ConfigCheck(host, await ValidateAsync(host.Services, cancellationToken).ConfigureAwait(false), Demo: false);
        }
        catch (Exception ex) when (IsConfigurationError(ex))
        {
            host?.Dispose();
            return new ConfigCheck(null, [Explain(ex)], Demo: false);
        }
    }

    /// <summary>Runs the checks the host runs at start (<see cref="IAsyncStartupValidator"/>, from every <c>ValidateOnStart</c>).</summary>
    /// <param name="services">The host's services.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Every problem; empty when the start would pass validation.</returns>
    public static async Task<IReadOnlyList<string>> ValidateAsync(IServiceProvider services, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(services);
        try
        {
            if (services.GetService<IAsyncStartupValidator>() is { } validator)
            {
                await validator.ValidateAsync(cancellationToken).ConfigureAwait(false);
            }

            return [];
        }
        catch (OptionsValidationException ex)
        {
            return OncePerKey(services, ex.Failures);
        }
        catch (AggregateException ex) when (ex.InnerExceptions.All(e => e is OptionsValidationException))
        {
            return OncePerKey(services, ex.InnerExceptions.OfType<OptionsValidationException>().SelectMany(e => e.Failures));
        }
        catch (InvalidOperationException) when (services.GetService<ConfigurationKeysValidator>()?.Check() is { Count: > 0 } problems)
        {
            // A value the binder cannot convert ("Failed to convert configuration value 'many' at 'Mqtt:Port'") stops the
            // binding before any validator runs, naming only the first such key and no fix: the keys' check names each.
            return problems;
        }
        catch (Exception ex) when (IsConfigurationError(ex))
        {
            return [Explain(ex)];
        }
    }

    // A value written wrongly ("Timeout": 5, read as five days) is reported for what was written, not again for what
    // the binder made of it ("Relay:Timeout: 5.00:00:00 is outside 1 second to 1 hour"). Each message begins "Key: ".
    private static List<string> OncePerKey(IServiceProvider services, IEnumerable<string> failures)
    {
        var written = (services.GetService<ConfigurationKeysValidator>()?.Check() ?? []).ToHashSet(StringComparer.Ordinal);
        var keys = written.Select(KeyOf).ToHashSet(StringComparer.OrdinalIgnoreCase);
        return [.. failures.Where(f => written.Contains(f) || !keys.Contains(KeyOf(f)))];

        static string KeyOf(string problem) => problem.IndexOf(": ", StringComparison.Ordinal) is int end and > 0 ? problem[..end] : problem;
    }

    private IConfigurationBuilder Sources()
    {
        var builder = new ConfigurationBuilder();
        if (EffectiveFile is { } file)
        {
            builder.AddConfigFile(Path.GetFullPath(file));
        }

        return builder.AddEnvironmentVariables("EDGEMAIL_").AddCommandLine([.. Overrides]);
    }

    // A file that is missing or not JSON, or a value the binder cannot convert ("Failed to convert configuration value
    // at 'Mqtt:Port'"): restarting cannot fix these either.
    private static bool IsConfigurationError(Exception ex) =>
        ex is FileNotFoundException or DirectoryNotFoundException or ConfigFileException or InvalidDataException or JsonException or FormatException or InvalidOperationException
            or UnauthorizedAccessException;

    /// <summary>A configuration that cannot be read at all, in one line with its fix.</summary>
    /// <param name="ex">What reading it threw (<see cref="IsConfigurationError"/>).</param>
    /// <returns>The message.</returns>
    internal static string Explain(Exception ex) => ex switch
    {
        ConfigFileException unreadable => $"{ex.Message} Fix: {unreadable.Fix}",
        UnauthorizedAccessException => ex.Message + " Fix: run as root or as the gateway's user (the file is root:edgemail 0640 on the appliance).",
        FileNotFoundException or DirectoryNotFoundException => ex.Message
            + " Fix: give the path of the configuration file with --config FILE (or EDGEMAIL_CONFIG), e.g. /etc/edgemail/edgemail.json (edgemail.example.json documents every key).",
        InvalidDataException { InnerException: { } inner } => $"{ex.Message} {inner.Message} Fix: correct the JSON (a missing comma or quote).",
        InvalidDataException or JsonException => $"{ex.Message} Fix: correct the JSON (a missing comma or quote).",
        InvalidOperationException { InnerException: { } inner } => $"{ex.Message} ({inner.Message}) Fix: give the key a value of its option's type (edgemail.example.json shows each).",
        _ => $"{ex.Message} Fix: correct the configuration (edgemail.example.json documents every key), or give overrides as --Section:Key=value.",
    };
}

/// <summary>The configuration checked as <c>run</c> would check it.</summary>
/// <param name="Host">The built (not started) host; null when the configuration could not be read at all, or in demo mode.</param>
/// <param name="Problems">What is wrong, each naming the key and the fix; empty when valid.</param>
/// <param name="Demo">No configuration file and no device: <c>run</c> would start in demo mode.</param>
public sealed record ConfigCheck(IHost? Host, IReadOnlyList<string> Problems, bool Demo) : IDisposable
{
    /// <summary>The validated options (only when <see cref="Problems"/> is empty and a host was built).</summary>
    public GatewayOptions Options => Host!.Services.GetRequiredService<IOptions<GatewayOptions>>().Value;

    /// <summary>The console's options.</summary>
    public ConsoleOptions Console => Host!.Services.GetRequiredService<IOptions<ConsoleOptions>>().Value;

    /// <inheritdoc />
    public void Dispose() => Host?.Dispose();
}
