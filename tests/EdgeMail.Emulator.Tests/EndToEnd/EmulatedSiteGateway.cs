using System.Text.Json;
using EdgeMail.Gateway;
using Microsoft.Extensions.Hosting;

namespace EdgeMail.Emulator.Tests.EndToEnd;

/// <summary>The real gateway host for the emulator's end-to-end tests: embedded broker, SQLite spool, local mailbox.</summary>
internal static class EmulatedSiteGateway
{
    /// <summary>
    /// Writes a configuration under <paramref name="dir"/> (data in <c>dir/gateway</c>) with one user, the given
    /// devices owned by her, a catch-all route, no storm window and the given SMTP section, then starts the host.
    /// </summary>
    public static async Task<IHost> StartAsync(string dir, string secretHash, IEnumerable<string> devices, object smtp)
    {
        Directory.CreateDirectory(dir);
        var config = new Dictionary<string, object>
        {
            ["DataDirectory"] = Path.Combine(dir, "gateway"),
            ["Mqtt"] = new { Port = 0 },
            ["Smtp"] = smtp,
            ["Sender"] = new { Address = "edgemail@gw.test", DisplayName = "EdgeMail", Hostname = "gw.test", Operator = "ops@example.com" },
            ["Users"] = new Dictionary<string, object> { ["alice"] = new { Name = "Alice", Email = "alice@example.com" } },
            ["Devices"] = devices.ToDictionary(d => d, _ => (object)new { Secret = secretHash, Name = "Emulated", Site = "Lab", Owners = new[] { "alice" } }),
            ["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "owners" } } },
            ["Storm"] = new { Window = "00:00:00" },
            ["Console"] = new { Port = 0 }, // not the default 8088: two of these run at once, beside whatever else the machine runs
            ["Logging"] = new { LogLevel = new { Default = "Warning" } },
        };
        string path = Path.Combine(dir, "edgemail.json");
        await File.WriteAllTextAsync(path, JsonSerializer.Serialize(config));
        var host = GatewayHost.CreateBuilder(["--config", path]).Build();
        await host.StartAsync();
        return host;
    }

    /// <summary>Stops the host and removes <paramref name="dir"/>.</summary>
    public static async Task StopAsync(IHost host, string dir)
    {
        await host.StopAsync();
        host.Dispose();
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
            // A file still open on a slow file system; the temp folder is cleaned some other day.
        }
    }
}
