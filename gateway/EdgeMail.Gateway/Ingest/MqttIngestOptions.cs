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

    /// <summary>TCP port of the embedded broker; 0 lets the operating system choose one (tests).</summary>
    public int Port { get; set; } = 1883;

    /// <summary>The external broker, used when <see cref="Mode"/> is <c>external</c>.</summary>
    public ExternalBrokerOptions External { get; set; } = new();

    /// <summary>Whether the gateway is a client of an external broker.</summary>
    /// <returns>True for <c>Mode = external</c>.</returns>
    public bool IsExternal() => string.Equals(Mode, MqttModes.External, StringComparison.OrdinalIgnoreCase);
}
