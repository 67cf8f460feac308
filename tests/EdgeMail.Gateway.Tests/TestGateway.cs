using System.Text.Json;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using MQTTnet;
using MQTTnet.Formatter;

namespace EdgeMail.Gateway.Tests;

/// <summary>A gateway host on a temp data directory with test devices, an OS-chosen port and the local mailbox.</summary>
public sealed class TestGateway : IAsyncDisposable
{
    public const string Secret = "s3cret-for-tests";

    private TestGateway(string dataDir, IHost host, LogCapture logs)
    {
        DataDir = dataDir;
        Host = host;
        Logs = logs;
    }

    /// <summary>Errors the host logged; any the test did not <see cref="LogCapture.Expect"/> fail it at dispose.</summary>
    public LogCapture Logs { get; }

    public string DataDir { get; }

    public IHost Host { get; }

    public EmbeddedBroker Broker => Host.Services.GetRequiredService<EmbeddedBroker>();

    public ISpool Spool => Host.Services.GetRequiredService<ISpool>();

    public string MailboxNew => Path.Combine(DataDir, "mailbox", "new");

    /// <summary>A config file with devices dev-1..dev-N (owner alice), users alice and bob, group oncall, one catch-all route.</summary>
    public static string WriteConfig(string dataDir, int devices = 3, Action<Dictionary<string, object>>? tweak = null)
    {
        Directory.CreateDirectory(dataDir);
        string hash = SecretHash.Create(Secret, 1000);
        var config = new Dictionary<string, object>
        {
            ["DataDirectory"] = dataDir,
            ["Mqtt"] = new { Port = 0 },
            ["Sender"] = new { Address = "edgemail@gw.test", DisplayName = "EdgeMail", Hostname = "gw.test", Operator = "ops@example.com" },
            ["Users"] = new Dictionary<string, object>
            {
                ["alice"] = new { Name = "Alice Ärger", Email = "alice@example.com" },
                ["bob"] = new { Name = "Bob", Email = "bob@example.com" },
            },
            ["Groups"] = new Dictionary<string, object> { ["oncall"] = new[] { "alice", "bob" } },
            ["Devices"] = Enumerable.Range(1, devices).ToDictionary(i => $"dev-{i}", i => (object)new { Secret = hash, Name = $"Device {i}", Site = "Hall 3", Owners = new[] { "alice" } }),
            ["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "owners" } } },
            ["Storm"] = new { Window = "00:00:00" },
            ["Console"] = new { Port = 0 },
            ["Logging"] = new { LogLevel = new { Default = "Warning" } },
        };
        tweak?.Invoke(config);
        string path = Path.Combine(dataDir, "edgemail.json");
        File.WriteAllText(path, JsonSerializer.Serialize(config));
        return path;
    }

    public static Task<TestGateway> StartAsync(Action<Dictionary<string, object>>? tweak = null, int devices = 3, params string[] extraArgs) =>
        StartAsync(tweak, null, devices, null, extraArgs);

    /// <summary>Starts a gateway; <paramref name="services"/> may replace services (a clock, a transport, a disk probe).</summary>
    public static async Task<TestGateway> StartAsync(Action<Dictionary<string, object>>? tweak, Action<IServiceCollection>? services, int devices = 3,
        string? dataDir = null, params string[] extraArgs)
    {
        dataDir ??= Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        string config = WriteConfig(dataDir, devices, tweak);
        var builder = GatewayHost.CreateBuilder(["--config", config, .. extraArgs]);
        var logs = new LogCapture();
        builder.Logging.AddProvider(logs);
        services?.Invoke(builder.Services);
        var host = builder.Build();
        await host.StartAsync();
        return new TestGateway(dataDir, host, logs);
    }

    /// <summary>Stops the host without deleting its data directory (to start another on the same spool), checking its log.</summary>
    public async Task StopAsync()
    {
        await Host.StopAsync();
        Host.Dispose();
        Logs.AssertNoUnexpectedErrors();
    }

    /// <summary>Waits until <paramref name="condition"/> holds, re-checking after every spool commit.</summary>
    public Task UntilAsync(Func<Task<bool>> condition, string what, TimeSpan? timeout = null) => SpoolWait.UntilAsync(Spool, condition, what, timeout);

    public async Task<IMqttClient> ConnectAsync(string device, string? secret = null, MqttProtocolVersion version = MqttProtocolVersion.V311)
    {
        var client = new MqttClientFactory().CreateMqttClient();
        var result = await client.ConnectAsync(ClientOptions(device, secret, version));
        if (result.ResultCode != MqttClientConnectResultCode.Success)
        {
            throw new InvalidOperationException($"connect {device}: {result.ResultCode}");
        }

        return client;
    }

    public MqttClientOptions ClientOptions(string device, string? secret = null, MqttProtocolVersion version = MqttProtocolVersion.V311) =>
        new MqttClientOptionsBuilder()
            .WithTcpServer(Broker.Endpoint!.Address.ToString(), Broker.Endpoint.Port)
            .WithClientId(device)
            .WithCredentials(device, secret ?? Secret)
            .WithProtocolVersion(version)
            .WithTimeout(TimeSpan.FromSeconds(10))
            .Build();

    /// <summary>The console's address.</summary>
    public Uri ConsoleAddress => Host.Services.GetRequiredService<EdgeMail.Gateway.Web.ConsoleServer>().Address!;

    /// <summary>An HTTP client for the console's API, authenticated with a new API key (admin unless asked otherwise).</summary>
    public async Task<HttpClient> ApiAsync(ApiKeyScope scope = ApiKeyScope.Admin)
    {
        var (_, key) = await Host.Services.GetRequiredService<EdgeMail.Gateway.Web.ConsoleAuth>().CreateApiKeyAsync("tests", scope, default);
        var client = new HttpClient { BaseAddress = ConsoleAddress };
        client.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", key);
        return client;
    }

    /// <summary>Waits until the mailbox holds at least <paramref name="count"/> files.</summary>
    public Task<string[]> MailAsync(int count, TimeSpan? timeout = null) => Mailbox.WaitForAsync(MailboxNew, count, timeout);

    public async ValueTask DisposeAsync()
    {
        try
        {
            await StopAsync();
        }
        finally
        {
            try
            {
                Directory.Delete(DataDir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}

public static class Alerts
{
    /// <summary>The repository's contract/alerts vectors, beside the test binaries.</summary>
    public static string ContractDir => ContractVectors.Directory;

    public static string Json(string id, string code = "TEMP_HIGH", string state = "raised", string sev = "critical", string text = "Too warm") =>
        JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["v"] = 1, ["id"] = id, ["seq"] = 1, ["state"] = state, ["sev"] = sev, ["code"] = code, ["text"] = text,
            ["values"] = new Dictionary<string, double> { ["temp_c"] = -9.5 }, ["raised"] = "2026-11-28T09:58:12Z", ["boot"] = 1, ["count"] = 1,
        });
}

/// <summary>Waiting for spool state without sleeping: the condition is re-checked after each commit (SQLite or PostgreSQL).</summary>
internal static class SpoolWait
{
    public static async Task UntilAsync(ISpool spool, Func<Task<bool>> condition, string what, TimeSpan? timeout = null)
    {
        var committer = spool switch
        {
            SqliteSpool sqlite => (Add: (Action<Action>)(a => sqlite.Committed += a), Remove: (Action<Action>)(a => sqlite.Committed -= a)),
            PostgresSpool postgres => (Add: (Action<Action>)(a => postgres.Committed += a), Remove: (Action<Action>)(a => postgres.Committed -= a)),
            _ => throw new ArgumentException($"{spool.GetType().Name} raises no commit event to wait on", nameof(spool)),
        };
        var deadline = TimeProvider.System.GetUtcNow() + (timeout ?? Await.DefaultTimeout);
        while (true)
        {
            var committed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Action wake = () => committed.TrySetResult();
            committer.Add(wake);
            try
            {
                if (await condition())
                {
                    return;
                }

                var left = deadline - TimeProvider.System.GetUtcNow();
                if (left <= TimeSpan.Zero)
                {
                    throw new TimeoutException($"Timed out waiting for {what}.");
                }

                try
                {
                    await committed.Task.WaitAsync(left);
                }
                catch (TimeoutException)
                {
                    // One last look at the condition, then fail with what was awaited.
                }
            }
            finally
            {
                committer.Remove(wake);
            }
        }
    }
}

/// <summary>The local mailbox as the tests see it.</summary>
internal static class Mailbox
{
    /// <summary>Waits until <paramref name="folder"/> holds at least <paramref name="count"/> .eml files, woken by the folder's change events.</summary>
    public static async Task<string[]> WaitForAsync(string folder, int count, TimeSpan? timeout = null)
    {
        Directory.CreateDirectory(folder);
        var deadline = TimeProvider.System.GetUtcNow() + (timeout ?? Await.DefaultTimeout);
        using var watcher = new FileSystemWatcher(folder) { EnableRaisingEvents = true };
        while (true)
        {
            var changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            watcher.Created += (_, _) => changed.TrySetResult();
            watcher.Renamed += (_, _) => changed.TrySetResult();
            string[] files = Directory.GetFiles(folder, "*.eml");
            if (files.Length >= count)
            {
                return files;
            }

            if (TimeProvider.System.GetUtcNow() > deadline)
            {
                throw new TimeoutException($"Timed out waiting for {count} mail(s) in {folder}; have {files.Length}.");
            }

            try
            {
                await changed.Task.WaitAsync(TimeSpan.FromMilliseconds(200));
            }
            catch (TimeoutException)
            {
                // Re-check in case the watcher missed an event.
            }
        }
    }
}
