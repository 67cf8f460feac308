using System.Diagnostics;
using System.Globalization;
using System.Text;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace EdgeMail.Benchmarks;

/// <summary>
/// `dotnet run -c Release --project tests/EdgeMail.Benchmarks -- spool`: the two spools side by side in one run, fsync
/// on — alerts accepted per second and commits per second (group commit) at 1, 16 and 128 concurrent publishers, this
/// process's CPU per alert; and for PostgreSQL, routing claims (FOR UPDATE SKIP LOCKED + lease) per second by one and
/// by two instances. PostgreSQL is the throwaway cluster the tests start (or EDGEMAIL_TEST_POSTGRES).
/// </summary>
public static class SpoolReport
{
    private const int Alerts = 6000;

    public static async Task<int> RunAsync(TextWriter output)
    {
        var inv = CultureInfo.InvariantCulture;
        output.WriteLine(string.Create(inv, $"spool benchmark, {Environment.ProcessorCount} cores, {Alerts} alerts per row, fsync on, {DateTimeOffset.UtcNow:yyyy-MM-dd HH:mm} UTC"));
        output.WriteLine("| spool | publishers | alerts/s | commits/s | alerts per commit | CPU ms per alert (gateway process) |");
        output.WriteLine("| --- | --- | --- | --- | --- | --- |");
        foreach (int publishers in new[] { 1, 16, 128 })
        {
            string dir = Path.Combine(Path.GetTempPath(), "edgemail-spool-bench", Guid.NewGuid().ToString("N"));
            Directory.CreateDirectory(dir);
            await using (var sqlite = SqliteSpool.Open(Path.Combine(dir, "spool.db"), true, 512, NullLogger.Instance))
            {
                var r = await AcceptAsync(sqlite, publishers, () => sqlite.CommitStats);
                output.WriteLine(Row("SQLite", publishers, r));
            }

            Directory.Delete(dir, true);
            await using var db = await TestPostgres.CreateDatabaseAsync();
            await using (var pg = PostgresSpool.Open(db.ConnectionString, true, 512, TimeSpan.FromMinutes(2), TimeSpan.FromSeconds(5), NullLogger.Instance))
            {
                var r = await AcceptAsync(pg, publishers, () => pg.CommitStats);
                output.WriteLine(Row("PostgreSQL", publishers, r));
            }
        }

        output.WriteLine();
        output.WriteLine("| PostgreSQL claims (NewAlertsAsync, batch of 16) | rows claimed/s | claim transactions/s |");
        output.WriteLine("| --- | --- | --- |");
        foreach (int instances in new[] { 1, 2 })
        {
            await using var db = await TestPostgres.CreateDatabaseAsync();
            var spools = Enumerable.Range(0, instances)
                .Select(_ => PostgresSpool.Open(db.ConnectionString, true, 512, TimeSpan.FromMinutes(2), TimeSpan.FromSeconds(5), NullLogger.Instance)).ToList();
            await AcceptAsync(spools[0], 128, () => spools[0].CommitStats);
            long transactions = 0;
            var clock = Stopwatch.StartNew();
            var claimed = await Task.WhenAll(spools.Select(async s =>
            {
                var mine = new HashSet<long>();
                while (true)
                {
                    // A routing loop claims, decides and commits; here the decision is "unrouted", to measure the claim path.
                    var batch = await s.NewAlertsAsync(16, default);
                    Interlocked.Increment(ref transactions);
                    if (batch.Count == 0)
                    {
                        return mine.Count;
                    }

                    await s.CommitRoutingAsync(batch.Select(a => new RoutingCommit(a.RowId, AlertStatus.Unrouted, null, null, null, null)).ToList(), default);
                    mine.UnionWith(batch.Select(a => a.RowId));
                }
            }));
            var elapsed = clock.Elapsed.TotalSeconds;
            output.WriteLine(string.Create(inv, $"| {instances} instance(s) | {claimed.Sum() / elapsed:F0} | {transactions / elapsed:F0} |"));
            foreach (var s in spools)
            {
                await s.DisposeAsync();
            }
        }

        return 0;
    }

    private static string Row(string spool, int publishers, (double Seconds, long Commits, double CpuMs) r) =>
        string.Create(CultureInfo.InvariantCulture,
            $"| {spool} | {publishers} | {Alerts / r.Seconds:F0} | {r.Commits / r.Seconds:F0} | {(double)Alerts / r.Commits:F1} | {r.CpuMs / Alerts:F3} |");

    private static async Task<(double Seconds, long Commits, double CpuMs)> AcceptAsync(ISpool spool, int publishers, Func<(long Batches, long Items)> stats)
    {
        byte[] payload = Encoding.UTF8.GetBytes(
            "{\"v\":1,\"id\":\"0000\",\"seq\":1,\"sev\":\"critical\",\"state\":\"raised\",\"code\":\"TEMP_HIGH\",\"text\":\"Freezer 2 above -15 C\",\"values\":{\"temp\":-12.5}}");
        string run = Guid.NewGuid().ToString("N")[..8];
        var before = stats();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        var clock = Stopwatch.StartNew();
        int next = -1;
        await Task.WhenAll(Enumerable.Range(0, publishers).Select(p => Task.Run(async () =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < Alerts)
            {
                string id = string.Create(CultureInfo.InvariantCulture, $"{run}-{i}");
                await spool.AcceptAlertAsync(new IncomingAlert($"dev-{p}", id, DateTimeOffset.UnixEpoch, "127.0.0.1:1", payload, null, "TEMP_HIGH", Severity: "critical"), default);
            }
        })));
        double seconds = clock.Elapsed.TotalSeconds;
        double cpuMs = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalMilliseconds;
        return (seconds, stats().Batches - before.Batches, cpuMs);
    }
}
