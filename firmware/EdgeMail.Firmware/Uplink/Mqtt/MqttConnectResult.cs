namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>What an accepted CONNECT returned.</summary>
public sealed class MqttConnectResult
{
    /// <summary>Creates the result.</summary>
    /// <param name="sessionPresent">The CONNACK session-present flag.</param>
    /// <param name="returnCode">The CONNACK return code.</param>
    public MqttConnectResult(bool sessionPresent, MqttConnectReturnCode returnCode)
    {
        SessionPresent = sessionPresent;
        ReturnCode = returnCode;
    }

    /// <summary>True when the broker resumed a stored session (subscriptions and queued messages kept).</summary>
    public bool SessionPresent { get; }

    /// <summary>The CONNACK return code (always <see cref="MqttConnectReturnCode.Accepted"/> here; refusals throw).</summary>
    public MqttConnectReturnCode ReturnCode { get; }
}
