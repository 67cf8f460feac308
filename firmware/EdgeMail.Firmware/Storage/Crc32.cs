namespace EdgeMail.Firmware.Storage;

/// <summary>
/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), the checksum every flash record carries.
/// Table-driven; the 1 KiB table is built once and shared.
/// </summary>
public static class Crc32
{
    private static readonly uint[] Table = BuildTable();

    /// <summary>The value to start an incremental computation with.</summary>
    public const uint Seed = 0xFFFFFFFFu;

    /// <summary>Continues a CRC over <paramref name="count"/> bytes; finish with <see cref="Finish"/>.</summary>
    /// <param name="state">The running state: <see cref="Seed"/> at first, then the last return value.</param>
    /// <param name="data">The bytes to add.</param>
    /// <param name="offset">Index of the first byte.</param>
    /// <param name="count">Number of bytes.</param>
    /// <returns>The new running state.</returns>
    public static uint Update(uint state, byte[] data, int offset, int count)
    {
        uint[] table = Table;
        int end = offset + count;
        for (int i = offset; i < end; i++)
        {
            state = table[(state ^ data[i]) & 0xFF] ^ (state >> 8);
        }

        return state;
    }

    /// <summary>Turns a running state into the final CRC value.</summary>
    /// <param name="state">The running state.</param>
    /// <returns>The CRC-32.</returns>
    public static uint Finish(uint state) => state ^ 0xFFFFFFFFu;

    /// <summary>Computes the CRC-32 of a byte range in one call.</summary>
    /// <param name="data">The bytes.</param>
    /// <param name="offset">Index of the first byte.</param>
    /// <param name="count">Number of bytes.</param>
    /// <returns>The CRC-32.</returns>
    public static uint Compute(byte[] data, int offset, int count) => Finish(Update(Seed, data, offset, count));

    private static uint[] BuildTable()
    {
        var table = new uint[256];
        for (uint n = 0; n < 256; n++)
        {
            uint c = n;
            for (int k = 0; k < 8; k++)
            {
                c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            }

            table[n] = c;
        }

        return table;
    }
}
