using System.Text.RegularExpressions;
using EdgeMail.Gateway.Tests;
using EdgeMail.Gateway.Web;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Playwright;
using Xunit;
using static Microsoft.Playwright.Assertions;

namespace EdgeMail.Console.Tests;

/// <summary>
/// What an operator does in the console, in a real browser against a real gateway: set it up and log in, watch an
/// alert published over MQTT arrive live and follow it to its mail, retry mail a dead relay deferred, and add a device
/// that connects at once with the secret the page showed.
/// </summary>
[Collection(BrowserCollection.Name)]
public sealed class ConsoleFlowTests(ConsoleBrowser browser)
{
    [Fact]
    public async Task SetupLinkSetsThePassword_ThenLoginAndLogout_AndAStrangerIsSentToLogin()
    {
        await using var gw = await TestGateway.StartAsync();
        var auth = gw.Host.Services.GetRequiredService<ConsoleAuth>();
        string token = auth.SetupToken!;
        await using var s = await ConsoleSession.OpenAsync(browser.Browser, gw);
        var page = s.Page;

        // A stranger asking for a page gets the login page, which says there is no password yet.
        await page.GotoAsync("/devices");
        await Expect(page).ToHaveURLAsync(LoginUrl());
        await Expect(page.GetByRole(AriaRole.Alert)).ToContainTextAsync("No admin password is set yet");

        // The link the gateway logged: the token is taken from the fragment, then out of the address bar.
        await page.GotoAsync("/setup#" + token);
        await Expect(page).ToHaveURLAsync(new Regex("/setup$"));
        await page.GetByLabel("New password").FillAsync("too short");
        await page.GetByLabel("Repeat the password").FillAsync("too short");
        await page.GetByRole(AriaRole.Button, new() { Name = "Set password and log in" }).ClickAsync();
        await Expect(page.GetByRole(AriaRole.Alert)).ToContainTextAsync("at least 12 characters");
        await page.GetByLabel("New password").FillAsync(ConsoleSession.Password);
        await page.GetByLabel("Repeat the password").FillAsync(ConsoleSession.Password);
        await page.GetByRole(AriaRole.Button, new() { Name = "Set password and log in" }).ClickAsync();
        await Expect(page.GetByRole(AriaRole.Heading, new() { Name = "Dashboard" })).ToBeVisibleAsync();
        Assert.False(auth.NeedsSetup);

        await page.GetByRole(AriaRole.Button, new() { Name = "Log out" }).ClickAsync();
        await Expect(page).ToHaveURLAsync(LoginUrl());

        // The link worked once.
        await page.GotoAsync("/setup#" + token);
        await Expect(page.GetByRole(AriaRole.Alert)).ToContainTextAsync("already set");

        // A wrong password is refused; the right one leads back to the page that was asked for.
        await page.GotoAsync("/login?next=%2Fqueue%3Fstate%3Dfailed");
        await page.GetByLabel("Password").FillAsync("not the password");
        await page.GetByRole(AriaRole.Button, new() { Name = "Log in" }).ClickAsync();
        await Expect(page.GetByRole(AriaRole.Alert)).ToHaveTextAsync("wrong password");
        await page.GetByLabel("Password").FillAsync(ConsoleSession.Password);
        await page.GetByRole(AriaRole.Button, new() { Name = "Log in" }).ClickAsync();
        await Expect(page).ToHaveURLAsync(new Regex("/queue\\?state=failed$"));
        await Expect(page.GetByRole(AriaRole.Heading, new() { Name = "Mail queue" })).ToBeVisibleAsync();
    }

