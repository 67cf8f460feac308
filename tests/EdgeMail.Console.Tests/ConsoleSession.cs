using Deque.AxeCore.Commons;
using Deque.AxeCore.Playwright;
using EdgeMail.Gateway.Tests;
using EdgeMail.Gateway.Web;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Playwright;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Console.Tests;

/// <summary>
/// A browser context (its own cookies) on one gateway's console. Every script error, refused resource or
/// Content-Security-Policy violation the page reports is collected, and fails the test at dispose.
/// </summary>
public sealed class ConsoleSession : IAsyncDisposable
{
    public const string Password = "correct horse battery staple";

    private readonly List<string> _errors = [];

    private ConsoleSession(TestGateway gateway, IBrowserContext context, IPage page)
    {
        Gateway = gateway;
        Context = context;
        Page = page;
        Watch(page);
        context.Page += (_, p) => Watch(p);
    }

    public TestGateway Gateway { get; }

    public IBrowserContext Context { get; }

    public IPage Page { get; }

    /// <summary>A new browser context at laptop size, not logged in.</summary>
    public static async Task<ConsoleSession> OpenAsync(IBrowser browser, TestGateway gateway)
    {
        var context = await browser.NewContextAsync(new BrowserNewContextOptions
        {
            BaseURL = gateway.ConsoleAddress.ToString().TrimEnd('/'),
            ViewportSize = new ViewportSize { Width = 1440, Height = 900 },
            TimezoneId = "UTC",
            Locale = "en-GB",
        });
        var page = await context.NewPageAsync();
        return new ConsoleSession(gateway, context, page);
    }

    /// <summary>Sets the admin password the way <c>edgemail admin set-password</c> does, then logs in through the login page.</summary>
    public static async Task<ConsoleSession> LogInAsync(IBrowser browser, TestGateway gateway)
    {
        Assert.Null(await gateway.Host.Services.GetRequiredService<ConsoleAuth>().SetPasswordAsync(Password, default));
        var session = await OpenAsync(browser, gateway);
        await session.Page.GotoAsync("/login");
        await session.Page.GetByLabel("Password").FillAsync(Password);
        await session.Page.GetByRole(AriaRole.Button, new() { Name = "Log in" }).ClickAsync();
        await Assertions.Expect(session.Page.GetByRole(AriaRole.Heading, new() { Name = "Dashboard" })).ToBeVisibleAsync();
        return session;
    }

    /// <summary>Accepts the confirm() dialogs that destructive actions ask.</summary>
    public void AcceptDialogs() => Page.Dialog += (_, dialog) => dialog.AcceptAsync();

    /// <summary>Runs axe-core (WCAG 2 A and AA rules, shipped inside its NuGet package) on the page as it stands.</summary>
    public async Task AssertAccessibleAsync()
    {
        // Not inside the frames: they hold a mail, sandboxed with scripts off, where axe cannot run (and which is the
        // mail's own content, not the console's).
        // Only violations are needed: axe then keeps one node per passing rule instead of all, the bulk of its cost.
        var results = await Page.RunAxe(new AxeRunOptions { Iframes = false, ResultTypes = [ResultType.Violations] });
        var problems = results.Violations.Select(v => $"{v.Id} ({v.Impact}): {v.Help}\n    " + string.Join("\n    ", v.Nodes.Select(n => n.Html)));
        Assert.True(results.Violations.Length == 0, $"accessibility problems on {Page.Url}:\n" + string.Join("\n", problems));
    }

    /// <summary>What the page reported as errors so far.</summary>
    public IReadOnlyList<string> Errors
    {
        get
        {
            lock (_errors)
            {
                return [.. _errors];
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await Context.CloseAsync();
        Assert.True(Errors.Count == 0, "the console reported errors:\n" + string.Join("\n", Errors));
    }

    private void Watch(IPage page)
    {
        page.Console += (_, message) =>
        {
            // An API call answered 4xx (a wrong password, a refused action) is shown to the user; the tests that cause
            // one check what the page says. Any other error (a script, a missing asset, a CSP violation) is a bug.
            bool apiRefusal = message.Text.StartsWith("Failed to load resource: the server responded with a status of 4", StringComparison.Ordinal)
                && message.Location.Contains("/api/v1/", StringComparison.Ordinal);
            if (message.Type == "error" && !apiRefusal)
            {
                Add($"console: {message.Text} ({message.Location})");
            }
        };
        page.PageError += (_, error) => Add("script: " + error);
    }

    private void Add(string error)
    {
        lock (_errors)
        {
            _errors.Add(error);
        }
    }
}

/// <summary>Devices as the tests drive them: MQTT clients of the gateway's broker.</summary>
public static class Device
{
    public static async Task PublishAlertAsync(IMqttClient client, string device, string json)
    {
        var result = await client.PublishAsync(new MqttApplicationMessageBuilder()
            .WithTopic($"edgemail/v1/{device}/alert")
            .WithPayload(json)
            .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce)
            .Build());
        Assert.True(result.IsSuccess, $"PUBACK for {device}: {result.ReasonCode}");
    }

    public static async Task PublishStatusAsync(IMqttClient client, string device, string json)
    {
        var result = await client.PublishAsync(new MqttApplicationMessageBuilder()
            .WithTopic($"edgemail/v1/{device}/status")
            .WithPayload(json)
            .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce)
            .WithRetainFlag()
            .Build());
        Assert.True(result.IsSuccess, $"PUBACK for {device}'s status: {result.ReasonCode}");
    }
}
