using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
using Microsoft.Extensions.Logging.Abstractions;
using MimeKit;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Gateway.Tests.EndToEnd;

/// <summary>The gateway as a real child process, killed with SIGKILL under load and started again.</summary>
public sealed class CrashRecoveryTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));

    [Fact]
    public async Task Gateway_KilledMidLoadAndRestarted_DeliversEveryAcknowledgedAlertExactlyOnce()
    {
        const int Devices = 8;
        int port = Loopback.FreePort();
        string config = TestGateway.WriteConfig(_dataDir, Devices, c => c["Mqtt"] = new { Port = port });
        var acked = new ConcurrentDictionary<string, bool>();

        using (var first = await GatewayProcess.StartAsync(config, output))
        {
            using var stop = new CancellationTokenSource();
            var enough = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var publishers = Enumerable.Range(1, Devices).Select(d => PublishUntilFailureAsync($"dev-{d}", port, acked, enough, stop.Token)).ToArray();
            await Await.Within(enough.Task.ContinueWith(_ => true, TaskScheduler.Default), "400 acknowledged alerts before the kill", TimeSpan.FromSeconds(60));
            first.Kill();
            await stop.CancelAsync();
            await Task.WhenAll(publishers);
        }

        output.WriteLine($"{acked.Count} alerts acknowledged before SIGKILL");
        using var second = await GatewayProcess.StartAsync(config, output);
        string mailbox = Path.Combine(_dataDir, "mailbox", "new");
        var expected = acked.Keys.Select(k => LocalMailbox.FileName($"{k}.alert@gw.test")).ToHashSet();
        await Await.Within(Task.Run(() => WaitForFiles(mailbox, expected)), "every acknowledged alert in the mailbox", TimeSpan.FromSeconds(60));

        var files = Directory.GetFiles(mailbox, "*.eml");
        var alertHeaders = files.Select(f => MimeMessage.Load(f)).Select(m => m.Headers["X-EdgeMail-Device"] + "." + m.Headers["X-EdgeMail-Alert"]).ToList();
        Assert.Equal(alertHeaders.Count, alertHeaders.Distinct().Count());
        Assert.All(acked.Keys, k => Assert.Single(alertHeaders, h => h == k));
    }

    // Through a smarthost the spool records each result after the remote's 250 (delivery results of several mails share
    // one commit, and under load a commit of results waits a few milliseconds for company): a mail whose result was not
    // committed when the gateway died goes again after the restart -- the at-least-once window of every MTA. What
    // must hold: every acknowledged alert arrives, a second copy exists only of mail the relay had accepted before the
    // kill (the counted resend), and nothing arrives three times.
    [Fact]
    public async Task Gateway_KilledWhileRelaying_DeliversEveryAcknowledgedAlertAndResendsOnlyMailSentBeforeTheKill()
    {
        const int Devices = 8;
        await using var sink = await EdgeMail.Testing.Smtp.SmtpTestServer.StartAsync();
        int port = Loopback.FreePort();
        string config = TestGateway.WriteConfig(_dataDir, Devices, c =>
        {
            c["Mqtt"] = new { Port = port };
            c["Relay"] = new { Mode = "Smarthost", Host = "127.0.0.1", Port = sink.Port, Security = "None", Concurrency = 4, Backoff = new[] { "00:00:00.200" } };
        });
        var acked = new ConcurrentDictionary<string, bool>();
        HashSet<string> sentBeforeKill;

        using (var first = await GatewayProcess.StartAsync(config, output))
        {
            using var stop = new CancellationTokenSource();
            var enough = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var publishers = Enumerable.Range(1, Devices).Select(d => PublishUntilFailureAsync($"dev-{d}", port, acked, enough, stop.Token)).ToArray();
            await Await.Within(enough.Task.ContinueWith(_ => true, TaskScheduler.Default), "400 acknowledged alerts before the kill", TimeSpan.FromSeconds(60));
            await Await.Within(Task.Run(async () =>
            {
                while (sink.Received.Count < 100)
                {
                    await sink.NextAsync(TimeSpan.FromSeconds(60));
                }

                return true;
            }), "100 mails relayed before the kill", TimeSpan.FromSeconds(60));
            first.Kill();
            sentBeforeKill = sink.Received.Select(MessageId).ToHashSet();
            await stop.CancelAsync();
            await Task.WhenAll(publishers);
        }

        output.WriteLine($"{acked.Count} alerts acknowledged and {sentBeforeKill.Count} mails relayed before SIGKILL");
        var expected = acked.Keys.Select(k => $"{k}.alert@gw.test").ToHashSet();
        using var second = await GatewayProcess.StartAsync(config, output);
        await Await.Within(Task.Run(async () =>
        {
            while (!expected.IsSubsetOf(sink.Received.Select(MessageId)))
            {
                await sink.NextAsync(TimeSpan.FromSeconds(60));
            }

            return true;
        }), "every acknowledged alert at the smarthost", TimeSpan.FromSeconds(90));

        var copies = sink.Received.GroupBy(MessageId).ToDictionary(g => g.Key, g => g.Count());
        var resent = copies.Where(c => c.Value > 1).Select(c => c.Key).ToList();
        output.WriteLine($"{resent.Count} mails relayed twice (sent before the kill, their result not yet committed)");
        Assert.All(expected, id => Assert.True(copies.ContainsKey(id), $"{id} was acknowledged but never relayed"));
        Assert.All(resent, id => Assert.Contains(id, sentBeforeKill));
        Assert.All(copies, c => Assert.True(c.Value <= 2, $"{c.Key} arrived {c.Value} times"));
    }

    // Direct MX sends one transaction per recipient domain. Here the first domain's exchanger accepts at once and the
    // second's holds the end of the data (as a slow or greylisting one may, for up to Relay:Timeout); the gateway is
    // killed meanwhile. After the restart only the second domain may get the mail: the first's 250 was recorded before
    // the second domain was tried, and the device gets its relayed receipt once the second accepts.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task DirectMx_KilledWhileTheSecondDomainHoldsTheData_TheFirstDomainGetsTheMailOnce()
    {
        await using var first = await SmtpTestServer.StartAsync();
        await using var second = await SmtpTestServer.StartAsync(new() { Address = System.Net.IPAddress.Parse("127.0.0.2"), Port = first.Port });
        var held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        second.OnData = _ =>
        {
            held.TrySetResult();
            return SmtpReply.Hang;
        };
        using var dns = await EdgeMail.Gateway.Tests.Relay.Dnsmasq.StartAsync(
            "--mx-host=a.example.test,mx-a.example.test,10", "--host-record=mx-a.example.test,127.0.0.1",
            "--mx-host=b.example.test,mx-b.example.test,10", "--host-record=mx-b.example.test,127.0.0.2",
            "--local=/example.test/");
        int port = Loopback.FreePort();
        string config = TestGateway.WriteConfig(_dataDir, 1, c =>
        {
            c["Mqtt"] = new { Port = port };
            c["Users"] = new Dictionary<string, object>
            {
                ["alice"] = new { Name = "Alice", Email = "alice@a.example.test" },
                ["bob"] = new { Name = "Bob", Email = "bob@b.example.test" },
            };
            c["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "alice", "bob" } } };
            c["Relay"] = new
            {
                Mode = "DirectMx", DnsServer = "127.0.0.1:" + dns.Port.ToString(CultureInfo.InvariantCulture), MxPort = first.Port,
                Timeout = "00:02:00", Backoff = new[] { "00:10:00" },
            };
        });

        using (var gateway = await GatewayProcess.StartAsync(config, output))
        {
            using var device = await ConnectAsync("dev-1", port);
            var ack = await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
                .WithPayload(Alerts.Json("split-1")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
            Assert.True(ack.IsSuccess, ack.ReasonCode.ToString());
            await Await.Within(held.Task.ContinueWith(_ => true, TaskScheduler.Default), "b.example.test's exchanger holding the data");
            Assert.Equal(["alice@a.example.test"], Assert.Single(first.Received).To);
            gateway.Kill();
        }

        second.OnData = _ => SmtpReply.Ok;
        using var restarted = await GatewayProcess.StartAsync(config, output);
        using var again = await ConnectAsync("dev-1", port);
        var relayed = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        again.ApplicationMessageReceivedAsync += e =>
        {
            string json = e.ApplicationMessage.ConvertPayloadToString();
            if (json.Contains("\"state\":\"relayed\"", StringComparison.Ordinal))
            {
                relayed.TrySetResult(json);
            }

            return Task.CompletedTask;
        };
        await again.SubscribeAsync("edgemail/v1/dev-1/receipt", MqttQualityOfServiceLevel.AtLeastOnce);

        Assert.Equal(["bob@b.example.test"], (await second.NextAsync(TimeSpan.FromSeconds(60))).To);
        string receipt = await Await.Within(relayed.Task, "the relayed receipt after the restart", TimeSpan.FromSeconds(60));
        Assert.Contains("\"id\":\"split-1\"", receipt, StringComparison.Ordinal);

        // Within one attempt the domains go in address order, so a resend to a.example.test would have come before
        // b.example.test was tried again.
        Assert.Equal(["alice@a.example.test"], Assert.Single(first.Received).To);
        await restarted.KillAsync();
        await using var spool = SqliteSpool.Open(Path.Combine(_dataDir, "spool.db"), true, 64, NullLogger.Instance);
        var detail = (await spool.MessageDetailAsync((await spool.GetMessageAsync("dev-1.split-1.alert@gw.test", default))!.RowId, default))!;
        Assert.Equal("sent", detail.Summary.Status);
        Assert.Equal([("alice@a.example.test", "sent"), ("bob@b.example.test", "sent")], detail.Recipients.Select(r => (r.Address, r.Status)).Order());
        Assert.All(detail.Recipients, r => Assert.StartsWith("250", r.Reply, StringComparison.Ordinal));
    }

    private static async Task<IMqttClient> ConnectAsync(string device, int port)
    {
        var client = new MqttClientFactory().CreateMqttClient();
        await client.ConnectAsync(new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", port).WithClientId(device)
            .WithCredentials(device, TestGateway.Secret).WithTimeout(TimeSpan.FromSeconds(10)).Build());
        return client;
    }

    private static string MessageId(EdgeMail.Testing.Smtp.ReceivedMail mail) => mail.Message.MessageId ?? "(none)";

    private static async Task PublishUntilFailureAsync(string device, int port, ConcurrentDictionary<string, bool> acked, TaskCompletionSource enough, CancellationToken stop)
    {
        using var client = new MqttClientFactory().CreateMqttClient();
        var options = new MqttClientOptionsBuilder().WithTcpServer("127.0.0.1", port).WithClientId(device)
            .WithCredentials(device, TestGateway.Secret).WithTimeout(TimeSpan.FromSeconds(5)).Build();
        try
        {
            await client.ConnectAsync(options, stop);
            for (int i = 0; !stop.IsCancellationRequested; i++)
            {
                string id = "crash-" + i.ToString(CultureInfo.InvariantCulture);
                var result = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic($"edgemail/v1/{device}/alert")
                    .WithPayload(Alerts.Json(id)).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build(), stop);
                if (result.IsSuccess)
                {
                    acked[$"{device}.{id}"] = true;
                    if (acked.Count >= 400)
                    {
                        enough.TrySetResult();
                    }
                }
            }
        }
        catch (Exception ex) when (ex is MQTTnet.Exceptions.MqttCommunicationException or OperationCanceledException or ObjectDisposedException or InvalidOperationException)
        {
            // The gateway died or the test stopped publishing: whatever was acknowledged is in `acked`.
        }
    }

    /// <summary>Returns once every expected file is in the folder, woken by the folder's change events.</summary>
    private static bool WaitForFiles(string folder, IReadOnlySet<string> expected)
    {
        Directory.CreateDirectory(folder);
        using var watcher = new FileSystemWatcher(folder) { EnableRaisingEvents = true };
        while (!expected.IsSubsetOf(Directory.GetFiles(folder, "*.eml").Select(Path.GetFileName)!))
        {
            // The timeout only re-checks in case the watcher's buffer overflowed and an event was lost.
            watcher.WaitForChanged(WatcherChangeTypes.Created | WatcherChangeTypes.Renamed, 1000);
        }

        return true;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(_dataDir, true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>`dotnet EdgeMail.Gateway.dll --config FILE`, started and awaited until the broker listens.</summary>
internal sealed class GatewayProcess : IDisposable
{
    private readonly Process _process;

    private GatewayProcess(Process process) => _process = process;

    /// <summary>Starts the gateway with the embedded broker and waits until it listens.</summary>
    public static Task<GatewayProcess> StartAsync(string config, ITestOutputHelper output, IReadOnlyDictionary<string, string>? environment = null) =>
        StartAsync(config, output, "EdgeMail.Gateway.Ingest.EmbeddedBroker", "MQTT broker listening", "listen", environment);

    /// <summary>Starts the gateway, logging <paramref name="category"/> at Information, and waits for <paramref name="readyLine"/>.</summary>
    public static async Task<GatewayProcess> StartAsync(string config, ITestOutputHelper output, string category, string readyLine, string what,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "EdgeMail.Gateway.dll");
        var psi = new ProcessStartInfo("dotnet")
        {
            ArgumentList = { dll, "--config", config, $"--Logging:LogLevel:{category}=Information", "--Logging:Console:FormatterName=simple", "--Logging:Console:FormatterOptions:ColorBehavior=Disabled" },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            psi.Environment[name] = value;
        }
        var process = Process.Start(psi)!;
        var ready = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        bool warned = false; // the simple formatter puts "warn: Category" on one line, the message and any exception indented under it
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null)
            {
                ready.TrySetException(new InvalidOperationException($"the gateway exited before it could {what}"));
                return;
            }

            if (e.Data.Contains(readyLine, StringComparison.Ordinal))
            {
                ready.TrySetResult(true);
            }

            // Warnings and errors in the test's output: what a failed run needs to be read.
            bool level = e.Data.Length > 5 && e.Data[4] == ':' && !char.IsWhiteSpace(e.Data[0]);
            if (level)
            {
                warned = e.Data.StartsWith("warn:", StringComparison.Ordinal) || e.Data.StartsWith("fail:", StringComparison.Ordinal) || e.Data.StartsWith("crit:", StringComparison.Ordinal);
            }

            if (warned)
            {
                Say(output, "gateway: " + e.Data);
            }
        };
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                Say(output, "gateway stderr: " + e.Data);
            }
        };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var started = new GatewayProcess(process);
        try
        {
            await Await.Within(ready.Task, $"the gateway process to {what}", TimeSpan.FromSeconds(30));
        }
        catch
        {
            started.Dispose();
            throw;
        }

        return started;
    }

    private static void Say(ITestOutputHelper output, string line)
    {
        try
        {
            output.WriteLine(line);
        }
        catch (InvalidOperationException)
        {
            // The test has finished; nobody reads its output any more.
        }
    }

    /// <summary>SIGKILL: no shutdown code runs.</summary>
    public void Kill()
    {
        _process.Kill(entireProcessTree: false);
        _process.WaitForExit();
    }

    /// <summary>SIGTERM, awaited: the host's graceful shutdown runs.</summary>
    public async Task TerminateAsync()
    {
        var (code, output) = await Smtp.PeerProcess.RunAsync("kill", "procps", ["-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        if (code != 0)
        {
            throw new InvalidOperationException("kill -TERM failed: " + output);
        }

        await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
    }

    /// <summary>The process id.</summary>
    public int Id => _process.Id;

    /// <summary>The exit code (after it exited).</summary>
    public int ExitCode => _process.ExitCode;

    /// <summary>SIGKILL, awaited.</summary>
    public Task KillAsync()
    {
        _process.Kill(entireProcessTree: false);
        return _process.WaitForExitAsync();
    }

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.Kill();
            _process.WaitForExit();
        }

        _process.Dispose();
    }
}
