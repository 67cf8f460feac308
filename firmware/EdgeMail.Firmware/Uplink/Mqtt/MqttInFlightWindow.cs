namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>
/// The fixed set of QoS 1 publishes sent and not yet acknowledged: per slot the caller's tag, the packet id and
/// when it was last sent. Payloads are not kept: the caller re-supplies them from flash when resending.
/// </summary>
internal sealed class MqttInFlightWindow
{
    private readonly bool[] _used;
    private readonly long[] _tags;
    private readonly int[] _packetIds;
    private readonly long[] _order;
    private readonly long[] _sentMs;
    private long _nextOrder;

    public MqttInFlightWindow(int capacity)
    {
        _used = new bool[capacity];
        _tags = new long[capacity];
        _packetIds = new int[capacity];
        _order = new long[capacity];
        _sentMs = new long[capacity];
    }

    public int Capacity => _used.Length;

    public int Count { get; private set; }

    public int FindTag(long tag)
    {
        for (int i = 0; i < _used.Length; i++)
        {
            if (_used[i] && _tags[i] == tag)
            {
                return i;
            }
        }

        return -1;
    }

    public int FindPacketId(int packetId)
    {
        for (int i = 0; i < _used.Length; i++)
        {
            if (_used[i] && _packetIds[i] == packetId)
            {
                return i;
            }
        }

        return -1;
    }

    public int FreeSlot()
    {
        for (int i = 0; i < _used.Length; i++)
        {
            if (!_used[i])
            {
                return i;
            }
        }

        return -1;
    }

    public int PacketId(int slot) => _packetIds[slot];

    public long Tag(int slot) => _tags[slot];

    /// <summary>Takes a free slot for a first send.</summary>
    public void Add(int slot, long tag, int packetId, long nowMs)
    {
        _used[slot] = true;
        _tags[slot] = tag;
        _packetIds[slot] = packetId;
        _order[slot] = _nextOrder++;
        _sentMs[slot] = nowMs;
        Count++;
    }

    /// <summary>Notes a resend: same packet id, same place in the order.</summary>
    public void Resent(int slot, long nowMs) => _sentMs[slot] = nowMs;

    public void Remove(int slot)
    {
        _used[slot] = false;
        Count--;
    }

    public void Clear()
    {
        for (int i = 0; i < _used.Length; i++)
        {
            _used[i] = false;
        }

        Count = 0;
    }

    /// <summary>The send time of the oldest unacknowledged publish, or -1 when none.</summary>
    public long OldestSentMs()
    {
        long oldest = -1;
        for (int i = 0; i < _used.Length; i++)
        {
            if (_used[i] && (oldest < 0 || _sentMs[i] < oldest))
            {
                oldest = _sentMs[i];
            }
        }

        return oldest;
    }

    /// <summary>Copies the tags in the order they were first published.</summary>
    public int CopyTags(long[] destination)
    {
        int n = 0;
        long after = -1;
        while (n < destination.Length)
        {
            int next = -1;
            for (int i = 0; i < _used.Length; i++)
            {
                if (_used[i] && _order[i] > after && (next < 0 || _order[i] < _order[next]))
                {
                    next = i;
                }
            }

            if (next < 0)
            {
                break;
            }

            destination[n++] = _tags[next];
            after = _order[next];
        }

        return n;
    }
}
