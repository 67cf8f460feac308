using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using EdgeMail.Firmware;
using Alert = EdgeMail.Firmware.Alerts.Alert;
using Severity = EdgeMail.Firmware.Alerts.Severity;
using EdgeMail.Firmware.Storage;
using EdgeMail.Firmware.Uplink.Smtp;
using EdgeMail.Gateway.Configuration;
using EmbeddedBroker = EdgeMail.Gateway.Ingest.EmbeddedBroker;
using EdgeMail.Gateway.Ingest.Smtp;
using EdgeMail.Gateway.Spool;
using EdgeMail.Simulation.Boards;
using EdgeMail.Simulation.Flash;
using EdgeMail.Simulation.Network;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Emulator.Tests.EndToEnd;

/// <summary>The firmware core, run by the emulator, against the real gateway host (embedded broker, SQLite spool, SMTP ingest).</summary>
public sealed class GatewayEndToEndTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const string Secret = "s3cret-for-emulator-tests";
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "edgemail-emulator-e2e", Guid.NewGuid().ToString("N"));
    private IHost _host = null!;

    public async Task InitializeAsync() =>
        _host = await EmulatedSiteGateway.StartAsync(_dir, SecretHash.Create(Secret, 1000), Enumerable.Range(1, 6).Select(i => $"dev-{i}"), new
        {
            Endpoints = new[] { new { BindAddress = "127.0.0.1", Port = 0, Tls = "None" } },
            AllowedSources = new[] { new { Network = "127.0.0.1", Device = "dev-1" } },
        });

    public Task DisposeAsync() => EmulatedSiteGateway.StopAsync(_host, _dir);

    private async Task<long> SpooledAlertsAsync()
    {
        SpoolCounts counts = await _host.Services.GetRequiredService<ISpool>().CountsAsync(CancellationToken.None);
        return counts.Alerts.Values.Sum();
    }

    [Fact]
    public async Task Fleet_WithPowerCutsAndFlappingLinks_EveryAlertIsSpooledOnceAndNoneIsLost()
    {
        int port = _host.Services.GetRequiredService<EmbeddedBroker>().Endpoint!.Port;
        string[] codes = [.. Enumerable.Range(0, 40).Select(i => $"CODE_{i}")];
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        string[] args =
        [
            "run", "--boards", BoardProfile.FindBoardsDirectory(AppContext.BaseDirectory), "--state-dir", Path.Combine(_dir, "devices"),
            "--progress", "none", "--json", "-", "--devices", "6", "--port", port.ToString(CultureInfo.InvariantCulture), "--secret-pattern", Secret,
            "--seed", "21", "--duration", "40", "--drain", "120", "--speed", "10", "--rate", "0.4", "--codes", string.Join(',', codes),
            "--link", "flaps", "--mean-up", "12", "--mean-down", "3", "--power-cut-mean", "15", "--mid-write", "0.7",
        ];
        output.WriteLine("seed 21: emulator " + string.Join(' ', args));

        int exit = await Task.Run(() => EmulatorCli.Run(args, stdout, stderr));

        output.WriteLine(stderr.ToString());
        Assert.Equal(0, exit);
        JsonElement total = JsonDocument.Parse(stdout.ToString()).RootElement.GetProperty("total");
        output.WriteLine(total.ToString());
        long raised = total.GetProperty("raised").GetInt64();
        long coalesced = total.GetProperty("coalesced").GetInt64();
        long cutShort = total.GetProperty("raisesCutShort").GetInt64();
        Assert.True(total.GetProperty("powerCuts").GetInt64() > 0);
        Assert.Equal(raised, total.GetProperty("acknowledged").GetInt64());

        // Every raise that returned has its id in the spool, exactly once (a repeat merged on the device shares its id);
        // a raise cut short by power loss may or may not have reached flash.
        long spooled = await SpooledAlertsAsync();
        output.WriteLine($"spooled {spooled}, raised {raised}, coalesced {coalesced}, cut short {cutShort}");
        Assert.InRange(spooled, raised - coalesced, raised - coalesced + cutShort);
    }

    [Fact]
    public async Task SmtpUplink_ToTheGatewaysSmtpIngest_SpoolsTheAlertLikeAnMqttOne()
    {
        int port = _host.Services.GetRequiredService<SmtpIngest>().Endpoints[0].Port;
        var clock = new WatchClock();
        using var flash = new NorFlashSimulator(new FlashGeometry(64 * 1024, 4096, 256, 1, allowsReprogram: true, encrypted: false));
        var queue = new FlashQueue(flash);
        queue.Mount(0x5A5A0001);
        var store = new AlertStore(queue, clock, new WallClock(clock), 1);
        uint first = store.Raise(new Alert("UPS_ON_BATTERY", Severity.Critical, "UPS 3 on battery"));
        uint second = store.Raise(new Alert("UPS_BATTERY_LOW", Severity.Warning, "UPS 3 battery at 20 %"));
        using var transport = new TcpTransport();
        var uplink = new SmtpUplink(store, transport, clock, new SmtpUplinkOptions
        {
            DeviceId = "dev-1",
            Host = "127.0.0.1",
            Port = port,
            From = "dev-1@devices.test",
            To = "edgemail@gw.test",
            TimeoutMs = 10_000,
        });

        Assert.Equal(2, uplink.SendPending());
        Assert.Equal(0u, store.Depth);

        ISpool spool = _host.Services.GetRequiredService<ISpool>();
        Assert.NotNull(await spool.GetAlertAsync("dev-1", $"5a5a0001-{first}", CancellationToken.None));
        Assert.NotNull(await spool.GetAlertAsync("dev-1", $"5a5a0001-{second}", CancellationToken.None));
    }

    private sealed class WatchClock : IClock
    {
        private readonly Stopwatch _watch = Stopwatch.StartNew();

        public long UptimeMs => _watch.ElapsedMilliseconds + 1;
    }
}
