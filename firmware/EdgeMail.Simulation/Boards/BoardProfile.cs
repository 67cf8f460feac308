using System.Text.Json;
using System.Text.Json.Serialization;

namespace EdgeMail.Simulation.Boards;

/// <summary>
/// A board the emulator can run: its flash part (geometry, timings, endurance), RAM and radio, with the
/// datasheet every figure comes from. Loaded from <c>hardware/boards/*.json</c>.
/// </summary>
public sealed class BoardProfile
{
    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    };

    /// <summary>Short name used on the command line (<c>--board w25q128jv</c>).</summary>
    public required string Id { get; init; }

    /// <summary>What the board is, for people.</summary>
    public required string Name { get; init; }

    /// <summary>The documents the figures are taken from.</summary>
    public required string[] Sources { get; init; }

    /// <summary>The flash region the alert queue owns.</summary>
    public required FlashProfile Flash { get; init; }

    /// <summary>RAM available to the managed application, in bytes.</summary>
    public long ManagedHeapBytes { get; init; }

    /// <summary>Free-form notes: what is inferred rather than read from a datasheet.</summary>
    public string? Notes { get; init; }

    /// <summary>Reads and validates a profile file.</summary>
    /// <param name="path">Path of the JSON file.</param>
    /// <returns>The profile.</returns>
    /// <exception cref="InvalidDataException">The file is not a valid profile; the message names the key.</exception>
    public static BoardProfile Load(string path)
    {
        BoardProfile? profile;
        try
        {
            profile = JsonSerializer.Deserialize<BoardProfile>(File.ReadAllText(path), Json);
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"Board profile {path}: {ex.Message}", ex);
        }

        if (profile is null)
        {
            throw new InvalidDataException($"Board profile {path} is empty.");
        }

        string? problem = profile.Flash.Validate();
        if (problem is not null)
        {
            throw new InvalidDataException($"Board profile {path}: {problem}");
        }

        return profile;
    }

    /// <summary>Finds the <c>hardware/boards</c> folder by walking up from <paramref name="start"/>.</summary>
    /// <param name="start">Folder to start from; the current directory when null.</param>
    /// <returns>The folder's full path.</returns>
    /// <exception cref="DirectoryNotFoundException">No ancestor has <c>hardware/boards</c>.</exception>
    public static string FindBoardsDirectory(string? start = null)
    {
        var dir = new DirectoryInfo(start ?? Directory.GetCurrentDirectory());
        for (; dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "hardware", "boards");
            if (Directory.Exists(candidate))
            {
                return candidate;
            }
        }

        // The emulator may run from its build output: look beside the assembly as well.
        string beside = Path.Combine(AppContext.BaseDirectory, "boards");
        return Directory.Exists(beside)
            ? beside
            : throw new DirectoryNotFoundException("hardware/boards not found above the current directory; run from the repository or pass --boards DIR.");
    }

    /// <summary>Loads every profile in a folder, sorted by id.</summary>
    /// <param name="directory">The folder holding <c>*.json</c> profiles.</param>
    /// <returns>The profiles.</returns>
    public static IReadOnlyList<BoardProfile> LoadAll(string directory) =>
        [.. Directory.GetFiles(directory, "*.json").Select(Load).OrderBy(p => p.Id, StringComparer.Ordinal)];

    /// <summary>Loads the profile with the given id from a folder.</summary>
    /// <param name="directory">The folder holding <c>*.json</c> profiles.</param>
    /// <param name="id">The profile's id.</param>
    /// <returns>The profile.</returns>
    /// <exception cref="ArgumentException">No profile has that id; the message lists those that exist.</exception>
    public static BoardProfile LoadById(string directory, string id)
    {
        var all = LoadAll(directory);
        return all.FirstOrDefault(p => p.Id == id)
            ?? throw new ArgumentException($"No board profile '{id}' in {directory}; known: {string.Join(", ", all.Select(p => p.Id))}.", nameof(id));
    }
}

/// <summary>Geometry, timing and endurance of a NOR flash region, as its datasheet gives them.</summary>
public sealed class FlashProfile
{
    /// <summary>Bytes in the region the queue owns (a partition, or the whole chip).</summary>
    public required long SizeBytes { get; init; }

    /// <summary>Smallest erasable unit (a sector), in bytes.</summary>
    public required int EraseSectorBytes { get; init; }

    /// <summary>Page-program buffer size; a program that crosses a page end wraps to its start.</summary>
    public required int PageBytes { get; init; }

    /// <summary>Smallest programmable unit and alignment, in bytes (1 on SPI NOR; 16–32 with flash encryption).</summary>
    public required int ProgramUnitBytes { get; init; }

    /// <summary>Whether a programmed unit may be programmed again (bits ANDed) before an erase.</summary>
    public required bool AllowsReprogram { get; init; }

    /// <summary>Whether the flash is transparently encrypted (clearing bits of ciphertext garbles plaintext).</summary>
    public bool Encrypted { get; init; }

    /// <summary>Rated program/erase cycles per sector.</summary>
    public required int EraseCycles { get; init; }

    /// <summary>Operation timings.</summary>
    public required FlashTiming Timing { get; init; }

    internal string? Validate()
    {
        static bool Pow2(long v) => v > 0 && (v & (v - 1)) == 0;
        if (!Pow2(EraseSectorBytes))
        {
            return "flash.eraseSectorBytes must be a power of two (e.g. 4096).";
        }

        if (SizeBytes <= 0 || SizeBytes % EraseSectorBytes != 0)
        {
            return "flash.sizeBytes must be a positive multiple of flash.eraseSectorBytes.";
        }

        if (!Pow2(PageBytes) || PageBytes > EraseSectorBytes)
        {
            return "flash.pageBytes must be a power of two no larger than flash.eraseSectorBytes (e.g. 256).";
        }

        if (!Pow2(ProgramUnitBytes) || ProgramUnitBytes > PageBytes)
        {
            return "flash.programUnitBytes must be a power of two no larger than flash.pageBytes (1 for SPI NOR).";
        }

        if (EraseCycles <= 0)
        {
            return "flash.eraseCycles must be positive (datasheet endurance, e.g. 100000).";
        }

        return Timing.Validate();
    }
}

/// <summary>Datasheet timings of one flash part, in microseconds.</summary>
public sealed class FlashTiming
{
    /// <summary>Fixed cost of a read command (opcode, address, dummy cycles).</summary>
    public required double ReadSetupUs { get; init; }

    /// <summary>Read cost per byte at the bus clock the board uses.</summary>
    public required double ReadPerByteUs { get; init; }

    /// <summary>Typical time to program one full page (tPP).</summary>
    public required double PageProgramUs { get; init; }

    /// <summary>Typical time to program a first byte (tBP1): the fixed part of any program.</summary>
    public required double ProgramSetupUs { get; init; }

    /// <summary>Typical time to erase one sector (tSE).</summary>
    public required double SectorEraseUs { get; init; }

    /// <summary>Maximum page-program time.</summary>
    public double PageProgramMaxUs { get; init; }

    /// <summary>Maximum sector-erase time.</summary>
    public double SectorEraseMaxUs { get; init; }

    internal string? Validate() =>
        ReadSetupUs < 0 || ReadPerByteUs < 0 ? "flash.timing read figures must not be negative."
        : PageProgramUs <= 0 || ProgramSetupUs < 0 || ProgramSetupUs > PageProgramUs ? "flash.timing.pageProgramUs must be positive and at least programSetupUs."
        : SectorEraseUs <= 0 ? "flash.timing.sectorEraseUs must be positive."
        : null;
}
