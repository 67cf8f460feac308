using System.Globalization;
using System.Text.Json;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest.Smtp;
using EdgeMail.Gateway.Spool;
using EdgeMail.Simulation.Boards;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using MimeKit;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Emulator.Tests.EndToEnd;

/// <summary>
/// <c>run --uplink smtp</c> against the real gateway host's SMTP ingest: implicit TLS with the gateway's self-signed
/// certificate pinned, AUTH PLAIN with each device's id and secret, the SQLite spool and the local mailbox.
/// </summary>
public sealed class SmtpFleetEndToEndTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const string Secret = "s3cret-for-smtp-fleet";
    private const int Devices = 6;
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "edgemail-emulator-smtp-e2e", Guid.NewGuid().ToString("N"));
    private IHost _host = null!;

    private string Mailbox => Path.Combine(_dir, "gateway", "mailbox", "new");

    public async Task InitializeAsync() =>
        _host = await EmulatedSiteGateway.StartAsync(_dir, SecretHash.Create(Secret, 1000), Enumerable.Range(1, Devices).Select(i => $"ups-{i}"), new
        {
            Endpoints = new[] { new { BindAddress = "127.0.0.1", Port = 0, Tls = "Implicit" } },

            // The whole fleet comes from 127.0.0.1: the per-source limits are for real networks.
            MaxConnectionsPerSource = 100,
            MessagesPerMinutePerSource = 100_000,
        });

    public Task DisposeAsync() => EmulatedSiteGateway.StopAsync(_host, _dir);

    [Fact]
    public async Task RunOverSmtp_WithPowerCutsAndFlappingLinks_EveryRaisedAlertIsSpooledAndMailedExactlyOnce()
    {
        var ingest = _host.Services.GetRequiredService<SmtpIngest>();
        int port = ingest.Endpoints[0].Port;
        string pin = ingest.Certificate!.GetCertHashString(System.Security.Cryptography.HashAlgorithmName.SHA256);
        string[] codes = [.. Enumerable.Range(0, 40).Select(i => $"CODE_{i}")];
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        string[] args =
        [
            "run", "--boards", BoardProfile.FindBoardsDirectory(AppContext.BaseDirectory), "--state-dir", Path.Combine(_dir, "devices"),
            "--progress", "none", "--json", "-", "--uplink", "smtp", "--tls", "--tls-pin", pin, "--smtp-to", "edgemail@gw.test",
            "--devices", Devices.ToString(CultureInfo.InvariantCulture), "--id-pattern", "ups-{n}", "--port", port.ToString(CultureInfo.InvariantCulture),
            "--secret-pattern", Secret, "--seed", "23", "--duration", "40", "--drain", "120", "--speed", "10", "--rate", "0.5", "--codes", string.Join(',', codes),
            "--link", "flaps", "--mean-up", "2", "--mean-down", "1", "--power-cut-mean", "8", "--mid-write", "0.8",
        ];
        output.WriteLine("seed 23: emulator " + string.Join(' ', args));

        int exit = await Task.Run(() => EmulatorCli.Run(args, stdout, stderr));

        output.WriteLine(stderr.ToString());
        Assert.Equal(0, exit);
        JsonElement report = JsonDocument.Parse(stdout.ToString()).RootElement;
        JsonElement total = report.GetProperty("total");
        output.WriteLine(total.ToString());
        Assert.Equal("smtp", report.GetProperty("uplink").GetString());
        long raised = total.GetProperty("raised").GetInt64();
        long coalesced = total.GetProperty("coalesced").GetInt64();
        long cutShort = total.GetProperty("raisesCutShort").GetInt64();
        Assert.True(raised > 50, $"raised {raised}");
        Assert.True(total.GetProperty("powerCuts").GetInt64() > 0);
        Assert.True(total.GetProperty("linkDowns").GetInt64() > 0);
        Assert.Equal(raised, total.GetProperty("acknowledged").GetInt64());
        Assert.Equal(0, total.GetProperty("rejected").GetInt64());

        // Every raise that returned has its id in the spool exactly once (a repeat merged on the device shares its id);
        // a raise cut short by power loss may or may not have reached flash.
        SpoolCounts counts = await _host.Services.GetRequiredService<ISpool>().CountsAsync(CancellationToken.None);
        long spooled = counts.Alerts.Values.Sum();
        output.WriteLine($"spooled {spooled}, raised {raised}, coalesced {coalesced}, cut short {cutShort}, resent {total.GetProperty("resent").GetInt64()}+{total.GetProperty("resentAfterReboot").GetInt64()}");
        Assert.InRange(spooled, raised - coalesced, raised - coalesced + cutShort);

        // ... and became exactly one mail to its owner, resends and all.
        string[] mails = await Await.Within(MailboxHoldsAsync(spooled), $"{spooled} mails in {Mailbox}", TimeSpan.FromSeconds(60));
        var keys = mails.Select(f =>
        {
            using MimeMessage m = MimeMessage.Load(f);
            Assert.Equal("alice@example.com", m.To.Mailboxes.Single().Address);
            return m.Headers["X-EdgeMail-Device"] + "/" + m.Headers["X-EdgeMail-Alert"];
        }).ToList();
        Assert.Equal(keys.Count, keys.Distinct(StringComparer.Ordinal).Count());
        Assert.Equal(spooled, keys.Count);
    }

    /// <summary>Completes when the mailbox holds <paramref name="count"/> messages (watching the folder, no polling).</summary>
    private async Task<string[]> MailboxHoldsAsync(long count)
    {
        Directory.CreateDirectory(Mailbox);
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var watcher = new FileSystemWatcher(Mailbox, "*.eml");
        void Check()
        {
            if (Directory.GetFiles(Mailbox, "*.eml").Length >= count)
            {
                done.TrySetResult();
            }
        }

        watcher.Created += (_, _) => Check();
        watcher.Renamed += (_, _) => Check();
        watcher.EnableRaisingEvents = true;
        Check();
        await done.Task;

        // Nothing more may come: a duplicate would have been delivered by now along with the rest (same queue, same worker).
        return Directory.GetFiles(Mailbox, "*.eml");
    }
}
