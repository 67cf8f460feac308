using System.Net;
using EdgeMail.Gateway.Configuration;

namespace EdgeMail.Gateway.Ingest;

/// <summary>Settings of the MQTT ingest (configuration section <c>Mqtt</c>): the embedded broker, or a client of an external one.</summary>
public sealed class MqttIngestOptions
{
    /// <summary>The configuration section these options bind to.</summary>
    public const string Section = "Mqtt";

    /// <summary>
    /// <c>embedded</c> (default): devices connect to the gateway's own broker. <c>external</c>: the gateway is a client
    /// of a broker the site already runs (<see cref="External"/>), which authenticates the devices.
    /// </summary>
    public string Mode { get; set; } = MqttModes.Embedded;

    /// <summary>Address the embedded broker listens on. Loopback unless configured otherwise.</summary>
    public string BindAddress { get; set; } = IPAddress.Loopback.ToString();

    /// <summary>TCP port of the embedded broker's plain-text listener; 0 lets the operating system choose one (tests).</summary>
    public int Port { get; set; } = 1883;

    /// <summary>
    /// Whether the embedded broker listens for plain-text MQTT on <see cref="Port"/>. Off makes it TLS only: the
    /// device's password never crosses the network in clear. At least one of this and <see cref="TlsEnabled"/> is on.
    /// </summary>
    public bool PlainEnabled { get; set; } = true;

    /// <summary>
    /// Whether the embedded broker listens for MQTT over TLS (1.2/1.3) on <see cref="TlsPort"/> at <see cref="BindAddress"/>.
    /// The older key <c>MqttGuard:TlsEnabled</c> still works when this one is not set.
    /// </summary>
    public bool TlsEnabled { get; set; }

    /// <summary>TCP port of the TLS listener; 0 lets the operating system choose one (tests). The older key <c>MqttGuard:TlsPort</c> still works.</summary>
    public int TlsPort { get; set; } = 8883;

    /// <summary>
    /// PKCS#12 file with the TLS listener's certificate and key. Empty: the same certificate as SMTP ingest
    /// (<c>Smtp:CertificatePath</c>), or when that is empty too the self-signed one generated in the data directory.
    /// </summary>
    public string CertificatePath { get; set; } = string.Empty;

    /// <summary>Password of <see cref="CertificatePath"/> (when that is empty, <c>Smtp:CertificatePassword</c> goes with <c>Smtp:CertificatePath</c>).</summary>
    public string CertificatePassword { get; set; } = string.Empty;

    /// <summary>
    /// How long a new connection to the embedded broker has to finish its TLS handshake and send CONNECT before it is
    /// closed. Until then nobody is authenticated, so this bounds what an unknown client can hold. 20 s leaves room for a
    /// small device's TLS handshake over a slow cellular link. It is also the bound on saying DISCONNECT to a client.
    /// </summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(20);

    /// <summary>The external broker, used when <see cref="Mode"/> is <c>external</c>.</summary>
    public ExternalBrokerOptions External { get; set; } = new();

    /// <summary>Whether the gateway is a client of an external broker.</summary>
    /// <returns>True for <c>Mode = external</c>.</returns>
    public bool IsExternal() => string.Equals(Mode, MqttModes.External, StringComparison.OrdinalIgnoreCase);
}
