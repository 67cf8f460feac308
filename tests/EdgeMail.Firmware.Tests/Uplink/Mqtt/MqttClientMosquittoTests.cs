using System.Buffers;
using System.Diagnostics;
using EdgeMail.Simulation.Network;
using EdgeMail.Testing;
using MQTTnet;
using DeviceClient = EdgeMail.Firmware.Uplink.Mqtt.MqttClient;
using DeviceOptions = EdgeMail.Firmware.Uplink.Mqtt.MqttClientOptions;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Firmware.Tests.Uplink.Mqtt;

/// <summary>The same client against Debian's mosquitto, started on a free loopback port with a temporary config.</summary>
public sealed class MqttClientMosquittoTests
{
    private const string AlertTopic = "edgemail/v1/dev-1/alert";
    private const string ReceiptTopic = "edgemail/v1/dev-1/receipt";

    [PeerFact("mosquitto:mosquitto")]
    public async Task Client_AgainstMosquitto_StreamsAMaximumSizeAlertThatArrivesWhole()
    {
        int port = Loopback.FreePort();
        string dir = Directory.CreateTempSubdirectory("edgemail-mosquitto-").FullName;
        string config = Path.Combine(dir, "mosquitto.conf");
        await File.WriteAllTextAsync(config, $"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n");
        using Process broker = await StartMosquittoAsync(config);
        try
        {
            using IMqttClient gateway = new MqttClientFactory().CreateMqttClient();
            var received = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
            gateway.ApplicationMessageReceivedAsync += e =>
            {
                received.TrySetResult(e.ApplicationMessage.Payload.ToArray());
                return Task.CompletedTask;
            };
            await gateway.ConnectAsync(new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", port).WithClientId("gateway")
                .WithProtocolVersion(MQTTnet.Formatter.MqttProtocolVersion.V311).Build());
            await gateway.SubscribeAsync(AlertTopic, MqttQualityOfServiceLevel.AtLeastOnce);

            using var transport = new TcpTransport();
            var handler = new RecordingHandler();
            var client = new DeviceClient(transport, new StopwatchClock(), new DeviceOptions { ClientId = "dev-1", UserName = "dev-1", Password = "s3cret" }, handler);
            client.Connect("127.0.0.1", port);
            EdgeMail.Firmware.Alerts.OutgoingAlert alert = MqttStreamedPublishTests.LoadMaxAlert();
            var expected = new byte[EdgeMail.Firmware.Alerts.AlertJsonWriter.MaxLength];
            int length = alert.WriteTo(expected, 0);

            Assert.True(client.Publish(AlertTopic, alert, alert.Seq, retain: false, dup: false));
            Loopback.PollUntil(client, () => handler.Acknowledged.Count == 1, "mosquitto's PUBACK of the maximum-size alert");

            byte[] payload = await Await.Within(received.Task, "the maximum-size alert at a subscriber of mosquitto");
            Assert.Equal(expected.AsSpan(0, length).ToArray(), payload);
            client.Disconnect();
            await gateway.DisconnectAsync();
        }
        finally
        {
            broker.Kill();
            await broker.WaitForExitAsync();
            Directory.Delete(dir, recursive: true);
        }
    }

    private static async Task<Process> StartMosquittoAsync(string config)
    {
        var ready = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        var broker = new Process
        {
            StartInfo = new ProcessStartInfo(Peers.Require("mosquitto", "mosquitto"), ["-c", config])
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            },
        };
        DataReceivedEventHandler onLine = (_, e) =>
        {
            if (e.Data is not null && e.Data.Contains(" running", StringComparison.Ordinal))
            {
                ready.TrySetResult(true);
            }
        };
        broker.OutputDataReceived += onLine;
        broker.ErrorDataReceived += onLine;
        broker.Start();
        broker.BeginOutputReadLine();
        broker.BeginErrorReadLine();
        await Await.Within(ready.Task, "mosquitto to log that it is running");
        return broker;
    }

    [PeerFact("mosquitto:mosquitto")]
    public async Task Client_AgainstMosquitto_ConnectsPublishesResumesAndReceivesReceipt()
    {
        int port = Loopback.FreePort();
        string dir = Directory.CreateTempSubdirectory("edgemail-mosquitto-").FullName;
        string config = Path.Combine(dir, "mosquitto.conf");
        await File.WriteAllTextAsync(config, $"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n");
        var ready = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var broker = new Process
        {
            StartInfo = new ProcessStartInfo(Peers.Require("mosquitto", "mosquitto"), ["-c", config])
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            },
        };
        DataReceivedEventHandler onLine = (_, e) =>
        {
            if (e.Data is null)
            {
                return;
            }

            if (e.Data.Contains(" running", StringComparison.Ordinal))
            {
                ready.TrySetResult(true);
            }
        };
        broker.OutputDataReceived += onLine;
        broker.ErrorDataReceived += onLine;
        broker.Start();
        broker.BeginOutputReadLine();
        broker.BeginErrorReadLine();
        try
        {
            await Await.Within(ready.Task, "mosquitto to log that it is running (stderr is unbuffered; stdout to a pipe is not)");

            using var transport = new TcpTransport();
            var handler = new RecordingHandler();
            var options = new DeviceOptions { ClientId = "dev-1", UserName = "dev-1", Password = "s3cret", KeepAliveSeconds = 30 };
            var client = new DeviceClient(transport, new StopwatchClock(), options, handler);

            Assert.False(client.Connect("127.0.0.1", port).SessionPresent);
            Assert.Equal(1, client.Subscribe(ReceiptTopic, 1));
            byte[] alert = "{\"v\":1,\"id\":\"ab-1\",\"seq\":1}"u8.ToArray();
            Assert.True(client.Publish(AlertTopic, alert, 0, alert.Length, tag: 1, retain: false, dup: false));
            Loopback.PollUntil(client, () => handler.Acknowledged.Count == 1, "mosquitto's PUBACK");

            // The persistent session survives a clean disconnect: subscription kept, session present.
            client.Disconnect();
            Assert.True(client.Connect("127.0.0.1", port).SessionPresent);

            using IMqttClient gateway = new MqttClientFactory().CreateMqttClient();
            await gateway.ConnectAsync(new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", port).WithClientId("gateway")
                .WithProtocolVersion(MQTTnet.Formatter.MqttProtocolVersion.V311).Build());
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            await gateway.PublishAsync(new MqttApplicationMessageBuilder().WithTopic(ReceiptTopic)
                .WithPayload("{\"id\":\"ab-1\",\"state\":\"accepted\"}").WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build(), cts.Token);

            Loopback.PollUntil(client, () => handler.Messages.Count == 1, "the receipt from mosquitto");
            (string topic, byte[] body, int qos, _) = Assert.Single(handler.Messages);
            Assert.Equal(ReceiptTopic, topic);
            Assert.Equal(1, qos);
            Assert.Equal("{\"id\":\"ab-1\",\"state\":\"accepted\"}"u8.ToArray(), body);
            client.Disconnect();
            await gateway.DisconnectAsync();
        }
        finally
        {
            broker.Kill();
            await broker.WaitForExitAsync();
            Directory.Delete(dir, recursive: true);
        }
    }
}
