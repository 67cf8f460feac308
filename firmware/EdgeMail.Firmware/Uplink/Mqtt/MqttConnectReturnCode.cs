namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>The CONNACK return code of MQTT 3.1.1 (section 3.2.2.3).</summary>
public enum MqttConnectReturnCode
{
    /// <summary>Connection accepted.</summary>
    Accepted = 0,

    /// <summary>The server does not support protocol level 4.</summary>
    UnacceptableProtocolVersion = 1,

    /// <summary>The client identifier is not allowed.</summary>
    IdentifierRejected = 2,

    /// <summary>The MQTT service is unavailable.</summary>
    ServerUnavailable = 3,

    /// <summary>The user name or password is malformed or wrong.</summary>
    BadUserNameOrPassword = 4,

    /// <summary>The client is not authorised to connect.</summary>
    NotAuthorized = 5,
}
