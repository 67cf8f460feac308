using System.Net;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using EdgeMail.Gateway.Configuration;
using Microsoft.Extensions.Options;
using MQTTnet.Server;

namespace EdgeMail.Gateway.Security;

/// <summary>
/// Hardening of the MQTT listener (configuration section <c>MqttGuard</c>). The TLS listener is configured under
/// <c>Mqtt</c> (<c>TlsEnabled</c>, <c>TlsPort</c>); this section's older <c>TlsEnabled</c> and <c>TlsPort</c> keys are
/// read there when the new ones are not set.
/// </summary>
public sealed class MqttGuardOptions
{
    /// <summary>The configuration section these options bind to.</summary>
    public const string Section = "MqttGuard";

    /// <summary>
    /// CONNECT attempts per minute from one source address (burst: the same number); more are refused as server busy.
    /// A device whose secret the gateway has already checked since it started is not counted here but under
    /// <see cref="ConnectsPerMinutePerDevice"/>, so a site of many devices behind one address gets back at once after
    /// its link dropped. 0 disables.
    /// </summary>
    public int ConnectsPerMinutePerSource { get; set; } = 600;

    /// <summary>
    /// CONNECT attempts per minute (burst: the same number) of one device presenting the secret already checked:
    /// such a connect costs a hash compare, not a key derivation. 0 disables.
    /// </summary>
    public int ConnectsPerMinutePerDevice { get; set; } = 60;

    /// <summary>
    /// Wrong secrets from one source address, whatever device ids they were for, within <see cref="AuthFailureWindow"/>
    /// before every CONNECT from it is refused: against guessing across device ids.
    /// </summary>
    public int AuthFailuresPerSource { get; set; } = 100;

    /// <summary>
    /// Wrong secrets for one device id from one source address within <see cref="AuthFailureWindow"/> before that
    /// device's CONNECTs from that address are refused (even with the right secret), while the other devices there
    /// go on connecting.
    /// </summary>
    public int AuthFailuresPerDevice { get; set; } = 10;

    /// <summary>Window for <see cref="AuthFailuresPerSource"/> and <see cref="AuthFailuresPerDevice"/>.</summary>
    public TimeSpan AuthFailureWindow { get; set; } = TimeSpan.FromMinutes(10);

    /// <summary>
    /// Alerts and status messages one device may publish a minute (burst: the same number, enough for a device
    /// emptying a long-offline queue at full speed for a while). Past it each PUBACK is delayed until the rate
    /// allows it, which slows the device down without refusing anything. 0 disables.
    /// </summary>
    public int PublishesPerMinutePerDevice { get; set; } = 1200;

    /// <summary>
    /// Connections from one source address that have not yet authenticated (TLS handshake, CONNECT and its check) at
    /// any one time; a new one over it is closed at once, before anything is read from it. Without it one address could
    /// hold thousands of sockets for <c>Mqtt:ConnectTimeout</c> each. Authenticated connections are not counted, so a
    /// site of thousands of devices behind one address is not capped: each of its connections is pending only for its
    /// handshake and CONNECT, and the ones closed during a reconnect storm get in on their next try. 0 disables.
    /// </summary>
    public int MaxPendingConnectionsPerSource { get; set; } = 200;

    /// <summary>
    /// Connections not yet authenticated at any one time, from all addresses together (see
    /// <see cref="MaxPendingConnectionsPerSource"/>): bounds the sockets and TLS handshakes many addresses can hold. 0 disables.
    /// </summary>
    public int MaxPendingConnections { get; set; } = 2000;
}

