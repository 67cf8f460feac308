using System.Globalization;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Ingest.Smtp;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Routing;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway;

/// <summary>Builds the gateway's generic host: configuration, services and listeners.</summary>
public static class GatewayHost
{
    /// <summary>How long a graceful stop may take: the delivery worker's drain (twice <c>Relay:Timeout</c>) and 30 s for the rest.</summary>
    /// <param name="relayTimeout"><c>Relay:Timeout</c>.</param>
    /// <returns>The host's shutdown timeout.</returns>
    public static TimeSpan ShutdownTimeout(TimeSpan relayTimeout) => relayTimeout * 2 + TimeSpan.FromSeconds(30);

    /// <summary>Creates a host builder with every gateway service registered.</summary>
    /// <param name="args">
    /// Command-line arguments: <c>--config FILE</c> (or <c>EDGEMAIL_CONFIG</c>) names the JSON file; then
    /// <c>EDGEMAIL_Section__Key</c> environment variables and <c>--Section:Key=value</c> arguments override it.
    /// </param>
    /// <returns>The builder, ready to build and run.</returns>
    public static HostApplicationBuilder CreateBuilder(string[] args)
    {
        ArgumentNullException.ThrowIfNull(args);
        // The host's default appsettings.json source would watch the working directory recursively for changes
        // (every spool write under it, every file a build touches, costing CPU on the ingest path): the gateway
        // reads its configuration once, at start.
        var hostConfiguration = new ConfigurationManager();
        hostConfiguration.AddInMemoryCollection([new("hostBuilder:reloadConfigOnChange", "false")]);
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { Args = args, Configuration = hostConfiguration });
        string? configFile = ConfigFile(args) ?? Environment.GetEnvironmentVariable("EDGEMAIL_CONFIG");
        int ownSources = builder.Configuration.Sources.Count;
        if (configFile is not null)
        {
            builder.Configuration.AddConfigFile(Path.GetFullPath(configFile));
        }

        builder.Configuration.AddEnvironmentVariables("EDGEMAIL_");
        builder.Configuration.AddCommandLine(WithoutConfigFile(args));
        string? demo = configFile is null ? DemoSetup.Apply(builder.Configuration) : null;

        var services = builder.Services;
        services.AddSystemd(); // Type=notify (READY=1, STOPPING=1) and journald log levels under systemd; a no-op otherwise
        services.AddSingleton(TimeProvider.System);
        services.AddSingleton<IValidateOptions<GatewayOptions>, GatewayOptionsValidator>();
        var keys = new ConfigurationKeysValidator([.. ((IConfigurationRoot)builder.Configuration).Providers.Skip(ownSources)]);
        services.AddSingleton(keys); // also what explains a binding that failed (GatewayConfig.ValidateAsync)
        services.AddSingleton<IValidateOptions<GatewayOptions>>(keys);
        services.AddOptions<GatewayOptions>().Bind(builder.Configuration).ValidateOnStart();

        // One bound copy of the options: IOptions and IOptionsMonitor (which ValidateOnStart reads) would each bind and
        // validate their own, and with thousands of configured devices a copy is megabytes (~1.5 MB per 10,000).
        // The configuration file is not reloaded, so the monitor's value is the one value.
        services.AddSingleton<IOptions<GatewayOptions>>(sp => new MonitoredOptions(sp.GetRequiredService<IOptionsMonitor<GatewayOptions>>()));
        services.AddSingleton(new DemoInfo(demo));
        // A graceful stop lets delivery attempts under way record their results, each bounded by twice Relay:Timeout
        // (DeliveryWorker). The host's default 30 s would end the wait sooner and dispose the spool under a running
        // attempt, and a mail the relay had accepted would go again after the restart.
        // Read from the configuration itself, not the validated options: the host resolves its own options while it is
        // built, and an invalid configuration must reach the validator's report (exit code 2), not fail the build.
        var configuration = builder.Configuration;
        services.AddOptions<HostOptions>().Configure(host => host.ShutdownTimeout = ShutdownTimeout(
            TimeSpan.TryParse(configuration["Relay:Timeout"], CultureInfo.InvariantCulture, out var relayTimeout) && relayTimeout > TimeSpan.Zero
                ? relayTimeout
                : new RelayOptions().Timeout));

