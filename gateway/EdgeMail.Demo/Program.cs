using System.Globalization;
using EdgeMail.Emulator;
using EdgeMail.Gateway;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Web;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

// The whole job on embedded defaults: the gateway (embedded MQTT broker, SQLite spool, local mailbox,
// demo devices) and the demo devices themselves, emulated on ESP32 boards with simulated NOR flash,
// flapping links and power cuts, raising alerts until every one is acknowledged and mailed.
// Gateway settings can be overridden as usual (--Section:Key=value); the devices are the demo ones.
// --stay keeps the gateway and its console running after the devices are done, until Ctrl+C.
bool stay = args.Contains("--stay", StringComparer.Ordinal);
using var host = GatewayHost.CreateBuilder([.. args.Where(a => a != "--stay")]).Build();
try
{
    await host.StartAsync().ConfigureAwait(false);
}
catch (OptionsValidationException ex)
{
    Console.Error.WriteLine("edgemail: the configuration is invalid:");
    foreach (string failure in ex.Failures)
    {
        Console.Error.WriteLine("  - " + failure);
    }

    return 2;
}

var options = host.Services.GetRequiredService<IOptions<GatewayOptions>>().Value;
var endpoint = host.Services.GetRequiredService<EmbeddedBroker>().Endpoint!;
string data = options.DataPath();
string secrets = Path.Combine(data, DemoSetup.SecretsFileName);
string mailbox = Path.Combine(options.Relay.MailboxPath is { Length: > 0 } m ? Path.GetFullPath(m) : Path.Combine(data, "mailbox"), "new");
string ids = string.Join(',', options.Devices.Keys.Order(StringComparer.Ordinal));
int before = Directory.Exists(mailbox) ? Directory.GetFiles(mailbox, "*.eml").Length : 0;

Console.WriteLine();
Console.WriteLine($"EdgeMail demo: gateway listening for MQTT on {endpoint}; devices {ids} now raise alerts");
Console.WriteLine("through a flapping link with power cuts; every alert is on flash before Raise returns.");
var console = host.Services.GetRequiredService<ConsoleServer>();
var auth = host.Services.GetRequiredService<ConsoleAuth>();
if (console.Address is { } consoleAddress)
{
    Console.WriteLine(auth.SetupToken is { } token
        ? $"Console: {consoleAddress} (first visit: {consoleAddress}setup#{token} sets its admin password)"
        : $"Console: {consoleAddress}");
}

Console.WriteLine();

string port = endpoint.Port.ToString(CultureInfo.InvariantCulture);
int exit = EmulatorCli.Run(
    ["run", "--ids", ids, "--secrets-file", secrets, "--host", endpoint.Address.ToString(), "--port", port,
     "--board", "esp32-wroom-32", "--state-dir", Path.Combine(data, "emulator"), "--duration", "20", "--drain", "20",
     "--rate", "0.25", "--severity-mix", "50,35,15", "--link", "flaps", "--mean-up", "6", "--mean-down", "2",
     "--power-cut-mean", "12", "--storm-every", "15", "--storm-size", "20", "--progress", "plain", "--seed",
     Environment.TickCount.ToString(CultureInfo.InvariantCulture)],
    Console.Out,
    Console.Error);

// The devices are done when the gateway has acknowledged everything; the mail follows within moments.
using var settle = new CancellationTokenSource(TimeSpan.FromSeconds(20));
int mails = Directory.Exists(mailbox) ? Directory.GetFiles(mailbox, "*.eml").Length : 0;
using (var timer = new PeriodicTimer(TimeSpan.FromSeconds(1)))
{
    int last = -1;
    while (mails != last && !settle.IsCancellationRequested && await timer.WaitForNextTickAsync(CancellationToken.None).ConfigureAwait(false))
    {
        last = mails;
        mails = Directory.Exists(mailbox) ? Directory.GetFiles(mailbox, "*.eml").Length : 0;
    }
}

Console.WriteLine();
Console.WriteLine($"{mails - before} new mails in {mailbox} ({mails} in all); open any .eml file with a mail program.");
Console.WriteLine($"Device secrets: {secrets}. Gateway data: {data}. Run again: the devices reboot from their flash images.");
if (stay)
{
    Console.WriteLine($"The gateway keeps running{(console.Address is { } at ? $", its console at {at}" : string.Empty)}; Ctrl+C stops it.");
    await host.WaitForShutdownAsync().ConfigureAwait(false);
}
else if (console.Address is { } at)
{
    Console.WriteLine($"To look around in the console ({at}) after the devices are done, run with --stay.");
}

await host.StopAsync().ConfigureAwait(false);
return exit;
