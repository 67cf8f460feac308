using System.Net;
using System.Net.Http.Json;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Web;
using EdgeMail.Gateway.Web.Api;
using EdgeMail.Testing;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Web;

/// <summary>
/// The console has no default password, refuses every route to a stranger (but the few that must be public), guards
/// cookie sessions against CSRF, throttles password guessing, and accepts only live API keys.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ConsoleSecurityTests
{
    // What a stranger may reach: the login and setup pages, logging in and setting up, and what those pages load.
    private static readonly HashSet<string> Public = new(StringComparer.Ordinal)
    {
        "GET /login", "GET /setup", "GET /api/v1/setup", "POST /api/v1/setup", "POST /api/v1/login", "GET /ui/{file}", "GET /livez", "GET /readyz",
    };

    [Fact]
    public async Task EveryRoute_RefusesAnUnauthenticatedRequest_ExceptThePublicOnes()
    {
        await using var gw = await TestGateway.StartAsync();
        var console = gw.Host.Services.GetRequiredService<ConsoleServer>();
        var endpoints = console.Services!.GetRequiredService<EndpointDataSource>().Endpoints.OfType<RouteEndpoint>().ToList();
        using var http = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false }) { BaseAddress = gw.ConsoleAddress };
        var checkedRoutes = new List<string>();
        foreach (var endpoint in endpoints)
        {
            string pattern = "/" + endpoint.RoutePattern.RawText!.TrimStart('/');
            foreach (string method in endpoint.Metadata.GetMetadata<HttpMethodMetadata>()?.HttpMethods ?? ["GET"])
            {
                string route = $"{method} {pattern}";
                checkedRoutes.Add(route);
                string path = System.Text.RegularExpressions.Regex.Replace(pattern, @"\{(\w+)(:[^}]*)?\}", m => m.Groups[2].Value.Contains("long", StringComparison.Ordinal) ? "1" : "x");
                using var request = new HttpRequestMessage(new HttpMethod(method), path);
                if (method != "GET")
                {
                    request.Content = JsonContent.Create(new { });
                }

                using var response = await http.SendAsync(request);
                if (Public.Contains(route))
                {
                    continue;
                }

                // A page sends the browser to the login page; everything else answers 401.
                bool page = method == "GET" && (pattern == "/" || ConsoleEndpoints.Pages.Contains(pattern.TrimStart('/')));
                bool refused = page
                    ? response.StatusCode == HttpStatusCode.Redirect && response.Headers.Location?.ToString() == "/login"
                    : response.StatusCode == HttpStatusCode.Unauthorized;
                Assert.True(refused, $"{route} answered {(int)response.StatusCode} to a stranger");
            }
        }

        // The check saw the routes that matter (a broken enumeration must not pass vacuously).
        Assert.Contains("GET /api/v1/devices", checkedRoutes);
        Assert.Contains("POST /api/v1/devices/{id}/disable", checkedRoutes);
        Assert.Contains("POST /api/v1/alerts/{rowId:long}/retry", checkedRoutes);
        Assert.Contains("GET /api/v1/openapi.json", checkedRoutes);
        Assert.Contains("GET /", checkedRoutes);
        Assert.Contains("GET /metrics", checkedRoutes);
        Assert.True(checkedRoutes.Count > 40, $"only {checkedRoutes.Count} routes found");
    }

    [Fact]
    public async Task NoDefaultPassword_SetupLinkWorksOnce_ThenLoginWithCsrfOnChanges()
    {
        await using var gw = await TestGateway.StartAsync();
        var auth = gw.Host.Services.GetRequiredService<ConsoleAuth>();
        using var browser = new HttpClient(new HttpClientHandler { CookieContainer = new CookieContainer() }) { BaseAddress = gw.ConsoleAddress };

        Assert.True((await browser.GetFromJsonAsync<SetupState>("/api/v1/setup"))!.Needed);
        Assert.Equal(HttpStatusCode.Conflict, (await browser.PostAsJsonAsync("/api/v1/login", new { password = "anything-at-all" })).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await browser.PostAsJsonAsync("/api/v1/setup", new { token = "guessed", password = "long enough password" })).StatusCode);
        string token = auth.SetupToken!;
        var shortPassword = await browser.PostAsJsonAsync("/api/v1/setup", new { token, password = "short" });
        Assert.Equal(HttpStatusCode.BadRequest, shortPassword.StatusCode);
        Assert.Contains("12 characters", await shortPassword.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.NoContent, (await browser.PostAsJsonAsync("/api/v1/setup", new { token, password = "correct horse battery" })).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await browser.PostAsJsonAsync("/api/v1/setup", new { token, password = "another long password" })).StatusCode);

        // Logged in by the setup; a change needs the session's CSRF token.
        Assert.Equal(HttpStatusCode.OK, (await browser.GetAsync("/api/v1/dashboard")).StatusCode);
        var noToken = await browser.PostAsJsonAsync("/api/v1/api-keys", new { name = "x", scope = "read" });
        Assert.Equal(HttpStatusCode.BadRequest, noToken.StatusCode);
        Assert.Contains("X-CSRF-Token", await noToken.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        var session = await browser.GetFromJsonAsync<SessionInfo>("/api/v1/session");
        using var withToken = new HttpRequestMessage(HttpMethod.Post, "/api/v1/api-keys") { Content = JsonContent.Create(new { name = "script", scope = "read" }) };
        withToken.Headers.Add(ConsoleServer.CsrfHeader, session!.CsrfToken);
        Assert.Equal(HttpStatusCode.OK, (await browser.SendAsync(withToken)).StatusCode);

        // Logged out, the password logs in again; the session cookie is HttpOnly and SameSite=Strict.
        using var logout = new HttpRequestMessage(HttpMethod.Post, "/api/v1/logout");
        logout.Headers.Add(ConsoleServer.CsrfHeader, session.CsrfToken);
        Assert.Equal(HttpStatusCode.NoContent, (await browser.SendAsync(logout)).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await browser.GetAsync("/api/v1/dashboard")).StatusCode);
        var login = await browser.PostAsJsonAsync("/api/v1/login", new { password = "correct horse battery" });
        Assert.Equal(HttpStatusCode.NoContent, login.StatusCode);
        string cookie = login.Headers.GetValues("Set-Cookie").Single(c => c.StartsWith("edgemail_console=", StringComparison.Ordinal));
        Assert.Contains("httponly", cookie, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("samesite=strict", cookie, StringComparison.OrdinalIgnoreCase);
        Assert.Equal(HttpStatusCode.OK, (await browser.GetAsync("/api/v1/dashboard")).StatusCode);
    }

    [Fact]
    public async Task SetupLink_StopsWorking_OnceAPasswordIsSetOnTheSpoolElsewhere()
    {
        await using var gw = await TestGateway.StartAsync();
        string token = gw.Host.Services.GetRequiredService<ConsoleAuth>().SetupToken!;

        // Another instance on a shared spool, or edgemail admin set-password writing the spool directly.
        const string elsewhere = "set by the CLI on the spool";
        await gw.Spool.SetAdminPasswordHashAsync(SecretHash.Create(elsewhere, 1000), default);
        using var http = new HttpClient(new HttpClientHandler { UseCookies = false }) { BaseAddress = gw.ConsoleAddress };
        Assert.False((await http.GetFromJsonAsync<SetupState>("/api/v1/setup"))!.Needed);
        var setup = await http.PostAsJsonAsync("/api/v1/setup", new { token, password = "the setup link's password" });
        Assert.Equal(HttpStatusCode.BadRequest, setup.StatusCode);
        Assert.False(setup.Headers.Contains("Set-Cookie"));

        Assert.Equal(HttpStatusCode.Unauthorized, (await http.PostAsJsonAsync("/api/v1/login", new { password = "the setup link's password" })).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await http.PostAsJsonAsync("/api/v1/login", new { password = elsewhere })).StatusCode);
    }

    [Fact]
    public async Task WrongPasswords_AreThrottled_AndSecurityHeadersAreSet()
    {
        await using var gw = await TestGateway.StartAsync();
        Assert.Null(await gw.Host.Services.GetRequiredService<ConsoleAuth>().SetPasswordAsync("correct horse battery", default));
        using var http = new HttpClient { BaseAddress = gw.ConsoleAddress };
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal(HttpStatusCode.Unauthorized, (await http.PostAsJsonAsync("/api/v1/login", new { password = "guess " + i })).StatusCode);
        }

        var throttled = await http.PostAsJsonAsync("/api/v1/login", new { password = "correct horse battery" });
        Assert.Equal(HttpStatusCode.TooManyRequests, throttled.StatusCode); // even the right one, for a while

        var page = await http.GetAsync("/login");
        Assert.Equal("nosniff", page.Headers.GetValues("X-Content-Type-Options").Single());
        Assert.Equal("DENY", page.Headers.GetValues("X-Frame-Options").Single());
        Assert.Contains("default-src 'self'", page.Headers.GetValues("Content-Security-Policy").Single(), StringComparison.Ordinal);
        Assert.Equal("no-referrer", page.Headers.GetValues("Referrer-Policy").Single());
        Assert.False(page.Headers.Contains("Server"));
    }

    // Behind a reverse proxy every browser comes from the proxy's address: with the proxy trusted, the throttle counts
    // the address it forwards, so one person's wrong passwords do not lock out everyone else.
    [Fact]
    public async Task WrongPasswords_BehindATrustedProxy_AreCountedByTheForwardedAddress()
    {
        await using var gw = await TestGateway.StartAsync(c => c["Console"] = new { Port = 0, TrustedProxies = new[] { "127.0.0.0/8" } });
        Assert.Null(await gw.Host.Services.GetRequiredService<ConsoleAuth>().SetPasswordAsync(Password, default));
        using var http = new HttpClient(new HttpClientHandler { UseCookies = false }) { BaseAddress = gw.ConsoleAddress };
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal(HttpStatusCode.Unauthorized, (await LoginViaProxyAsync(http, "guess " + i, "203.0.113.5")).StatusCode);
        }

        Assert.Equal(HttpStatusCode.TooManyRequests, (await LoginViaProxyAsync(http, Password, "203.0.113.5")).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await LoginViaProxyAsync(http, Password, "203.0.113.6")).StatusCode);
    }

    // Not configured, the header is nobody's word: a guesser who sends a new X-Forwarded-For each time is still one address.
    [Fact]
    public async Task WrongPasswords_WithForwardedHeadersFromAnUntrustedPeer_AreCountedByThePeersAddress()
    {
        await using var gw = await TestGateway.StartAsync();
        Assert.Null(await gw.Host.Services.GetRequiredService<ConsoleAuth>().SetPasswordAsync(Password, default));
        using var http = new HttpClient(new HttpClientHandler { UseCookies = false }) { BaseAddress = gw.ConsoleAddress };
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal(HttpStatusCode.Unauthorized, (await LoginViaProxyAsync(http, "guess " + i, $"203.0.113.{i + 10}")).StatusCode);
        }

        Assert.Equal(HttpStatusCode.TooManyRequests, (await LoginViaProxyAsync(http, Password, "203.0.113.99")).StatusCode);
    }

    [Theory]
    [InlineData("proxy.example.com")]
    [InlineData("10.0.0.0/33")]
    public void TrustedProxies_ThatAreNeitherAddressNorNetwork_AreRefusedWithTheKey(string proxy)
    {
        var errors = ConsoleOptionsValidator.Check(new ConsoleOptions { TrustedProxies = ["127.0.0.1", "10.0.0.0/8", proxy] });

        Assert.Equal($"Console:TrustedProxies:2: '{proxy}' is neither an IP address nor a network. Fix: give the proxy's address or network, e.g. 127.0.0.1 or 10.0.0.0/8.",
            Assert.Single(errors));
    }

    [Fact]
    public void ConsoleOptions_EveryProblem_NamesTheKeyAndTheFix()
    {
        var errors = ConsoleOptionsValidator.Check(new ConsoleOptions { BindAddress = "localhost", Port = 70000, TrustedProxies = ["proxy.example.com"], PublicUrl = "ftp://gw1.example.com" });

        Assert.Equal(
        [
            "Console:BindAddress: 'localhost' is not an IP address. Fix: use 127.0.0.1 (this machine only), or 0.0.0.0 for every interface (then served over TLS only).",
            "Console:Port: 70000 is not a TCP port. Fix: use 8088, or 0 to let the OS choose.",
            "Console:TrustedProxies:0: 'proxy.example.com' is neither an IP address nor a network. Fix: give the proxy's address or network, e.g. 127.0.0.1 or 10.0.0.0/8.",
            "Console:PublicUrl: 'ftp://gw1.example.com' is not an http(s) URL. Fix: give the address a browser uses, e.g. https://gw1.example.com:8088.",
        ], errors);
    }

    private static async Task<HttpResponseMessage> LoginViaProxyAsync(HttpClient http, string password, string forwardedFor)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/api/v1/login") { Content = JsonContent.Create(new { password }) };
        request.Headers.Add("X-Forwarded-For", forwardedFor);
        request.Headers.Add("X-Forwarded-Proto", "https");
        return await http.SendAsync(request);
    }

    [Fact]
    public async Task WrongPasswordsInParallel_OnlyTheLimitIsChecked_TheRestAreRefusedAt429()
    {
        await using var gw = await TestGateway.StartAsync();
        Assert.Null(await gw.Host.Services.GetRequiredService<ConsoleAuth>().SetPasswordAsync(Password, default));
        using var http = new HttpClient { BaseAddress = gw.ConsoleAddress };

        // Counted only after each (deliberately slow) check, a burst from one address was checked in full: no 429, every core busy.
        var answers = await Task.WhenAll(Enumerable.Range(0, 20).Select(i => http.PostAsJsonAsync("/api/v1/login", new { password = "parallel guess " + i })));
        var statuses = answers.Select(a => a.StatusCode).ToList();
        Assert.Equal(5, statuses.Count(s => s == HttpStatusCode.Unauthorized));
        Assert.Equal(15, statuses.Count(s => s == HttpStatusCode.TooManyRequests));
        Assert.Equal(HttpStatusCode.TooManyRequests, (await http.PostAsJsonAsync("/api/v1/login", new { password = Password })).StatusCode);
    }

    [Fact]
    public async Task RightPasswords_DoNotUseUpTheAllowanceForWrongOnes()
    {
        await using var gw = await TestGateway.StartAsync();
        Assert.Null(await gw.Host.Services.GetRequiredService<ConsoleAuth>().SetPasswordAsync(Password, default));
        using var http = new HttpClient(new HttpClientHandler { UseCookies = false }) { BaseAddress = gw.ConsoleAddress };
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(HttpStatusCode.Unauthorized, (await http.PostAsJsonAsync("/api/v1/login", new { password = "guess " + i })).StatusCode);
        }

        Assert.Equal(HttpStatusCode.NoContent, (await http.PostAsJsonAsync("/api/v1/login", new { password = Password })).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await http.PostAsJsonAsync("/api/v1/login", new { password = "guess 5" })).StatusCode);
        Assert.Equal(HttpStatusCode.TooManyRequests, (await http.PostAsJsonAsync("/api/v1/login", new { password = "guess 6" })).StatusCode);
    }

    [Fact]
    public async Task Logout_EndsTheSession_TheOldCookieAndItsCsrfTokenAreRefused()
    {
        await using var gw = await TestGateway.StartAsync();
        Assert.Null(await gw.Host.Services.GetRequiredService<ConsoleAuth>().SetPasswordAsync(Password, default));
        var (browser, cookies, csrf) = await LogInAsync(gw, Password);
        using (browser)
        {
            Assert.Equal(HttpStatusCode.NoContent, (await browser.SendAsync(Change(HttpMethod.Post, "/api/v1/logout", csrf))).StatusCode);
        }

        // Someone who copied the cookie (and the token) before the logout gets nothing with them.
        using var replay = Replay(gw, cookies);
        Assert.Equal(HttpStatusCode.Unauthorized, (await replay.GetAsync("/api/v1/dashboard")).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await replay.SendAsync(Change(HttpMethod.Post, "/api/v1/api-keys", csrf, new { name = "kept", scope = "admin" }))).StatusCode);
    }

    [Fact]
    public async Task PasswordChange_NeedsTheCurrentPasswordFromASession_AndEndsEverySession()
    {
        await using var gw = await TestGateway.StartAsync();
        Assert.Null(await gw.Host.Services.GetRequiredService<ConsoleAuth>().SetPasswordAsync(Password, default));
        var (changer, changerCookies, csrf) = await LogInAsync(gw, Password);
        var (other, otherCookies, _) = await LogInAsync(gw, Password);
        using (changer)
        using (other)
        {
            const string next = "a brand new admin password";
            var noCurrent = await changer.SendAsync(Change(HttpMethod.Post, "/api/v1/password", csrf, new { password = next }));
            Assert.Equal(HttpStatusCode.BadRequest, noCurrent.StatusCode);
            Assert.Contains("current", await noCurrent.Content.ReadAsStringAsync(), StringComparison.Ordinal);
            Assert.Equal(HttpStatusCode.BadRequest, (await changer.SendAsync(Change(HttpMethod.Post, "/api/v1/password", csrf, new { current = "a wrong guess!", password = next }))).StatusCode);
            Assert.Equal(HttpStatusCode.OK, (await other.GetAsync("/api/v1/dashboard")).StatusCode); // nothing changed yet

            Assert.Equal(HttpStatusCode.NoContent, (await changer.SendAsync(Change(HttpMethod.Post, "/api/v1/password", csrf, new { current = Password, password = next }))).StatusCode);

            // Every session opened with the old password has ended, the one that changed it too, whoever holds its cookie.
            using var replayChanger = Replay(gw, changerCookies);
            using var replayOther = Replay(gw, otherCookies);
            Assert.Equal(HttpStatusCode.Unauthorized, (await replayChanger.GetAsync("/api/v1/dashboard")).StatusCode);
            Assert.Equal(HttpStatusCode.Unauthorized, (await replayOther.GetAsync("/api/v1/dashboard")).StatusCode);
            Assert.Equal(HttpStatusCode.Unauthorized, (await replayChanger.SendAsync(Change(HttpMethod.Post, "/api/v1/api-keys", csrf, new { name = "kept", scope = "admin" }))).StatusCode);
            var (again, _, _) = await LogInAsync(gw, next);
            again.Dispose();
        }

        // A script with an API key sets a password without the current one (edgemail admin set-password does that).
        using var api = await gw.ApiAsync();
        Assert.Equal(HttpStatusCode.NoContent, (await api.PostAsJsonAsync("/api/v1/password", new { password = Password })).StatusCode);
    }

    [Fact]
    public async Task PasswordSetOnTheSpoolElsewhere_EndsTheSessionsOfTheOldOne()
    {
        var clock = new FakeTimeProvider(new DateTimeOffset(2026, 11, 28, 9, 0, 0, TimeSpan.Zero));
        await using var gw = await TestGateway.StartAsync(null, s => s.AddSingleton<TimeProvider>(clock));
        Assert.Null(await gw.Host.Services.GetRequiredService<ConsoleAuth>().SetPasswordAsync(Password, default));
        var (browser, _, _) = await LogInAsync(gw, Password);
        using (browser)
        {
            // Another instance on a shared spool, or edgemail admin set-password with the gateway's API out of reach.
            await gw.Spool.SetAdminPasswordHashAsync(SecretHash.Create("set by another instance", 1000), default);
            clock.Advance(TimeSpan.FromSeconds(6));
            Assert.Equal(HttpStatusCode.Unauthorized, (await browser.GetAsync("/api/v1/dashboard")).StatusCode);
        }
    }

    [Fact]
    public async Task ApiKey_WorksUntilRevoked_AndIsStoredOnlyAsAHash()
    {
        await using var gw = await TestGateway.StartAsync();
        using var api = await gw.ApiAsync();
        var created = await (await api.PostAsJsonAsync("/api/v1/api-keys", new { name = "monitoring", scope = "read" })).Content.ReadFromJsonAsync<NewApiKey>();
        using var other = new HttpClient { BaseAddress = gw.ConsoleAddress };
        other.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", created!.Key);

        Assert.Equal(HttpStatusCode.OK, (await other.GetAsync("/api/v1/devices")).StatusCode);
        string spoolText = await SpoolTextAsync(gw);
        Assert.DoesNotContain(created.Key.Split('.')[1], spoolText, StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.NoContent, (await api.DeleteAsync($"/api/v1/api-keys/{created.Id}")).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await other.GetAsync("/api/v1/devices")).StatusCode);

        // The local CLI's key sits in the data directory, readable by the service's user only.
        string cliKey = Path.Combine(gw.DataDir, ConsoleAuth.CliKeyFileName);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(cliKey));
        using var cli = new HttpClient { BaseAddress = gw.ConsoleAddress };
        cli.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", File.ReadAllText(cliKey).Trim());
        Assert.Equal(HttpStatusCode.OK, (await cli.GetAsync("/api/v1/dashboard")).StatusCode);
    }

    [Fact]
    public async Task Events_OpenedWithASession_AreEndedByTheServer_WhenItLogsOut()
    {
        await using var gw = await TestGateway.StartAsync();
        Assert.Null(await gw.Host.Services.GetRequiredService<ConsoleAuth>().SetPasswordAsync(Password, default));
        var (browser, _, csrf) = await LogInAsync(gw, Password);
        using (browser)
        {
            using var events = await EventStream.OpenAsync(browser);
            Assert.Equal(HttpStatusCode.NoContent, (await browser.SendAsync(Change(HttpMethod.Post, "/api/v1/logout", csrf))).StatusCode);
            await events.AssertEndedByTheServerAsync("the logout");
        }
    }

    [Fact]
    public async Task Events_OpenedWithASession_AreEndedByTheServer_WhenThePasswordChanges()
    {
        await using var gw = await TestGateway.StartAsync();
        Assert.Null(await gw.Host.Services.GetRequiredService<ConsoleAuth>().SetPasswordAsync(Password, default));
        var (browser, _, _) = await LogInAsync(gw, Password);
        using var api = await gw.ApiAsync();
        using (browser)
        {
            using var events = await EventStream.OpenAsync(browser);
            Assert.Equal(HttpStatusCode.NoContent, (await api.PostAsJsonAsync("/api/v1/password", new { password = "a brand new admin password" })).StatusCode);
            await events.AssertEndedByTheServerAsync("the password change");
        }
    }

    [Fact]
    public async Task Events_OpenedWithASession_AreEnded_WhenAPasswordIsSetOnTheSpoolElsewhere()
    {
        var clock = new FakeTimeProvider(new DateTimeOffset(2026, 11, 28, 9, 0, 0, TimeSpan.Zero));
        await using var gw = await TestGateway.StartAsync(null, s => s.AddSingleton<TimeProvider>(clock));
        Assert.Null(await gw.Host.Services.GetRequiredService<ConsoleAuth>().SetPasswordAsync(Password, default));
        var (browser, _, _) = await LogInAsync(gw, Password);
        using (browser)
        {
            // No request of this session comes to find out: the stream itself must look again.
            using var events = await EventStream.OpenAsync(browser);
            await gw.Spool.SetAdminPasswordHashAsync(SecretHash.Create("set by another instance", 1000), default);
            clock.Advance(TimeSpan.FromSeconds(6));
            await events.AssertEndedByTheServerAsync("a password set by another instance");
        }
    }

    [Fact]
    public async Task Events_OpenedWithAnApiKey_AreEndedByTheServer_WhenTheKeyIsRevoked()
    {
        await using var gw = await TestGateway.StartAsync();
        using var admin = await gw.ApiAsync();
        var created = await CreateKeyAsync(admin, "dashboard screen", "read");
        using var screen = Bearer(gw, created.GetProperty("key").GetString()!);
        using var events = await EventStream.OpenAsync(screen);

        Assert.Equal(HttpStatusCode.NoContent, (await admin.DeleteAsync($"/api/v1/api-keys/{created.GetProperty("id").GetString()}")).StatusCode);
        await events.AssertEndedByTheServerAsync("the key's revocation");
    }

    [Fact]
    public async Task Events_AreEndedByTheServer_WhenTheGatewayStops_WhichDoesNotWaitForThem()
    {
        var gw = await TestGateway.StartAsync();
        try
        {
            using var api = await gw.ApiAsync();
            using var events = await EventStream.OpenAsync(api);

            // Left open, the stream held the stop for the whole shutdown timeout (over a minute), then was cut.
            var stopped = gw.StopAsync();
            await events.AssertEndedByTheServerAsync("the gateway began to stop");
            await Await.Within(stopped.ContinueWith(_ => true, TaskScheduler.Default), "the gateway to stop");
            await stopped;
        }
        finally
        {
            Directory.Delete(gw.DataDir, recursive: true);
        }
    }

    [Fact]
    public async Task ReadKey_ReadsScrapesAndStreams_ButEachKindOfWriteIsRefused403_WhichAnAdminKeyMayDo()
    {
        int closed = Loopback.FreePort();
        await using var gw = await TestGateway.StartAsync(c => c["Relay"] = new
        {
            Mode = "Smarthost", Host = "127.0.0.1", Port = closed, Security = "None", Backoff = new[] { "01:00:00" },
        });
        var auth = gw.Host.Services.GetRequiredService<ConsoleAuth>();
        using var admin = await gw.ApiAsync();
        var created = await CreateKeyAsync(admin, "prometheus", "read");
        Assert.Equal("read", created.GetProperty("scope").GetString());
        string readKeyId = created.GetProperty("id").GetString()!;
        using var reader = Bearer(gw, created.GetProperty("key").GetString()!);

        // A mail waiting in the queue, for the cancel.
        using (var device = await gw.ConnectAsync("dev-1"))
        {
            await EdgeMail.Gateway.Tests.Operations.ContainmentTests.PublishAsync(device, "dev-1", Alerts.Json("scoped-1"));
        }

        // Routing, composition and a refused connection: seconds on a CI machine busy with other test hosts, so not the default wait.
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("dev-1.scoped-1.alert@gw.test", default))?.Attempts == 1, "the first, failing attempt",
            TimeSpan.FromSeconds(60));
        long rowId = (await gw.Spool.GetMessageAsync("dev-1.scoped-1.alert@gw.test", default))!.RowId;

        // Reading: the API, /metrics, /events.
        Assert.Equal(HttpStatusCode.OK, (await reader.GetAsync("/api/v1/devices")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await reader.GetAsync($"/api/v1/queue/{rowId}")).StatusCode);
        Assert.Contains("edgemail_alerts_received_total", await reader.GetStringAsync("/metrics"), StringComparison.Ordinal);
        using (await EventStream.OpenAsync(reader))
        {
        }

        // Each kind of change is refused, saying why, and changes nothing.
        var writes = new (HttpMethod Method, string Path, object? Body)[]
        {
            (HttpMethod.Post, "/api/v1/password", new { password = "a scraper's own password" }),
            (HttpMethod.Post, "/api/v1/devices", new { id = "pump-9", owners = new[] { "alice" } }),
            (HttpMethod.Post, "/api/v1/api-keys", new { name = "escalated", scope = "admin" }),
            (HttpMethod.Delete, $"/api/v1/api-keys/{readKeyId}", null),
            (HttpMethod.Post, $"/api/v1/queue/{rowId}/cancel", new { reason = "not the scraper's call" }),
            (HttpMethod.Get, "/api/v1/api-keys", null), // managing keys starts with seeing them
        };
        foreach (var (method, path, body) in writes)
        {
            using var request = new HttpRequestMessage(method, path) { Content = body is null ? null : JsonContent.Create(body) };
            using var refused = await reader.SendAsync(request);
            Assert.True(refused.StatusCode == HttpStatusCode.Forbidden, $"{method} {path} answered {(int)refused.StatusCode} to a read key");
            Assert.Equal("application/problem+json", refused.Content.Headers.ContentType?.MediaType);
            var problem = await refused.Content.ReadFromJsonAsync<System.Text.Json.JsonElement>();
            Assert.Equal(403, problem.GetProperty("status").GetInt32());
            Assert.Contains("scope 'read'", problem.GetProperty("detail").GetString(), StringComparison.Ordinal);
            Assert.Equal(problem.GetProperty("detail").GetString(), problem.GetProperty("error").GetString()); // what the console and the CLI show
        }

        Assert.True(auth.NeedsSetup);
        Assert.DoesNotContain(await gw.Spool.ManagedDevicesAsync(default), d => d.Id == "pump-9");
        Assert.Equal("queued", (await gw.Spool.GetMessageAsync("dev-1.scoped-1.alert@gw.test", default))!.Status);
        var keys = await admin.GetFromJsonAsync<List<System.Text.Json.JsonElement>>("/api/v1/api-keys");
        Assert.DoesNotContain(keys!, k => k.GetProperty("name").GetString() == "escalated");
        Assert.True(keys!.Single(k => k.GetProperty("id").GetString() == readKeyId).GetProperty("revokedAt").ValueKind == System.Text.Json.JsonValueKind.Null);

        // An admin key may do each.
        Assert.Equal(HttpStatusCode.NoContent, (await admin.PostAsJsonAsync("/api/v1/password", new { password = Password })).StatusCode);
        Assert.Equal(HttpStatusCode.Created, (await admin.PostAsJsonAsync("/api/v1/devices", new { id = "pump-9", owners = new[] { "alice" } })).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await admin.PostAsJsonAsync("/api/v1/api-keys", new { name = "another admin", scope = "admin" })).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await admin.PostAsJsonAsync($"/api/v1/queue/{rowId}/cancel", new { reason = "relay replaced" })).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await admin.DeleteAsync($"/api/v1/api-keys/{readKeyId}")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await admin.DeleteAsync($"/api/v1/api-keys/{readKeyId}")).StatusCode); // revoked already
        Assert.Equal(HttpStatusCode.Unauthorized, (await reader.GetAsync("/api/v1/devices")).StatusCode);
    }

    [Theory]
    [InlineData("{\"name\":\"x\",\"scope\":\"write\"}")]
    [InlineData("{\"name\":\"x\",\"scope\":\"\"}")]
    [InlineData("{\"name\":\"x\",\"scope\":\"Admin \"}")]
    [InlineData("{\"name\":\"x\",\"scope\":null}")]
    [InlineData("{\"name\":\"x\"}")] // a key's power is chosen, never assumed
    public async Task ApiKey_WithoutAValidScope_IsRefused400_AndNoneIsCreated(string body)
    {
        await using var gw = await TestGateway.StartAsync();
        using var admin = await gw.ApiAsync();
        int before = (await admin.GetFromJsonAsync<List<System.Text.Json.JsonElement>>("/api/v1/api-keys"))!.Count;

        using var content = new StringContent(body, System.Text.Encoding.UTF8, "application/json");
        var refused = await admin.PostAsync("/api/v1/api-keys", content);

        Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
        Assert.StartsWith("scope: 'read' or 'admin'", (await refused.Content.ReadFromJsonAsync<ApiError>())!.Error, StringComparison.Ordinal);
        Assert.Equal(before, (await admin.GetFromJsonAsync<List<System.Text.Json.JsonElement>>("/api/v1/api-keys"))!.Count);
    }

    [Fact]
    public async Task KeyList_AndOpenApi_ShowEachKeysScope_AndWhatEachOperationNeeds()
    {
        await using var gw = await TestGateway.StartAsync();
        using var admin = await gw.ApiAsync();
        await CreateKeyAsync(admin, "prometheus", "read");

        var keys = (await admin.GetFromJsonAsync<List<System.Text.Json.JsonElement>>("/api/v1/api-keys"))!;
        Assert.Equal("read", keys.Single(k => k.GetProperty("name").GetString() == "prometheus").GetProperty("scope").GetString());
        Assert.Equal("admin", keys.Single(k => k.GetProperty("name").GetString() == "tests").GetProperty("scope").GetString());
        Assert.Equal("admin", keys.Single(k => k.GetProperty("name").GetString()!.StartsWith("local CLI", StringComparison.Ordinal)).GetProperty("scope").GetString());

        var openApi = await admin.GetFromJsonAsync<System.Text.Json.JsonElement>("/api/v1/openapi.json");
        var paths = openApi.GetProperty("paths");
        string Scope(string path, string method) => paths.GetProperty(path).GetProperty(method).GetProperty("x-edgemail-scope").GetString()!;
        Assert.Equal("read", Scope("/api/v1/devices", "get"));
        Assert.Equal("read", Scope("/api/v1/events", "get"));
        Assert.Equal("admin", Scope("/api/v1/devices", "post"));
        Assert.Equal("admin", Scope("/api/v1/api-keys", "get"));
        Assert.Equal("admin", Scope("/api/v1/api-keys", "post"));
        Assert.Equal("admin", Scope("/api/v1/password", "post"));
        Assert.Contains("scope `admin`", paths.GetProperty("/api/v1/password").GetProperty("post").GetProperty("description").GetString(), StringComparison.Ordinal);
        var scopeSchema = openApi.GetProperty("components").GetProperty("schemas").GetProperty("ApiKeyRequest").GetProperty("properties").GetProperty("scope");
        Assert.Equal(["read", "admin"], scopeSchema.GetProperty("enum").EnumerateArray().Select(e => e.GetString()));
    }

    [Fact]
    public async Task ApiKey_StoredBeforeKeysHadScopes_StillDoesEverything()
    {
        // A spool as the gateway left it before scopes (schema version 9), with a key made then.
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dataDir);
        const string secret = "a-secret-from-before-scopes";
        using (var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={Path.Combine(dataDir, "spool.db")};Pooling=False"))
        {
            connection.Open();
            using var command = connection.CreateCommand();
            command.CommandText = "CREATE TABLE schema_version(version INTEGER NOT NULL);" + string.Join(";", EdgeMail.Gateway.Spool.SpoolSchema.Migrations.Take(9))
                + ";INSERT INTO schema_version VALUES(9);INSERT INTO api_keys(id, name, hash, created_at) VALUES('0123456789ab', 'old script', $hash, 0);";
            command.Parameters.AddWithValue("$hash", Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(secret))));
            command.ExecuteNonQuery();
        }

        await using var gw = await TestGateway.StartAsync(null, null, dataDir: dataDir);
        using var old = Bearer(gw, "emk_0123456789ab." + secret);

        Assert.Equal(HttpStatusCode.Created, (await old.PostAsJsonAsync("/api/v1/devices", new { id = "pump-9", owners = new[] { "alice" } })).StatusCode);
        var keys = (await old.GetFromJsonAsync<List<System.Text.Json.JsonElement>>("/api/v1/api-keys"))!;
        Assert.Equal("admin", keys.Single(k => k.GetProperty("id").GetString() == "0123456789ab").GetProperty("scope").GetString());
        Assert.Equal(HttpStatusCode.NoContent, (await old.PostAsJsonAsync("/api/v1/password", new { password = Password })).StatusCode);
    }

    private const string Password = "correct horse battery";

    // A browser logged in: its client, what its cookie jar holds for the console, and its session's CSRF token.
    private static async Task<(HttpClient Client, string Cookies, string Csrf)> LogInAsync(TestGateway gw, string password)
    {
        var jar = new CookieContainer();
        var client = new HttpClient(new HttpClientHandler { CookieContainer = jar }) { BaseAddress = gw.ConsoleAddress };
        Assert.Equal(HttpStatusCode.NoContent, (await client.PostAsJsonAsync("/api/v1/login", new { password })).StatusCode);
        var session = await client.GetFromJsonAsync<SessionInfo>("/api/v1/session");
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/api/v1/dashboard")).StatusCode);
        return (client, jar.GetCookieHeader(gw.ConsoleAddress), session!.CsrfToken);
    }

    // A client that sends exactly these cookies, whatever the server answers.
    private static HttpClient Replay(TestGateway gw, string cookies)
    {
        var client = new HttpClient(new HttpClientHandler { UseCookies = false }) { BaseAddress = gw.ConsoleAddress };
        client.DefaultRequestHeaders.Add("Cookie", cookies);
        return client;
    }

    private static HttpRequestMessage Change(HttpMethod method, string path, string csrf, object? body = null)
    {
        var request = new HttpRequestMessage(method, path) { Content = body is null ? null : JsonContent.Create(body) };
        request.Headers.Add(ConsoleServer.CsrfHeader, csrf);
        return request;
    }

    private static HttpClient Bearer(TestGateway gw, string key)
    {
        var client = new HttpClient { BaseAddress = gw.ConsoleAddress };
        client.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", key);
        return client;
    }

    private static async Task<System.Text.Json.JsonElement> CreateKeyAsync(HttpClient admin, string name, string scope)
    {
        var created = await admin.PostAsJsonAsync("/api/v1/api-keys", new { name, scope });
        Assert.Equal(HttpStatusCode.OK, created.StatusCode);
        return await created.Content.ReadFromJsonAsync<System.Text.Json.JsonElement>();
    }

    // /api/v1/events, open and running (past its authentication: its first dashboard came).
    private sealed class EventStream : IDisposable
    {
        private readonly HttpResponseMessage _response;
        private readonly StreamReader _reader;

        private EventStream(HttpResponseMessage response, StreamReader reader)
        {
            _response = response;
            _reader = reader;
        }

        public static async Task<EventStream> OpenAsync(HttpClient client)
        {
            var response = await client.GetAsync("/api/v1/events", HttpCompletionOption.ResponseHeadersRead);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var stream = new EventStream(response, new StreamReader(await response.Content.ReadAsStreamAsync()));
            using var patience = new CancellationTokenSource(Await.DefaultTimeout);
            while (await stream._reader.ReadLineAsync(patience.Token) is { } line && line != "event: dashboard")
            {
            }

            return stream;
        }

        // The server must end the stream on its own (a clean end of the response, not a cut connection), promptly.
        public async Task AssertEndedByTheServerAsync(string after)
        {
            using var patience = new CancellationTokenSource(Await.DefaultTimeout);
            try
            {
                while (await _reader.ReadLineAsync(patience.Token) is not null)
                {
                }
            }
            catch (OperationCanceledException) when (patience.IsCancellationRequested)
            {
                Assert.Fail($"the event stream was still open {Await.DefaultTimeout.TotalSeconds:0} s after {after}");
            }
        }

        public void Dispose()
        {
            _reader.Dispose();
            _response.Dispose();
        }
    }

    // The spool's file and its WAL together hold everything committed.
    private static Task<string> SpoolTextAsync(TestGateway gw) =>
        Task.FromResult(string.Concat(Directory.GetFiles(gw.DataDir, "spool.db*").Where(f => !f.EndsWith(".lock", StringComparison.Ordinal)).Select(f =>
        {
            using var stream = new FileStream(f, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            using var reader = new StreamReader(stream, System.Text.Encoding.Latin1);
            return reader.ReadToEnd();
        })));
}
