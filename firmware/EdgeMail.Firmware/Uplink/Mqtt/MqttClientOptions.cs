namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>Settings of an <see cref="MqttClient"/>; buffers are allocated once from these when the client is made.</summary>
public sealed class MqttClientOptions
{
    /// <summary>Client identifier (EdgeMail: the device id). Must not be empty while <see cref="CleanSession"/> is false.</summary>
    public string ClientId { get; set; } = string.Empty;

    /// <summary>User name, or null for none.</summary>
    public string? UserName { get; set; }

    /// <summary>Password, or null for none.</summary>
    public string? Password { get; set; }

    /// <summary>Clean Session flag. Default false: the broker keeps the session, so in-flight publishes are resent on reconnect.</summary>
    public bool CleanSession { get; set; }

    /// <summary>Keep-alive in seconds (0 = off). A PINGREQ goes out when nothing was sent for this long. Default 60.</summary>
    public int KeepAliveSeconds { get; set; } = 60;

    /// <summary>How long to wait for PINGRESP before declaring the link dead. Default 10 000 ms.</summary>
    public int PingTimeoutMs { get; set; } = 10_000;

    /// <summary>How long Open plus CONNACK may take. Default 10 000 ms.</summary>
    public int ConnectTimeoutMs { get; set; } = 10_000;

    /// <summary>How long to wait for SUBACK. Default 10 000 ms.</summary>
    public int ResponseTimeoutMs { get; set; } = 10_000;

    /// <summary>How long one packet may take to leave. Default 10 000 ms.</summary>
    public int SendTimeoutMs { get; set; } = 10_000;

    /// <summary>When above 0, a QoS 1 publish unacknowledged for this long makes <see cref="MqttClient.Poll"/> close the
    /// link (so the caller reconnects and resends). Default 0: MQTT 3.1.1 resends only after a reconnect.</summary>
    public int AckTimeoutMs { get; set; }

    /// <summary>Largest number of QoS 1 publishes awaiting PUBACK at once. Default 4.</summary>
    public int MaxInFlight { get; set; } = 4;

    /// <summary>Send buffer in bytes: must hold CONNECT and each PUBLISH header (topic included); a streamed payload goes
    /// out through it a buffer-full at a time, a byte[] payload that does not fit behind its header straight from the
    /// caller's buffer. Default 256.</summary>
    public int SendBufferSize { get; set; } = 256;

    /// <summary>Receive buffer in bytes: must hold every acknowledgement and the head (fixed header, topic, packet id)
    /// of an incoming PUBLISH; a larger PUBLISH is handled truncated (<see cref="MqttPacket.Truncated"/>). Default 512.</summary>
    public int ReceiveBufferSize { get; set; } = 512;
}
