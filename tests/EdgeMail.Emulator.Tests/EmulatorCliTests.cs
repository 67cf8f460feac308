using Xunit;

namespace EdgeMail.Emulator.Tests;

public class EmulatorCliTests
{
    [Fact]
    public void Boards_ListsEveryProfileWithItsGeometry()
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        string boards = Simulation.Boards.BoardProfile.FindBoardsDirectory(AppContext.BaseDirectory);

        int exit = EmulatorCli.Run(["boards", "--boards", boards], stdout, stderr);

        Assert.Equal(0, exit);
        Assert.Contains("w25q128jv", stdout.ToString(), StringComparison.Ordinal);
        Assert.Contains("16384 KiB", stdout.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Boards_WithAMissingFolder_SaysSoAndFails()
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();

        int exit = EmulatorCli.Run(["boards", "--boards", "/nonexistent/boards"], stdout, stderr);

        Assert.NotEqual(0, exit);
        Assert.Contains("/nonexistent/boards", stderr.ToString(), StringComparison.Ordinal);
    }
}
