using System.Globalization;
using EdgeMail.Gateway.Tests.Smtp;
using EdgeMail.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Hostile;

/// <summary>Debian's mosquitto_pub and mosquitto_sub against the embedded broker: wrong passwords, other devices' topics.</summary>
public sealed class MosquittoClientHostileTests : IAsyncLifetime
{
    private TestGateway _gw = null!;

    public async Task InitializeAsync() => _gw = await TestGateway.StartAsync();

    public async Task DisposeAsync() => await _gw.DisposeAsync();

    private string[] Common(string device, string secret) =>
        ["-h", "127.0.0.1", "-p", _gw.Broker.Endpoint!.Port.ToString(CultureInfo.InvariantCulture), "-i", device, "-u", device, "-P", secret];

    [PeerFact("mosquitto_pub:mosquitto-clients")]
    public async Task MosquittoPub_WrongPassword_IsRefusedAndStoresNothing()
    {
        var (code, output) = await PeerProcess.RunAsync("mosquitto_pub", "mosquitto-clients",
            [.. Common("dev-1", "wrong"), "-q", "1", "-t", "edgemail/v1/dev-1/alert", "-m", Alerts.Json("mp-wrong")]);

        Assert.NotEqual(0, code);
        Assert.Contains("not authorised", output.Replace("bad user name or password", "not authorised", StringComparison.Ordinal), StringComparison.OrdinalIgnoreCase);
        Assert.Null(await _gw.Spool.GetAlertAsync("dev-1", "mp-wrong", default));
    }

    [PeerFact("mosquitto_pub:mosquitto-clients")]
    public async Task MosquittoPub_AnotherDevicesTopic_IsDroppedAndStoresNothing()
    {
        var (code, output) = await PeerProcess.RunAsync("mosquitto_pub", "mosquitto-clients",
            [.. Common("dev-1", TestGateway.Secret), "-q", "1", "-t", "edgemail/v1/dev-2/alert", "-m", Alerts.Json("mp-other")]);

        Assert.Null(await _gw.Spool.GetAlertAsync("dev-2", "mp-other", default));
        Assert.Null(await _gw.Spool.GetAlertAsync("dev-1", "mp-other", default));
        _ = (code, output); // mosquitto_pub 2.0 may report the lost connection or not; what matters is that nothing was stored

        var (goodCode, goodOutput) = await PeerProcess.RunAsync("mosquitto_pub", "mosquitto-clients",
            [.. Common("dev-1", TestGateway.Secret), "-q", "1", "-t", "edgemail/v1/dev-1/alert", "-m", Alerts.Json("mp-good")]);
        Assert.True(goodCode == 0, goodOutput);
        Assert.NotNull(await _gw.Spool.GetAlertAsync("dev-1", "mp-good", default));
    }

    [PeerFact("mosquitto_pub:mosquitto-clients")]
    public async Task MosquittoPubMqtt5_AnotherDevicesTopic_IsRefusedNotAuthorizedAndStoresNothing()
    {
        var (_, output) = await PeerProcess.RunAsync("mosquitto_pub", "mosquitto-clients",
            [.. Common("dev-1", TestGateway.Secret), "-V", "mqttv5", "-q", "1", "-t", "edgemail/v1/dev-2/alert", "-m", Alerts.Json("mp5-other")]);

        Assert.Contains("not authorized", output, StringComparison.OrdinalIgnoreCase);
        Assert.Null(await _gw.Spool.GetAlertAsync("dev-2", "mp5-other", default));
        Assert.Null(await _gw.Spool.GetAlertAsync("dev-1", "mp5-other", default));
    }

    [PeerFact("mosquitto_sub:mosquitto-clients")]
    public async Task MosquittoSub_AnotherDevicesReceipts_IsDenied()
    {
        var (code, output) = await PeerProcess.RunAsync("mosquitto_sub", "mosquitto-clients",
            [.. Common("dev-1", TestGateway.Secret), "-V", "mqttv5", "-q", "1", "-t", "edgemail/v1/dev-2/receipt", "-C", "1"]);

        Assert.Contains("All subscription requests were denied", output, StringComparison.Ordinal); // and it exits without a message
        _ = code;
    }
}
