using System.Diagnostics;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Tests.Smtp;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using MimeKit;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Operations;

/// <summary>
/// Below the free-space floor the gateway refuses new work with back-pressure — MQTT: no PUBACK, connection closed;
/// SMTP: 452 4.3.1 — tells the operator once, and takes work again by itself once space is back. Nothing refused is
/// stored, nothing accepted is lost.
/// </summary>
public sealed class DiskGuardTests
{
    private const long MiB = 1024 * 1024;

    [Fact]
    public async Task LowDisk_RefusesWithBackPressure_TellsTheOperatorOnce_AndResumesByItself()
    {
        long free = 10_000 * MiB;
        await using var gw = await SmtpGateway.StartAsync(
            tweak: c => c["Spool"] = new { MinFreeMegabytes = 100 },
            services: s => s.AddSingleton<FreeSpaceProbe>(_ => Interlocked.Read(ref free)));
        var guard = gw.Host.Services.GetRequiredService<DiskGuard>();
        using var client = await gw.ConnectAsync("dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("before"));

        Interlocked.Exchange(ref free, 50 * MiB);
        await UntilLowAsync(guard, expected: true);
        await Assert.ThrowsAnyAsync<Exception>(() => client.PublishAsync(Alert("refused-1")));
        Assert.Null(await gw.Spool.GetAlertAsync("dev-1", "refused-1", default));
        Assert.False(client.IsConnected);

        await using (var wire = await gw.AuthenticatedAsync("dev-2"))
        {
            string reply = await wire.SendMailAsync("dev-2@devices.test", ["alice@example.com"], SmtpGateway.PlainMail("ups on battery", "on battery since 10:02"));
            Assert.StartsWith("452 4.3.1", reply, StringComparison.Ordinal);
        }

        // A second refusal, no second notice.
        using var again = await gw.ConnectAsync("dev-2");
        await Assert.ThrowsAnyAsync<Exception>(() => again.PublishAsync(Alert("refused-2", "dev-2")));

        Interlocked.Exchange(ref free, 10_000 * MiB);
        await UntilLowAsync(guard, expected: false);
        using var back = await gw.ConnectAsync("dev-1");
        await ContainmentTests.PublishAsync(back, "dev-1", Alerts.Json("refused-1")); // the device resends what was refused

        var files = await gw.MailAsync(3); // "before", "refused-1", and one notice
        var mails = files.Select(f => MimeMessage.Load(f)).ToList();
        var notice = Assert.Single(mails, m => m.To.Mailboxes.Any(a => a.Address == "ops@example.com"));
        Assert.Contains("disk space low", notice.Subject, StringComparison.Ordinal);
        Assert.Equal(["before", "refused-1"], mails.Select(m => m.Headers["X-EdgeMail-Alert"]).Where(h => h is not null).Order());
        Assert.Equal(1, gw.Host.Services.GetRequiredService<OperatorNotices>().Sent);
    }

    // A real small file system: a 24 MiB tmpfs under the spool. With the guard on, the floor is reached before the
    // disk is full; with it off, SQLite itself finds the disk full — either way no PUBACK, nothing lost.
    [RootFact]
    public async Task SmallFileSystem_FilledUp_RefusesWithoutPubAckAndLosesNothing()
    {
        string mount = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", "tmpfs-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(mount);
        await RunAsync("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", mount);
        try
        {
            foreach (int floor in new[] { 8, 0 })
            {
                string data = Path.Combine(mount, "floor-" + floor);
                // Mail written while the disk is full is deferred like any failed attempt: retried a second later here.
                var gw = await TestGateway.StartAsync(
                    c =>
                    {
                        c["Spool"] = new { MinFreeMegabytes = floor };
                        c["Relay"] = new { Backoff = new[] { "00:00:01" } };
                    },
                    null,
                    dataDir: data);
                gw.Logs.Expect(e => floor == 0 && e.Message.StartsWith("Spool commit failed", StringComparison.Ordinal));
                try
                {
                    using var client = await gw.ConnectAsync("dev-1");
                    await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json($"ok-{floor}"));
                    await gw.MailAsync(1);

                    string filler = Path.Combine(mount, "filler");
                    Fill(filler, leave: floor == 0 ? 0 : 4 * MiB, mount);
                    if (floor > 0)
                    {
                        await UntilLowAsync(gw.Host.Services.GetRequiredService<DiskGuard>(), expected: true);
                    }

                    // Without the guard SQLite may still have room in its WAL for a while: publish until a PUBACK fails.
                    var acked = new List<string>();
                    string? refused = null;
                    for (int i = 0; i < 2000 && refused is null; i++)
                    {
                        string id = $"full-{floor}-{i}";
                        try
                        {
                            await client.PublishAsync(Alert(id, text: new string('x', 1000)));
                            acked.Add(id);
                        }
                        catch (Exception ex) when (ex is MQTTnet.Exceptions.MqttCommunicationException or OperationCanceledException or InvalidOperationException)
                        {
                            refused = id;
                        }
                    }

                    Assert.NotNull(refused);
                    Assert.True(floor == 0 || acked.Count == 0, $"{acked.Count} alerts acknowledged below the floor");
                    Assert.Null(await gw.Spool.GetAlertAsync("dev-1", refused, default));

                    File.Delete(filler);
                    if (floor > 0)
                    {
                        await UntilLowAsync(gw.Host.Services.GetRequiredService<DiskGuard>(), expected: false);
                    }

                    using var resend = await gw.ConnectAsync("dev-1");
                    await ContainmentTests.PublishAsync(resend, "dev-1", Alerts.Json(refused));
                    // Mail whose delivery could not be recorded while the disk was full is tried again after a few seconds.
                    var mail = await gw.MailAsync(2 + acked.Count + (floor > 0 ? 1 : 0), TimeSpan.FromSeconds(30)); // with the guard: its notice too
                    var ids = mail.Select(f => MimeMessage.Load(f).Headers["X-EdgeMail-Alert"]).Where(h => h is not null).ToList();
                    string[] expected = [$"ok-{floor}", .. acked, refused];
                    Assert.Equal(expected.Order(StringComparer.Ordinal), ids.Order(StringComparer.Ordinal)); // every acknowledged alert, each once
                }
                finally
                {
                    await gw.StopAsync();
                }
            }
        }
        finally
        {
            await RunAsync("umount", mount);
            Directory.Delete(mount, recursive: true);
        }
    }

