using System;

namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>An MQTT operation failed; <see cref="Error"/> tells the kind, the message the details.</summary>
public class MqttException : Exception
{
    /// <summary>Creates the exception.</summary>
    public MqttException()
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What was expected and what happened.</param>
    public MqttException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and a cause.</summary>
    /// <param name="message">What was expected and what happened.</param>
    /// <param name="innerException">The cause.</param>
    public MqttException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Creates the exception with its kind.</summary>
    /// <param name="error">The kind of failure.</param>
    /// <param name="message">What was expected and what happened.</param>
    public MqttException(MqttError error, string message)
        : base(message)
    {
        Error = error;
    }

    /// <summary>Creates a refusal from a CONNACK return code.</summary>
    /// <param name="returnCode">The broker's return code.</param>
    /// <param name="message">What was expected and what happened.</param>
    public MqttException(MqttConnectReturnCode returnCode, string message)
        : base(message)
    {
        Error = MqttError.ConnectionRefused;
        ConnectReturnCode = returnCode;
    }

    /// <summary>The kind of failure.</summary>
    public MqttError Error { get; }

    /// <summary>The CONNACK return code when <see cref="Error"/> is <see cref="MqttError.ConnectionRefused"/>.</summary>
    public MqttConnectReturnCode ConnectReturnCode { get; }
}
