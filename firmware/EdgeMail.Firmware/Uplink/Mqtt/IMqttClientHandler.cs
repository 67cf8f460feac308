namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>What <see cref="MqttClient"/> reports while it processes incoming packets (called from the
/// thread that calls <see cref="MqttClient.Poll"/>, <see cref="MqttClient.Subscribe"/> or <see cref="MqttClient.Publish(string, IByteSource, long, bool, bool)"/>).</summary>
public interface IMqttClientHandler
{
    /// <summary>The broker acknowledged (PUBACK) the QoS 1 publish made with <paramref name="tag"/>: the broker
    /// owns the message now, so the caller may acknowledge it in its flash queue.</summary>
    /// <param name="tag">The tag given to <see cref="MqttClient.Publish(string, IByteSource, long, bool, bool)"/>.</param>
    void OnPublishAcknowledged(long tag);

    /// <summary>A PUBLISH arrived on a subscribed topic. For QoS 1 the client sends PUBACK after this returns
    /// (if this throws, no PUBACK is sent and the broker redelivers after a reconnect).</summary>
    /// <param name="message">A view into the receive buffer, valid only during this call. A PUBLISH larger than the
    /// receive buffer arrives as its head (<see cref="MqttPacket.Truncated"/>: the payload range holds its first bytes).</param>
    void OnMessageReceived(MqttPacket message);
}
