namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>MQTT 3.1.1 control packet types (the high nibble of the fixed header's first byte).</summary>
public enum MqttPacketType
{
    /// <summary>No packet decoded.</summary>
    None = 0,

    /// <summary>Client asks to connect.</summary>
    Connect = 1,

    /// <summary>Server answers CONNECT.</summary>
    ConnAck = 2,

    /// <summary>An application message.</summary>
    Publish = 3,

    /// <summary>Acknowledges a QoS 1 PUBLISH.</summary>
    PubAck = 4,

    /// <summary>QoS 2, step 1 (not supported).</summary>
    PubRec = 5,

    /// <summary>QoS 2, step 2 (not supported).</summary>
    PubRel = 6,

    /// <summary>QoS 2, step 3 (not supported).</summary>
    PubComp = 7,

    /// <summary>Client subscribes.</summary>
    Subscribe = 8,

    /// <summary>Server answers SUBSCRIBE.</summary>
    SubAck = 9,

    /// <summary>Client unsubscribes (not supported).</summary>
    Unsubscribe = 10,

    /// <summary>Server answers UNSUBSCRIBE (not supported).</summary>
    UnsubAck = 11,

    /// <summary>Keep-alive probe from the client.</summary>
    PingReq = 12,

    /// <summary>Server answers PINGREQ.</summary>
    PingResp = 13,

    /// <summary>Client closes the session cleanly.</summary>
    Disconnect = 14,
}
