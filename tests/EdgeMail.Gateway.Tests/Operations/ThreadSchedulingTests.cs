using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Tests.EndToEnd;
using EdgeMail.Testing;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Gateway.Tests.Operations;

/// <summary>
/// The gateway process runs every thread under SCHED_BATCH — the runtime's own, the thread pool's, the spool's, the
/// ones started while it serves — unless told to keep the policy it was started with.
/// </summary>
public sealed class ThreadSchedulingTests(ITestOutputHelper output) : IDisposable
{
    private const int SchedOther = 0;
    private const int SchedBatch = 3;
    private readonly string _dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));

    [Fact]
    public async Task Gateway_RunsEveryThreadUnderSchedBatch_ThoseStartedWhileItServesToo()
    {
        int port = Loopback.FreePort();
        string config = TestGateway.WriteConfig(_dataDir, 2, c => c["Mqtt"] = new { Port = port });
        using var gateway = await GatewayProcess.StartAsync(config, output);

        // Work for the thread pool and the spool, so that threads started while serving are among those looked at.
        using (var client = new MqttClientFactory().CreateMqttClient())
        {
            await client.ConnectAsync(new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", port).WithClientId("dev-1")
                .WithCredentials("dev-1", TestGateway.Secret).WithTimeout(TimeSpan.FromSeconds(10)).Build());
            var result = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
                .WithPayload(Alerts.Json("sched-1")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
            Assert.True(result.IsSuccess, result.ReasonString);
        }

        var policies = Policies(gateway.Id);
        Assert.True(policies.Count >= 10, $"only {policies.Count} threads");
        Assert.All(policies, p => Assert.True(p.Value == SchedBatch, $"thread {p.Key} ({Name(gateway.Id, p.Key)}) has policy {p.Value}"));
    }

    [Fact]
    public async Task Gateway_WithSchedulingInherit_KeepsThePolicyItWasStartedWith()
    {
        Assert.Equal(SchedOther, Policies(Environment.ProcessId)[Environment.ProcessId]); // what the gateway inherits
        int port = Loopback.FreePort();
        string config = TestGateway.WriteConfig(_dataDir, 2, c => c["Mqtt"] = new { Port = port });
        using var gateway = await GatewayProcess.StartAsync(config, output, new Dictionary<string, string> { [ThreadScheduling.Variable] = "inherit" });

        var policies = Policies(gateway.Id);
        Assert.All(policies, p => Assert.True(p.Value == SchedOther, $"thread {p.Key} ({Name(gateway.Id, p.Key)}) has policy {p.Value}"));
    }

    /// <summary>The scheduling policy of each thread of a process (Linux: <c>/proc/PID/task/TID/stat</c>, field 41).</summary>
    /// <param name="pid">Process id.</param>
    /// <returns>Thread id and policy (0 the default, 3 <c>SCHED_BATCH</c>).</returns>
    private static Dictionary<int, int> Policies(int pid)
    {
        var policies = new Dictionary<int, int>();
        foreach (string dir in Directory.EnumerateDirectories($"/proc/{pid}/task"))
        {
            try
            {
                // The name in parentheses may hold spaces: count the fields after its closing parenthesis.
                string stat = File.ReadAllText(Path.Combine(dir, "stat"));
                string[] after = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                policies[int.Parse(Path.GetFileName(dir), System.Globalization.CultureInfo.InvariantCulture)] =
                    int.Parse(after[41 - 3], System.Globalization.CultureInfo.InvariantCulture);
            }
            catch (IOException)
            {
                // The thread ended meanwhile.
            }
        }

        return policies;
    }

    private static string Name(int pid, int tid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/task/{tid}/comm").Trim();
        }
        catch (IOException)
        {
            return "ended";
        }
    }

    public void Dispose()
    {
        if (Directory.Exists(_dataDir))
        {
            Directory.Delete(_dataDir, recursive: true);
        }
    }
}
