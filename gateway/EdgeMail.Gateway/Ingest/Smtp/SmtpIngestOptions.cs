using System.Net;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Ingest.Smtp;

/// <summary>
/// SMTP submission for devices that can only send mail (configuration section <c>Smtp</c>). No endpoint is
/// configured by default, so the gateway listens for SMTP only when told to; every endpoint binds to loopback
/// unless <c>BindAddress</c> says otherwise.
/// </summary>
public sealed class SmtpIngestOptions
{
    /// <summary>The configuration section these options bind to.</summary>
    public const string Section = "Smtp";

    /// <summary>Listeners, e.g. a plain LAN port for legacy devices, 587 with STARTTLS, 465 with implicit TLS.</summary>
    public List<SmtpEndpointOptions> Endpoints { get; set; } = [];

    /// <summary>PKCS#12 file with the TLS certificate and key; empty generates a self-signed one in the data directory on first start.</summary>
    public string CertificatePath { get; set; } = string.Empty;

    /// <summary>Password of <see cref="CertificatePath"/>.</summary>
    public string CertificatePassword { get; set; } = string.Empty;

    /// <summary>Sources allowed to submit without AUTH (devices that cannot authenticate), each mapped to the device it is.</summary>
    public List<SmtpSourceOptions> AllowedSources { get; set; } = [];

    /// <summary>Extra recipient addresses: local part (or full address) to user ids, group ids or addresses.</summary>
    public Dictionary<string, List<string>> Aliases { get; set; } = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>Extra domains whose local parts are user ids, group ids and aliases (besides <c>Sender:Hostname</c> and the domain of <c>Sender:Address</c>).</summary>
    public List<string> Domains { get; set; } = [];

    /// <summary>Largest message accepted, in bytes (advertised with SIZE and enforced while reading DATA).</summary>
    public int MaxMessageBytes { get; set; } = 10 * 1024 * 1024;

    /// <summary>Most recipients per message; more are answered 452.</summary>
    public int MaxRecipients { get; set; } = 50;

    /// <summary>Longest command line in bytes (RFC 5321 allows 512; AUTH lines may be longer); longer closes the connection with 500.</summary>
    public int MaxCommandLineBytes { get; set; } = 4096;

    /// <summary>Most simultaneous SMTP connections in total; more are answered 421.</summary>
    public int MaxConnections { get; set; } = 1000;

    /// <summary>Most simultaneous SMTP connections from one address; more are answered 421.</summary>
    public int MaxConnectionsPerSource { get; set; } = 20;

    /// <summary>Messages per minute one device may submit (burst: the same number); over it MAIL is answered 450.</summary>
    public int MessagesPerMinutePerDevice { get; set; } = 600;

    /// <summary>Messages per minute one source address may submit, whoever it authenticates as; over it MAIL is answered 450.</summary>
    public int MessagesPerMinutePerSource { get; set; } = 3000;

    /// <summary>
    /// Wrong passwords from one address, whatever device ids they were for, within <see cref="AuthFailureWindow"/>
    /// before every AUTH from it is answered 421 and the connection closed: against guessing across device ids.
    /// </summary>
    public int AuthFailuresPerSource { get; set; } = 100;

    /// <summary>
    /// Wrong passwords for one device id from one address within <see cref="AuthFailureWindow"/> before that device's
    /// AUTH from that address is answered 421 (even with the right password), while the other devices there go on.
    /// </summary>
    public int AuthFailuresPerDevice { get; set; } = 10;

    /// <summary>Window for <see cref="AuthFailuresPerSource"/> and <see cref="AuthFailuresPerDevice"/>.</summary>
    public TimeSpan AuthFailureWindow { get; set; } = TimeSpan.FromMinutes(10);

    /// <summary>Mail with more Received headers than this is refused as a loop (554 5.4.6).</summary>
    public int MaxHops { get; set; } = 30;

    /// <summary>
    /// How long the server waits for the client — its next command, the next bytes of a message, its TLS handshake —
    /// before it answers <c>421 4.4.2</c> and closes.
    /// </summary>
    public TimeSpan CommandTimeout { get; set; } = TimeSpan.FromMinutes(2);

    /// <summary>
    /// A session older than this is answered <c>421 4.4.2</c> at its next <c>MAIL</c> (the transaction under way
    /// finishes); one still open at twice this is cut.
    /// </summary>
    public TimeSpan SessionTimeout { get; set; } = TimeSpan.FromMinutes(10);
}

/// <summary>One SMTP listener.</summary>
public sealed class SmtpEndpointOptions
{
    /// <summary>Address to listen on; loopback unless configured.</summary>
    public string BindAddress { get; set; } = IPAddress.Loopback.ToString();

    /// <summary>TCP port; 0 lets the operating system choose (tests).</summary>
    public int Port { get; set; } = 2525;

    /// <summary>
    /// <c>StartTls</c> (STARTTLS offered; AUTH only after it), <c>Implicit</c> (TLS from the first byte, as on 465),
    /// or <c>None</c> (a plain LAN port for legacy devices: only allow-listed sources can submit, AUTH is never offered).
    /// </summary>
    public string Tls { get; set; } = "StartTls";
}

/// <summary>A source network allowed to submit without AUTH, and the device it stands for.</summary>
public sealed class SmtpSourceOptions
{
    /// <summary>An address or CIDR network, e.g. <c>192.168.10.7</c> or <c>192.168.10.0/28</c>.</summary>
    public string Network { get; set; } = string.Empty;

    /// <summary>The device id mail from this source is attributed to (must be a configured device).</summary>
    public string Device { get; set; } = string.Empty;
}

