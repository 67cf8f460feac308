using System;

namespace EdgeMail.Firmware.Uplink;

/// <summary>A transport could not connect; the message names the peer and the reason.</summary>
public class TransportException : Exception
{
    /// <summary>Creates the exception.</summary>
    public TransportException()
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What was attempted and what went wrong.</param>
    public TransportException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and the underlying cause.</summary>
    /// <param name="message">What was attempted and what went wrong.</param>
    /// <param name="innerException">The platform's exception.</param>
    public TransportException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
