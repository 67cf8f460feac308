using System.Net;
using System.Net.Sockets;
using EdgeMail.Firmware.Uplink;

namespace EdgeMail.Simulation.Network;

/// <summary>
/// <see cref="ITransport"/> over a plain TCP socket for .NET (the emulator, the tests, Linux boards). Nagle is off so
/// small MQTT packets leave at once. The socket is non-blocking from the start: waits, the connect's included, are done
/// with <see cref="Socket.Poll(int, SelectMode)"/>, so every call honours its timeout.
/// </summary>
public sealed class TcpTransport : ITransport, IDisposable
{
    private Socket? _socket;

    /// <summary>The last socket error that closed the link, for diagnostics; null while none.</summary>
    public SocketError? LastError { get; private set; }

    /// <inheritdoc/>
    /// <remarks>The connect itself is non-blocking and awaited with <see cref="Socket.Poll(int, SelectMode)"/> on the
    /// calling thread: no task continuation, so a busy thread pool (an in-process broker, say) cannot delay it.</remarks>
    public void Open(string host, int port, int timeoutMs)
    {
        ArgumentNullException.ThrowIfNull(host);
        Close();
        LastError = null;
        Socket? socket = null;
        try
        {
            IPAddress address = IPAddress.TryParse(host, out IPAddress? literal) ? literal : Resolve(host);
            socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, Blocking = false };
            try
            {
                socket.Connect(address, port);
            }
            catch (SocketException ex) when (ex.SocketErrorCode is SocketError.WouldBlock or SocketError.InProgress or SocketError.AlreadyInProgress)
            {
                // Under way: wait below.
            }

            if (!socket.Poll(ToMicroseconds(Math.Max(timeoutMs, 1)), SelectMode.SelectWrite))
            {
                throw new TransportException($"TCP connect to {host}:{port} timed out after {timeoutMs} ms.");
            }

            var error = (SocketError)(int)socket.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.Error)!;
            if (error != SocketError.Success)
            {
                throw new SocketException((int)error);
            }
        }
        catch (SocketException ex)
        {
            socket?.Dispose();
            throw new TransportException($"TCP connect to {host}:{port} failed: {ex.SocketErrorCode} ({ex.Message}).", ex);
        }
        catch (TransportException)
        {
            socket?.Dispose();
            throw;
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

    private static IPAddress Resolve(string host)
    {
        IPAddress[] all = Dns.GetHostAddresses(host);
        return all.FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork) ?? all.FirstOrDefault()
            ?? throw new SocketException((int)SocketError.HostNotFound);
    }

    private static int ToMicroseconds(int timeoutMs) => timeoutMs <= 0 ? 0 : timeoutMs >= int.MaxValue / 1000 ? int.MaxValue : timeoutMs * 1000;

    private int Broken(SocketError error)
    {
        LastError = error;
        Close();
        return -1;
    }
}