/// <summary>Checks the <c>Smtp</c> section at start; messages name the key and the fix.</summary>
public sealed class SmtpIngestOptionsValidator : IValidateOptions<SmtpIngestOptions>
{
    /// <summary>TLS modes an endpoint may have.</summary>
    public static readonly IReadOnlyList<string> TlsModes = ["StartTls", "Implicit", "None"];

    private readonly IOptions<Configuration.GatewayOptions> _gateway;

    /// <summary>Creates the validator.</summary>
    /// <param name="gateway">The gateway options (devices).</param>
    public SmtpIngestOptionsValidator(IOptions<Configuration.GatewayOptions> gateway) => _gateway = gateway;

    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, SmtpIngestOptions options)
    {
        Configuration.GatewayOptions gateway;
        try
        {
            gateway = _gateway.Value;
        }
        catch (OptionsValidationException)
        {
            gateway = new Configuration.GatewayOptions(); // its own validator reports those problems; do not report them twice
            gateway.Devices.Clear();
            foreach (var source in options.AllowedSources)
            {
                gateway.Devices[source.Device] = new Configuration.DeviceOptions();
            }
        }

        var errors = Check(options, gateway);
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    /// <summary>Lists every problem.</summary>
    /// <param name="o">SMTP options.</param>
    /// <param name="gateway">Gateway options.</param>
    /// <returns>One message per problem.</returns>
    public static List<string> Check(SmtpIngestOptions o, Configuration.GatewayOptions gateway)
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(gateway);
        var errors = new List<string>();
        void Add(string key, string problem, string fix) => errors.Add($"{key}: {problem}. Fix: {fix}.");
        for (int i = 0; i < o.Endpoints.Count; i++)
        {
            var e = o.Endpoints[i];
            if (!IPAddress.TryParse(e.BindAddress, out _))
            {
                Add($"Smtp:Endpoints:{i}:BindAddress", $"'{e.BindAddress}' is not an IP address", "use 127.0.0.1 (loopback) or the LAN address devices reach");
            }

            if (e.Port is < 0 or > 65535)
            {
                Add($"Smtp:Endpoints:{i}:Port", $"{e.Port} is not a TCP port", "use 587 (STARTTLS), 465 (Implicit), a LAN port such as 2525, or 0 to let the OS choose");
            }

            if (!TlsModes.Contains(e.Tls, StringComparer.OrdinalIgnoreCase))
            {
                Add($"Smtp:Endpoints:{i}:Tls", $"'{e.Tls}' is not a TLS mode", "use StartTls, Implicit or None");
            }
        }

        if (o.CertificatePath.Length > 0 && o.Endpoints.Any(e => !e.Tls.Equals("None", StringComparison.OrdinalIgnoreCase))
            && Security.TlsCertificates.Problem(o.CertificatePath, o.CertificatePassword) is { } problem)
        {
            Add("Smtp:CertificatePath", $"the TLS certificate '{o.CertificatePath}' {problem}", Security.TlsCertificates.Fix("Smtp:CertificatePassword"));
        }

        for (int i = 0; i < o.AllowedSources.Count; i++)
        {
            var s = o.AllowedSources[i];
            if (!TryParseNetwork(s.Network, out _))
            {
                Add($"Smtp:AllowedSources:{i}:Network", $"'{s.Network}' is not an address or CIDR network", "use e.g. 192.168.10.7 or 192.168.10.0/28");
            }

            if (!gateway.Devices.ContainsKey(s.Device))
            {
                Add($"Smtp:AllowedSources:{i}:Device", $"'{s.Device}' is not a configured device", "name a device under Devices; mail from this source is attributed to it");
            }
        }

        if (o.MaxMessageBytes < 1024)
        {
            Add("Smtp:MaxMessageBytes", $"{o.MaxMessageBytes} is too small", "use at least 1024 (default 10485760)");
        }

        if (o.MaxCommandLineBytes < 512)
        {
            Add("Smtp:MaxCommandLineBytes", $"{o.MaxCommandLineBytes} is below RFC 5321's 512", "use at least 512 (default 4096)");
        }

        if (o.MaxRecipients < 1 || o.MaxConnections < 1 || o.MaxConnectionsPerSource < 1)
        {
            Add("Smtp:MaxRecipients/MaxConnections/MaxConnectionsPerSource", "must be at least 1", "raise the value");
        }

        if (o.MaxHops < 1)
        {
            Add("Smtp:MaxHops", $"{o.MaxHops} would refuse every relayed mail", "use 30");
        }

        if (o.CommandTimeout < TimeSpan.FromSeconds(1) || o.CommandTimeout > TimeSpan.FromHours(1))
        {
            Add("Smtp:CommandTimeout", $"{o.CommandTimeout} is outside 1 second to 1 hour", "use 00:02:00 (RFC 5321 asks servers for 5 minutes: 00:05:00)");
        }

        if (o.SessionTimeout < TimeSpan.FromSeconds(1) || o.SessionTimeout > TimeSpan.FromDays(1))
        {
            Add("Smtp:SessionTimeout", $"{o.SessionTimeout} is outside 1 second to 1 day", "use 00:10:00");
        }

        return errors;
    }

    /// <summary>Parses an address or CIDR network.</summary>
    /// <param name="text">Text.</param>
    /// <param name="network">The network (a single address becomes a /32 or /128).</param>
    /// <returns>True when valid.</returns>
    public static bool TryParseNetwork(string text, out IPNetwork network)
    {
        network = default;
        if (string.IsNullOrWhiteSpace(text))
        {
            return false;
        }

        if (IPAddress.TryParse(text, out var single))
        {
            network = new IPNetwork(single, single.GetAddressBytes().Length * 8);
            return true;
        }

        return IPNetwork.TryParse(text, out network);
    }
}
