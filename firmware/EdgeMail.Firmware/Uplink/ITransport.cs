namespace EdgeMail.Firmware.Uplink;

/// <summary>
/// A byte stream to a server (TCP, or TLS over TCP): synchronous, array based and timeout driven, so the
/// same uplink code runs on .NET and on nanoFramework. Encryption is the transport's business.
/// </summary>
/// <remarks>
/// Contract: <see cref="Send"/> and <see cref="Receive"/> never throw for a broken link; they return -1
/// once the connection is closed (by the peer, by a reset, or by <see cref="Close"/>), and 0 when the
/// timeout passed with nothing done. Only <see cref="Open"/> throws (<see cref="TransportException"/>),
/// because a failed connect carries a reason worth reporting.
/// </remarks>
public interface ITransport
{
    /// <summary>Connects to <paramref name="host"/>:<paramref name="port"/>, closing any earlier connection first.</summary>
    /// <param name="host">Host name or address literal.</param>
    /// <param name="port">TCP port.</param>
    /// <param name="timeoutMs">How long the connect (and TLS handshake, if any) may take.</param>
    /// <exception cref="TransportException">The connection could not be made; the message says why.</exception>
    void Open(string host, int port, int timeoutMs);

    /// <summary>Writes up to <paramref name="count"/> bytes.</summary>
    /// <param name="buffer">Source bytes.</param>
    /// <param name="offset">Index of the first byte to send.</param>
    /// <param name="count">Number of bytes to send.</param>
    /// <param name="timeoutMs">How long to wait for room in the send window.</param>
    /// <returns>Bytes written (1..count; fewer than count only if the timeout passed part way), 0 when
    /// nothing could be written before the timeout, -1 when the connection is closed or broken.</returns>
    int Send(byte[] buffer, int offset, int count, int timeoutMs);

    /// <summary>Reads what has arrived, waiting up to <paramref name="timeoutMs"/> for the first byte.</summary>
    /// <param name="buffer">Destination.</param>
    /// <param name="offset">Index to store the first byte at.</param>
    /// <param name="count">Room in <paramref name="buffer"/> from <paramref name="offset"/>.</param>
    /// <param name="timeoutMs">How long to wait; 0 only looks.</param>
    /// <returns>Bytes read (1..count), 0 when nothing arrived before the timeout, -1 when the connection
    /// is closed (orderly close by the peer included) or broken.</returns>
    int Receive(byte[] buffer, int offset, int count, int timeoutMs);

    /// <summary>Closes the connection; harmless when it is not open.</summary>
    void Close();
}