/// <summary>Checks the <c>MqttGuard</c> section at start; messages name the key and the fix.</summary>
public sealed class MqttGuardOptionsValidator : IValidateOptions<MqttGuardOptions>
{
    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, MqttGuardOptions options)
    {
        var errors = Check(options);
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    /// <summary>Lists every problem.</summary>
    /// <param name="o">The options.</param>
    /// <returns>One message per problem; empty when valid.</returns>
    public static List<string> Check(MqttGuardOptions o)
    {
        ArgumentNullException.ThrowIfNull(o);
        var errors = new List<string>();
        void Count(string key, int value, int example)
        {
            if (value < 0)
            {
                errors.Add($"{MqttGuardOptions.Section}:{key}: {value} is negative. Fix: use a count such as {example} (the default), or 0 to turn this limit off.");
            }
        }

        var defaults = new MqttGuardOptions();
        Count(nameof(o.ConnectsPerMinutePerSource), o.ConnectsPerMinutePerSource, defaults.ConnectsPerMinutePerSource);
        Count(nameof(o.ConnectsPerMinutePerDevice), o.ConnectsPerMinutePerDevice, defaults.ConnectsPerMinutePerDevice);
        Count(nameof(o.AuthFailuresPerSource), o.AuthFailuresPerSource, defaults.AuthFailuresPerSource);
        Count(nameof(o.AuthFailuresPerDevice), o.AuthFailuresPerDevice, defaults.AuthFailuresPerDevice);
        Count(nameof(o.PublishesPerMinutePerDevice), o.PublishesPerMinutePerDevice, defaults.PublishesPerMinutePerDevice);
        Count(nameof(o.MaxPendingConnectionsPerSource), o.MaxPendingConnectionsPerSource, defaults.MaxPendingConnectionsPerSource);
        Count(nameof(o.MaxPendingConnections), o.MaxPendingConnections, defaults.MaxPendingConnections);
        if (o.AuthFailureWindow <= TimeSpan.Zero)
        {
            errors.Add($"{MqttGuardOptions.Section}:{nameof(o.AuthFailureWindow)}: {o.AuthFailureWindow} is not a positive time. Fix: use e.g. 00:10:00 (the default).");
        }

        return errors;
    }
}

/// <summary>
/// What the embedded broker asks before it checks a device's secret: is this source connecting too often, or has
/// it guessed wrong too often (answered with a CONNACK refusal — MQTT's own back-off reply — and logged once by
/// the broker); and it adds the TLS endpoint with the gateway's certificate when <c>Mqtt:TlsEnabled</c>.
/// </summary>
public sealed class MqttGuard
{
    private readonly MqttGuardOptions _options;
    private readonly GatewayOptions _gateway;
    private readonly TimeProvider _clock;
    private readonly RateLimiter _connects;
    private readonly RateLimiter _knownConnects;
    private readonly AuthFailureGuard _authFailures;
    private readonly RateLimiter _publishes;
    private readonly ConnectionLimiter _pending;

