using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Operations;

/// <summary>
/// Puts the service's threads under Linux's <c>SCHED_BATCH</c> policy, the kernel's policy for throughput work: a thread
/// that wakes up does not preempt the one running but waits for its time slice to end or for it to block. An alert or a
/// relayed mail passes between threads several times (the socket event loop, the thread pool, the spool writer), and under
/// the default policy each wake-up on a busy machine preempts whoever runs; on a two-core virtual machine those context
/// switches cost more CPU than the work they hand over (docs/gateway-benchmarks.md, sixteenth session). Nice values and
/// CPU shares stay as they are, and an unprivileged process may make this change.
/// </summary>
public static partial class ThreadScheduling
{
    private const int SchedOther = 0;
    private const int SchedBatch = 3;
    private const int NoSuchThread = 3; // ESRCH: the thread ended meanwhile

    /// <summary>The environment variable that turns it off: <c>inherit</c> keeps the policy the gateway was started with.</summary>
    public const string Variable = "EDGEMAIL_SCHEDULING";

    private static string? _outcome;
    private static bool _failed;

    /// <summary>
    /// Moves the process to <c>SCHED_BATCH</c> unless <see cref="Variable"/> is <c>inherit</c>. It must run first thing:
    /// glibc remembers each thread's policy once that thread has started another one, and a thread that remembers the
    /// default passes the default on, whatever its own policy has become since.
    /// </summary>
    /// <param name="setting">The value of <see cref="Variable"/> (null when unset).</param>
    public static void ApplyAtStart(string? setting)
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        if ("inherit".Equals(setting, StringComparison.OrdinalIgnoreCase))
        {
            _outcome = $"Threads keep the scheduling policy the gateway was started with ({Variable}=inherit)";
            return;
        }

        string? failure = UseBatch();
        _failed = failure is not null;
        _outcome = failure is null
            ? $"Threads run under SCHED_BATCH ({Variable}=inherit keeps the policy the gateway was started with)"
            : $"SCHED_BATCH was not applied ({failure}); the threads keep the policy the gateway was started with";
    }

    /// <summary>Says in the log what <see cref="ApplyAtStart"/> did, once the log exists.</summary>
    /// <param name="logger">Where to say it.</param>
    public static void Report(ILogger logger)
    {
        if (_outcome is null)
        {
            return;
        }

        if (_failed)
        {
            LogFailed(logger, _outcome);
        }
        else
        {
            LogApplied(logger, _outcome);
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "{Outcome}")]
    private static partial void LogApplied(ILogger logger, string outcome);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Outcome}")]
    private static partial void LogFailed(ILogger logger, string outcome);

    /// <summary>
    /// Moves every thread of the process that runs under the default policy to <c>SCHED_BATCH</c>; threads started later
    /// inherit it (while no thread remembers the default: see <see cref="ApplyAtStart"/>). A thread under a policy someone
    /// chose (real-time, idle) is left alone.
    /// </summary>
    /// <returns>Null when done, else why not.</returns>
    private static string? UseBatch()
    {
        // A thread started meanwhile by one not yet moved keeps the default policy: go over them until a pass moves none.
        for (int pass = 0; pass < 10; pass++)
        {
            int moved = 0;
            foreach (int tid in Threads())
            {
                if (NativeMethods.GetScheduler(tid) != SchedOther)
                {
                    continue; // already moved, chosen by someone else, or ended meanwhile (-1)
                }

                var param = default(SchedParam);
                if (NativeMethods.SetScheduler(tid, SchedBatch, ref param) != 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == NoSuchThread)
                    {
                        continue;
                    }

                    return $"sched_setscheduler(SCHED_BATCH) failed: {Marshal.GetPInvokeErrorMessage(errno)}";
                }

                moved++;
            }

            if (moved == 0)
            {
                return null;
            }
        }

        return "threads kept starting under the default policy while they were being moved";
    }

    private static IEnumerable<int> Threads()
    {
        foreach (string dir in Directory.EnumerateDirectories("/proc/self/task"))
        {
            if (int.TryParse(Path.GetFileName(dir), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int tid))
            {
                yield return tid;
            }
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct SchedParam
    {
        public int Priority;
    }

    private static class NativeMethods
    {
        [DllImport("libc", EntryPoint = "sched_getscheduler", SetLastError = true)]
        [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
        public static extern int GetScheduler(int tid);

        [DllImport("libc", EntryPoint = "sched_setscheduler", SetLastError = true)]
        [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
        public static extern int SetScheduler(int tid, int policy, ref SchedParam param);
    }
}
