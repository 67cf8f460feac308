using System.Net.Sockets;
using EdgeMail.Firmware.Uplink;

namespace EdgeMail.Simulation.Network;

/// <summary>
/// <see cref="ITransport"/> over a plain TCP socket for .NET (the emulator, the tests, Linux boards). Nagle is off so
/// small MQTT packets leave at once. After connecting the socket is non-blocking: waits are done with
/// <see cref="Socket.Poll(int, SelectMode)"/>, so every call honours its timeout.
/// </summary>
public sealed class TcpTransport : ITransport, IDisposable
{
    private Socket? _socket;

    /// <summary>The last socket error that closed the link, for diagnostics; null while none.</summary>
    public SocketError? LastError { get; private set; }

    /// <inheritdoc/>
    public void Open(string host, int port, int timeoutMs)
    {
        ArgumentNullException.ThrowIfNull(host);
        Close();
        LastError = null;
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            using var cts = new CancellationTokenSource(timeoutMs);
            socket.ConnectAsync(host, port, cts.Token).AsTask().GetAwaiter().GetResult();
            socket.Blocking = false;
        }
        catch (OperationCanceledException)
        {
            socket.Dispose();
            throw new TransportException($"TCP connect to {host}:{port} timed out after {timeoutMs} ms.");
        }
        catch (SocketException ex)
        {
            socket.Dispose();
            throw new TransportException($"TCP connect to {host}:{port} failed: {ex.SocketErrorCode} ({ex.Message}).", ex);
        }

        _socket = socket;
    }

    /// <inheritdoc/>
    public int Send(byte[] buffer, int offset, int count, int timeoutMs)
    {
        Socket? socket = _socket;
        if (socket is null)
        {
            return -1;
        }

        try
        {
            if (!socket.Poll(ToMicroseconds(timeoutMs), SelectMode.SelectWrite))
            {
                return 0;
            }

            int n = socket.Send(buffer, offset, count, SocketFlags.None, out SocketError error);
            if (error is SocketError.WouldBlock)
            {
                return 0;
            }

            return error is SocketError.Success ? n : Broken(error);
        }
        catch (ObjectDisposedException)
        {
            return -1;
        }
    }

    /// <inheritdoc/>
    public int Receive(byte[] buffer, int offset, int count, int timeoutMs)
    {
        Socket? socket = _socket;
        if (socket is null)
        {
            return -1;
        }

        try
        {
            if (!socket.Poll(ToMicroseconds(timeoutMs), SelectMode.SelectRead))
            {
                return 0;
            }

            int n = socket.Receive(buffer, offset, count, SocketFlags.None, out SocketError error);
            if (error is SocketError.WouldBlock)
            {
                return 0;
            }

            if (error is not SocketError.Success)
            {
                return Broken(error);
            }

            // Readable with zero bytes is the peer's orderly close.
            return n == 0 ? Broken(SocketError.Disconnecting) : n;
        }
        catch (ObjectDisposedException)
        {
            return -1;
        }
    }

    /// <inheritdoc/>
    public void Close()
    {
        Socket? socket = _socket;
        _socket = null;
        socket?.Dispose();
    }

    /// <inheritdoc/>
    public void Dispose() => Close();

    private static int ToMicroseconds(int timeoutMs) => timeoutMs <= 0 ? 0 : timeoutMs >= int.MaxValue / 1000 ? int.MaxValue : timeoutMs * 1000;

    private int Broken(SocketError error)
    {
        LastError = error;
        Close();
        return -1;
    }
}