    /// <summary>Creates the guard.</summary>
    /// <param name="options">Its options.</param>
    /// <param name="gateway">Gateway options (the <c>Mqtt</c> listener and its certificate, data directory, host name).</param>
    /// <param name="clock">Clock.</param>
    public MqttGuard(IOptions<MqttGuardOptions> options, IOptions<GatewayOptions> gateway, TimeProvider clock)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(gateway);
        _options = options.Value;
        _gateway = gateway.Value;
        _clock = clock;
        _connects = new RateLimiter(_options.ConnectsPerMinutePerSource, _options.ConnectsPerMinutePerSource, clock);
        _knownConnects = new RateLimiter(_options.ConnectsPerMinutePerDevice, _options.ConnectsPerMinutePerDevice, clock);
        _authFailures = new AuthFailureGuard(_options.AuthFailuresPerSource, _options.AuthFailuresPerDevice, _options.AuthFailureWindow, clock);
        _publishes = new RateLimiter(_options.PublishesPerMinutePerDevice, _options.PublishesPerMinutePerDevice, clock);
        _pending = new ConnectionLimiter(Cap(_options.MaxPendingConnections), Cap(_options.MaxPendingConnectionsPerSource));
    }

    /// <summary>Connections let in that have not yet authenticated, been refused or closed.</summary>
    public int PendingConnections => _pending.Open;

    /// <summary>Raised after <see cref="PendingConnections"/> changed (tests wait on it).</summary>
    public event Action? PendingConnectionsChanged
    {
        add => _pending.Changed += value;
        remove => _pending.Changed -= value;
    }

    /// <summary>
    /// Whether to serve a connection just accepted from <paramref name="remote"/>, before anything is read from it: not
    /// when its address, or all addresses together, hold too many connections that have not yet authenticated.
    /// </summary>
    /// <param name="remote">The client's endpoint.</param>
    /// <param name="reason">Why not, when refused.</param>
    /// <returns>The connection's slot, to dispose once it has authenticated, been refused or closed; null to close it now.</returns>
    public IDisposable? AdmitConnection(EndPoint? remote, out string reason) =>
        _pending.TryOpen(remote is IPEndPoint ip ? Plain(ip.Address) : IPAddress.None, out reason);

    /// <summary>How long to hold a device's next publish back (its PUBACK) to keep it within its rate; usually zero.</summary>
    /// <param name="deviceId">The publishing device.</param>
    /// <returns>The delay.</returns>
    public TimeSpan PublishDelay(string deviceId) => _publishes.Reserve(deviceId);

    /// <summary>The TLS endpoint, once the broker started with one.</summary>
    public IPEndPoint? TlsEndpoint { get; private set; }

    /// <summary>The TLS listener's certificate, once the broker started with one.</summary>
    public X509Certificate2? Certificate { get; private set; }

    /// <summary>True when starting the TLS listener generated a new self-signed certificate.</summary>
    public bool CertificateGenerated { get; private set; }

    /// <summary>Whether to refuse a CONNECT from <paramref name="remote"/> as <paramref name="device"/> before its secret is verified.</summary>
    /// <param name="remote">The client's endpoint.</param>
    /// <param name="device">The device id (user name) it presents.</param>
    /// <param name="known">It presents the secret already verified for this device (<see cref="SecretVerifier.Recognizes"/>).</param>
    /// <returns>The reason to refuse (and whether it is wrong secrets rather than the rate), or null.</returns>
    public (string Text, bool WrongSecrets)? Refuse(EndPoint? remote, string device, bool known = false)
    {
        ArgumentNullException.ThrowIfNull(device);
        string source = Source(remote);
        if (_authFailures.Refusal(source, device) is { } refusal)
        {
            return (refusal + "; try again later", true);
        }

        // The per-source limit bounds the key derivations an address can make the gateway do; a device that proves
        // a known secret costs none, and counting it there would keep the devices of a NAT'd site out for minutes
        // after the site's link comes back.
        if (known)
        {
            return _knownConnects.TryAcquire(device) ? null : ("too many connections of this device; slow down", false);
        }

        return _connects.TryAcquire(source) ? null : ("too many connection attempts from this address; slow down", false);
    }

    /// <summary>Counts a wrong secret (or an unknown device id) from <paramref name="remote"/>.</summary>
    /// <param name="remote">The client's endpoint.</param>
    /// <param name="device">The device id it presented.</param>
    public void AuthFailed(EndPoint? remote, string device) => _authFailures.Failed(Source(remote), device);

    /// <summary>Adds the TLS endpoint when enabled.</summary>
    /// <param name="builder">The broker's options.</param>
    /// <param name="address">The address the broker listens on.</param>
    /// <returns>The builder.</returns>
    public MqttServerOptionsBuilder Configure(MqttServerOptionsBuilder builder, IPAddress address)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(address);
        var mqtt = _gateway.Mqtt;
        if (!mqtt.TlsEnabled)
        {
            return builder.WithoutEncryptedEndpoint();
        }

        if (Certificate is null)
        {
            Certificate = TlsCertificates.Load(mqtt.CertificatePath, mqtt.CertificatePassword, _gateway.DataPath(), _gateway.Sender.Hostname, _clock, out bool generated);
            CertificateGenerated = generated;
        }

        int port = mqtt.TlsPort == 0 ? Ingest.EmbeddedBroker.ReserveFreePort(address) : mqtt.TlsPort;

        TlsEndpoint = new IPEndPoint(address, port);
        return builder.WithEncryptedEndpoint()
            .WithEncryptedEndpointBoundIPAddress(address)
            .WithEncryptedEndpointBoundIPV6Address(IPAddress.None)
            .WithEncryptedEndpointPort(port)
            .WithEncryptionCertificate(Certificate)
            .WithEncryptionSslProtocol(SslProtocols.Tls12 | SslProtocols.Tls13);
    }

    private static int Cap(int limit) => limit <= 0 ? int.MaxValue : limit;

    // A dual-stack listener's IPv4 client as the IPv4 address it is, so that both listeners count it as one source.
    private static IPAddress Plain(IPAddress address) => address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address;

    /// <summary>A client's source as every per-source limit and log budget keys it: one text for its IPv4 address on either listener.</summary>
    internal static string Source(EndPoint? remote) => remote switch
    {
        IPEndPoint ip => Text(Plain(ip.Address)),
        null => "?",
        _ => remote.ToString() ?? "?",
    };

    // Not ToString: an IPAddress keeps the text ToString made for as long as it lives, and a connection's address lives
    // as long as the connection (40 bytes more per connected device).
    private static string Text(IPAddress address)
    {
        Span<char> text = stackalloc char[128];
        return address.TryFormat(text, out int written) ? new string(text[..written]) : address.ToString();
    }
}
