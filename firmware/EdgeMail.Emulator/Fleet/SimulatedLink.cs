using EdgeMail.Firmware.Uplink;
using EdgeMail.Simulation.Network;

namespace EdgeMail.Emulator.Fleet;

/// <summary>
/// A device's radio: a real TCP (or TLS) connection that the link model can take down, counting the bytes it carries.
/// A scheduled drop (<see cref="DownAtMs"/>) breaks the connection at that simulated time even in the middle of a call
/// sequence, e.g. inside an SMTP session, not only between scheduler ticks.
/// </summary>
internal sealed class SimulatedLink : ITransport, IDisposable
{
    private readonly ITransport _inner;
    private readonly FleetClock? _clock;
    private volatile bool _up = true;
    private uint _tail;

    public SimulatedLink(ITransport? inner = null, FleetClock? clock = null)
    {
        _inner = inner ?? new TcpTransport();
        _clock = clock;
    }

    public bool Up
    {
        get => _up;
        set
        {
            _up = value;
            if (!value)
            {
                _inner.Close();
            }
        }
    }

    /// <summary>Simulated time at which the link goes down (the link model's next drop); long.MaxValue: none due.</summary>
    public long DownAtMs { get; set; } = long.MaxValue;

    public long BytesSent { get; private set; }

    public long BytesReceived { get; private set; }

    /// <summary>SMTP end-of-data markers (CRLF.CRLF) that left the device: messages the server could have taken.
    /// The SMTP client dot-stuffs, so the marker only ever ends a message.</summary>
    public long MessagesEnded { get; private set; }

    public void Open(string host, int port, int timeoutMs)
    {
        if (!IsUp)
        {
            throw new TransportException($"simulated link down: no route to {host}:{port}");
        }

        _tail = 0;
        _inner.Open(host, port, timeoutMs);
    }

    public int Send(byte[] buffer, int offset, int count, int timeoutMs)
    {
        if (!IsUp)
        {
            return -1;
        }

        int n = _inner.Send(buffer, offset, count, timeoutMs);
        if (n > 0)
        {
            BytesSent += n;
            CountEndOfData(buffer, offset, n);
        }

        return n;
    }

    public int Receive(byte[] buffer, int offset, int count, int timeoutMs)
    {
        if (!IsUp)
        {
            return -1;
        }

        int n = _inner.Receive(buffer, offset, count, timeoutMs);
        if (n > 0)
        {
            BytesReceived += n;
        }

        return n;
    }

    public void Close() => _inner.Close();

    public void Dispose() => (_inner as IDisposable)?.Dispose();

    private bool IsUp
    {
        get
        {
            if (_up && _clock is not null && _clock.NowMs >= DownAtMs)
            {
                Up = false;
            }

            return _up;
        }
    }

    private void CountEndOfData(byte[] buffer, int offset, int count)
    {
        // The last four bytes sent, as a shift register: "\r\n.\r\n" is '\r','\n','.' then '\r','\n'.
        uint tail = _tail;
        for (int i = offset; i < offset + count; i++)
        {
            byte b = buffer[i];
            if (b == (byte)'\n' && tail == 0x0D0A2E0D)
            {
                MessagesEnded++;
            }

            tail = (tail << 8) | b;
        }

        _tail = tail;
    }
}
