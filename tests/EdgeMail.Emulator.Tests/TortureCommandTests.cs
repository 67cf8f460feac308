using Xunit;

namespace EdgeMail.Emulator.Tests;

public class TortureCommandTests
{
    [Fact]
    public void Torture_OnABoardProfile_ReportsCutPointsPerRingAndPolicy_AndNoViolations()
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        string boards = Simulation.Boards.BoardProfile.FindBoardsDirectory(AppContext.BaseDirectory);

        int exit = EmulatorCli.Run(["torture", "--boards", boards, "--board", "esp32-wroom-32", "--sectors", "3", "--policy", "all", "--cut-points", "100", "--steps", "150", "--cuts-per-op", "1", "--steps-after-cut", "6"], stdout, stderr);

        string text = stdout.ToString();
        Assert.True(exit == 0, text + stderr);
        Assert.Contains("strict (no reprogramming), encrypted", text, StringComparison.Ordinal);
        Assert.Matches(@" 3 sectors, DropLowestPriority\s*: .* [1-9][\d,]* cut points", text);
        Assert.Matches(@" 3 sectors, Reject\s*: .* [1-9][\d,]* cut points", text);
        Assert.Matches(@"cut points checked: [1-9]\d*", text);
        Assert.Contains("violations: 0", text, StringComparison.Ordinal);
    }

    [Fact]
    public void Torture_UnknownBoard_SaysSoAndFails()
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        string boards = Simulation.Boards.BoardProfile.FindBoardsDirectory(AppContext.BaseDirectory);

        int exit = EmulatorCli.Run(["torture", "--boards", boards, "--board", "no-such-board"], stdout, stderr);

        Assert.Equal(2, exit);
        Assert.Contains("no-such-board", stderr.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Torture_RingOfTwoSectors_IsRefusedWithTheRange()
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        string boards = Simulation.Boards.BoardProfile.FindBoardsDirectory(AppContext.BaseDirectory);

        int exit = EmulatorCli.Run(["torture", "--boards", boards, "--board", "w25q128jv", "--sectors", "2"], stdout, stderr);

        Assert.Equal(2, exit);
        Assert.Contains("from 3 to", stderr.ToString(), StringComparison.Ordinal);
    }
}
