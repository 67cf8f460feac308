using EdgeMail.Simulation.Boards;
using Xunit;

namespace EdgeMail.Firmware.Tests.Boards;

public class BoardProfileTests
{
    [Fact]
    public void EveryShippedProfile_LoadsAndCitesItsDatasheet()
    {
        var profiles = BoardProfile.LoadAll(BoardProfile.FindBoardsDirectory(AppContext.BaseDirectory));

        Assert.NotEmpty(profiles);
        Assert.All(profiles, p =>
        {
            Assert.NotEmpty(p.Sources);
            Assert.Equal(0, p.Flash.SizeBytes % p.Flash.EraseSectorBytes);
        });
        Assert.Contains(profiles, p => p.Id == "w25q128jv" && p.Flash.SizeBytes == 16 * 1024 * 1024);
    }

    [Fact]
    public void Load_RefusesAProfileWhoseSizeIsNotWholeSectors_NamingTheKey()
    {
        string dir = Directory.CreateTempSubdirectory("edgemail-board-").FullName;
        string path = Path.Combine(dir, "bad.json");
        File.WriteAllText(path, """
            { "id": "bad", "name": "bad", "sources": ["none"],
              "flash": { "sizeBytes": 5000, "eraseSectorBytes": 4096, "pageBytes": 256, "programUnitBytes": 1,
                         "allowsReprogram": true, "eraseCycles": 100000,
                         "timing": { "readSetupUs": 1, "readPerByteUs": 0.1, "pageProgramUs": 400, "programSetupUs": 30, "sectorEraseUs": 45000 } } }
            """);

        var ex = Assert.Throws<InvalidDataException>(() => BoardProfile.Load(path));
        Assert.Contains("flash.sizeBytes", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Load_RefusesUnknownKeys_SoATypoIsNotSilentlyIgnored()
    {
        string dir = Directory.CreateTempSubdirectory("edgemail-board-").FullName;
        string path = Path.Combine(dir, "typo.json");
        File.WriteAllText(path, """{ "id": "t", "name": "t", "sources": ["x"], "flsh": {} }""");

        var ex = Assert.Throws<InvalidDataException>(() => BoardProfile.Load(path));
        Assert.Contains("flsh", ex.Message, StringComparison.Ordinal);
    }
}
