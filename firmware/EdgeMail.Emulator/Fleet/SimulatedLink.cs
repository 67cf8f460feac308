using EdgeMail.Firmware.Uplink;
using EdgeMail.Simulation.Network;

namespace EdgeMail.Emulator.Fleet;

/// <summary>A device's radio: a real TCP connection that the link model can take down, counting the bytes it carries.</summary>
internal sealed class SimulatedLink : ITransport, IDisposable
{
    private readonly TcpTransport _tcp = new();
    private volatile bool _up = true;

    public bool Up
    {
        get => _up;
        set
        {
            _up = value;
            if (!value)
            {
                _tcp.Close();
            }
        }
    }

    public long BytesSent { get; private set; }

    public long BytesReceived { get; private set; }

    public void Open(string host, int port, int timeoutMs)
    {
        if (!_up)
        {
            throw new TransportException($"simulated link down: no route to {host}:{port}");
        }

        _tcp.Open(host, port, timeoutMs);
    }

    public int Send(byte[] buffer, int offset, int count, int timeoutMs)
    {
        if (!_up)
        {
            return -1;
        }

        int n = _tcp.Send(buffer, offset, count, timeoutMs);
        if (n > 0)
        {
            BytesSent += n;
        }

        return n;
    }

    public int Receive(byte[] buffer, int offset, int count, int timeoutMs)
    {
        if (!_up)
        {
            return -1;
        }

        int n = _tcp.Receive(buffer, offset, count, timeoutMs);
        if (n > 0)
        {
            BytesReceived += n;
        }

        return n;
    }

    public void Close() => _tcp.Close();

    public void Dispose() => _tcp.Dispose();
}
