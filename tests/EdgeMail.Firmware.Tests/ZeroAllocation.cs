using Xunit;

namespace EdgeMail.Firmware.Tests;

/// <summary>
/// Shows that code allocates nothing: the bytes allocated on the test's thread over several windows of calls. The runtime
/// itself now and then allocates on that thread (CI once saw 6,456 bytes in a window of code that allocates nothing), so
/// one window may show that; code that allocates, even once per window, shows in every one.
/// </summary>
internal static class ZeroAllocation
{
    /// <summary>Runs <paramref name="call"/> in <paramref name="windows"/> windows of <paramref name="callsPerWindow"/> calls (after the caller's warm-up).</summary>
    /// <returns>Bytes allocated in each window.</returns>
    public static long[] Measure(int windows, int callsPerWindow, Action<int> call)
    {
        var allocated = new long[windows];
        for (int w = 0; w < windows; w++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < callsPerWindow; i++)
            {
                call(i);
            }

            allocated[w] = GC.GetAllocatedBytesForCurrentThread() - before;
        }

        return allocated;
    }

    /// <summary>Fails unless all windows but at most one allocated nothing.</summary>
    public static void AssertNone(long[] windows) =>
        Assert.True(windows.Count(b => b == 0) >= windows.Length - 1, $"bytes allocated per window: {string.Join(", ", windows)}");
}
