using Npgsql;
using Xunit;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace EdgeMail.Testing;

/// <summary>
/// The PostgreSQL cluster some tests run against. <c>EDGEMAIL_TEST_POSTGRES</c> (an Npgsql connection string) names
/// one; otherwise the first test that needs it starts a throwaway cluster of its own with Debian's postgresql —
/// initdb in a temporary directory, run by an unprivileged user when the tests run as root (PostgreSQL refuses root),
/// on 127.0.0.1 and a port the OS had free — and stops it when the test process exits. Each test gets a database of its
/// own (a named cluster's role needs CREATEDB): advisory locks, and the older transactions a CREATE INDEX CONCURRENTLY
/// waits for, are the database's, and tests running side by side must not wait on each other's.
/// </summary>
public static class TestPostgres
{
    /// <summary>The environment variable that names a cluster to use instead (an Npgsql connection string).</summary>
    public const string Variable = "EDGEMAIL_TEST_POSTGRES";

    private static readonly Lazy<Task<string>> Cluster = new(StartOrFindAsync, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>Why Postgres tests cannot run here, or null when they can. Cheap: starts nothing.</summary>
    public static string? Missing => Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } || BinDirectory() is not null
        ? null
        : $"needs PostgreSQL: apt-get install postgresql (.ci/run does this), or set {Variable}";

    /// <summary>The cluster's maintenance connection string; starts the throwaway cluster on first use.</summary>
    /// <returns>The connection string.</returns>
    public static Task<string> ConnectionStringAsync() => Cluster.Value;

    private static string? BinDirectory() =>
        Directory.Exists("/usr/lib/postgresql")
            ? Directory.GetDirectories("/usr/lib/postgresql")
                .Select(d => Path.Combine(d, "bin"))
                .Where(d => File.Exists(Path.Combine(d, "initdb")) && File.Exists(Path.Combine(d, "pg_ctl")))
                .OrderByDescending(d => int.TryParse(Path.GetFileName(Path.GetDirectoryName(d)), out int v) ? v : 0)
                .FirstOrDefault()
            : null;

    private static async Task<string> StartOrFindAsync()
    {
        if (Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } given)
        {
            return given;
        }

        string bin = BinDirectory() ?? throw new InvalidOperationException(Missing);
        string root = Path.Combine(Path.GetTempPath(), "edgemail-test-pg-clusters");
        Directory.CreateDirectory(root);
        StopOrphans(bin, root);