    [Fact]
    public async Task Login_WithANextThatLeadsToAnotherSite_StaysOnTheConsole()
    {
        await using var gw = await TestGateway.StartAsync();
        Assert.Null(await gw.Host.Services.GetRequiredService<ConsoleAuth>().SetPasswordAsync(ConsoleSession.Password, default));
        await using var s = await ConsoleSession.OpenAsync(browser.Browser, gw);
        var page = s.Page;
        bool left = false;
        await s.Context.RouteAsync("**://evil.example/**", route =>
        {
            left = true;
            return route.FulfillAsync(new() { Body = "phished", ContentType = "text/plain" });
        });

        // "/<tab>/evil.example" starts with one slash, but the browser drops tabs and line feeds from a URL: "//evil.example";
        // "/.//evil.example" is a path on the console whose dot segment goes, leaving "//evil.example" again.
        foreach (string next in new[] { "%2F%09%2Fevil.example", "%2F.%2F%2Fevil.example" })
        {
            // Logged out (a login from a session would need its CSRF token), and off the dashboard first: its scripts,
            // finding the session gone, would send the page to /login themselves, racing this navigation.
            await page.GotoAsync("about:blank");
            await s.Context.ClearCookiesAsync();
            await page.GotoAsync("/login?next=" + next);
            await page.GetByLabel("Password").FillAsync(ConsoleSession.Password);
            await page.GetByRole(AriaRole.Button, new() { Name = "Log in" }).ClickAsync();
            await Expect(page.GetByRole(AriaRole.Heading, new() { Name = "Dashboard" })).ToBeVisibleAsync();
            Assert.StartsWith(gw.ConsoleAddress.ToString(), page.Url, StringComparison.Ordinal);
        }

        Assert.False(left, "the login page sent the browser to another site");
    }

