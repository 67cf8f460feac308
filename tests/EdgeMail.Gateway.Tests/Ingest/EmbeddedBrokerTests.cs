using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Ingest;

public sealed class EmbeddedBrokerTests : IAsyncLifetime
{
    private TestGateway _gw = null!;

    public async Task InitializeAsync() => _gw = await TestGateway.StartAsync();

    public async Task DisposeAsync() => await _gw.DisposeAsync();

    private static MqttApplicationMessage Message(string topic, string payload) =>
        new MqttApplicationMessageBuilder().WithTopic(topic).WithPayload(payload).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build();

    [Fact]
    public void Start_ListensOnLoopbackOnly_ByDefault()
    {
        Assert.True(System.Net.IPAddress.IsLoopback(_gw.Broker.Endpoint!.Address));
        Assert.NotEqual(0, _gw.Broker.Endpoint.Port);
    }

    [Theory]
    [InlineData("dev-1", "wrong", MqttClientConnectResultCode.BadUserNameOrPassword)]
    [InlineData("stranger", TestGateway.Secret, MqttClientConnectResultCode.BadUserNameOrPassword)]
    public async Task Connect_BadCredentials_IsRefused(string device, string secret, MqttClientConnectResultCode expected)
    {
        using var client = new MqttClientFactory().CreateMqttClient();

        var result = await client.ConnectAsync(_gw.ClientOptions(device, secret));

        Assert.Equal(expected, result.ResultCode);
    }

    [Fact]
    public async Task Connect_ClientIdDifferentFromUser_IsRefused()
    {
        using var client = new MqttClientFactory().CreateMqttClient();
        var options = new MqttClientOptionsBuilder().WithTcpServer(_gw.Broker.Endpoint!.Address.ToString(), _gw.Broker.Endpoint.Port)
            .WithClientId("dev-2").WithCredentials("dev-1", TestGateway.Secret).WithProtocolVersion(MqttProtocolVersion.V500).Build();

        var result = await client.ConnectAsync(options);

        Assert.Equal(MqttClientConnectResultCode.ClientIdentifierNotValid, result.ResultCode);
    }

    [Fact]
    public async Task Publish_ValidAlert_IsStoredBeforePubAckAndAcceptedReceiptFollows()
    {
        using var client = await _gw.ConnectAsync("dev-1");
        var receipt = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        client.ApplicationMessageReceivedAsync += e =>
        {
            receipt.TrySetResult(e.ApplicationMessage.ConvertPayloadToString());
            return Task.CompletedTask;
        };
        await client.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);

        var ack = await client.PublishAsync(Message("edgemail/v1/dev-1/alert", Alerts.Json("a-1")));
        var stored = await _gw.Spool.GetAlertAsync("dev-1", "a-1", default);

