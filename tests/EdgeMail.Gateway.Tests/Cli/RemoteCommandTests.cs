using System.Globalization;
using System.Text.Json;
using EdgeMail.Gateway.Cli;
using EdgeMail.Gateway.Security;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Cli;

/// <summary>
/// The remote commands against a real running gateway: found through its configuration file and the key it wrote,
/// over HTTP on loopback or HTTPS with its own certificate pinned; each command's happy path and its main failure.
/// </summary>
public sealed class RemoteCommandTests
{
    [Fact]
    public async Task Devices_AddConnectDisableEnableRotate_WithoutARestart()
    {
        await using var gw = await TestGateway.StartAsync();
        string[] at = CliRun.At(gw);

        var list = await CliRun.RunAsync([.. at, "devices", "list"]);
        Assert.True(list.Code == ExitCodes.Ok, list.ToString());
        Assert.Contains("dev-1", list.Out, StringComparison.Ordinal);
        Assert.Contains("Device 3", list.Out, StringComparison.Ordinal);
        Assert.Contains("never seen", list.Out, StringComparison.Ordinal);

        var added = await CliRun.RunAsync([.. at, "devices", "add", "dev-9", "--name", "Freezer 9", "--site", "Hall 9", "--owner", "alice"]);
        Assert.True(added.Code == ExitCodes.Ok, added.ToString());
        string secret = added.Out.Split('\n', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)[^1];
        using (var device = await gw.ConnectAsync("dev-9", secret))
        {
            Assert.True(device.IsConnected);
        }

        var disabled = await CliRun.RunAsync([.. at, "devices", "disable", "dev-9"]);
        Assert.True(disabled.Code == ExitCodes.Ok, disabled.ToString());
        await Assert.ThrowsAnyAsync<Exception>(() => gw.ConnectAsync("dev-9", secret));
        Assert.True((await CliRun.RunAsync([.. at, "devices", "enable", "dev-9"])).Code == ExitCodes.Ok);

        var rotated = await CliRun.RunAsync([.. at, "devices", "rotate-secret", "dev-9", "--json"]);
        Assert.True(rotated.Code == ExitCodes.Ok, rotated.ToString());
        string newSecret = JsonDocument.Parse(rotated.Out).RootElement.GetProperty("secret").GetString()!;
        Assert.NotEqual(secret, newSecret);
        await Assert.ThrowsAnyAsync<Exception>(() => gw.ConnectAsync("dev-9", secret));
        using (var device = await gw.ConnectAsync("dev-9", newSecret))
        {
            Assert.True(device.IsConnected);
        }

        var json = await CliRun.RunAsync([.. at, "devices", "list", "--json"]);
        var ids = JsonDocument.Parse(json.Out).RootElement.EnumerateArray().Select(d => d.GetProperty("id").GetString()).ToList();
        Assert.Equal(["dev-1", "dev-2", "dev-3", "dev-9"], ids);

        var unknown = await CliRun.RunAsync([.. at, "devices", "disable", "nope"]);
        Assert.Equal(ExitCodes.Failed, unknown.Code);
        Assert.Contains("nope", unknown.Error, StringComparison.Ordinal);
        var duplicate = await CliRun.RunAsync([.. at, "devices", "add", "dev-1"]);
        Assert.Equal(ExitCodes.Failed, duplicate.Code);
        var longName = await CliRun.RunAsync([.. at, "devices", "add", "dev-10", "--name", new string('n', 201)]); // the console's rule
        Assert.Equal(ExitCodes.Failed, longName.Code);
        Assert.Contains("name: is 201 characters long, over the limit of 200", longName.Error, StringComparison.Ordinal);
        var twoLines = await CliRun.RunAsync([.. at, "devices", "add", "dev-10", "--site", "Hall 9\nBcc: x@evil.example"]);
        Assert.Equal(ExitCodes.Failed, twoLines.Code);
        Assert.Contains("site: contains a line break", twoLines.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AlertsAndQueue_ShowTheJourney_RetryAndCancelADeferredMail()
    {
        int closed = Loopback.FreePort(); // nothing listens: every attempt is deferred
        await using var gw = await TestGateway.StartAsync(c =>
            c["Relay"] = new { Mode = "Smarthost", Host = "127.0.0.1", Port = closed, Security = "None", Backoff = new[] { "01:00:00" }, Timeout = "00:00:05" });
        string[] at = CliRun.At(gw);
        using var device = await gw.ConnectAsync("dev-1");
        var ack = await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
            .WithPayload(Alerts.Json("cli-1")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess);
        await gw.UntilAsync(async () => (await gw.Spool.QueryMessagesAsync(new MessageQuery("deferred"), default)).Count == 1, "the alert's mail to be deferred");

        var alerts = await CliRun.RunAsync([.. at, "alerts", "list", "--device", "dev-1"]);
        Assert.True(alerts.Code == ExitCodes.Ok, alerts.ToString());
        Assert.Contains("cli-1", alerts.Out, StringComparison.Ordinal);
        long alert = (await gw.Spool.QueryAlertsAsync(new AlertQuery("dev-1"), default))[0].RowId;

        var journey = await CliRun.RunAsync([.. at, "alerts", "show", alert.ToString(CultureInfo.InvariantCulture)]);
        Assert.True(journey.Code == ExitCodes.Ok, journey.ToString());
        Assert.Contains("dev-1 alert cli-1, TEMP_HIGH (critical)", journey.Out, StringComparison.Ordinal);
        Assert.Contains("received", journey.Out, StringComparison.Ordinal);
        Assert.Contains("alice@example.com: pending", journey.Out, StringComparison.Ordinal);
        Assert.Contains("attempt 1", journey.Out, StringComparison.Ordinal); // the refused connection, with its reply
        Assert.Contains("deferred", journey.Out, StringComparison.Ordinal);

        var queue = await CliRun.RunAsync([.. at, "queue", "list"]);
        Assert.True(queue.Code == ExitCodes.Ok, queue.ToString());
        var mail = (await gw.Spool.QueryMessagesAsync(new MessageQuery("deferred"), default))[0];
        Assert.Contains(mail.RowId.ToString(CultureInfo.InvariantCulture), queue.Out, StringComparison.Ordinal);
        string id = mail.RowId.ToString(CultureInfo.InvariantCulture);

        var retried = await CliRun.RunAsync([.. at, "queue", "retry", id]);
        Assert.True(retried.Code == ExitCodes.Ok, retried.ToString());
        await gw.UntilAsync(async () => (await gw.Spool.MessageDetailAsync(mail.RowId, default))!.Attempts.Count >= 2, "the retry's attempt");

        var cancelled = await CliRun.RunAsync([.. at, "queue", "cancel", id, "--reason", "test over"]);
        Assert.True(cancelled.Code == ExitCodes.Ok, cancelled.ToString());
        var shown = await CliRun.RunAsync([.. at, "queue", "show", id, "--json"]);
        Assert.Equal("cancelled", JsonDocument.Parse(shown.Out).RootElement.GetProperty("summary").GetProperty("status").GetString());
        var again = await CliRun.RunAsync([.. at, "queue", "retry", id]);
        Assert.Equal(ExitCodes.Failed, again.Code);
        Assert.Contains("neither queued nor parked", again.Error, StringComparison.Ordinal);

        var test = await CliRun.RunAsync([.. at, "send-test", "--to", "ops@example.com"]);
        Assert.True(test.Code == ExitCodes.Ok, test.ToString());
        Assert.Contains("queued as mail", test.Out, StringComparison.Ordinal);
        Assert.Contains((await gw.Spool.QueryMessagesAsync(new MessageQuery(), default)).Select(m => m.Kind), k => k == "notice");
        Assert.Equal(ExitCodes.Failed, (await CliRun.RunAsync([.. at, "send-test", "--to", "not an address"])).Code);

        var missing = await CliRun.RunAsync([.. at, "alerts", "show", "999999"]);
        Assert.Equal(ExitCodes.Failed, missing.Code);
        Assert.Contains("no alert 999999", missing.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AlertsRetry_RoutesARejectedAlertWhoseHandlingFailed_AndRefusesAMalformedOneSayingWhy()
    {
        await using var gw = await TestGateway.StartAsync();
        gw.Logs.Expect(e => e.Message.StartsWith("Handling alert cli-poison from dev-1 failed", StringComparison.Ordinal));
        string[] at = CliRun.At(gw);
        var fault = Ingest.IngestFault.Arm(gw.Host.Services, "dev-1");
        using var device = await gw.ConnectAsync("dev-1");
        await Operations.ContainmentTests.PublishAsync(device, "dev-1", Alerts.Json("cli-poison"));
        fault.Disarm();
        await Operations.ContainmentTests.PublishAsync(device, "dev-1", Alerts.Json("cli-bad", code: "bad code"));
        var rows = (await gw.Spool.QueryAlertsAsync(new AlertQuery("dev-1"), default)).ToDictionary(a => a.AlertId, a => a.RowId.ToString(CultureInfo.InvariantCulture));

        var retried = await CliRun.RunAsync([.. at, "alerts", "retry", rows["cli-poison"]]);
        Assert.True(retried.Code == ExitCodes.Ok, retried.ToString());
        Assert.Contains($"Alert {rows["cli-poison"]} retried: new again as cli-poison", retried.Out, StringComparison.Ordinal);
        await gw.MailAsync(1);

        var refused = await CliRun.RunAsync([.. at, "alerts", "retry", rows["cli-bad"]]);
        Assert.Equal(ExitCodes.Failed, refused.Code);
        Assert.Contains("was rejected for what was sent", refused.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task GatewayDown_SaysWhatToCheck_AndExits3()
    {
        string dir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        string config = TestGateway.WriteConfig(dir);
        try
        {
            File.WriteAllText(Path.Combine(dir, "cli-api-key"), "emk_0.x\n");
            var down = await CliRun.RunAsync("--config", config, "--Console:Port=" + Loopback.FreePort().ToString(CultureInfo.InvariantCulture), "devices", "list");
            Assert.Equal(ExitCodes.Unreachable, down.Code);
            Assert.Contains("is the gateway running? systemctl status edgemail-gateway", down.Error, StringComparison.Ordinal);

            File.Delete(Path.Combine(dir, "cli-api-key"));
            var noKey = await CliRun.RunAsync("--config", config, "queue", "list");
            Assert.Equal(ExitCodes.Unreachable, noKey.Code);
            Assert.Contains("no API key at", noKey.Error, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task AWrongKey_IsRefused_AndExits3()
    {
        await using var gw = await TestGateway.StartAsync();
        string key = Path.Combine(gw.DataDir, "other-key");
        File.WriteAllText(key, "emk_000000000000.not-the-secret");
        var refused = await CliRun.RunAsync("devices", "list", "--url", gw.ConsoleAddress.ToString(), "--api-key-file", key);
        Assert.Equal(ExitCodes.Unreachable, refused.Code);
        Assert.Contains("refused the API key", refused.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AReadKey_Lists_ButAChangeIsRefusedWithTheScopeItNeeds_AndExits3()
    {
        await using var gw = await TestGateway.StartAsync();
        var (_, readKey) = await gw.Host.Services.GetRequiredService<EdgeMail.Gateway.Web.ConsoleAuth>().CreateApiKeyAsync("wall screen", ApiKeyScope.Read, default);
        string key = Path.Combine(gw.DataDir, "read-key");
        File.WriteAllText(key, readKey);

        Assert.Equal(0, (await CliRun.RunAsync("devices", "list", "--url", gw.ConsoleAddress.ToString(), "--api-key-file", key)).Code);
        var refused = await CliRun.RunAsync("devices", "disable", "dev-1", "--url", gw.ConsoleAddress.ToString(), "--api-key-file", key);
        Assert.Equal(ExitCodes.Unreachable, refused.Code);
        Assert.Contains("needs an API key with scope 'admin'", refused.Error, StringComparison.Ordinal);
        Assert.False(gw.Host.Services.GetRequiredService<EdgeMail.Gateway.Devices.DeviceRegistry>().Find("dev-1")!.Disabled);
    }

    [Fact]
    public async Task Https_TheGatewaysOwnCertificateIsPinned_AnotherIsRefused()
    {
        // Bound beyond loopback the console serves TLS with the gateway's self-signed certificate.
        await using var gw = await TestGateway.StartAsync(c => c["Console"] = new { Port = 0, BindAddress = "0.0.0.0" });
        string[] at = CliRun.At(gw);
        var list = await CliRun.RunAsync([.. at, "devices", "list"]);
        Assert.True(list.Code == ExitCodes.Ok, list.ToString());
        Assert.Contains("dev-2", list.Out, StringComparison.Ordinal);

        // Another gateway's certificate is not this one: refused, not waved through.
        string other = Path.Combine(gw.DataDir, "other");
        using (TlsCertificates.Load(string.Empty, string.Empty, other, "gw.test", TimeProvider.System, out _))
        {
        }

        var refused = await CliRun.RunAsync([.. at, "--DataDirectory=" + other, "devices", "list", "--api-key-file", Path.Combine(gw.DataDir, "cli-api-key")]);
        Assert.Equal(ExitCodes.Unreachable, refused.Code);
        Assert.Contains("TLS with the console", refused.Error, StringComparison.Ordinal);
    }
}
