namespace EdgeMail.Gateway.Configuration;

/// <summary>The values of <c>Mqtt:Mode</c>.</summary>
public static class MqttModes
{
    /// <summary>The gateway's own MQTTnet broker (default).</summary>
    public const string Embedded = "embedded";

    /// <summary>A client of a broker the site already runs (e.g. mosquitto).</summary>
    public const string External = "external";

    /// <summary>Both modes.</summary>
    public static readonly IReadOnlyList<string> All = [Embedded, External];
}

/// <summary>
/// The external broker the gateway subscribes to when <c>Mqtt:Mode</c> is <c>external</c> (configuration section
/// <c>Mqtt:External</c>). The gateway keeps a persistent session there (clean start off, a long session expiry), so
/// QoS 1 alerts published while it is down are queued by the broker and delivered when it reconnects.
/// </summary>
public sealed class ExternalBrokerOptions
{
    /// <summary>Broker host name or address.</summary>
    public string Host { get; set; } = string.Empty;

    /// <summary>Broker port: 1883 for plain MQTT, usually 8883 with <see cref="Tls"/>.</summary>
    public int Port { get; set; } = 1883;

    /// <summary>Connect with TLS.</summary>
    public bool Tls { get; set; }

    /// <summary>PEM file with the CA certificate(s) that signed the broker's certificate; empty trusts the system store.</summary>
    public string CaFile { get; set; } = string.Empty;

    /// <summary>Name the broker's certificate must carry; empty means <see cref="Host"/>.</summary>
    public string TlsServerName { get; set; } = string.Empty;

    /// <summary>PEM client certificate for brokers that authenticate clients by certificate; empty for none.</summary>
    public string ClientCertificateFile { get; set; } = string.Empty;

    /// <summary>PEM private key of <see cref="ClientCertificateFile"/>.</summary>
    public string ClientKeyFile { get; set; } = string.Empty;

    /// <summary>User name at the broker; empty connects anonymously.</summary>
    public string Username { get; set; } = string.Empty;

    /// <summary>Password at the broker (prefer the <c>EDGEMAIL_Mqtt__External__Password</c> environment variable).</summary>
    public string Password { get; set; } = string.Empty;

    /// <summary>
    /// The gateway's client id. It names the persistent session at the broker: keep it stable across restarts, and
    /// give every gateway instance its own.
    /// </summary>
    public string ClientId { get; set; } = "edgemail-gateway";

    /// <summary>
    /// Shares the devices' alerts and status among several gateway instances: each instance subscribes with
    /// <c>$share/&lt;group&gt;/edgemail/v1/+/alert</c> (and <c>/status</c>), and the broker hands each message to one member
    /// of the group. Give every instance the same group, its own <see cref="ClientId"/>, and one shared spool
    /// (<c>Spool:Provider = Postgres</c>). Empty (default): an ordinary subscription, one gateway.
    /// </summary>
    public string SharedGroup { get; set; } = string.Empty;

    /// <summary>
    /// With <see cref="SharedGroup"/>: on a graceful stop the instance leaves the group (UNSUBSCRIBE) and keeps storing
    /// and acknowledging what the broker already sent it until nothing new arrived for this long, so its share goes to
    /// the other members instead of waiting in its session.
    /// </summary>
    public TimeSpan LeaveQuietPeriod { get; set; } = TimeSpan.FromMilliseconds(500);

    /// <summary>MQTT protocol version: <c>5</c> (default) or <c>3.1.1</c>.</summary>
    public string ProtocolVersion { get; set; } = "5";

    /// <summary>
    /// How long the broker keeps the gateway's session (and queues alerts for it) while the gateway is away
    /// (MQTT 5 session expiry; with 3.1.1 the broker's own setting applies, e.g. mosquitto's
    /// <c>persistent_client_expiration</c>).
    /// </summary>
    public TimeSpan SessionExpiry { get; set; } = TimeSpan.FromDays(7);

    /// <summary>MQTT keep-alive period.</summary>
    public TimeSpan KeepAlive { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>How long one connection attempt may take.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>First wait before reconnecting; it doubles after every failed attempt, up to <see cref="MaxReconnectDelay"/>.</summary>
    public TimeSpan ReconnectDelay { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>Longest wait between reconnection attempts.</summary>
    public TimeSpan MaxReconnectDelay { get; set; } = TimeSpan.FromMinutes(1);

    /// <summary>
    /// Alerts the broker may have in flight to the gateway, not yet acknowledged (MQTT 5 Receive Maximum). Alerts
    /// are stored concurrently (group commit) and acknowledged in order once durable.
    /// </summary>
    public int MaxInFlight { get; set; } = 256;
}
