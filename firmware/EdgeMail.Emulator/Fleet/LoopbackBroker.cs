using EdgeMail.Firmware.Uplink;

namespace EdgeMail.Emulator.Fleet;

/// <summary>
/// A minimal MQTT 3.1.1 broker behind <see cref="ITransport"/>, in memory and allocation-free: answers CONNECT with
/// CONNACK, SUBSCRIBE with SUBACK, QoS 1 PUBLISH with PUBACK, PINGREQ with PINGRESP, and counts bytes each way.
/// For measuring the device side alone (footprint, allocations, wire bytes) without a broker's own costs in the process.
/// </summary>
internal sealed class LoopbackBroker : ITransport
{
    private readonly byte[] _fromDevice = new byte[16 * 1024];
    private readonly byte[] _toDevice = new byte[4 * 1024];
    private int _inCount;
    private int _outStart;
    private int _outCount;
    private bool _open;

    public long BytesFromDevice { get; private set; }

    public long BytesToDevice { get; private set; }

    public long Publishes { get; private set; }

    public long Connects { get; private set; }

    public void Open(string host, int port, int timeoutMs)
    {
        _open = true;
        _inCount = 0;
        _outStart = 0;
        _outCount = 0;
        Connects++;
    }

    public int Send(byte[] buffer, int offset, int count, int timeoutMs)
    {
        if (!_open)
        {
            return -1;
        }

        Array.Copy(buffer, offset, _fromDevice, _inCount, count);
        _inCount += count;
        BytesFromDevice += count;
        Parse();
        return count;
    }

    public int Receive(byte[] buffer, int offset, int count, int timeoutMs)
    {
        if (!_open)
        {
            return -1;
        }

        int n = Math.Min(count, _outCount);
        if (n == 0)
        {
            return 0;
        }

        Array.Copy(_toDevice, _outStart, buffer, offset, n);
        _outStart += n;
        _outCount -= n;
        if (_outCount == 0)
        {
            _outStart = 0;
        }

        BytesToDevice += n;
        return n;
    }

    public void Close() => _open = false;

    private void Parse()
    {
        int p = 0;
        while (p + 2 <= _inCount)
        {
            int type = _fromDevice[p] >> 4;
            int flags = _fromDevice[p] & 0x0F;
            int length = 0;
            int shift = 0;
            int q = p + 1;
            while (true)
            {
                if (q >= _inCount)
                {
                    Compact(p);
                    return;
                }

                byte b = _fromDevice[q++];
                length |= (b & 0x7F) << shift;
                shift += 7;
                if ((b & 0x80) == 0)
                {
                    break;
                }
            }

            if (q + length > _inCount)
            {
                Compact(p);
                return;
            }

            switch (type)
            {
                case 1: // CONNECT
                    Reply(0x20, 0x02, 0x00, 0x00);
                    break;
                case 3: // PUBLISH
                    Publishes++;
                    if (((flags >> 1) & 3) == 1)
                    {
                        int topicLength = (_fromDevice[q] << 8) | _fromDevice[q + 1];
                        int id = q + 2 + topicLength;
                        Reply(0x40, 0x02, _fromDevice[id], _fromDevice[id + 1]);
                    }

                    break;
                case 8: // SUBSCRIBE
                    Reply(0x90, 0x03, _fromDevice[q], _fromDevice[q + 1], 0x01);
                    break;
                case 12: // PINGREQ
                    Reply(0xD0, 0x00);
                    break;
                case 14: // DISCONNECT
                    _open = false;
                    break;
                default:
                    break;
            }

            p = q + length;
        }

        Compact(p);
    }

    private void Compact(int consumed)
    {
        _inCount -= consumed;
        if (_inCount > 0)
        {
            Array.Copy(_fromDevice, consumed, _fromDevice, 0, _inCount);
        }
    }

    private void Reply(byte a, byte b, byte c = 0, byte d = 0, byte e = 0, int count = -1)
    {
        int n = count >= 0 ? count : a == 0x90 ? 5 : a == 0xD0 ? 2 : 4;
        _toDevice[_outStart + _outCount] = a;
        _toDevice[_outStart + _outCount + 1] = b;
        if (n > 2)
        {
            _toDevice[_outStart + _outCount + 2] = c;
            _toDevice[_outStart + _outCount + 3] = d;
        }

        if (n > 4)
        {
            _toDevice[_outStart + _outCount + 4] = e;
        }

        _outCount += n;
    }
}
