using EdgeMail.Gateway.Configuration;

namespace EdgeMail.Gateway.Relay;

/// <summary>Chooses the transport from <c>Relay:Mode</c>.</summary>
public static class Transports
{
    /// <summary>Creates the configured transport.</summary>
    /// <param name="options">Options.</param>
    /// <param name="services">Services (for loggers).</param>
    /// <returns>The transport.</returns>
    public static IMailTransport Create(GatewayOptions options, IServiceProvider services)
    {
        ArgumentNullException.ThrowIfNull(options);
        _ = services;
        return options.Relay.Mode.ToUpperInvariant() switch
        {
            "SMARTHOST" => new SmtpRelay(options.Relay, options.Sender.Hostname),
            "DIRECTMX" => new DirectMxRelay(options.Relay, options.Sender.Hostname),
            _ => new LocalMailbox(options.Relay.MailboxPath.Length > 0 ? options.Relay.MailboxPath : Path.Combine(options.DataPath(), "mailbox")),
        };
    }
}
