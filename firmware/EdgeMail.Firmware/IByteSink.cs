namespace EdgeMail.Firmware;

/// <summary>
/// Where a payload goes when it is written in pieces rather than into one buffer (e.g. a PUBLISH payload
/// streamed through the MQTT client's small send buffer). Synchronous; may do I/O.
/// </summary>
public interface IByteSink
{
    /// <summary>Takes the next <paramref name="count"/> bytes of the payload.</summary>
    /// <param name="buffer">Source bytes; only valid during the call.</param>
    /// <param name="offset">Index of the first byte.</param>
    /// <param name="count">Number of bytes.</param>
    void Write(byte[] buffer, int offset, int count);
}