    private static MqttApplicationMessage Alert(string id, string device = "dev-1", string text = "Too warm") =>
        new MqttApplicationMessageBuilder().WithTopic($"edgemail/v1/{device}/alert").WithPayload(Alerts.Json(id, text: text))
            .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build();

    // The guard probes at most once a second: wait (on the guard's own answer) until it has seen the change.
    private static async Task UntilLowAsync(DiskGuard guard, bool expected)
    {
        var deadline = TimeProvider.System.GetUtcNow() + Await.DefaultTimeout;
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(100));
        while (guard.IsLow != expected)
        {
            Assert.True(TimeProvider.System.GetUtcNow() < deadline, $"the disk guard never saw the disk {(expected ? "low" : "free again")}");
            await tick.WaitForNextTickAsync();
        }
    }

    // Writes a file until the file system has only `leave` bytes available (or none).
    private static void Fill(string path, long leave, string mount)
    {
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write);
        byte[] chunk = new byte[64 * 1024];
        try
        {
            while (new DriveInfo(mount).AvailableFreeSpace > leave + chunk.Length)
            {
                file.Write(chunk);
                file.Flush(flushToDisk: true);
            }

            if (leave == 0)
            {
                while (true)
                {
                    file.Write(chunk, 0, 4096);
                    file.Flush(flushToDisk: true);
                }
            }
        }
        catch (IOException)
        {
            // ENOSPC: full, as wanted.
        }
    }

    private static async Task RunAsync(string program, params string[] args)
    {
        var psi = new ProcessStartInfo(program) { RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi)!;
        string err = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        Assert.True(p.ExitCode == 0, $"{program} {string.Join(' ', args)}: {err}");
    }
}
