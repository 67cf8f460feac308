using System.Net;

namespace EdgeMail.Gateway.Ingest;

/// <summary>Settings of the embedded MQTT broker (configuration section <c>Mqtt</c>).</summary>
public sealed class MqttIngestOptions
{
    /// <summary>The configuration section these options bind to.</summary>
    public const string Section = "Mqtt";

    /// <summary>Address the broker listens on. Loopback unless configured otherwise.</summary>
    public string BindAddress { get; set; } = IPAddress.Loopback.ToString();

    /// <summary>TCP port; 0 lets the operating system choose one (tests).</summary>
    public int Port { get; set; } = 1883;
}
