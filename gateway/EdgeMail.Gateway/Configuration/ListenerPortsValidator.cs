using System.Net;
using EdgeMail.Gateway.Ingest.Smtp;
using EdgeMail.Gateway.Web;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Configuration;

/// <summary>
/// Two of the gateway's listeners (MQTT, MQTT over TLS, each SMTP endpoint, the console) on one port: a problem at start
/// naming both keys (exit 2), instead of the second listener failing the start once the first is up. Across sections, so
/// it reads <c>Smtp</c> and <c>Console</c> from the configuration; their own validators report their other problems.
/// </summary>
/// <param name="configuration">The gateway's configuration.</param>
public sealed class ListenerPortsValidator(IConfiguration configuration) : IValidateOptions<GatewayOptions>
{
    /// <summary>A listener: the key of its port, its bind address as configured, and the port.</summary>
    /// <param name="Key">The port's key, e.g. <c>Console:Port</c>.</param>
    /// <param name="BindAddress">The address it binds.</param>
    /// <param name="Port">The port; 0 lets the OS choose.</param>
    public sealed record Listener(string Key, string BindAddress, int Port);

    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, GatewayOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        SmtpIngestOptions smtp;
        ConsoleOptions console;
        try
        {
            smtp = configuration.GetSection(SmtpIngestOptions.Section).Get<SmtpIngestOptions>() ?? new();
            console = configuration.GetSection(ConsoleOptions.Section).Get<ConsoleOptions>() ?? new();
        }
        catch (InvalidOperationException)
        {
            return ValidateOptionsResult.Skip; // a value of the wrong type: the section's own validation reports it
        }

        var errors = Check(Listeners(options, smtp, console));
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    /// <summary>The listeners the configuration starts.</summary>
    /// <param name="o">The gateway options (MQTT).</param>
    /// <param name="smtp">The SMTP ingest options.</param>
    /// <param name="console">The console options.</param>
    /// <returns>Each listener with the key of its port.</returns>
    public static List<Listener> Listeners(GatewayOptions o, SmtpIngestOptions smtp, ConsoleOptions console)
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(smtp);
        ArgumentNullException.ThrowIfNull(console);
        var listeners = new List<Listener>();
        if (!o.Mqtt.IsExternal())
        {
            if (o.Mqtt.PlainEnabled)
            {
                listeners.Add(new("Mqtt:Port", o.Mqtt.BindAddress, o.Mqtt.Port));
            }

            if (o.Mqtt.TlsEnabled)
            {
                listeners.Add(new("Mqtt:TlsPort", o.Mqtt.BindAddress, o.Mqtt.TlsPort));
            }
        }

        for (int i = 0; i < smtp.Endpoints.Count; i++)
        {
            listeners.Add(new($"Smtp:Endpoints:{i}:Port", smtp.Endpoints[i].BindAddress, smtp.Endpoints[i].Port));
        }

        if (console.Enabled)
        {
            listeners.Add(new("Console:Port", console.BindAddress, console.Port));
        }

        return listeners;
    }

    /// <summary>One problem per pair of listeners that would bind the same port on overlapping addresses.</summary>
    /// <param name="listeners">The listeners.</param>
    /// <returns>Empty when no two collide.</returns>
    public static List<string> Check(IReadOnlyList<Listener> listeners)
    {
        ArgumentNullException.ThrowIfNull(listeners);
        var errors = new List<string>();
        for (int a = 0; a < listeners.Count; a++)
        {
            for (int b = a + 1; b < listeners.Count; b++)
            {
                var (first, second) = (listeners[a], listeners[b]);

                // Mqtt:TlsPort against Mqtt:Port has its own message (GatewayOptionsValidator).
                bool mqttPair = first.Key == "Mqtt:Port" && second.Key == "Mqtt:TlsPort";
                if (!mqttPair && first.Port == second.Port && first.Port is > 0 and <= 65535 && Overlap(first.BindAddress, second.BindAddress))
                {
                    errors.Add($"{second.Key}: {second.Port} is also {first.Key}, and two listeners cannot share a port. "
                        + $"Fix: give {second.Key} or {first.Key} another port (0 lets the OS choose).");
                }
            }
        }

        return errors;
    }

    // The same address, or a wildcard (0.0.0.0, ::) against anything: the second bind fails with "address in use".
    // Different specific addresses (127.0.0.1 and a LAN address) may share a port. An address that does not parse is
    // its section's own problem.
    private static bool Overlap(string first, string second) =>
        IPAddress.TryParse(first, out var a) && IPAddress.TryParse(second, out var b)
        && (a.Equals(b) || IsWildcard(a) || IsWildcard(b));

    private static bool IsWildcard(IPAddress address) => address.Equals(IPAddress.Any) || address.Equals(IPAddress.IPv6Any);
}
