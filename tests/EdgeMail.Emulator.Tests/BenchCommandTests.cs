using Xunit;

namespace EdgeMail.Emulator.Tests;

// The footprint lines are differences of the process's managed heap: another test allocating or freeing meanwhile
// (the chaos run, in parallel) made one negative. This collection runs alone.
[Collection(nameof(HeapMeasurementCollection))]
public class BenchCommandTests
{
    [Fact]
    public void Bench_SmallRun_ReportsFootprintZeroAllocationsWireBytesAndDutyCycle()
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        string boards = Simulation.Boards.BoardProfile.FindBoardsDirectory(AppContext.BaseDirectory);

        int exit = EmulatorCli.Run(["bench", "--boards", boards, "--devices", "10", "--alerts", "500", "--wakes", "2"], stdout, stderr);

        string text = stdout.ToString();
        Assert.True(exit == 0, text + stderr);
        Assert.Matches(@"footprint: \d+ bytes of managed heap per device", text);
        Assert.Contains("allocations: 0 bytes per forwarded alert", text, StringComparison.Ordinal);
        Assert.Matches(@"wire: \d+(\.\d)? bytes per alert", text);
        Assert.Matches(@"footprint, SMTP uplink: \d+ bytes of managed heap per device", text);
        Assert.Matches(@"allocations, SMTP uplink: \d+(\.\d+)? bytes per submitted alert", text);
        Assert.Matches(@"duty cycle, 100 alert\(s\) per wake: connected", text);
    }
}

[CollectionDefinition(nameof(HeapMeasurementCollection), DisableParallelization = true)]
public sealed class HeapMeasurementCollection;
