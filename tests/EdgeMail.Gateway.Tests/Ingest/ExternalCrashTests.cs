using System.Globalization;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.EndToEnd;
using EdgeMail.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using MQTTnet;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Gateway.Tests.Ingest;

/// <summary>The gateway as a child process in external mode, killed with SIGKILL while alerts stream in through mosquitto.</summary>
public sealed class ExternalCrashTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
    private readonly List<GatewayProcess> _started = [];

    [PeerFact("mosquitto:mosquitto")]
    public async Task External_GatewayKilledMidStream_EveryAlertTheBrokerTookIsMailedExactlyOnce()
    {
        const int PerDevice = 200;
        string[] devices = ["dev-1", "dev-2", "dev-3"];
        await using var broker = await ExternalMosquitto.StartAsync(devices);
        string config = ExternalGateway.WriteConfig(_dataDir, broker.Port);

        var first = await StartGatewayAsync(config);
        var publishers = devices.Select(d => PublishAsync(broker.Port, d, PerDevice)).ToArray();
        await ExternalGateway.MailAsync(_dataDir, 30, TimeSpan.FromSeconds(60)); // mid-stream: some stored, more in flight
        await first.KillAsync(); // SIGKILL: no shutdown code, no PUBACK for what was not committed
        int storedBeforeKill = Directory.GetFiles(Path.Combine(_dataDir, "mailbox", "new"), "*.eml").Length;
        await Task.WhenAll(publishers); // mosquitto took every alert (PUBACK to the device) and queues for the gateway

        var second = await StartGatewayAsync(config);
        await ExternalGateway.MailAsync(_dataDir, devices.Length * PerDevice, TimeSpan.FromSeconds(90));
        await second.KillAsync();

        output.WriteLine($"{storedBeforeKill} mails before SIGKILL, {devices.Length * PerDevice} after the restart");
        await using var spool = SqliteSpool.Open(Path.Combine(_dataDir, "spool.db"), true, 64, NullLogger.Instance);
        var counts = await spool.CountsAsync(default);
        Assert.Equal(devices.Length * PerDevice, counts.Alerts.Values.Sum());
        Assert.Equal(devices.Length * PerDevice, counts.Messages.Values.Sum()); // one mail per alert: redeliveries de-duplicated
        foreach (string d in devices)
        {
            for (int i = 0; i < PerDevice; i++)
            {
                Assert.NotNull(await spool.GetAlertAsync(d, "s-" + i.ToString(CultureInfo.InvariantCulture), default));
            }
        }
    }

    private static async Task PublishAsync(int port, string device, int count)
    {
        using var client = await ExternalGateway.DeviceAsync(port, device);
        for (int i = 0; i < count; i++)
        {
            var ack = await client.PublishAsync(ExternalGateway.Alert(device, "s-" + i.ToString(CultureInfo.InvariantCulture)));
            Assert.True(ack.IsSuccess, ack.ReasonCode.ToString());
        }

        await client.DisconnectAsync();
    }

    private async Task<GatewayProcess> StartGatewayAsync(string config)
    {
        var process = await GatewayProcess.StartAsync(config, output, "EdgeMail.Gateway.Ingest.ExternalBrokerClient",
            "Connected to the external MQTT broker", "connect to mosquitto");
        _started.Add(process);
        return process;
    }

    public void Dispose()
    {
        foreach (var process in _started)
        {
            process.Dispose(); // only the gateways this test started, by their process objects
        }

        try
        {
            Directory.Delete(_dataDir, true);
        }
        catch (IOException)
        {
        }
    }
}
