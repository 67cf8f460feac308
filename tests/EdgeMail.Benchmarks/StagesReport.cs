using System.Diagnostics;
using System.Globalization;

namespace EdgeMail.Benchmarks;

/// <summary>
/// `dotnet run -c Release --project tests/EdgeMail.Benchmarks -- stages [N]`: each stage of <see cref="GatewayStagesBenchmark"/>
/// run N times in a row after as many warm-up runs, with this process's CPU time (all threads, so a stage's background
/// work counts) and bytes allocated per run (per alert for the spool stage, whose run is a batch of alerts). CPU time is less disturbed by other work on the machine than elapsed time.
/// </summary>
public static class StagesReport
{
    public static async Task<int> RunAsync(TextWriter output, int n)
    {
        var inv = CultureInfo.InvariantCulture;
        var b = new GatewayStagesBenchmark();
        b.Setup();
        try
        {
            output.WriteLine(string.Create(inv, $"gateway stages, {Environment.ProcessorCount} cores, {n} runs each, load {File.ReadAllText("/proc/loadavg").Trim()}, {DateTimeOffset.UtcNow:yyyy-MM-dd HH:mm} UTC"));
            output.WriteLine("| stage | CPU µs per run | bytes allocated per run |");
            output.WriteLine("| --- | --- | --- |");
            var stages = new (string Name, Func<Task> Run, int Divisor, int Units)[]
            {
                ("accept: parse and validate", () => { b.AcceptParse(); return Task.CompletedTask; }, 1, 1),
                ("route", () => { b.Route(); return Task.CompletedTask; }, 1, 1),
                ("compose: templates and the mail's bytes", () => { b.Compose(); return Task.CompletedTask; }, 1, 1),
                ("compose with DKIM", () => { b.ComposeDkim(); return Task.CompletedTask; }, 20, 1),
                ("SMTP client: send one spooled message (kept connection)", b.SmtpSend, 1, 1),
                ("SMTP ingest: rewrite a device's 1 KiB mail", () => { b.SmtpIngestRewrite(); return Task.CompletedTask; }, 1, 1),
                ("SMTP client: send a device's mail (kept connection)", b.SmtpSendDeviceMail, 1, 1),
                ($"spool: an alert accepted, routed and delivered, {GatewayStagesBenchmark.SpoolBatch} per commit (fsync off)", b.SpoolLifeAsync, GatewayStagesBenchmark.SpoolBatch, GatewayStagesBenchmark.SpoolBatch),
            };
            string? only = Environment.GetEnvironmentVariable("EDGEMAIL_STAGE"); // one stage only, e.g. under a profiler
            var chosen = stages.Where(s => only is null || s.Name.StartsWith(only, StringComparison.Ordinal)).ToList();

            // Every stage once before any is measured: they share code (MimeKit), whose compilation would otherwise be
            // charged to whichever stage runs it first.
            foreach (var (_, run, divisor, _) in chosen)
            {
                for (int i = 0; i < Math.Max(50, n / divisor); i++)
                {
                    await run();
                }
            }

            foreach (var (name, run, divisor, units) in chosen)
            {
                int runs = Math.Max(50, n / divisor);

                // Warm-up until tiered compilation has finished with the stage (it recompiles hot methods in the
                // background for a while): at least as many runs as are measured, and at least 3 s.
                var warm = Stopwatch.StartNew();
                for (int i = 0; i < runs || warm.Elapsed < TimeSpan.FromSeconds(3); i++)
                {
                    await run();
                }

                GC.Collect();
                GC.WaitForPendingFinalizers();

                var process = Process.GetCurrentProcess();
                process.Refresh();
                var cpu0 = process.TotalProcessorTime;
                long bytes0 = GC.GetTotalAllocatedBytes(precise: true);
                for (int i = 0; i < runs; i++)
                {
                    await run();
                }

                long bytes1 = GC.GetTotalAllocatedBytes(precise: true);
                process.Refresh();
                var cpu1 = process.TotalProcessorTime;
                output.WriteLine(string.Create(inv, $"| {name} | {(cpu1 - cpu0).TotalMicroseconds / runs / units:F1} | {(bytes1 - bytes0) / runs / units:N0} |"));
            }
        }
        finally
        {
            b.Cleanup();
        }

        return 0;
    }
}
