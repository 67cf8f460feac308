using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.Operations;
using Microsoft.Extensions.Logging.Abstractions;
using MimeKit;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Hostile;

/// <summary>
/// Everything hostile at once, end to end: every contract vector and every extreme vector published by an
/// authenticated device, then one normal alert — which must be mailed, with the service still running and no error
/// logged. The same for a spool that already holds every one of them as new (stored by an older, laxer gateway).
/// </summary>
public sealed class HostileEndToEndTests
{
    private static IEnumerable<HostileVector> ContractVectors() =>
        new[] { "valid", "invalid" }.SelectMany(kind => Directory.GetFiles(Path.Combine(Alerts.ContractDir, kind), "*.json")
            .Select(f =>
            {
                byte[] bytes = File.ReadAllBytes(f);
                string? id = kind == "valid" ? System.Text.Json.JsonDocument.Parse(bytes).RootElement.GetProperty("id").GetString() : null;
                return new HostileVector("contract " + kind + "/" + Path.GetFileName(f), bytes, kind == "valid", id);
            }));

    [Fact]
    public async Task EveryHostileVector_ThenANormalAlert_TheNormalAlertIsMailedAndNothingBreaks()
    {
        var vectors = ContractVectors().Concat(HostileVectors.Extreme).ToList();
        await using var gw = await TestGateway.StartAsync();
        using var client = await gw.ConnectAsync("dev-1");
        var receipts = await ReceiptInbox.SubscribeAsync(client, "dev-1");

        foreach (var v in vectors)
        {
            var ack = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
                .WithPayload(v.Payload).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
            Assert.True(ack.IsSuccess, $"{v}: no PUBACK ({ack.ReasonCode}); a malformed alert is still taken, kept as rejected");
            if (!v.Mailed && v.Id is { } id)
            {
                var receipt = await receipts.WaitForAsync(id, "rejected");
                Assert.False(string.IsNullOrWhiteSpace(receipt.GetProperty("detail").GetString()), $"{v}: a rejection without a reason");
            }
        }

        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("normal-after-all"));
        var mailed = vectors.Where(v => v.Mailed).Select(v => v.Id!).Append("normal-after-all").ToHashSet();
        var files = await gw.MailAsync(mailed.Count);
        var alertIds = files.Select(f => MimeMessage.Load(f).Headers["X-EdgeMail-Alert"]).ToList();

        Assert.Equal(mailed.Order(StringComparer.Ordinal), alertIds.Order(StringComparer.Ordinal));
        foreach (var v in vectors.Where(v => v.Id is not null))
        {
            var stored = await gw.Spool.GetAlertAsync("dev-1", v.Id!, default);
            Assert.True(stored?.Status == (v.Mailed ? "routed" : "rejected"), $"{v}: {stored}");
        }

        HostileKit.AssertNoMailForStrangers(gw);
        Assert.Empty(await gw.Spool.ParkedAsync(10, default)); // rejected at the door: nothing needed parking
    }

    [Fact]
    public async Task EveryHostileVectorAlreadySpooledAsNew_AtStart_IsMailedOrParked_AndANormalAlertIsMailed()
    {
        var vectors = ContractVectors().Concat(HostileVectors.Extreme).ToList();
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dataDir);
        await using (var spool = SqliteSpool.Open(Path.Combine(dataDir, "spool.db"), fsync: true, maxBatch: 64, NullLogger.Instance))
        {
            for (int i = 0; i < vectors.Count; i++)
            {
                // As a gateway that validated nothing would have stored them: every one new, keyed by whatever id it had.
                await spool.AcceptAlertAsync(new IncomingAlert("dev-1", vectors[i].Id ?? $"noid-{i}", DateTimeOffset.UtcNow, null, vectors[i].Payload, null, null), default);
            }
        }

        await using var gw = await TestGateway.StartAsync(null, null, dataDir: dataDir);
        gw.Logs.Expect(e => e.Message.StartsWith("Parked alert ", StringComparison.Ordinal));
        using var client = await gw.ConnectAsync("dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("normal-after-restart"));

        var mailed = vectors.Where(v => v.Mailed).Select(v => v.Id!).Append("normal-after-restart").ToHashSet();
        var files = await gw.MailAsync(mailed.Count + 1); // and one operator notice about the parked ones
        Assert.Equal(mailed.Order(StringComparer.Ordinal), files.Select(f => MimeMessage.Load(f).Headers["X-EdgeMail-Alert"]).OfType<string>().Order(StringComparer.Ordinal));
        var parked = await gw.Spool.ParkedAsync(1000, default);
        Assert.Equal(vectors.Count(v => !v.Mailed), parked.Count);
        Assert.All(parked, p => Assert.StartsWith("the alert no longer passes validation: ", p.Reason, StringComparison.Ordinal));
    }
}
