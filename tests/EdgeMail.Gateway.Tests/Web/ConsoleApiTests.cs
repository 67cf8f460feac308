using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.Operations;
using EdgeMail.Gateway.Web.Api;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using MimeKit;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Web;

/// <summary>What the console's API shows and does, against a running gateway.</summary>
public sealed class ConsoleApiTests
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    [Fact]
    public async Task Devices_AddedDisabledRotated_WithoutARestart_AndWithoutDroppingOthers()
    {
        await using var gw = await TestGateway.StartAsync();
        using var api = await gw.ApiAsync();
        using var bystander = await gw.ConnectAsync("dev-2");

        var add = await api.PostAsJsonAsync("/api/v1/devices", new { id = "pump-7", name = "Pump 7", site = "Station B", owners = new[] { "alice" } });
        Assert.Equal(HttpStatusCode.Created, add.StatusCode);
        var created = (await add.Content.ReadFromJsonAsync<DeviceSecret>(Json))!;
        Assert.True(created.Secret.Length >= 32);
        Assert.Equal("console", created.Device.Source);

        // Connects at once with the secret shown, and its alert goes to its owner.
        using var pump = await gw.ConnectAsync("pump-7", created.Secret);
        await ContainmentTests.PublishAsync(pump, "pump-7", Alerts.Json("p7-1"));
        var mail = MimeMessage.Load(Assert.Single(await gw.MailAsync(1)));
        Assert.Equal("alice@example.com", mail.To.Mailboxes.Single().Address);
        Assert.Contains("Pump 7", mail.TextBody, StringComparison.Ordinal);

        // Disabled: its connection ends, it cannot come back; the bystander is untouched.
        var dropped = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        pump.DisconnectedAsync += _ =>
        {
            dropped.TrySetResult();
            return Task.CompletedTask;
        };
        Assert.Equal(HttpStatusCode.OK, (await api.PostAsync("/api/v1/devices/pump-7/disable", null)).StatusCode);
        await Await.Within(dropped.Task.ContinueWith(_ => true, TaskScheduler.Default), "the disabled device's connection to end");
        await Assert.ThrowsAnyAsync<Exception>(() => gw.ConnectAsync("pump-7", created.Secret));
        Assert.True(bystander.IsConnected);
        await ContainmentTests.PublishAsync(bystander, "dev-2", Alerts.Json("still-served"));

        // Enabled and given a new secret: the old one fails, the new one works.
        Assert.Equal(HttpStatusCode.OK, (await api.PostAsync("/api/v1/devices/pump-7/enable", null)).StatusCode);
        var rotated = (await (await api.PostAsync("/api/v1/devices/pump-7/rotate-secret", null)).Content.ReadFromJsonAsync<DeviceSecret>(Json))!;
        await Assert.ThrowsAnyAsync<Exception>(() => gw.ConnectAsync("pump-7", created.Secret));
        using var again = await gw.ConnectAsync("pump-7", rotated.Secret);
        Assert.True(again.IsConnected);

        // Refusals say why.
        var bad = await api.PostAsJsonAsync("/api/v1/devices", new { id = "no spaces allowed" });
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Contains("not a valid device id", await bad.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.BadRequest, (await api.PostAsJsonAsync("/api/v1/devices", new { id = "dev-1" })).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await api.PostAsync("/api/v1/devices/nobody/disable", null)).StatusCode);
    }

    [Theory]
    [InlineData("{\"id\":\"pump-7\\n\"}", "not a valid device id")] // saved, then its Location header threw: 500, secret never shown
    [InlineData("{\"id\":\".\"}", "not a valid device id")] // no URL can name '.' or '..'
    [InlineData("{\"id\":\"..\"}", "not a valid device id")]
    [InlineData("{\"id\":\"x\",\"owners\":[null]}", "owner")] // ArgumentNullException: 500
    public async Task AddDevice_ThatCouldNotBeUsed_IsRefusedWith400_AndNothingIsCreated(string body, string message)
    {
        await using var gw = await TestGateway.StartAsync();
        using var api = await gw.ApiAsync();

        using var content = new StringContent(body, System.Text.Encoding.UTF8, "application/json");
        var add = await api.PostAsync("/api/v1/devices", content);

        Assert.Equal(HttpStatusCode.BadRequest, add.StatusCode);
        Assert.Contains(message, await add.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        var devices = await api.GetFromJsonAsync<List<JsonElement>>("/api/v1/devices", Json);
        Assert.Equal(["dev-1", "dev-2", "dev-3"], devices!.Select(d => d.GetProperty("id").GetString()));
    }

    // Values as JSON text. A lone surrogate cannot come this way: the JSON reader refuses its escape (UnreadableBodies, and
    // GatewayOptionsValidatorTests for the configuration).
    public static TheoryData<string, string, string> UnusableNamesAndSites => new()
    {
        { "name", "\"" + new string('n', 201) + "\"", "name: is 201 characters long, over the limit of 200; shorten it" }, // taken, then clipped in every mail
        { "site", "\"" + new string('s', 1000) + "\"", "site: is 1000 characters long, over the limit of 200; shorten it" },
        { "name", "\"Pump 7\\r\\nBcc: victim@evil.example\"", "name: contains a line break or another control character (U+000D at character 7)" },
        { "site", "\"Hall\\u00003\"", "site: contains a line break or another control character (U+0000 at character 5)" },
        { "site", "\"Hall\\t3\"", "site: contains a line break or another control character (U+0009 at character 5)" },
        { "name", "\"Pump\\u00857\"", "name: contains a line break or another control character (U+0085 at character 5)" },
        { "name", "\"Pump\\u20287\"", "name: contains a line break or another control character (U+2028 at character 5)" },
    };

    [Theory]
    [MemberData(nameof(UnusableNamesAndSites))]
    public async Task AddDevice_WithANameOrSiteTooLongOrWithAControlCharacter_IsRefusedWith400SayingWhy_AndNothingIsCreated(string field, string json, string message)
    {
        await using var gw = await TestGateway.StartAsync();
        using var api = await gw.ApiAsync();

        using var content = new StringContent($"{{\"id\":\"pump-7\",\"{field}\":{json},\"owners\":[\"alice\"]}}", System.Text.Encoding.UTF8, "application/json");
        var add = await api.PostAsync("/api/v1/devices", content);

        Assert.Equal(HttpStatusCode.BadRequest, add.StatusCode);
        Assert.Contains(message, (await add.Content.ReadFromJsonAsync<JsonElement>(Json)).GetProperty("error").GetString(), StringComparison.Ordinal);
        var devices = await api.GetFromJsonAsync<List<JsonElement>>("/api/v1/devices", Json);
        Assert.Equal(["dev-1", "dev-2", "dev-3"], devices!.Select(d => d.GetProperty("id").GetString()));
        Assert.Null(gw.Host.Services.GetRequiredService<EdgeMail.Gateway.Devices.DeviceRegistry>().Find("pump-7"));
    }

    public static TheoryData<string, string, HttpStatusCode, string> UnreadableBodies => new()
    {
        { "application/json", "{\"id\":\"pump-7\",", HttpStatusCode.BadRequest, "the body is not the JSON this request takes: Expected start of a property name or value, but instead reached end of data. Path: $ |" },
        { "application/json", "{\"id\":\"pump-7\",\"name\":\"\\ud800\"}", HttpStatusCode.BadRequest, "Path: $.name | LineNumber: 0 | BytePositionInLine: 30. (Cannot read incomplete UTF-16 JSON text" },
        { "application/json", "{\"id\":7}", HttpStatusCode.BadRequest, "The JSON value could not be converted to System.String. Path: $.id | LineNumber: 0 | BytePositionInLine: 7. (Cannot get the value of a token type 'Number' as a string.)" },
        { "application/json", "", HttpStatusCode.BadRequest, "this request needs a JSON body" },
        { "text/plain", "{\"id\":\"pump-7\"}", HttpStatusCode.UnsupportedMediaType, "the body must be JSON (Content-Type: application/json), not 'text/plain; charset=utf-8'" },
    };

    [Theory]
    [MemberData(nameof(UnreadableBodies))]
    public async Task AddDevice_WithABodyThatCannotBeRead_IsRefusedSayingWhy_AndTheConsoleGoesOn(string mediaType, string body, HttpStatusCode status, string message)
    {
        await using var gw = await TestGateway.StartAsync();
        using var api = await gw.ApiAsync();

        using var content = new StringContent(body, System.Text.Encoding.UTF8, mediaType);
        var add = await api.PostAsync("/api/v1/devices", content);

        Assert.Equal(status, add.StatusCode);
        Assert.Contains(message, (await add.Content.ReadFromJsonAsync<JsonElement>(Json)).GetProperty("error").GetString(), StringComparison.Ordinal);
        Assert.Null(gw.Host.Services.GetRequiredService<EdgeMail.Gateway.Devices.DeviceRegistry>().Find("pump-7"));
        var next = await api.PostAsJsonAsync("/api/v1/devices", new { id = "pump-7", owners = new[] { "alice" } });
        Assert.Equal(HttpStatusCode.Created, next.StatusCode);
    }

    [Fact]
    public async Task AddDevice_WithANameAndSiteOfTheMostCharacters_IsTaken_AndItsMailShowsThemWhole()
    {
        await using var gw = await TestGateway.StartAsync();
        using var api = await gw.ApiAsync();
        string name = "Pumpe Süd – " + new string('n', 188);
        string site = new('s', 200);

        var add = await api.PostAsJsonAsync("/api/v1/devices", new { id = "pump-7", name, site, owners = new[] { "alice" } });

        Assert.Equal(HttpStatusCode.Created, add.StatusCode);
        var created = (await add.Content.ReadFromJsonAsync<DeviceSecret>(Json))!;
        Assert.Equal((name, site), (created.Device.Name, created.Device.Site));
        using var pump = await gw.ConnectAsync("pump-7", created.Secret);
        await ContainmentTests.PublishAsync(pump, "pump-7", Alerts.Json("p7-1"));
        var mail = MimeMessage.Load(Assert.Single(await gw.MailAsync(1)));
        Assert.Contains(name, mail.TextBody, StringComparison.Ordinal);
        Assert.Contains(site, mail.TextBody, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AddedDevice_SurvivesARestart()
    {
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        string secret;
        var first = await TestGateway.StartAsync(null, null, dataDir: dataDir);
        using (var api = await first.ApiAsync())
        {
            var created = await (await api.PostAsJsonAsync("/api/v1/devices", new { id = "kept-1", owners = new[] { "bob" } })).Content.ReadFromJsonAsync<DeviceSecret>(Json);
            secret = created!.Secret;
        }

        await first.StopAsync();
        await using var second = await TestGateway.StartAsync(null, null, dataDir: dataDir);
        using var client = await second.ConnectAsync("kept-1", secret);
        Assert.True(client.IsConnected);
    }

    [Fact]
    public async Task AlertJourney_ShowsReceiptsRouteMailAndEachAttempt()
    {
        await using var gw = await TestGateway.StartAsync();
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");
        var receipts = await ReceiptInbox.SubscribeAsync(client, "dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("j-1", sev: "warning"));
        await receipts.WaitForAsync("j-1", "relayed");

        var list = await api.GetFromJsonAsync<List<JsonElement>>("/api/v1/alerts?device=dev-1&severity=warning", Json);
        var row = Assert.Single(list!);
        long rowId = row.GetProperty("rowId").GetInt64();
        var journey = await api.GetFromJsonAsync<JsonElement>($"/api/v1/alerts/{rowId}", Json);

        Assert.Equal("routed", journey.GetProperty("alert").GetProperty("status").GetString());
        Assert.Equal("MQTT", journey.GetProperty("alert").GetProperty("via").GetString());
        Assert.StartsWith("Routes:0 (devices '*', codes '*', from info) to owners: alice@example.com", journey.GetProperty("route").GetString(), StringComparison.Ordinal);
        Assert.Equal(["accepted", "relayed"], journey.GetProperty("receipts").EnumerateArray().Select(r => r.GetProperty("state").GetString()));
        var message = Assert.Single(journey.GetProperty("messages").EnumerateArray());
        Assert.Contains("Too warm", message.GetProperty("subject").GetString(), StringComparison.Ordinal);
        var attempt = Assert.Single(message.GetProperty("attempts").EnumerateArray());
        Assert.StartsWith("250 ", attempt.GetProperty("results")[0].GetProperty("reply").GetString(), StringComparison.Ordinal);

        long messageRow = message.GetProperty("summary").GetProperty("rowId").GetInt64();
        var html = await api.GetAsync($"/api/v1/messages/{messageRow}/html");
        Assert.StartsWith("sandbox;", html.Headers.GetValues("Content-Security-Policy").Single(), StringComparison.Ordinal);
        Assert.Contains("Too warm", await html.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        var raw = await api.GetAsync($"/api/v1/messages/{messageRow}/raw");
        Assert.Equal("message/rfc822", raw.Content.Headers.ContentType!.MediaType);
        Assert.Equal(HttpStatusCode.NotFound, (await api.GetAsync("/api/v1/alerts/999999")).StatusCode);
    }

    // "\ud800" is JSON by its grammar but no Unicode text: parsed, it could not be written out again, and one such
    // heartbeat made the device list answer 500 for every device, one such payload its alert's journey.
    [Fact]
    public async Task HeartbeatAndPayload_WithAnUnpairedSurrogate_BreakNoPage_ThePayloadIsShownAsText()
    {
        await using var gw = await TestGateway.StartAsync();
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");
        var ack = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/status").WithPayload("""{"fw":"\ud800","boot":1}""")
            .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess, ack.ReasonString);
        await ContainmentTests.PublishAsync(client, "dev-1", """{"v":1,"id":"bad-text","text":"\ud800"}""");
        await gw.UntilAsync(async () => (await gw.Spool.QueryAlertsAsync(new AlertQuery("dev-1", Status: "rejected"), default)).Count == 1, "the payload to be rejected");

        var devices = await api.GetAsync("/api/v1/devices");
        Assert.Equal(HttpStatusCode.OK, devices.StatusCode);
        var device = (await api.GetFromJsonAsync<JsonElement>("/api/v1/devices/dev-1", Json)).GetProperty("device");
        Assert.Equal("dev-1", device.GetProperty("id").GetString());
        Assert.NotNull(device.GetProperty("lastHeartbeatAt").GetString());

        long rowId = (await gw.Spool.QueryAlertsAsync(new AlertQuery("dev-1", Status: "rejected"), default))[0].RowId;
        var journey = await api.GetFromJsonAsync<JsonElement>($"/api/v1/alerts/{rowId}", Json);
        Assert.Equal(JsonValueKind.Null, journey.GetProperty("json").ValueKind);
        Assert.Contains("\\ud800", journey.GetProperty("payload").GetString(), StringComparison.Ordinal);
    }

    // A filter value the spool has no rows for answered 200 with an empty list, so a script with a typo, or taking the
    // CLI's own example (--status mailed), was told that nothing was there.
    [Theory]
    [InlineData("/api/v1/alerts?status=mailed", "routed")]
    [InlineData("/api/v1/alerts?severity=urgent", "critical")]
    [InlineData("/api/v1/queue?state=defered", "deferred")]
    public async Task Lists_FilteredByAnUnknownStatusSeverityOrState_AreRefused400_NamingTheKnownOnes(string path, string named)
    {
        await using var gw = await TestGateway.StartAsync();
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");
        var receipts = await ReceiptInbox.SubscribeAsync(client, "dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("f-1"));
        await receipts.WaitForAsync("f-1", "relayed");

        var refused = await api.GetAsync(path);
        Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
        Assert.Contains(named, (await refused.Content.ReadFromJsonAsync<ApiError>(Json))!.Error, StringComparison.Ordinal);

        Assert.Single((await api.GetFromJsonAsync<List<JsonElement>>("/api/v1/alerts?status=routed&severity=Critical", Json))!);
        Assert.Single((await api.GetFromJsonAsync<List<JsonElement>>("/api/v1/queue?state=sent", Json))!);
        Assert.Empty((await api.GetFromJsonAsync<List<JsonElement>>("/api/v1/queue?state=deferred", Json))!);
    }

    [Fact]
    public async Task DeferredMail_RetriedFromTheQueue_IsAttemptedAtOnce()
    {
        int closed = Loopback.FreePort();
        await using var gw = await TestGateway.StartAsync(c => c["Relay"] = new
        {
            Mode = "Smarthost", Host = "127.0.0.1", Port = closed, Security = "None", Backoff = new[] { "01:00:00" },
        });
        gw.Logs.Expect(_ => false);
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("q-1"));
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("dev-1.q-1.alert@gw.test", default))?.Attempts == 1, "the first, failing attempt");

        var deferred = Assert.Single((await api.GetFromJsonAsync<List<JsonElement>>("/api/v1/queue?state=deferred", Json))!);
        long rowId = deferred.GetProperty("rowId").GetInt64();
        Assert.Equal(HttpStatusCode.NoContent, (await api.PostAsync($"/api/v1/queue/{rowId}/retry", null)).StatusCode);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("dev-1.q-1.alert@gw.test", default))?.Attempts == 2, "the retried attempt, an hour early");

        Assert.Equal(HttpStatusCode.NoContent, (await api.PostAsJsonAsync($"/api/v1/queue/{rowId}/cancel", new { reason = "relay replaced" })).StatusCode);
        Assert.Equal("cancelled", (await gw.Spool.GetMessageAsync("dev-1.q-1.alert@gw.test", default))!.Status);
        Assert.Equal(HttpStatusCode.Conflict, (await api.PostAsync($"/api/v1/queue/{rowId}/retry", null)).StatusCode);
    }

    [Fact]
    public async Task MailboxConfigOpenApiAndHealth()
    {
        await using var gw = await TestGateway.StartAsync(c => c["Relay"] = new { Password = "relay-secret-value" });
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("m-1"));
        await gw.MailAsync(1);

        var entry = Assert.Single((await api.GetFromJsonAsync<List<MailboxEntry>>("/api/v1/mailbox", Json))!);
        Assert.Contains("Too warm", entry.Subject, StringComparison.Ordinal);
        var message = (await api.GetFromJsonAsync<MailboxMessage>($"/api/v1/mailbox/{entry.File}", Json))!;
        Assert.Contains(message.Headers, h => h.Key == "Message-Id" || h.Key == "Message-ID");
        Assert.True(message.HasHtml);
        Assert.Equal(HttpStatusCode.NotFound, (await api.GetAsync("/api/v1/mailbox/..%2Fspool.db")).StatusCode);

        string config = await api.GetStringAsync("/api/v1/config");
        Assert.DoesNotContain("relay-secret-value", config, StringComparison.Ordinal);
        Assert.DoesNotContain("pbkdf2-sha256$", config, StringComparison.Ordinal);
        Assert.Contains("(redacted)", config, StringComparison.Ordinal);
        var view = JsonSerializer.Deserialize<JsonElement>(config);
        Assert.Empty(view.GetProperty("problems").EnumerateArray());
        Assert.Contains(view.GetProperty("warnings").EnumerateArray(), w => w.GetString()!.StartsWith("Relay:Mode is Mailbox", StringComparison.Ordinal));

        var openApi = await api.GetFromJsonAsync<JsonElement>("/api/v1/openapi.json");
        var paths = openApi.GetProperty("paths").EnumerateObject().Select(p => p.Name).ToList();
        Assert.Contains("/api/v1/devices", paths);
        Assert.Contains("/api/v1/alerts/{rowId}", paths);
        Assert.Contains("/api/v1/queue/{rowId}/retry", paths);

        using var anonymous = new HttpClient { BaseAddress = gw.ConsoleAddress };
        var probe = gw.Host.Services.GetRequiredService<PipelineProbe>();
        await Await.Within(WhenAliveAsync(probe), "the first pipeline proof");
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/livez")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/readyz")).StatusCode);
    }

    [Fact]
    public async Task Config_ShowsNoSecret_NotEvenTheSpoolsDatabasePassword()
    {
        await using var gw = await TestGateway.StartAsync(c =>
        {
            // The SQLite spool ignores the connection string, but the view shows it as configured (e.g. from
            // EDGEMAIL_Spool__ConnectionString, as docs/scale-out.md advises).
            c["Spool"] = new { ConnectionString = "Host=db1;Database=edgemail;Username=edgemail;Password=pg-pass-value;SSL Password=pg-ssl-value" };
            c["Relay"] = new { OAuth2 = new { ClientSecret = "oauth-client-value", CertificatePassword = "oauth-cert-value", ClientSecretFile = "/etc/edgemail/client-secret" } };
            c["Mqtt"] = new { Port = 0, CertificatePassword = "mqtt-cert-value", External = new { Password = "broker-pass-value" } };
            c["Console"] = new { Port = 0, CertificatePassword = "console-cert-value" };
        });
        using var api = await gw.ApiAsync();

        string config = await api.GetStringAsync("/api/v1/config");
        foreach (string secret in new[] { "pg-pass-value", "pg-ssl-value", "oauth-client-value", "oauth-cert-value", "mqtt-cert-value", "broker-pass-value", "console-cert-value" })
        {
            Assert.DoesNotContain(secret, config, StringComparison.Ordinal);
        }

        // What is not secret stays readable: where the database is, where a secret is kept.
        var spool = JsonSerializer.Deserialize<JsonElement>(config).GetProperty("configuration").GetProperty("spool");
        Assert.Contains("host=db1", spool.GetProperty("connectionString").GetString(), StringComparison.OrdinalIgnoreCase);
        Assert.Contains("/etc/edgemail/client-secret", config, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Readyz_WhenTheDiskIsLow_Says503AndWhy()
    {
        long free = 1024L * 1024;
        await using var gw = await TestGateway.StartAsync(c => c["Spool"] = new { MinFreeMegabytes = 64 }, s => s.AddSingleton<FreeSpaceProbe>(_ => Interlocked.Read(ref free)));
        using var anonymous = new HttpClient { BaseAddress = gw.ConsoleAddress };
        await Await.Within(WhenAliveAsync(gw.Host.Services.GetRequiredService<PipelineProbe>()), "the first pipeline proof");

        var ready = await anonymous.GetAsync("/readyz");
        Assert.Equal(HttpStatusCode.ServiceUnavailable, ready.StatusCode);
        var report = await ready.Content.ReadFromJsonAsync<HealthReport>(Json);
        Assert.False(report!.Checks.Single(c => c.Name == "disk").Ok);
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/livez")).StatusCode); // alive, just not taking work
    }

    [Fact]
    public async Task Events_StreamTheDashboardAndNewAlerts()
    {
        await using var gw = await TestGateway.StartAsync();
        using var api = await gw.ApiAsync();
        using var cancel = new CancellationTokenSource(Await.DefaultTimeout);
        using var stream = await api.GetStreamAsync("/api/v1/events", cancel.Token);
        using var reader = new StreamReader(stream);
        var first = await NextEventAsync(reader, cancel.Token);
        Assert.Equal("dashboard", first.Name);
        Assert.Equal(3, first.Data.GetProperty("devices").GetProperty("total").GetInt32());

        using var client = await gw.ConnectAsync("dev-3");
        await ContainmentTests.PublishAsync(client, "dev-3", Alerts.Json("live-1"));
        (string Name, JsonElement Data) next;
        do
        {
            next = await NextEventAsync(reader, cancel.Token); // dashboards until the alert; the token bounds the wait
        }
        while (next.Name != "alert");

        Assert.Equal("live-1", next.Data.GetProperty("alertId").GetString());
    }

    [Fact]
    public async Task Metrics_NeedAKeyUnlessConfigured_AndNameWhatTheIssueAsks()
    {
        await using var gw = await TestGateway.StartAsync();
        using var api = await gw.ApiAsync();
        using var client = await gw.ConnectAsync("dev-1");
        var inbox = await ReceiptInbox.SubscribeAsync(client, "dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("metric-1"));
        await gw.MailAsync(1);
        // The mail is in the mailbox before its result is committed and counted; the receipt is sent after both.
        await inbox.WaitForAsync("metric-1", EdgeMail.Gateway.Receipts.ReceiptState.Relayed);

        using var anonymous = new HttpClient { BaseAddress = gw.ConsoleAddress };
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync("/metrics")).StatusCode);
        string text = await api.GetStringAsync("/metrics");
        foreach (string name in new[]
        {
            "edgemail_alerts_received_total", "edgemail_mail_recipients_total", "edgemail_queue_depth", "edgemail_spool_commit_duration_seconds_bucket",
            "edgemail_devices_connected", "edgemail_devices_silent", "edgemail_relay_up", "edgemail_disk_free_bytes",
            "edgemail_mqtt_connections_pending",
        })
        {
            Assert.Contains(name, text, StringComparison.Ordinal);
        }

        // The SQLite spool's files: the database holds at least its schema; the WAL, bounded, is reported as it is.
        var database = System.Text.RegularExpressions.Regex.Match(text, "edgemail_spool_size_bytes\\{[^}]*file=\"database\"[^}]*\\} ([0-9]+)");
        Assert.True(database.Success && long.Parse(database.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) > 0, "the database's size in /metrics");
        Assert.Matches("edgemail_spool_size_bytes\\{[^}]*file=\"wal\"[^}]*\\} [0-9]+", text);

        if (Peers.Find("promtool") is { } promtool)
        {
            var (code, output) = await PromtoolAsync(promtool, text);
            Assert.True(code == 0, "promtool check metrics: " + output);
        }
        else
        {
            Assert.False(Peers.InCi, "promtool is missing (apt-get install prometheus; .ci/run does)");
        }
    }

    [Fact]
    public async Task Metrics_Anonymous_WhenConfigured()
    {
        await using var gw = await TestGateway.StartAsync(c => c["Console"] = new { Port = 0, MetricsAnonymous = true });
        using var anonymous = new HttpClient { BaseAddress = gw.ConsoleAddress };
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/metrics")).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync("/api/v1/dashboard")).StatusCode);
    }

    internal static async Task<(int Code, string Output)> PromtoolAsync(string promtool, string metrics)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(promtool, "check metrics")
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        using var p = System.Diagnostics.Process.Start(psi)!;
        await p.StandardInput.WriteAsync(metrics);
        p.StandardInput.Close();
        string output = await p.StandardOutput.ReadToEndAsync() + await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        return (p.ExitCode, output);
    }

    private static async Task<bool> WhenAliveAsync(PipelineProbe probe)
    {
        var proved = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnProved() => proved.TrySetResult();
        probe.Proved += OnProved;
        try
        {
            if (!probe.Alive)
            {
                await proved.Task;
            }

            return true;
        }
        finally
        {
            probe.Proved -= OnProved;
        }
    }

    private static async Task<(string Name, JsonElement Data)> NextEventAsync(StreamReader reader, CancellationToken cancellationToken)
    {
        string? name = null;
        while (await reader.ReadLineAsync(cancellationToken) is { } line)
        {
            if (line.StartsWith("event: ", StringComparison.Ordinal))
            {
                name = line["event: ".Length..];
            }
            else if (line.StartsWith("data: ", StringComparison.Ordinal) && name is not null)
            {
                return (name, JsonSerializer.Deserialize<JsonElement>(line["data: ".Length..]));
            }
        }

        throw new EndOfStreamException("the event stream ended");
    }
}
