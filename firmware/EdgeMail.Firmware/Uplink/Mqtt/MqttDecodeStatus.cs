namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>Outcome of <see cref="MqttCodec.Decode"/>.</summary>
public enum MqttDecodeStatus
{
    /// <summary>A whole packet was decoded; <see cref="MqttPacket.Length"/> bytes were used.</summary>
    Complete = 0,

    /// <summary>The bytes so far are a valid beginning; more must arrive. <see cref="MqttPacket.Length"/> is the
    /// packet's total size once the fixed header is complete, else 0.</summary>
    NeedMoreData = 1,

    /// <summary>The bytes are not a packet this client accepts; <see cref="MqttPacket.Error"/> says why.</summary>
    Malformed = 2,
}