        string dir = Path.Combine(root, Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture));
        if (Directory.Exists(dir))
        {
            Directory.Delete(dir, true);
        }

        Directory.CreateDirectory(dir);
        bool asRoot = Environment.IsPrivilegedProcess;
        if (asRoot)
        {
            await RunAsync("chown", null, "nobody", dir);
        }

        string data = Path.Combine(dir, "data");
        await RunAsync(Path.Combine(bin, "initdb"), asRoot, "-D", data, "-U", "edgemail", "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync");
        int port = Loopback.FreePort();
        // fsync stays on: the tests check what is acknowledged only after a durable commit, on the real commit path.
        File.AppendAllText(Path.Combine(data, "postgresql.conf"), $"""

            listen_addresses = '127.0.0.1'
            port = {port}
            unix_socket_directories = '{dir}'
            max_connections = 300
            fsync = on
            synchronous_commit = on
            log_min_messages = warning

            """);
        await RunAsync(Path.Combine(bin, "pg_ctl"), asRoot, "-D", data, "-l", Path.Combine(dir, "server.log"), "-w", "-t", "60", "start");
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Stop(bin, dir);
        return $"Host=127.0.0.1;Port={port};Username=edgemail;Database=postgres;Timeout=30;Command Timeout=60";
    }

    // A test process killed before its exit handler ran leaves its cluster running: stop those whose owner is gone.
    private static void StopOrphans(string bin, string root)
    {
        foreach (string dir in Directory.GetDirectories(root))
        {
            if (int.TryParse(Path.GetFileName(dir), out int owner) && !IsAlive(owner))
            {
                Stop(bin, dir);
            }
        }
    }

    private static bool IsAlive(int pid)
    {
        try
        {
            using var p = System.Diagnostics.Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    private static void Stop(string bin, string dir)
    {
        try
        {
            if (Directory.Exists(Path.Combine(dir, "data")))
            {
                // Fails harmlessly when the server is already gone (the test host's process tree was ended).
                RunAsync(Path.Combine(bin, "pg_ctl"), Environment.IsPrivilegedProcess, "-D", Path.Combine(dir, "data"), "-m", "immediate", "-w", "stop")
                    .ContinueWith(t => t.Exception, TaskScheduler.Default).Wait(TimeSpan.FromSeconds(30)); // observed: not a stray exception in another test
            }

            Directory.Delete(dir, true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Best effort at exit: the next test run removes what is left (StopOrphans).
        }
    }

    private static async Task RunAsync(string program, bool? asNobody, params string[] args)
    {
        var info = new System.Diagnostics.ProcessStartInfo(asNobody == true ? "runuser" : program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (asNobody == true)
        {
            foreach (string a in new[] { "-u", "nobody", "--", program })
            {
                info.ArgumentList.Add(a);
            }
        }

        foreach (string a in args)
        {
            info.ArgumentList.Add(a);
        }

        using var process = System.Diagnostics.Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        await process.WaitForExitAsync(deadline.Token);
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{Path.GetFileName(program)} {string.Join(' ', args)} failed ({process.ExitCode}): {await stdout}{await stderr}");
        }
    }

    /// <summary>Creates an empty database for one test; dispose the result to drop it.</summary>
    /// <returns>The test's database.</returns>
    public static async Task<TestDatabase> CreateDatabaseAsync()
    {
        string server = await ConnectionStringAsync();
        string name = "edgemail_test_" + Guid.NewGuid().ToString("N")[..16];
        await using (var c = new NpgsqlConnection(server))
        {
            await c.OpenAsync();
            await using var create = new NpgsqlCommand($"CREATE DATABASE {name} TEMPLATE template0", c);
            await create.ExecuteNonQueryAsync();
        }

        return new TestDatabase(server, new NpgsqlConnectionStringBuilder(server) { Database = name }.ConnectionString, name);
    }
}

/// <summary>The database of one test on the test cluster, dropped on dispose.</summary>
/// <param name="server">The cluster's maintenance connection string.</param>
/// <param name="connectionString">This database's connection string.</param>
/// <param name="name">Its name.</param>
public sealed class TestDatabase(string server, string connectionString, string name) : IAsyncDisposable
{
    /// <summary>The connection string.</summary>
    public string ConnectionString { get; } = connectionString;

    /// <summary>Runs SQL in the database (tests that look under the spool's API).</summary>
    /// <param name="sql">The statement.</param>
    /// <returns>The first column of the first row.</returns>
    public async Task<object?> ScalarAsync(string sql)
    {
        await using var c = new NpgsqlConnection(ConnectionString);
        await c.OpenAsync();
        await using var command = new NpgsqlCommand(sql, c);
        return await command.ExecuteScalarAsync();
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        await using var c = new NpgsqlConnection(server);
        await c.OpenAsync();
        // FORCE ends the sessions still open on it: the idle connections of the test's pools, and those of a gateway a
        // failed test left running.
        await using var drop = new NpgsqlCommand($"DROP DATABASE IF EXISTS {name} WITH (FORCE)", c);
        await drop.ExecuteNonQueryAsync();
    }
}

/// <summary>
/// A fact that needs the test PostgreSQL cluster. Skipped with the reason on a developer machine without one; under CI
/// (<c>CI=true</c>), which starts it, it runs and fails if the cluster is missing.
/// </summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class PostgresFactAttribute : FactAttribute
{
    /// <summary>Declares the need, and of other peer programs (as <c>program:package</c>, like <see cref="PeerFactAttribute"/>).</summary>
    /// <param name="programs">Entries like <c>mosquitto:mosquitto</c>.</param>
    public PostgresFactAttribute(params string[] programs)
    {
        var missing = programs.Where(p => Peers.Find(p.Split(':')[0]) is null).Select(p => p.Split(':')[^1]).ToList();
        string? reason = TestPostgres.Missing ?? (missing.Count > 0 ? "needs " + string.Join(", ", missing) + "; apt-get install " + string.Join(' ', missing.Distinct()) : null);
        if (reason is not null && !Peers.InCi)
        {
            Skip = reason;
        }
    }
}

/// <summary>
/// Marks a test class whose inherited facts (<see cref="ContractFactAttribute"/>) need the test PostgreSQL cluster.
/// </summary>
[AttributeUsage(AttributeTargets.Class)]
public sealed class RequiresPostgresAttribute : Attribute;

/// <summary>
/// A fact of a contract suite: an abstract class of tests run once per implementation (subclass). In a subclass marked
/// <see cref="RequiresPostgresAttribute"/> it is skipped with the reason when the cluster is missing (never under CI).
/// </summary>
[AttributeUsage(AttributeTargets.Method)]
[XunitTestCaseDiscoverer("EdgeMail.Testing.ContractFactDiscoverer", "EdgeMail.Testing")]
public sealed class ContractFactAttribute : FactAttribute;

/// <summary>Finds <see cref="ContractFactAttribute"/> tests, skipping those whose class needs a cluster that is missing.</summary>
/// <param name="diagnosticMessageSink">Where xunit's diagnostics go.</param>
public sealed class ContractFactDiscoverer(IMessageSink diagnosticMessageSink) : IXunitTestCaseDiscoverer
{
    /// <inheritdoc />
    public IEnumerable<IXunitTestCase> Discover(ITestFrameworkDiscoveryOptions discoveryOptions, ITestMethod testMethod, IAttributeInfo factAttribute)
    {
        ArgumentNullException.ThrowIfNull(discoveryOptions);
        ArgumentNullException.ThrowIfNull(testMethod);
        var display = discoveryOptions.MethodDisplayOrDefault();
        var options = discoveryOptions.MethodDisplayOptionsOrDefault();
        bool needsPostgres = testMethod.TestClass.Class.GetCustomAttributes(typeof(RequiresPostgresAttribute)).Any();
        if (needsPostgres && TestPostgres.Missing is { } reason && !Peers.InCi)
        {
            yield return new XunitSkippedDataRowTestCase(diagnosticMessageSink, display, options, testMethod, reason);
        }
        else
        {
            yield return new XunitTestCase(diagnosticMessageSink, display, options, testMethod);
        }
    }
}
