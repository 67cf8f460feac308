using Microsoft.Playwright;

namespace EdgeMail.Console.Tests;

/// <summary>
/// Screenshots of the console's pages. They go beside the test binaries, or where <c>EDGEMAIL_CONSOLE_SCREENSHOTS</c>
/// points (<c>docs/console</c> when refreshing the documentation's pictures).
/// </summary>
public static class Screenshots
{
    public static string Directory =>
        Environment.GetEnvironmentVariable("EDGEMAIL_CONSOLE_SCREENSHOTS") is { Length: > 0 } dir ? dir : Path.Combine(AppContext.BaseDirectory, "screenshots");

    public static async Task SaveAsync(IPage page, string name)
    {
        System.IO.Directory.CreateDirectory(Directory);
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Directory, name + ".png"), FullPage = true, Animations = ScreenshotAnimations.Disabled });
    }
}