    [Fact]
    public async Task AlertPublishedOverMqtt_AppearsLive_ThenItsJourneyShowsRouteReceiptAndMail()
    {
        await using var gw = await TestGateway.StartAsync();
        await using var s = await ConsoleSession.LogInAsync(browser.Browser, gw);
        var page = s.Page;
        var critical = page.Locator("#alerts-today [data-key=critical] dd");
        await Expect(critical).ToHaveTextAsync("0");
        await Expect(page.Locator(".live")).ToHaveTextAsync("Live");

        // Published while the dashboard is open: counted and listed without a reload.
        var device = await gw.ConnectAsync("dev-1");
        await Device.PublishAlertAsync(device, "dev-1", Alerts.Json("live-1", code: "FREEZER_TEMP_HIGH", text: "Freezer 2 <b>above</b> -15 °C"));
        await Expect(critical).ToHaveTextAsync("1");
        await Expect(page.Locator("#latest-title ~ * tbody tr").First).ToContainTextAsync("FREEZER_TEMP_HIGH");

        // The alert list takes new alerts on top, marked as new.
        await page.GetByRole(AriaRole.Navigation, new() { Name = "Console" }).GetByRole(AriaRole.Link, new() { Name = "Alerts" }).ClickAsync();
        var rows = page.Locator("tbody tr[data-row]");
        await Expect(rows).ToHaveCountAsync(1);
        await Device.PublishAlertAsync(device, "dev-1", Alerts.Json("live-2", code: "DOOR_OPEN", sev: "warning", text: "Door open"));
        await Expect(rows).ToHaveCountAsync(2);
        await Expect(rows.First).ToContainTextAsync("DOOR_OPEN");
        await Expect(page.Locator("tr.is-new")).ToContainTextAsync("DOOR_OPEN");

        // Filtering by severity.
        await page.GetByLabel("Severity").SelectOptionAsync("critical");
        await page.GetByRole(AriaRole.Button, new() { Name = "Filter" }).ClickAsync();
        await Expect(page).ToHaveURLAsync(new Regex("severity=critical"));
        await Expect(rows).ToHaveCountAsync(1);
        await Expect(rows).ToContainTextAsync("FREEZER_TEMP_HIGH");

        // Its journey: received over MQTT from the device's address, a receipt, the route, the mail and its delivery.
        await page.GetByRole(AriaRole.Link, new() { Name = "FREEZER_TEMP_HIGH" }).ClickAsync();
        await Expect(page.GetByRole(AriaRole.Heading, new() { Level = 1 })).ToContainTextAsync("FREEZER_TEMP_HIGH from dev-1");
        await Expect(page.Locator("#received")).ToContainTextAsync("MQTT");
        await Expect(page.Locator("#received")).ToContainTextAsync("127.0.0.1");
        await Expect(page.Locator(".alert-text")).ToHaveTextAsync("Freezer 2 <b>above</b> -15 °C"); // device text stays text
        await Expect(page.Locator("#receipts")).ToContainTextAsync("relayed");
        await Expect(page.Locator("#routing .route")).ToContainTextAsync("alice");
        var recipient = page.Locator("#mail .recipient");
        await Expect(recipient).ToContainTextAsync("alice@example.com");
        await Expect(recipient).ToContainTextAsync("sent");
        await Expect(page.Locator("#mail .attempt")).ToContainTextAsync("sent");

        // The mail itself: rendered in a sandbox that runs nothing, as text, and as the raw .eml.
        var frame = page.Locator("#mail iframe.mail-frame");
        await Expect(frame).ToHaveAttributeAsync("sandbox", string.Empty);
        await Expect(page.FrameLocator("#mail iframe.mail-frame").Locator("body")).ToContainTextAsync("Freezer 2 <b>above</b> -15 °C");
        await page.Locator("#mail").GetByRole(AriaRole.Tab, new() { Name = "Text" }).ClickAsync();
        await Expect(page.Locator("#mail .mail-text")).ToContainTextAsync("Freezer 2 <b>above</b> -15 °C");
        string raw = (await page.Locator("#mail .raw-link").GetAttributeAsync("href"))!;
        var eml = await page.APIRequest.GetAsync(raw);
        Assert.Equal(200, eml.Status);
        Assert.Equal("message/rfc822", eml.Headers["content-type"]);
        string text = await eml.TextAsync();
        Assert.Contains("Message-Id:", text, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("alice@example.com", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RelayDown_MailIsDeferredWithTheError_AndRetriedFromTheQueuePage()
    {
        int closedPort = Loopback.FreePort(); // nothing listens: every connection is refused
        await using var gw = await TestGateway.StartAsync(c => c["Relay"] = new
        {
            Mode = "Smarthost", Host = "127.0.0.1", Port = closedPort, Security = "None", Timeout = "00:00:05",
            Backoff = new[] { "01:00:00" }, // no retry of its own during the test: a second attempt can only be the operator's
        });
        await using var s = await ConsoleSession.LogInAsync(browser.Browser, gw);
        s.AcceptDialogs();
        var page = s.Page;

        var device = await gw.ConnectAsync("dev-2");
        await Device.PublishAlertAsync(device, "dev-2", Alerts.Json("relay-1", code: "UPS_ON_BATTERY", text: "Mains lost, on battery"));
        await Device.PublishAlertAsync(device, "dev-2", Alerts.Json("relay-2", code: "UPS_BATTERY_LOW", text: "Battery at 20 %"));

        // The dashboard shows the relay down with its error, and the deferred mail.
        await Expect(page.Locator("#relay")).ToContainTextAsync("Down");
        await Expect(page.Locator("#mail [data-key=deferred] dd")).ToHaveTextAsync("2");
        await page.Locator("#mail [data-key=deferred] a").ClickAsync();
        await Expect(page).ToHaveURLAsync(new Regex("/queue\\?state=deferred$"));
        var rows = page.Locator("#queue-list tbody tr[data-mail]");
        await Expect(rows).ToHaveCountAsync(2);
        var first = rows.Last; // oldest last
        await Expect(first).ToContainTextAsync("deferred");
        await Expect(first.Locator("td").Nth(5)).ToHaveTextAsync("1");
        await Expect(first.Locator("td.reply")).ToContainTextAsync("127.0.0.1");
        await s.AssertAccessibleAsync();
        await Screenshots.SaveAsync(page, "queue");

        // Retry now: a second attempt at once (the backoff alone would wait an hour), shown live.
        string rowId = (await first.GetAttributeAsync("data-mail"))!;
        await first.GetByRole(AriaRole.Button, new() { Name = "Retry now" }).ClickAsync();
        await Expect(page.GetByRole(AriaRole.Status).Filter(new() { HasText = "retrying now" })).ToBeVisibleAsync();
        var retried = page.Locator($"#queue-list tr[data-mail='{rowId}']");
        await Expect(retried.Locator("td").Nth(5)).ToHaveTextAsync("2");

        // The mail's page lists both attempts with the relay's error.
        await retried.GetByRole(AriaRole.Link, new() { Name = rowId, Exact = true }).ClickAsync();
        var attempts = page.Locator($"article[data-mail='{rowId}'] .attempt");
        await Expect(attempts).ToHaveCountAsync(2); // alice is its one recipient
        await Expect(attempts.Nth(1)).ToContainTextAsync("deferred");
    }

    [Fact]
    public async Task DeviceAddedInTheConsole_ConnectsAtOnceWithTheSecretShown_OthersStayConnected()
    {
        await using var gw = await TestGateway.StartAsync();
        var other = await gw.ConnectAsync("dev-1");
        await using var s = await ConsoleSession.LogInAsync(browser.Browser, gw);
        s.AcceptDialogs();
        var page = s.Page;
        await page.GetByRole(AriaRole.Navigation, new() { Name = "Console" }).GetByRole(AriaRole.Link, new() { Name = "Devices" }).ClickAsync();
        await Expect(page.Locator("tr[data-device='dev-1']")).ToContainTextAsync("online");

        await page.GetByLabel("Device id").FillAsync("pump-7");
        await page.GetByLabel("Name").FillAsync("Pump 7");
        await page.GetByLabel("Site").FillAsync("Basement");
        await page.GetByLabel("Owners").FillAsync("alice, oncall");
        await page.GetByRole(AriaRole.Button, new() { Name = "Add device" }).ClickAsync();
        var secretShown = page.Locator("#device-secret");
        await Expect(secretShown).ToBeVisibleAsync();
        string secret = (await secretShown.TextContentAsync())!;
        Assert.True(secret.Length >= 20, $"secret '{secret}'");

        // The new device connects at once with that secret and reports; the page follows live.
        var pump = await gw.ConnectAsync("pump-7", secret);
        await Device.PublishStatusAsync(pump, "pump-7", """{"v":1,"fw":"2.0.1","boot":3,"queue_depth":4,"dropped":0,"battery_pct":93,"rssi_dbm":-61}""");
        await Device.PublishAlertAsync(pump, "pump-7", Alerts.Json("p-1", code: "PRESSURE_LOW", sev: "warning", text: "Pressure low"));
        var row = page.Locator("tr[data-device='pump-7']");
        await Expect(row).ToContainTextAsync("online");
        await Expect(row).ToContainTextAsync("2.0.1");
        await Expect(row).ToContainTextAsync("93 %");
        await Expect(row).ToContainTextAsync("-61 dBm");
        Assert.True(other.IsConnected, "adding a device dropped another device's session");

        // Its page: the alert in the chart; a new secret replaces the old one at once.
        await row.GetByRole(AriaRole.Link, new() { Name = "pump-7" }).ClickAsync();
        await Expect(page.GetByRole(AriaRole.Heading, new() { Name = "Pump 7 (pump-7)" })).ToBeVisibleAsync();
        await Expect(page.GetByRole(AriaRole.Img, new() { Name = "Alerts per hour" })).ToHaveAttributeAsync("aria-label", new Regex("1 in all"));
        await Expect(page.Locator("#heartbeat")).ToContainTextAsync("2.0.1");
        await page.GetByRole(AriaRole.Button, new() { Name = "New secret" }).ClickAsync();
        await Expect(secretShown).Not.ToHaveTextAsync(secret);
        string rotated = (await secretShown.TextContentAsync())!;
        await Assert.ThrowsAnyAsync<Exception>(() => gw.ConnectAsync("pump-7", secret));
        var again = await gw.ConnectAsync("pump-7", rotated);
        Assert.True(again.IsConnected);

        // Disabled: refused from then on.
        await page.GetByRole(AriaRole.Button, new() { Name = "Disable" }).ClickAsync();
        await Expect(page.Locator(".title-line .badge")).ToHaveTextAsync("disabled");
        await Assert.ThrowsAnyAsync<Exception>(() => gw.ConnectAsync("pump-7", rotated));
        Assert.True(other.IsConnected, "disabling a device dropped another device's session");

        // A session that has ended (its cookie gone): the page's next call to the API, here the refresh a new alert
        // brings, sends the browser to the login page, and back after it.
        await s.Context.ClearCookiesAsync();
        await Device.PublishAlertAsync(other, "dev-1", Alerts.Json("after-logout", code: "DOOR_OPEN", sev: "info", text: "Door open"));
        await Expect(page).ToHaveURLAsync(new Regex("/login\\?next=%2Fdevice%3Fid%3Dpump-7$"));
        await page.GetByLabel("Password").FillAsync(ConsoleSession.Password);
        await page.GetByRole(AriaRole.Button, new() { Name = "Log in" }).ClickAsync();
        await Expect(page).ToHaveURLAsync(new Regex("/device\\?id=pump-7$"));
        await Expect(page.Locator(".title-line .badge")).ToHaveTextAsync("disabled");
    }

    [Fact]
    public async Task ApiKeyMadeInTheConsole_IsListedWithTheScopeChosen_AndAReadKeyOnlyReads()
    {
        await using var gw = await TestGateway.StartAsync();
        await using var s = await ConsoleSession.LogInAsync(browser.Browser, gw);
        var page = s.Page;
        await page.GotoAsync("/config");

        await page.GetByLabel("What is it for?").FillAsync("prometheus");
        await page.GetByLabel("Scope").SelectOptionAsync("read");
        await page.GetByRole(AriaRole.Button, new() { Name = "Create API key" }).ClickAsync();
        var shown = page.Locator("#new-api-key");
        await Expect(shown).ToBeVisibleAsync();
        string key = (await shown.TextContentAsync())!;
        await Expect(page.Locator("#api-keys tr", new() { HasText = "prometheus" })).ToContainTextAsync("read");
        await Expect(page.Locator("#api-keys tr", new() { HasText = "local CLI" })).ToContainTextAsync("admin");
        await s.AssertAccessibleAsync();

        using var scraper = new HttpClient { BaseAddress = gw.ConsoleAddress };
        scraper.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", key);
        Assert.Equal(System.Net.HttpStatusCode.OK, (await scraper.GetAsync("/metrics")).StatusCode);
        Assert.Equal(System.Net.HttpStatusCode.Forbidden, (await scraper.PostAsync("/api/v1/devices/dev-1/disable", null)).StatusCode);
    }

    [Fact]
    public async Task RejectedAlertWhoseHandlingFailed_RetriedFromItsJourney_IsRoutedAndMailed_AMalformedOneOffersNoRetry()
    {
        await using var gw = await TestGateway.StartAsync();
        gw.Logs.Expect(e => e.Message.StartsWith("Handling alert ui-poison from dev-1 failed", StringComparison.Ordinal));
        await using var s = await ConsoleSession.LogInAsync(browser.Browser, gw);
        var page = s.Page;

        // A bug in the handling of dev-1's alerts while it lasts, as the gateway tests' IngestFault throws it.
        bool faulty = true;
        gw.Host.Services.GetRequiredService<EdgeMail.Gateway.Devices.DevicePresence>().Heard += d =>
        {
            if (d == "dev-1" && Volatile.Read(ref faulty))
            {
                throw new InvalidOperationException("a fault of this alert's own (test)");
            }
        };
        var device = await gw.ConnectAsync("dev-1");
        await Device.PublishAlertAsync(device, "dev-1", Alerts.Json("ui-poison", code: "FREEZER_TEMP_HIGH"));
        Volatile.Write(ref faulty, false);
        await Device.PublishAlertAsync(device, "dev-1", Alerts.Json("ui-bad", code: "not a code"));
        var rows = (await gw.Spool.QueryAlertsAsync(new EdgeMail.Gateway.Spool.AlertQuery("dev-1"), default)).ToDictionary(a => a.AlertId, a => a.RowId);

        // The payload was at fault: nothing to retry.
        await page.GotoAsync($"/alert?id={rows["ui-bad"]}");
        await Expect(page.Locator("#received")).ToContainTextAsync("code must match");
        await Expect(page.GetByRole(AriaRole.Button, new() { Name = "Retry" })).ToHaveCountAsync(0);

        // The gateway was: retried, it is routed and mailed, and the page follows.
        await page.GotoAsync($"/alert?id={rows["ui-poison"]}");
        await Expect(page.Locator("#received")).ToContainTextAsync("handling failed: InvalidOperationException");
        await s.AssertAccessibleAsync();
        await page.GetByRole(AriaRole.Button, new() { Name = "Retry" }).ClickAsync();
        await Expect(page.GetByRole(AriaRole.Status).Filter(new() { HasText = "Retried" })).ToBeVisibleAsync();
        await Expect(page.Locator("#mail .recipient")).ToContainTextAsync("alice@example.com");
        await Expect(page.Locator(".title-line").First).ToContainTextAsync("routed");
        await Expect(page.GetByRole(AriaRole.Button, new() { Name = "Retry" })).ToHaveCountAsync(0);
        await gw.MailAsync(1);
    }

    private static Regex LoginUrl() => new("/login(\\?.*)?$");
}
