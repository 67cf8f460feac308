using System.Net;
using EdgeMail.Gateway.Ingest.Smtp;
using Microsoft.Extensions.DependencyInjection;

namespace EdgeMail.Gateway.Tests.Smtp;

/// <summary>
/// A <see cref="TestGateway"/> with SMTP ingest on three OS-chosen loopback ports (StartTls, Implicit, None).
/// Source 127.0.0.2 is allow-listed as device dev-3; clients from 127.0.0.1 must authenticate. Alias
/// <c>alarms@gw.test</c> goes to the oncall group.
/// </summary>
public static class SmtpGateway
{
    public static readonly IPAddress AllowListed = IPAddress.Parse("127.0.0.2");

    public static Task<TestGateway> StartAsync(Action<Dictionary<string, object>>? tweakSmtp = null, Action<Dictionary<string, object>>? tweak = null,
        Action<IServiceCollection>? services = null, string? dataDir = null) =>
        TestGateway.StartAsync(config =>
        {
            var smtp = new Dictionary<string, object>
            {
                ["Endpoints"] = new object[]
                {
                    new { BindAddress = "127.0.0.1", Port = 0, Tls = "StartTls" },
                    new { BindAddress = "127.0.0.1", Port = 0, Tls = "Implicit" },
                    new { BindAddress = "127.0.0.1", Port = 0, Tls = "None" },
                },
                ["AllowedSources"] = new object[] { new { Network = "127.0.0.2/32", Device = "dev-3" } },
                ["Aliases"] = new Dictionary<string, object> { ["alarms"] = new[] { "oncall" } },
                ["MaxMessageBytes"] = 200_000,
            };
            tweakSmtp?.Invoke(smtp);
            config["Smtp"] = smtp;
            tweak?.Invoke(config);
        }, services, dataDir: dataDir);

    public static SmtpIngest Smtp(this TestGateway gw) => gw.Host.Services.GetRequiredService<SmtpIngest>();

    public static IPEndPoint StartTls(this TestGateway gw) => gw.Smtp().Endpoints[0];

    public static IPEndPoint Implicit(this TestGateway gw) => gw.Smtp().Endpoints[1];

    public static IPEndPoint Plain(this TestGateway gw) => gw.Smtp().Endpoints[2];

    /// <summary>A connected, TLS-secured, authenticated session on the STARTTLS port.</summary>
    public static async Task<SmtpWire> AuthenticatedAsync(this TestGateway gw, string device = "dev-1")
    {
        var (wire, _) = await SmtpWire.ConnectAsync(gw.StartTls());
        await wire.CommandAsync("EHLO device.test");
        await wire.StartTlsAsync();
        await wire.CommandAsync("EHLO device.test");
        string auth = await wire.AuthPlainAsync(device, TestGateway.Secret);
        if (!auth.StartsWith("235", StringComparison.Ordinal))
        {
            throw new InvalidOperationException("AUTH failed: " + auth);
        }

        return wire;
    }

    public static string AlertMail(string id, string from = "dev-1@devices.test", string to = "alarms@gw.test", string code = "TEMP_HIGH") =>
        $"From: <{from}>\r\nTo: <{to}>\r\nSubject: alert {id}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        + "--b1\r\nContent-Type: text/plain\r\n\r\nSee the attached alert.\r\n"
        + "--b1\r\nContent-Type: application/vnd.edgemail.alert+json\r\n\r\n" + Alerts.Json(id, code) + "\r\n--b1--\r\n";

    public static string PlainMail(string subject, string body, string from = "ups@lan.test", string to = "alice@example.com") =>
        $"From: UPS 1 <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{Guid.NewGuid():N}@lan.test>\r\n\r\n{body}";
}