        Assert.True(ack.IsSuccess);
        Assert.NotNull(stored);
        using var json = JsonDocument.Parse(await Await.Within(receipt.Task, "the accepted receipt"));
        Assert.Equal("a-1", json.RootElement.GetProperty("id").GetString());
        Assert.Equal("accepted", json.RootElement.GetProperty("state").GetString());
    }

    [Fact]
    public async Task Publish_MalformedAlert_IsAcknowledgedStoredRejectedAndReported()
    {
        using var client = await _gw.ConnectAsync("dev-2");
        var receipt = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        client.ApplicationMessageReceivedAsync += e =>
        {
            receipt.TrySetResult(e.ApplicationMessage.ConvertPayloadToString());
            return Task.CompletedTask;
        };
        await client.SubscribeAsync("edgemail/v1/dev-2/receipt", MqttQualityOfServiceLevel.AtLeastOnce);

        var ack = await client.PublishAsync(Message("edgemail/v1/dev-2/alert", File.ReadAllText(Path.Combine(Alerts.ContractDir, "invalid", "bad-sev.json"))));

        Assert.True(ack.IsSuccess);
        Assert.Equal((AlertStatus.Rejected, "sev must be critical, warning or info"), (await _gw.Spool.GetAlertAsync("dev-2", "x-2", default))!.Value);
        using var json = JsonDocument.Parse(await Await.Within(receipt.Task, "the rejected receipt"));
        Assert.Equal("rejected", json.RootElement.GetProperty("state").GetString());
        Assert.Equal("sev must be critical, warning or info", json.RootElement.GetProperty("detail").GetString());
    }

    [Fact]
    public async Task Publish_UnderAnotherDevicesId_ClosesTheConnectionAndStoresNothing()
    {
        using var client = await _gw.ConnectAsync("dev-1");
        var disconnected = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        client.DisconnectedAsync += _ =>
        {
            disconnected.TrySetResult();
            return Task.CompletedTask;
        };

        try
        {
            await client.PublishAsync(Message("edgemail/v1/dev-2/alert", Alerts.Json("spoof-1")));
        }
        catch (MQTTnet.Exceptions.MqttCommunicationException)
        {
            // The broker dropped the connection instead of acknowledging.
        }

        await Await.Within(disconnected.Task.ContinueWith(_ => true), "the broker to drop the connection");
        Assert.Null(await _gw.Spool.GetAlertAsync("dev-2", "spoof-1", default));
    }

    [Fact]
    public async Task Subscribe_ToAnotherDevicesReceipts_IsRefused()
    {
        using var client = await _gw.ConnectAsync("dev-1", version: MqttProtocolVersion.V500);

        var result = await client.SubscribeAsync("edgemail/v1/dev-2/receipt");
        var wildcard = await client.SubscribeAsync("edgemail/#");

        Assert.Equal(MqttClientSubscribeResultCode.NotAuthorized, Assert.Single(result.Items).ResultCode);
        Assert.Equal(MqttClientSubscribeResultCode.NotAuthorized, Assert.Single(wildcard.Items).ResultCode);
    }

    [Fact]
    public async Task Publish_Status_IsRecordedPerDevice()
    {
        using var client = await _gw.ConnectAsync("dev-3");

        await client.PublishAsync(Message("edgemail/v1/dev-3/status", """{"fw":"1.2.0","boot":17,"queue":0}"""));
        var status = await _gw.Spool.GetStatusAsync("dev-3", default);

        Assert.NotNull(status);
        Assert.Contains("\"boot\":17", Encoding.UTF8.GetString(status.Value.Payload), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Publish_SameAlertTwice_MakesOneMail()
    {
        using var client = await _gw.ConnectAsync("dev-1");

        await client.PublishAsync(Message("edgemail/v1/dev-1/alert", Alerts.Json("twice-1")));
        await client.PublishAsync(Message("edgemail/v1/dev-1/alert", Alerts.Json("twice-1")));
        await client.PublishAsync(Message("edgemail/v1/dev-1/alert", Alerts.Json("after-1")));
        var files = await _gw.MailAsync(2);

        Assert.Equal(2, files.Length);
        Assert.Single(files, f => f.Contains("twice-1", StringComparison.Ordinal));
        var counts = await _gw.Spool.CountsAsync(default);
        Assert.Equal(2, counts.Messages.Values.Sum());
    }

    [PeerFact("mosquitto_pub:mosquitto-clients")]
    public async Task Publish_QoS1_FromDebianMosquittoPub_IsAcknowledgedAndMailed()
    {
        string pub = Peers.Require("mosquitto_pub", "mosquitto-clients");
        var psi = new ProcessStartInfo(pub)
        {
            ArgumentList = { "-h", _gw.Broker.Endpoint!.Address.ToString(), "-p", _gw.Broker.Endpoint.Port.ToString(CultureInfo.InvariantCulture),
                "-i", "dev-2", "-u", "dev-2", "-P", TestGateway.Secret, "-q", "1", "-t", "edgemail/v1/dev-2/alert",
                "-f", Path.Combine(Alerts.ContractDir, "valid", "unicode.json"), "-d" },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var process = Process.Start(psi)!;
        string output = await Await.Within(process.StandardOutput.ReadToEndAsync(), "mosquitto_pub to finish");
        await process.WaitForExitAsync();
        var files = await _gw.MailAsync(1);

        Assert.Equal(0, process.ExitCode);
        Assert.Contains("received PUBACK", output, StringComparison.Ordinal);
        var mail = MimeKit.MimeMessage.Load(Assert.Single(files));
        Assert.Contains("Rauchmelder Küche", mail.Subject, StringComparison.Ordinal);
    }
}
