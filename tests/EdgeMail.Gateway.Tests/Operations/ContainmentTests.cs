using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging.Abstractions;
using MimeKit;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Operations;

/// <summary>
/// One alert that cannot be handled is parked with its reason — the device told <c>failed</c>, the operator told,
/// the parking counted — and every other alert goes on being mailed, before and after a restart.
/// </summary>
public sealed class ContainmentTests : IDisposable
{
    private readonly string _templates = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", "templates-" + Guid.NewGuid().ToString("N"));

    public ContainmentTests()
    {
        // A user-edited template that runs away (more steps than TemplateOptions.MaxSteps allows): composing any alert
        // routed to it throws. Only alerts with code POISON use it.
        Directory.CreateDirectory(_templates);
        File.WriteAllText(Path.Combine(_templates, "fragile.subject.liquid"), "{% for i in (1..200000) %}{{ i }}{% endfor %}");
    }

    public void Dispose() => Directory.Delete(_templates, recursive: true);

    private void WithFragileRoute(Dictionary<string, object> config)
    {
        config["TemplateDirectory"] = _templates;
        config["Routes"] = new object[]
        {
            new { Devices = "*", Codes = "POISON", MinSeverity = "info", To = new[] { "owners" }, Template = "fragile" },
            new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "owners" } },
        };
    }

    [Fact]
    public async Task AlertThatCannotBeComposed_IsParkedAndReported_WhileTheOthersAreMailed()
    {
        await using var gw = await TestGateway.StartAsync(WithFragileRoute);
        gw.Logs.Expect(e => e.Message.Contains("Parked alert p-1 from dev-1", StringComparison.Ordinal));
        long parkedCount = 0;
        using var listener = CountParked(gw, n => Interlocked.Add(ref parkedCount, n));
        using var client = await gw.ConnectAsync("dev-1");
        var receipts = await ReceiptInbox.SubscribeAsync(client, "dev-1");

        await PublishAsync(client, "dev-1", Alerts.Json("n-1"));
        await PublishAsync(client, "dev-1", Alerts.Json("p-1", code: "POISON"));
        await PublishAsync(client, "dev-1", Alerts.Json("n-2"));

        var failed = await receipts.WaitForAsync("p-1", "failed");
        Assert.Contains("routing or composing failed: InvalidOperationException", failed.GetProperty("detail").GetString(), StringComparison.Ordinal);
        var parked = Assert.Single(await gw.Spool.ParkedAsync(10, default));
        Assert.Equal((ParkedKinds.Alert, "dev-1", "p-1"), (parked.Kind, parked.Device, parked.Reference));
        Assert.Contains("InvalidOperationException", parked.Reason, StringComparison.Ordinal);
        Assert.Equal(("parked", parked.Reason), await gw.Spool.GetAlertAsync("dev-1", "p-1", default));
        Assert.Equal(1, Interlocked.Read(ref parkedCount));

        // The others are mailed, and so is the notice to the operator.
        var files = await gw.MailAsync(3);
        var mails = files.Select(f => MimeMessage.Load(f)).ToList();
        Assert.Equal(2, mails.Count(m => m.To.Mailboxes.Any(a => a.Address == "alice@example.com")));
        var notice = Assert.Single(mails, m => m.To.Mailboxes.Any(a => a.Address == "ops@example.com"));
        Assert.Contains("p-1", notice.Subject, StringComparison.Ordinal);
        Assert.Contains("InvalidOperationException", notice.TextBody, StringComparison.Ordinal);

        // Still serving.
        await PublishAsync(client, "dev-1", Alerts.Json("n-3"));
        await gw.MailAsync(4);
        Assert.False(gw.Host.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping.IsCancellationRequested);
    }

    [Fact]
    public async Task PoisonRowsAlreadyInTheSpool_AtStart_AreContainedAndNewAlertsAreMailed()
    {
        // The spool of an older gateway that acknowledged an alert it could not mail (age_ms of about 3,000 years,
        // which no DateTimeOffset can hold) and one using a template that runs away: both stored as new.
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dataDir);
        await using (var spool = SqliteSpool.Open(Path.Combine(dataDir, "spool.db"), fsync: true, maxBatch: 16, NullLogger.Instance))
        {
            string ancient = Alerts.Json("old-1").Replace("\"raised\":\"2026-11-28T09:58:12Z\"", "\"age_ms\":100000000000000", StringComparison.Ordinal);
            Assert.Contains("age_ms", ancient, StringComparison.Ordinal);
            foreach (var (id, payload) in new[] { ("old-1", ancient), ("old-2", Alerts.Json("old-2", code: "POISON")) })
            {
                await spool.AcceptAlertAsync(new IncomingAlert("dev-1", id, DateTimeOffset.UtcNow, null, Encoding.UTF8.GetBytes(payload), null, "X"), default);
            }
        }

        for (int restart = 0; restart < 2; restart++)
        {
            var gw = await TestGateway.StartAsync(WithFragileRoute, null, dataDir: dataDir);
            gw.Logs.Expect(e => e.Message.StartsWith("Parked alert old-", StringComparison.Ordinal));
            using var client = await gw.ConnectAsync("dev-1");
            await PublishAsync(client, "dev-1", Alerts.Json($"fresh-{restart}"));
            await gw.UntilAsync(async () => (await gw.Spool.CountsAsync(default)).Alerts.GetValueOrDefault("new") == 0, "every alert routed or parked");

            Assert.Equal("parked", (await gw.Spool.GetAlertAsync("dev-1", "old-1", default))?.Status);
            Assert.Equal("parked", (await gw.Spool.GetAlertAsync("dev-1", "old-2", default))?.Status);
            var mail = await gw.MailAsync(restart + 2); // the fresh alert of each start, and one operator notice (first start only)
            Assert.Contains(mail, f => MimeMessage.Load(f).Headers["X-EdgeMail-Alert"] == $"fresh-{restart}");
            await client.DisconnectAsync();
            await gw.StopAsync();
        }

        string[] files = Directory.GetFiles(Path.Combine(dataDir, "mailbox", "new"));
        Assert.Single(files, f => MimeMessage.Load(f).To.Mailboxes.Any(a => a.Address == "ops@example.com")); // parked once, told once
        Directory.Delete(dataDir, recursive: true);
    }

    [Fact]
    public async Task ReleasedAlert_IsRoutedAgain()
    {
        await using var gw = await TestGateway.StartAsync(WithFragileRoute);
        gw.Logs.Expect(e => e.Message.StartsWith("Parked alert p-9", StringComparison.Ordinal));
        using var client = await gw.ConnectAsync("dev-1");
        await PublishAsync(client, "dev-1", Alerts.Json("p-9", code: "POISON"));
        await gw.UntilAsync(async () => (await gw.Spool.GetAlertAsync("dev-1", "p-9", default))?.Status == "parked", "p-9 parked");
        var item = Assert.Single(await gw.Spool.ParkedAsync(10, default));

        Assert.True(await gw.Spool.ReleaseAsync(item.Kind, item.RowId, default));

        // Still the same runaway template: routed again, parked again, with a fresh reason.
        await gw.UntilAsync(async () => (await gw.Spool.GetAlertAsync("dev-1", "p-9", default))?.Status == "parked", "p-9 parked again");
        Assert.True((await gw.Spool.CancelAsync(item.Kind, item.RowId, "template fixed later", 100, default)).Cancelled);
        Assert.Equal("cancelled", (await gw.Spool.GetAlertAsync("dev-1", "p-9", default))?.Status);
        Assert.Empty(await gw.Spool.ParkedAsync(10, default));
        // Only a parked item can be released. (Asked right after the first release this raced the router, which may
        // already have parked it again; CI caught it.)
        Assert.False(await gw.Spool.ReleaseAsync(item.Kind, item.RowId, default));
        Assert.Equal("cancelled", (await gw.Spool.GetAlertAsync("dev-1", "p-9", default))?.Status);
    }

    [Fact]
    public async Task CancellingAParkedAlert_GivesItsDeviceAFailedReceiptNamingTheCancel()
    {
        await using var gw = await TestGateway.StartAsync(WithFragileRoute);
        gw.Logs.Expect(e => e.Message.StartsWith("Parked alert p-5 from dev-1", StringComparison.Ordinal));
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");
        var receipts = await ReceiptInbox.SubscribeAsync(client, "dev-1");
        await PublishAsync(client, "dev-1", Alerts.Json("p-5", code: "POISON"));
        await receipts.WaitForAsync("p-5", "failed"); // parked: ...
        await gw.UntilAsync(async () => (await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Count == 0, "the parked receipt taken by the device");
        var item = Assert.Single(await gw.Spool.ParkedAsync(10, default));

        var response = await api.PostAsJsonAsync($"/api/v1/alerts/{item.RowId}/cancel", new { reason = "template retired" });

        Assert.Equal(HttpStatusCode.NoContent, response.StatusCode);
        await receipts.WaitForAsync("p-5", "failed", "cancelled by the operator: template retired");
        Assert.Equal(("cancelled", "template retired"), await gw.Spool.GetAlertAsync("dev-1", "p-5", default));
    }

    [Fact]
    public async Task CancellingAParkedAlert_WhoseParkedReceiptTheDeviceHasNotTakenYet_StillGivesItTheCancel()
    {
        const string Cancelled = "cancelled by the operator: template retired";
        await using var gw = await TestGateway.StartAsync(WithFragileRoute);
        gw.Logs.Expect(e => e.Message.StartsWith("Parked alert p-7 from dev-1", StringComparison.Ordinal));
        var removed = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        gw.Host.Services.GetRequiredService<ReceiptPublisher>().Removed += n => removed.TrySetResult(n);
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");

        // The device takes its 'failed' receipts only when the test says so: the parked one is still on its way
        // (unacknowledged, as in a session the device has not come back to) when the operator cancels.
        var untaken = new ConcurrentQueue<MqttApplicationMessageReceivedEventArgs>();
        client.ApplicationMessageReceivedAsync += e =>
        {
            if (e.ApplicationMessage.ConvertPayloadToString().Contains("\"failed\"", StringComparison.Ordinal))
            {
                e.AutoAcknowledge = false;
                untaken.Enqueue(e);
            }

            return Task.CompletedTask;
        };
        var receipts = await ReceiptInbox.SubscribeAsync(client, "dev-1");
        await PublishAsync(client, "dev-1", Alerts.Json("p-7", code: "POISON"));
        var parkedReceipt = await receipts.WaitForAsync("p-7", "failed");
        Assert.StartsWith("parked: ", parkedReceipt.GetProperty("detail").GetString(), StringComparison.Ordinal);
        var item = Assert.Single(await gw.Spool.ParkedAsync(10, default));

        Assert.Equal(HttpStatusCode.NoContent, (await api.PostAsJsonAsync($"/api/v1/alerts/{item.RowId}/cancel", new { reason = "template retired" })).StatusCode);
        Assert.True(untaken.TryDequeue(out var parkedCopy));
        await parkedCopy.AcknowledgeAsync(default);

        // Taking the older copy leaves the cancel's receipt, which replaced it in the spool, for the device to learn.
        Assert.Equal(0, await Await.Within(removed.Task, "the parked receipt's PUBACK handled"));
        Assert.Equal(Cancelled, Assert.Single(await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Receipt.Detail);
        await receipts.WaitForAsync("p-7", "failed", Cancelled);
        Assert.True(untaken.TryDequeue(out var cancelCopy));
        await cancelCopy.AcknowledgeAsync(default);
        await gw.UntilAsync(async () => (await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Count == 0, "the cancel's receipt removed after its PUBACK");
        Assert.Equal(2, receipts.Count("p-7", "failed"));
    }

    [Fact]
    public async Task CancelledParkedAlert_DeviceAwayAcrossAGatewayRestart_GetsItsFailedReceiptWhenItSubscribesAgain()
    {
        const string Cancelled = "cancelled by the operator: template retired";
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        var first = await TestGateway.StartAsync(WithFragileRoute, null, 3, dataDir);
        first.Logs.Expect(e => e.Message.StartsWith("Parked alert p-6 from dev-1", StringComparison.Ordinal));
        using var device = new MqttClientFactory().CreateMqttClient();
        await device.ConnectAsync(Receipts.KeptReceiptTests.Persistent(first, "dev-1"));
        var inbox = await ReceiptInbox.SubscribeAsync(device, "dev-1");
        await PublishAsync(device, "dev-1", Alerts.Json("p-6", code: "POISON"));
        await inbox.WaitForAsync("p-6", "failed"); // parked: ...
        await first.UntilAsync(async () => (await first.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Count == 0, "the parked receipt taken by the device");
        await device.DisconnectAsync();

        // The device is away (its session waits in the broker's memory) when the operator cancels: the receipt is kept
        // with the cancel, and the restart below loses the session it was queued in.
        var item = Assert.Single(await first.Spool.ParkedAsync(10, default));
        using (var api = await first.ApiAsync())
        {
            Assert.Equal(HttpStatusCode.NoContent, (await api.PostAsJsonAsync($"/api/v1/alerts/{item.RowId}/cancel", new { reason = "template retired" })).StatusCode);
        }

        Assert.Equal(Cancelled, Assert.Single(await first.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Receipt.Detail);
        await first.StopAsync();

        await using var second = await TestGateway.StartAsync(WithFragileRoute, null, 3, dataDir);
        await device.ConnectAsync(Receipts.KeptReceiptTests.Persistent(second, "dev-1"));
        await device.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);

        await inbox.WaitForAsync("p-6", "failed", Cancelled);
        await second.UntilAsync(async () => (await second.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default)).Count == 0, "the receipt removed after the device's PUBACK");
        await device.DisconnectAsync();
    }

    private static MeterListener CountParked(TestGateway gw, Action<long> add)
    {
        var instrument = gw.Host.Services.GetRequiredService<GatewayMetrics>().Parked;
        var listener = new MeterListener();
        listener.InstrumentPublished = (i, l) =>
        {
            if (ReferenceEquals(i, instrument))
            {
                l.EnableMeasurementEvents(i);
            }
        };
        listener.SetMeasurementEventCallback<long>((_, value, _, _) => add(value));
        listener.Start();
        return listener;
    }

    internal static async Task PublishAsync(IMqttClient client, string device, string json)
    {
        var ack = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic($"edgemail/v1/{device}/alert")
            .WithPayload(json).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess, ack.ReasonString);
    }
}
