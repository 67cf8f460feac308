using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.Operations;
using EdgeMail.Gateway.Web.Api;
using EdgeMail.Testing.Smtp;
using Xunit;

namespace EdgeMail.Gateway.Tests.Ingest;

/// <summary>
/// The operator retries an alert the gateway kept as rejected because handling it failed (<see cref="IngestFault"/>),
/// once the fault is gone: through the API, in a real gateway with its embedded broker, relaying to an SMTP sink. Only
/// such a rejection is retried; a malformed payload, a payload cut when kept and an alert retried already are refused.
/// </summary>
public sealed class RejectedRetryTests
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    private static Action<Dictionary<string, object>> Relay(int port) =>
        c => c["Relay"] = new { Mode = "Smarthost", Host = "127.0.0.1", Port = port, Security = "None", Timeout = "00:00:05" };

    private static async Task<long> RowAsync(TestGateway gw, string device, string alertId) =>
        (await gw.Spool.QueryAlertsAsync(new AlertQuery(device), default)).Single(a => a.AlertId == alertId).RowId;

    private static async Task<string> ErrorAsync(HttpResponseMessage response) => (await response.Content.ReadFromJsonAsync<ApiError>(Json))!.Error;

    [Fact]
    public async Task Retry_OfAnAlertWhoseHandlingFailed_MailsItOnceToItsRecipient_AndTheDeviceGetsAccepted_ASecondRetryIsRefused()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        await using var gw = await TestGateway.StartAsync(Relay(sink.Port));
        gw.Logs.Expect(e => e.Message.StartsWith("Handling alert poison-1 from dev-1 failed", StringComparison.Ordinal));
        using var api = await gw.ApiAsync();
        var fault = IngestFault.Arm(gw.Host.Services, "dev-1");
        using var client = await gw.ConnectAsync("dev-1");
        var receipts = await ReceiptInbox.SubscribeAsync(client, "dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("poison-1"));
        await receipts.WaitForAsync("poison-1", "rejected");
        fault.Disarm(); // the fault is fixed

        long row = await RowAsync(gw, "dev-1", "poison-1");
        var retry = await api.PostAsync($"/api/v1/alerts/{row}/retry", null);

        Assert.Equal(HttpStatusCode.OK, retry.StatusCode);
        Assert.Equal("poison-1", (await retry.Content.ReadFromJsonAsync<RetriedAlert>(Json))!.AlertId);
        Assert.Equal("retried by the operator", (await receipts.WaitForAsync("poison-1", "accepted")).GetProperty("detail").GetString());
        var mail = await sink.NextAsync();
        Assert.Equal(["alice@example.com"], mail.To);
        Assert.Equal("poison-1", mail.Message.Headers["X-EdgeMail-Alert"]);
        await receipts.WaitForAsync("poison-1", "relayed");
        var alert = (await gw.Spool.QueryAlertsAsync(new AlertQuery("dev-1"), default)).Single(a => a.RowId == row);
        Assert.Equal((AlertStatus.Routed, null, "TEMP_HIGH", "critical"), (alert.Status, alert.Reason, alert.Code, alert.Severity));

        var again = await api.PostAsync($"/api/v1/alerts/{row}/retry", null);
        Assert.Equal(HttpStatusCode.Conflict, again.StatusCode);
        Assert.Equal($"alert {row} is routed, not rejected: only a rejected alert can be retried", await ErrorAsync(again));
        Assert.Single(sink.Received);
        Assert.Equal(1, receipts.Count("poison-1", "accepted"));
    }

    [Fact]
    public async Task Retry_OfAMalformedPayload_IsRefused409_AndItStaysRejected()
    {
        await using var gw = await TestGateway.StartAsync();
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("bad-1", code: "lower case"));
        long row = await RowAsync(gw, "dev-1", "bad-1");

        var retry = await api.PostAsync($"/api/v1/alerts/{row}/retry", null);

        Assert.Equal(HttpStatusCode.Conflict, retry.StatusCode);
        Assert.Equal($"alert {row} was rejected for what was sent (code must match [A-Z0-9_.-]{{1,64}}), not because handling it failed: a retry would only reject it again. "
            + "Only an alert rejected with 'handling failed: ...' can be retried; this one needs the device to send a corrected alert", await ErrorAsync(retry));
        Assert.Equal((AlertStatus.Rejected, "code must match [A-Z0-9_.-]{1,64}"), (await gw.Spool.GetAlertAsync("dev-1", "bad-1", default))!.Value);
    }

    [Fact]
    public async Task Retry_OfAPayloadStillInvalid_IsAnswered422_AndKeepsTheNewReason_SoTheNextRetryIsRefused()
    {
        await using var gw = await TestGateway.StartAsync();
        gw.Logs.Expect(e => e.Message.StartsWith("Handling alert half-1 from dev-1 failed", StringComparison.Ordinal));
        using var api = await gw.ApiAsync();
        var fault = IngestFault.Arm(gw.Host.Services, "dev-1");
        using var client = await gw.ConnectAsync("dev-1");

        // Malformed as well, but handling failed before the payload was looked at.
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("half-1", sev: "loud"));
        fault.Disarm();
        long row = await RowAsync(gw, "dev-1", "half-1");
        Assert.Equal((AlertStatus.Rejected, IngestFault.Reason), (await gw.Spool.GetAlertAsync("dev-1", "half-1", default))!.Value);

        var retry = await api.PostAsync($"/api/v1/alerts/{row}/retry", null);

        Assert.Equal(HttpStatusCode.UnprocessableEntity, retry.StatusCode);
        Assert.Equal($"alert {row} is still rejected: sev must be critical, warning or info", await ErrorAsync(retry));
        Assert.Equal((AlertStatus.Rejected, "sev must be critical, warning or info"), (await gw.Spool.GetAlertAsync("dev-1", "half-1", default))!.Value);
        Assert.Equal(HttpStatusCode.Conflict, (await api.PostAsync($"/api/v1/alerts/{row}/retry", null)).StatusCode);
    }

    [Fact]
    public async Task Retry_OfAPayloadCutWhenKept_IsRefused409()
    {
        await using var gw = await TestGateway.StartAsync();
        gw.Logs.Expect(e => e.Message.StartsWith("Handling alert big-1 from dev-1 failed", StringComparison.Ordinal));
        using var api = await gw.ApiAsync();
        var fault = IngestFault.Arm(gw.Host.Services, "dev-1");
        using var client = await gw.ConnectAsync("dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("big-1", text: new string('x', 5000)));
        fault.Disarm();
        long row = await RowAsync(gw, "dev-1", "big-1");
        var before = (await gw.Spool.GetAlertAsync("dev-1", "big-1", default))!.Value;
        Assert.EndsWith("only the first 4096 are kept)", before.Reason, StringComparison.Ordinal);

        var retry = await api.PostAsync($"/api/v1/alerts/{row}/retry", null);

        Assert.Equal(HttpStatusCode.Conflict, retry.StatusCode);
        Assert.StartsWith($"alert {row} cannot be retried: only the first 4096 bytes of its payload were kept", await ErrorAsync(retry), StringComparison.Ordinal);
        Assert.Equal(before, (await gw.Spool.GetAlertAsync("dev-1", "big-1", default))!.Value);
    }

    [Fact]
    public async Task Retry_OfAnAlertKeptUnderItsDigest_MailsItUnderThePayloadsOwnId()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        await using var gw = await TestGateway.StartAsync(Relay(sink.Port));
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");
        var receipts = await ReceiptInbox.SubscribeAsync(client, "dev-1");
        string digest = await KeptUnderDigestAsync(gw, "own-1");
        long row = await RowAsync(gw, "dev-1", digest);

        var retry = await api.PostAsync($"/api/v1/alerts/{row}/retry", null);

        Assert.Equal(HttpStatusCode.OK, retry.StatusCode);
        Assert.Equal("own-1", (await retry.Content.ReadFromJsonAsync<RetriedAlert>(Json))!.AlertId);
        await receipts.WaitForAsync("own-1", "accepted");
        Assert.Equal("own-1", (await sink.NextAsync()).Message.Headers["X-EdgeMail-Alert"]);
        await receipts.WaitForAsync("own-1", "relayed");
        Assert.Null(await gw.Spool.GetAlertAsync("dev-1", digest, default));

        // The device sending it again now is a duplicate (answered at its PUBACK): nothing more to route or mail.
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("own-1"));
        Assert.Equal(row, Assert.Single(await gw.Spool.QueryAlertsAsync(new AlertQuery("dev-1"), default)).RowId);
        Assert.Single(sink.Received);
    }

    [Fact]
    public async Task Retry_WhoseIdAnotherAlertOfTheDeviceHas_IsRefused409_AndItStaysRejected_SoTheAlertIsMailedOnce()
    {
        await using var gw = await TestGateway.StartAsync();
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");
        string digest = await KeptUnderDigestAsync(gw, "twice-1");
        long row = await RowAsync(gw, "dev-1", digest);

        // The device sent the alert again after the fault was fixed, and that copy was mailed.
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("twice-1"));
        await gw.MailAsync(1);
        long holder = await RowAsync(gw, "dev-1", "twice-1");

        var retry = await api.PostAsync($"/api/v1/alerts/{row}/retry", null);

        Assert.Equal(HttpStatusCode.Conflict, retry.StatusCode);
        Assert.Equal($"alert {row} cannot be retried: its payload's id 'twice-1' is that of dev-1's alert {holder} (the device sent it again), "
            + "and routing both would mail it twice; it stays rejected", await ErrorAsync(retry));
        Assert.Equal(AlertStatus.Rejected, (await gw.Spool.GetAlertAsync("dev-1", digest, default))!.Value.Status);
        Assert.Single(Directory.GetFiles(gw.MailboxNew, "*.eml"));
    }

    [Fact]
    public async Task Retry_WithAReadKeyOrNoCredential_IsRefused_AndChangesNothing()
    {
        await using var gw = await TestGateway.StartAsync();
        string digest = await KeptUnderDigestAsync(gw, "scoped-1");
        long row = await RowAsync(gw, "dev-1", digest);
        using var reader = await gw.ApiAsync(ApiKeyScope.Read);
        using var stranger = new HttpClient { BaseAddress = gw.ConsoleAddress };

        var refused = await reader.PostAsync($"/api/v1/alerts/{row}/retry", null);
        var anonymous = await stranger.PostAsync($"/api/v1/alerts/{row}/retry", null);

        Assert.Equal(HttpStatusCode.Forbidden, refused.StatusCode);
        Assert.Contains("needs an API key with scope 'admin'", (await refused.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("error").GetString(), StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);
        Assert.Equal(AlertStatus.Rejected, (await gw.Spool.GetAlertAsync("dev-1", digest, default))!.Value.Status);
    }

    // What KeepFailedAsync stores when reading the payload's id is what threw: the payload kept under its digest. Parsing
    // is pure and cannot be made to throw from outside, so the row is written as it would have been.
    private static async Task<string> KeptUnderDigestAsync(TestGateway gw, string alertId)
    {
        byte[] payload = Encoding.UTF8.GetBytes(Alerts.Json(alertId));
        string digest = AlertParser.RejectedId(payload);
        var kept = new IncomingAlert("dev-1", digest, TimeProvider.System.GetUtcNow(), "127.0.0.1:1", payload, "handling failed: InvalidOperationException: could not read it (test)", null);
        Assert.Equal(AcceptOutcome.Stored, await gw.Spool.AcceptAlertAsync(kept, default));
        return digest;
    }
}
