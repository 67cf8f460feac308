using System;

namespace EdgeMail.Firmware.Storage;

/// <summary>
/// A region of NOR flash: the only storage the alert queue needs. Implemented by the chip driver on a
/// device and by the simulator in the emulator and tests. Operations are synchronous and take caller
/// buffers, so nothing is allocated per call.
/// </summary>
public interface IFlashDevice
{
    /// <summary>Geometry and write rules of the region.</summary>
    FlashGeometry Geometry { get; }

    /// <summary>Reads <paramref name="count"/> bytes at <paramref name="address"/> (relative to the region).</summary>
    /// <param name="address">Byte address within the region.</param>
    /// <param name="buffer">Destination.</param>
    /// <param name="offset">Index in <paramref name="buffer"/> of the first byte.</param>
    /// <param name="count">Number of bytes.</param>
    void Read(int address, byte[] buffer, int offset, int count);

    /// <summary>
    /// Programs bytes: each bit can only go from 1 to 0. The range must be aligned to
    /// <see cref="FlashGeometry.ProgramUnit"/> and must not cross a page end (on real parts the
    /// page buffer wraps to the page start); <see cref="FlashWriter"/> splits writes accordingly.
    /// </summary>
    /// <param name="address">Byte address within the region.</param>
    /// <param name="buffer">Source.</param>
    /// <param name="offset">Index in <paramref name="buffer"/> of the first byte.</param>
    /// <param name="count">Number of bytes.</param>
    void Program(int address, byte[] buffer, int offset, int count);

    /// <summary>Erases one sector: every byte reads 0xFF afterwards.</summary>
    /// <param name="sector">Sector index, 0 to <see cref="FlashGeometry.SectorCount"/> - 1.</param>
    void EraseSector(int sector);
}

/// <summary>Geometry of a flash region and the rules a writer must follow on it.</summary>
public sealed class FlashGeometry
{
    /// <summary>Describes a region.</summary>
    /// <param name="sizeBytes">Bytes in the region; a multiple of <paramref name="sectorBytes"/>.</param>
    /// <param name="sectorBytes">Erase unit (a power of two).</param>
    /// <param name="pageBytes">Page-program buffer size (a power of two, at most a sector).</param>
    /// <param name="programUnit">Smallest programmable unit and alignment (a power of two, at most a page).</param>
    /// <param name="allowsReprogram">Whether a programmed unit may be programmed again before an erase.</param>
    /// <param name="encrypted">Whether the region is transparently encrypted.</param>
    public FlashGeometry(int sizeBytes, int sectorBytes, int pageBytes, int programUnit, bool allowsReprogram, bool encrypted)
    {
        if (!IsPowerOfTwo(sectorBytes) || sizeBytes <= 0 || sizeBytes % sectorBytes != 0)
        {
            throw new ArgumentException("sizeBytes must be a positive multiple of a power-of-two sectorBytes");
        }

        if (!IsPowerOfTwo(pageBytes) || pageBytes > sectorBytes || !IsPowerOfTwo(programUnit) || programUnit > pageBytes)
        {
            throw new ArgumentException("pageBytes and programUnit must be powers of two with programUnit <= pageBytes <= sectorBytes");
        }

        SizeBytes = sizeBytes;
        SectorBytes = sectorBytes;
        PageBytes = pageBytes;
        ProgramUnit = programUnit;
        AllowsReprogram = allowsReprogram;
        Encrypted = encrypted;
    }

    /// <summary>Bytes in the region.</summary>
    public int SizeBytes { get; }

    /// <summary>Erase unit in bytes.</summary>
    public int SectorBytes { get; }

    /// <summary>Page-program buffer size in bytes.</summary>
    public int PageBytes { get; }

    /// <summary>Smallest programmable unit and required alignment, in bytes.</summary>
    public int ProgramUnit { get; }

    /// <summary>
    /// Whether a unit may be programmed twice between erases (SPI NOR: yes, bits are ANDed; ESP32 with
    /// flash encryption and STM32-class internal flash with ECC: no).
    /// </summary>
    public bool AllowsReprogram { get; }

    /// <summary>Whether the region is encrypted; clearing bits of ciphertext garbles the plaintext.</summary>
    public bool Encrypted { get; }

    /// <summary>Number of sectors in the region.</summary>
    public int SectorCount => SizeBytes / SectorBytes;

    private static bool IsPowerOfTwo(int v) => v > 0 && (v & (v - 1)) == 0;
}

/// <summary>Writes arbitrary ranges by splitting them into page-program operations.</summary>
public static class FlashWriter
{
    /// <summary>Programs <paramref name="count"/> bytes at <paramref name="address"/>, one page at a time.</summary>
    /// <param name="device">The flash.</param>
    /// <param name="address">Start address, aligned to the program unit.</param>
    /// <param name="buffer">Source.</param>
    /// <param name="offset">Index in <paramref name="buffer"/> of the first byte.</param>
    /// <param name="count">Number of bytes, a multiple of the program unit.</param>
    public static void Program(IFlashDevice device, int address, byte[] buffer, int offset, int count)
    {
        int page = device.Geometry.PageBytes;
        while (count > 0)
        {
            int room = page - (address & (page - 1));
            int chunk = count < room ? count : room;
            device.Program(address, buffer, offset, chunk);
            address += chunk;
            offset += chunk;
            count -= chunk;
        }
    }
}
