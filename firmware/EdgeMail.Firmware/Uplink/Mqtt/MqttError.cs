namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>Why an <see cref="MqttException"/> was thrown.</summary>
public enum MqttError
{
    /// <summary>No error.</summary>
    None = 0,

    /// <summary>The broker answered CONNECT with a refusal; see <see cref="MqttException.ConnectReturnCode"/>.</summary>
    ConnectionRefused = 1,

    /// <summary>The connection closed or broke (send or receive failed). Unacknowledged publishes stay in flight.</summary>
    LinkBroken = 2,

    /// <summary>An expected answer (CONNACK, SUBACK, PINGRESP, PUBACK when an ack timeout is set) did not come in time,
    /// or a send stalled; the connection was closed.</summary>
    Timeout = 3,

    /// <summary>The broker sent bytes that break MQTT 3.1.1 (or a packet larger than the receive buffer); the
    /// connection was closed.</summary>
    ProtocolError = 4,

    /// <summary>The broker refused a SUBSCRIBE (return code 0x80).</summary>
    SubscribeRefused = 5,

    /// <summary>The operation needs a connected client.</summary>
    NotConnected = 6,
}