        services.AddSingleton<GatewayMetrics>();
        services.AddSingleton<GatewayLifetime>();
        services.AddSingleton<ISpool>(sp =>
        {
            var o = sp.GetRequiredService<IOptions<GatewayOptions>>().Value;
            if (o.Spool.Provider == SpoolProviders.Postgres)
            {
                return OpenPostgres(sp, o);
            }

            var spool = SqliteSpool.Open(o.SpoolPath(), o.Spool.Fsync, o.Spool.MaxBatch, sp.GetRequiredService<ILoggerFactory>().CreateLogger<SqliteSpool>(),
                o.Spool.WalLimitMegabytes << 20, owner: true);
            spool.MaxAge = o.Relay.MaxAge;
            spool.Clock = sp.GetRequiredService<TimeProvider>();
            var lifetime = sp.GetRequiredService<GatewayLifetime>();
            spool.Corrupted += ex => lifetime.Fail("the spool database is corrupt; restore it from a backup or move it aside (docs/spool.md, Recovery)", ex);
            var commits = sp.GetRequiredService<GatewayMetrics>().SpoolCommitDuration;
            spool.CommitTimed = elapsed => commits.Record(elapsed.TotalSeconds);
            return spool;
        });
        services.AddSingleton(sp =>
        {
            var o = sp.GetRequiredService<IOptions<GatewayOptions>>().Value;
            return new MailComposer(o.Sender, TemplateSet.Load(o.TemplateDirectory), DkimSigning.Create(o.Dkim));
        });
        services.AddSingleton<IMailTransport>(sp => Transports.Create(sp.GetRequiredService<IOptions<GatewayOptions>>().Value, sp));
        services.AddSingleton<RelayThrottle>();
        services.AddSingleton<IRelayThrottle>(sp => sp.GetRequiredService<RelayThrottle>());
        services.AddSingleton<ReceiptPublisher>();
        services.AddSingleton<RelayHealth>();
        services.AddSingleton<OperatorNotices>();
        services.AddSingleton<ParkingLot>();
        services.AddSingleton<FreeSpaceProbe>(DiskGuard.SystemProbe);
        services.AddSingleton<DiskGuard>();
        services.AddSingleton<Housekeeper>();
        services.AddSingleton<IngestPressure>();
        services.AddSingleton<AlertIngest>();
        services.AddSingleton<AlertProcessor>();
        services.AddSingleton<DeliveryWorker>();
        services.AddHostedService<StartupBanner>();
        services.AddSingleton<Devices.DeviceRegistry>();
        services.AddSingleton<Devices.DevicePresence>();
        services.AddSingleton<Security.SecretVerifier>();
        services.AddHostedService(sp => sp.GetRequiredService<Devices.DeviceRegistry>()); // before anything that takes devices

        // MQTT ingest: the embedded broker (with its guard), or a client of the site's broker (Mqtt:Mode = external).
        services.AddMqttIngest(builder.Configuration);

        services.AddHostedService(sp => sp.GetRequiredService<AlertProcessor>());
        services.AddHostedService(sp => sp.GetRequiredService<DeliveryWorker>());
        services.AddHostedService(sp => sp.GetRequiredService<Housekeeper>());
        services.AddSingleton<Devices.SilenceWatch>();
        services.AddHostedService(sp => sp.GetRequiredService<Devices.SilenceWatch>());
        services.AddSingleton<GatewayGauges>();
        services.AddSingleton<PipelineProbe>();
        services.AddHostedService(sp =>
        {
            _ = sp.GetRequiredService<GatewayGauges>(); // registers the gauges on the meter
            return sp.GetRequiredService<PipelineProbe>();
        });
        services.AddSmtpIngest(builder.Configuration);

