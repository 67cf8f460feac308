namespace EdgeMail.Firmware.Uplink;

/// <summary>
/// A small seeded pseudo-random source (xorshift32) for backoff jitter: the same seed gives the same delays on
/// .NET and on the device, and two devices with different seeds do not retry in step.
/// </summary>
public sealed class ForwarderRandom
{
    private uint _state;

    /// <summary>Creates the source.</summary>
    /// <param name="seed">Any value; 0 is replaced by a fixed non-zero constant.</param>
    public ForwarderRandom(uint seed)
    {
        _state = seed == 0 ? 0x9E3779B9u : seed;
    }

    /// <summary>The next 32 random bits.</summary>
    /// <returns>A value over the whole range of <see cref="uint"/>.</returns>
    public uint NextUInt()
    {
        uint x = _state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        _state = x;
        return x;
    }

    /// <summary>A value in 0..<paramref name="maxInclusive"/>.</summary>
    /// <param name="maxInclusive">The largest value, 0 or more.</param>
    /// <returns>The value.</returns>
    public long Next(long maxInclusive)
    {
        if (maxInclusive <= 0)
        {
            return 0;
        }

        ulong wide = ((ulong)NextUInt() << 32) | NextUInt();
        return (long)(wide % ((ulong)maxInclusive + 1));
    }
}
