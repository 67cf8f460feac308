using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Relay.OAuth2;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Relay;

/// <summary>Chooses the transport from <c>Relay:Mode</c>.</summary>
public static class Transports
{
    /// <summary>Creates the configured transport.</summary>
    /// <param name="options">Options.</param>
    /// <param name="services">Services (clock, loggers, operator notices, metrics).</param>
    /// <returns>The transport.</returns>
    public static IMailTransport Create(GatewayOptions options, IServiceProvider services)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(services);
        return options.Relay.Mode.ToUpperInvariant() switch
        {
            "SMARTHOST" => new SmtpRelay(options.Relay, options.Sender.Hostname, Tokens(options, services), services.GetService<TimeProvider>()),
            "DIRECTMX" => DirectMx(options, services),
            _ => new LocalMailbox(options.Relay.MailboxPath.Length > 0 ? options.Relay.MailboxPath : Path.Combine(options.DataPath(), "mailbox")),
        };
    }

    private static DirectMxRelay DirectMx(GatewayOptions options, IServiceProvider services)
    {
        var relay = new DirectMxRelay(options.Relay, options.Sender.Hostname, services.GetService<ILogger<DirectMxRelay>>(), services.GetService<TimeProvider>());
        services.GetService<GatewayMetrics>()?.Meter.CreateObservableGauge("edgemail.relay.unreachable_domains", () => relay.Unreachable.Count, "{domain}",
            "Recipient domains whose exchangers could not be reached lately: their mail is deferred without a connection until one attempt reaches them again");
        return relay;
    }

    private static RelayTokens? Tokens(GatewayOptions options, IServiceProvider services)
    {
        if (!RelayAuthModes.IsOAuth2(options.Relay.Auth))
        {
            return null;
        }

        var notices = services.GetService<OperatorNotices>();
        return RelayTokens.Create(options, services.GetService<TimeProvider>() ?? TimeProvider.System,
            services.GetRequiredService<ILoggerFactory>().CreateLogger<RelayTokens>(),
            notices is null ? null : notices.Report, services.GetService<GatewayMetrics>());
    }
}