        // The operator's console: last, so that it starts once everything it shows is running.
        services.AddSingleton<IValidateOptions<Web.ConsoleOptions>, Web.ConsoleOptionsValidator>();
        services.AddOptions<Web.ConsoleOptions>().Bind(builder.Configuration.GetSection(Web.ConsoleOptions.Section)).ValidateOnStart();
        services.AddSingleton<IValidateOptions<GatewayOptions>>(new ListenerPortsValidator(builder.Configuration));
        services.AddSingleton<Web.ConsoleAuth>();
        services.AddSingleton<Web.ConsoleServer>();
        services.AddHostedService(sp => sp.GetRequiredService<Web.ConsoleServer>());
        return builder;
    }

    // Several instances share this spool (docs/scale-out.md).
    private static PostgresSpool OpenPostgres(IServiceProvider sp, GatewayOptions o)
    {
        var spool = PostgresSpool.Open(o.Spool.ConnectionString, o.Spool.Fsync, o.Spool.MaxBatch, o.Spool.ClaimLease, o.Spool.PollInterval,
            sp.GetRequiredService<ILoggerFactory>().CreateLogger<PostgresSpool>());
        spool.MaxAge = o.Relay.MaxAge;
        spool.Clock = sp.GetRequiredService<TimeProvider>();
        var lifetime = sp.GetRequiredService<GatewayLifetime>();
        spool.SchemaMoved += reason => lifetime.Fail(reason);
        var commits = sp.GetRequiredService<GatewayMetrics>().SpoolCommitDuration;
        spool.CommitTimed = elapsed => commits.Record(elapsed.TotalSeconds);
        return spool;
    }

    // "--config FILE" goes, value and all: left alone, an absolute FILE ("/etc/...") reads as a "/key" switch to the
    // command-line provider, which then takes the next argument as its value and loses that override.
    private static string[] WithoutConfigFile(string[] args)
    {
        var rest = new List<string>(args.Length);
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--config")
            {
                i++;
            }
            else if (!args[i].StartsWith("--config=", StringComparison.Ordinal))
            {
                rest.Add(args[i]);
            }
        }

        return [.. rest];
    }

    private static string? ConfigFile(string[] args)
    {
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--config" && i + 1 < args.Length)
            {
                return args[i + 1];
            }

            if (args[i].StartsWith("--config=", StringComparison.Ordinal))
            {
                return args[i]["--config=".Length..];
            }
        }

        return null;
    }
}

/// <summary>Whether the gateway runs on the generated demo configuration.</summary>
/// <param name="ConfigFile">The demo configuration file, or null.</param>
public sealed record DemoInfo(string? ConfigFile);

/// <summary>Says at start where things are: the spool, the mailbox, and (in demo mode) the demo devices.</summary>
internal sealed partial class StartupBanner(IOptions<GatewayOptions> options, DemoInfo demo, IMailTransport transport, ILogger<StartupBanner> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        var o = options.Value;
        if (demo.ConfigFile is not null)
        {
            LogDemo(demo.ConfigFile, Path.Combine(Path.GetDirectoryName(demo.ConfigFile)!, DemoSetup.SecretsFileName), string.Join(", ", o.Devices.Keys));
        }

        if (transport is LocalMailbox mailbox)
        {
            LogMailbox(mailbox.NewDirectory);
        }
        else
        {
            LogRelay(o.Relay.Mode, o.Relay.Host, o.Relay.Port);
        }

        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    [LoggerMessage(Level = LogLevel.Warning, Message = "DEMO MODE: no devices configured, so demo devices {Devices} were created in {ConfigFile}; their secrets are in {SecretsFile}. Configure real devices (gateway/edgemail.example.json) to leave demo mode.")]
    private partial void LogDemo(string configFile, string secretsFile, string devices);

    [LoggerMessage(Level = LogLevel.Information, Message = "No relay configured: mail lands in the local mailbox {Directory} (one .eml file per message)")]
    private partial void LogMailbox(string directory);

    [LoggerMessage(Level = LogLevel.Information, Message = "Relay: {Mode} {Host}:{Port}")]
    private partial void LogRelay(string mode, string host, int port);
}

/// <summary>The gateway options as <see cref="IOptions{TOptions}"/>, read from the monitor's single copy.</summary>
/// <param name="monitor">The options monitor.</param>
internal sealed class MonitoredOptions(IOptionsMonitor<GatewayOptions> monitor) : IOptions<GatewayOptions>
{
    /// <inheritdoc />
    public GatewayOptions Value => monitor.CurrentValue;
}
