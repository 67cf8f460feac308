using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Devices;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests;
using EdgeMail.Gateway.Web;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Microsoft.Playwright;
using MQTTnet;
using Xunit;
using static Microsoft.Playwright.Assertions;

namespace EdgeMail.Console.Tests;

/// <summary>
/// Every page of the console on a gateway with a realistic past (five devices, two days of alerts and heartbeats, a
/// silent device, a disabled one, a rejected payload): each shows what it is for, with no script error and no
/// content-policy violation, and is saved as a screenshot (the documentation's pictures: see <see cref="Screenshots"/>).
/// </summary>
[Collection(BrowserCollection.Name)]
public sealed class ConsoleTourTests(ConsoleBrowser browser)
{
    private static readonly (string Id, string Name, string Site, string[] Owners, string? SilentAfter)[] Fleet =
    [
        ("freezer-2", "Freezer 2", "Kitchen", ["alice"], null),
        ("boiler-1", "Boiler", "Basement", ["oncall"], null),
        ("chiller-3", "Chiller 3", "Kitchen", ["alice"], null),
        ("door-east", "East door", "Hall 3", ["bob"], null),
        ("ups-rack-a", "UPS rack A", "Server room", ["oncall"], "01:00:00"),
    ];

    [Fact]
    public async Task EveryPage_ShowsARealisticGateway_WithoutAnError()
    {
        static void Config(Dictionary<string, object> c)
        {
            string hash = SecretHash.Create(TestGateway.Secret, 1000);
            c["Devices"] = Fleet.ToDictionary(d => d.Id, d => (object)new { Secret = hash, d.Name, d.Site, d.Owners, d.SilentAfter });
        }

        // The history goes into the spool of a first run; the gateway under test starts on it as after a restart, so it
        // learns from the spool when each device was last heard (and finds the UPS silent) as a real one does.
        var now = TimeProvider.System.GetUtcNow();
        var first = await TestGateway.StartAsync(Config, null);
        await SeedHistoryAsync(first, now);
        string spoolPath = first.Host.Services.GetRequiredService<IOptions<GatewayOptions>>().Value.SpoolPath();
        await first.StopAsync();

        // That run stands for the gateway of those two days, which watched its devices from before them (the first start
        // records each from itself): else the restart gives the UPS its whole limit from that start, not silent yet.
        using (var connection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = spoolPath, Pooling = false }.ToString()))
        {
            connection.Open();
            using var command = connection.CreateCommand();
            command.CommandText = "UPDATE watched_devices SET since = $since";
            command.Parameters.AddWithValue("$since", now.AddDays(-3).ToUnixTimeMilliseconds());
            Assert.True(command.ExecuteNonQuery() > 0);
        }

        await using var gw = await TestGateway.StartAsync(Config, null, dataDir: first.DataDir);

        // Setup and login pages, before a password exists.
        await using (var anonymous = await ConsoleSession.OpenAsync(browser.Browser, gw))
        {
            await anonymous.Page.GotoAsync("/setup#" + gw.Host.Services.GetRequiredService<ConsoleAuth>().SetupToken);
            await Expect(anonymous.Page.GetByRole(AriaRole.Heading, new() { Name = "Set up the console" })).ToBeVisibleAsync();
            await anonymous.AssertAccessibleAsync();
            await Screenshots.SaveAsync(anonymous.Page, "setup");
        }

        // Live devices: three connected, each with a heartbeat; alerts arriving now; one payload refused.
        var clients = new List<IMqttClient>();
        foreach (var (id, battery, rssi, depth) in new[] { ("freezer-2", 86, -67, 0), ("boiler-1", 100, -52, 0), ("chiller-3", 71, -80, 2) })
        {
            var client = await gw.ConnectAsync(id);
            clients.Add(client);
            await Device.PublishStatusAsync(client, id, Status(battery, rssi, depth, "1.4.2"));
        }

        await Device.PublishAlertAsync(clients[0], "freezer-2", AlertJson("f-200", 200, "FREEZER_TEMP_HIGH", "critical", "Freezer 2 above -15 °C", now, -9.5));
        await Device.PublishAlertAsync(clients[2], "chiller-3", AlertJson("c-31", 31, "COMPRESSOR_CYCLING", "warning", "Compressor started 14 times in 10 minutes", now, 14));
        await Device.PublishAlertAsync(clients[1], "boiler-1",
            """{"v":1,"id":"b-77","seq":77,"state":"raised","sev":"urgent","code":"PRESSURE_HIGH","text":"Boiler pressure 3.1 bar","boot":4,"count":1}""");
        await gw.UntilAsync(async () => await SettledAsync(gw.Spool), "every alert routed and its mail delivered", TimeSpan.FromSeconds(60));

        await using var s = await ConsoleSession.LogInAsync(browser.Browser, gw);
        var page = s.Page;

        // Dashboard
        await Expect(page.Locator("#alerts-today [data-key=critical] dd")).Not.ToHaveTextAsync("0");
        await Expect(page.Locator("#devices [data-key=online] dd")).ToHaveTextAsync("3");
        await Expect(page.Locator("#devices [data-key=silent] dd")).ToHaveTextAsync("1");
        await Expect(page.Locator("#relay")).ToContainTextAsync("Up");
        await Expect(page.Locator("#latest-title ~ * tbody tr").First).ToContainTextAsync("rejected");
        await s.AssertAccessibleAsync();
        await Screenshots.SaveAsync(page, "dashboard");

        // Devices
        await page.GotoAsync("/devices");
        await Expect(page.Locator("#device-list tbody tr")).ToHaveCountAsync(6);
        await Expect(page.Locator("tr[data-device='ups-rack-a']")).ToContainTextAsync("silent");
        await Expect(page.Locator("tr[data-device='old-sensor']")).ToContainTextAsync("disabled");
        await Expect(page.Locator("tr[data-device='chiller-3']")).ToContainTextAsync("71 %");
        await s.AssertAccessibleAsync();
        await Screenshots.SaveAsync(page, "devices");

        // One device with two days of alerts and heartbeats
        await page.GetByRole(AriaRole.Link, new() { Name = "freezer-2", Exact = true }).ClickAsync();
        await Expect(page.GetByRole(AriaRole.Img, new() { Name = "Alerts per hour" })).ToHaveAttributeAsync("aria-label", new Regex("over the last 48 hours: 1[0-9] in all"));
        await Expect(page.GetByRole(AriaRole.Img, new() { Name = "Battery (%)" })).ToHaveAttributeAsync("aria-label", new Regex("now 86"));
        await Expect(page.Locator("svg.chart rect.bar")).Not.ToHaveCountAsync(0);
        await s.AssertAccessibleAsync();
        await Screenshots.SaveAsync(page, "device");

        // Alerts
        await page.GotoAsync("/alerts");
        await Expect(page.Locator("tbody tr[data-row]")).Not.ToHaveCountAsync(0);
        await Expect(page.Locator("tbody tr[data-row]").First).ToContainTextAsync("rejected");
        await s.AssertAccessibleAsync();
        await Screenshots.SaveAsync(page, "alerts");

        // One alert's journey
        await page.GetByRole(AriaRole.Link, new() { Name = "COMPRESSOR_CYCLING" }).ClickAsync();
        await Expect(page.Locator("#mail .recipient")).ToContainTextAsync("sent");
        await Expect(page.FrameLocator("#mail iframe.mail-frame").Locator("body")).ToContainTextAsync("Compressor started 14 times");
        await page.Locator("#mail iframe.mail-frame").ScrollIntoViewIfNeededAsync(); // a frame below the fold is painted only once seen
        await s.AssertAccessibleAsync();
        await Screenshots.SaveAsync(page, "alert");

        // Local mailbox
        await page.GotoAsync("/mailbox");
        await page.Locator("#mailbox-list tbody tr").First.GetByRole(AriaRole.Link).ClickAsync();
        await Expect(page.FrameLocator("iframe.mail-frame").Locator("body")).Not.ToBeEmptyAsync();
        await page.GetByRole(AriaRole.Tab, new() { Name = "Headers" }).ClickAsync();
        await Expect(page.GetByRole(AriaRole.Tabpanel)).ToContainTextAsync("Subject");
        await page.GetByRole(AriaRole.Tab, new() { Name = "Rendered" }).ClickAsync();
        await Expect(page.FrameLocator("iframe.mail-frame").Locator("body")).Not.ToBeEmptyAsync();
        await s.AssertAccessibleAsync();
        await Screenshots.SaveAsync(page, "mailbox");

        // Rejected payloads
        await page.GotoAsync("/rejected");
        await Expect(page.Locator("#rejected-list tbody tr")).ToHaveCountAsync(1);
        await Expect(page.Locator("#rejected-list tbody tr")).ToContainTextAsync("urgent");
        await s.AssertAccessibleAsync();
        await Screenshots.SaveAsync(page, "rejected");

        // Configuration
        await page.GotoAsync("/config");
        await Expect(page.Locator("#validation")).ToContainTextAsync("No problems");
        await Expect(page.Locator("#validation .warnings")).ToContainTextAsync("Relay:Mode is Mailbox");
        await Expect(page.Locator("#effective")).Not.ToContainTextAsync(TestGateway.Secret);
        await s.AssertAccessibleAsync();
        await Screenshots.SaveAsync(page, "config");

        // The login page, as a stranger sees it
        await using var stranger = await ConsoleSession.OpenAsync(browser.Browser, gw);
        await stranger.Page.GotoAsync("/");
        await Expect(stranger.Page.GetByRole(AriaRole.Heading, new() { Name = "EdgeMail console" })).ToBeVisibleAsync();
        await stranger.AssertAccessibleAsync();
        await Screenshots.SaveAsync(stranger.Page, "login");

        foreach (var client in clients)
        {
            client.Dispose();
        }
    }

    // Two days of a small site: the freezer's alerts and heartbeats, the east door's last alert three hours ago, the
    // UPS silent for five hours, and a retired sensor, disabled.
    private static async Task SeedHistoryAsync(TestGateway gw, DateTimeOffset now)
    {
        var spool = gw.Spool;
        var history = new[] { 46.5, 40.2, 39.8, 31, 30.6, 30.1, 22.4, 21.9, 14, 9.5, 5.2, 3.1, 1.4 }
            .Select(hoursAgo => hoursAgo is > 30 and < 31
                ? ("freezer-2", hoursAgo, "DOOR_OPEN", "warning", "Door open for 5 minutes")
                : ("freezer-2", hoursAgo, "FREEZER_TEMP_HIGH", "critical", "Freezer 2 above -15 °C"))
            .Append(("door-east", 3.0, "DOOR_FORCED", "critical", "East door opened without badge"))
            .OrderByDescending(a => a.Item2);
        int seq = 100;
        foreach (var (device, hoursAgo, code, sev, text) in history)
        {
            var at = now.AddHours(-hoursAgo);
            await StoreAsync(spool, device, AlertJson($"{device[0]}-{++seq}", seq, code, sev, text, at, -12.5), at, code, sev);
        }

        for (int hour = 48; hour >= 1; hour--)
        {
            var at = now.AddHours(-hour);
            int battery = 100 - ((48 - hour) / 4);
            int depth = hour is > 30 and < 34 ? 34 - hour : 0; // offline for a while: alerts queued on the device
            int rssi = -64 - (int)Math.Round(4 * Math.Sin(hour / 3.0));
            await spool.RecordStatusAsync("freezer-2", at, Encoding.UTF8.GetBytes(Status(battery, rssi, depth, "1.4.2")), default);
        }

        await spool.RecordStatusAsync("ups-rack-a", now.AddHours(-5), Encoding.UTF8.GetBytes(Status(64, -71, 0, "3.0.0")), default);
        var registry = gw.Host.Services.GetRequiredService<DeviceRegistry>();
        await registry.AddAsync("old-sensor", "Retired sensor", "Hall 3", ["alice"], default);
        await registry.SetDisabledAsync("old-sensor", true, default);
    }

    private static Task StoreAsync(ISpool spool, string device, string json, DateTimeOffset at, string code, string severity) =>
        spool.AcceptAlertAsync(new IncomingAlert(device, JsonDocument.Parse(json).RootElement.GetProperty("id").GetString()!, at, "127.0.0.1:50312",
            Encoding.UTF8.GetBytes(json), null, code, IngestProtocols.Mqtt, severity), default);

    private static async Task<bool> SettledAsync(ISpool spool)
    {
        var counts = await spool.CountsAsync(default);
        return counts.Alerts.GetValueOrDefault(AlertStatus.New) == 0 && counts.Messages.GetValueOrDefault(MessageStatus.Queued) == 0
            && counts.Messages.GetValueOrDefault(MessageStatus.Sent) > 0;
    }

    private static string AlertJson(string id, int seq, string code, string sev, string text, DateTimeOffset raised, double value) =>
        JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["v"] = 1, ["id"] = id, ["seq"] = seq, ["state"] = "raised", ["sev"] = sev, ["code"] = code, ["text"] = text,
            ["values"] = new Dictionary<string, double> { ["value"] = value },
            ["raised"] = raised.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", System.Globalization.CultureInfo.InvariantCulture), ["boot"] = 17, ["count"] = 1,
        });

    private static string Status(int battery, int rssi, int depth, string firmware) =>
        $$"""{"v":1,"fw":"{{firmware}}","boot":17,"uptime_ms":86400000,"queue_depth":{{depth}},"oldest_age_ms":null,"dropped":0,"flash_wear_pct":0.42,"battery_pct":{{battery}},"battery_mv":null,"rssi_dbm":{{rssi}}}""";
}
