using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using EdgeMail.Emulator.Fleet;
using EdgeMail.Simulation.Boards;

namespace EdgeMail.Emulator.Chaos;

/// <summary>
/// One chaos run: the gateway as a child process on a fresh spool, relaying to a misbehaving <see cref="ChaosSink"/>;
/// a fleet of emulated devices (MQTT, and some over the SMTP uplink) reaching it through a <see cref="FaultProxy"/>;
/// the planned faults (<see cref="ChaosPlan"/>) carried out on time and written to the <see cref="Timeline"/>; then
/// drain, settle, and the <see cref="ChaosVerdict"/> from what the devices and the sink saw.
/// </summary>
internal sealed class ChaosRun(ChaosOptions options, TextWriter log)
{
    private const string Secret = "chaos-device-secret";
    private const string Operator = "ops@example.com";
    private const string Owner = "alice@example.com";
    private const string RefusedRecipient = "bob@refused.example";
    private readonly TimeProvider _time = TimeProvider.System;

    public async Task<ChaosResult> RunAsync(CancellationToken cancel)
    {
        ChaosOptions o = options;
        string outDir = Path.GetFullPath(o.OutputDirectory);
        string work = Path.Combine(outDir, "work");
        if (Directory.Exists(work))
        {
            Directory.Delete(work, recursive: true);
        }

        Directory.CreateDirectory(work);
        string boardsDir = o.BoardsDirectory ?? BoardProfile.FindBoardsDirectory();
        BoardProfile board = BoardProfile.LoadById(boardsDir, o.Board);
        string gatewayDll = GatewayProcess.Locate(o.GatewayPath);

        var clock = new FleetClock(1);
        DateTimeOffset startWall = _time.GetUtcNow();
        using var timeline = new Timeline(Path.Combine(outDir, "timeline.jsonl"), () => clock.NowMs, _time);
        var ledger = new ChaosLedger(timeline);
        List<PlannedFault> plan = ChaosPlan.Create(o);

        int smtpDevices = (int)Math.Round(o.Devices * o.SmtpShare);
        int mqttDevices = o.Devices - smtpDevices;
        var ids = new List<(string Id, string Protocol, int N)>();
        for (int n = 1; n <= mqttDevices; n++)
        {
            ids.Add(($"dev-{n}", "mqtt", n));
        }

        for (int n = 1; n <= smtpDevices; n++)
        {
            ids.Add(($"ups-{n}", "smtp", n));
        }

        foreach ((string id, string protocol, int n) in ids)
        {
            bool refused = o.RefusedEvery > 0 && n % o.RefusedEvery == 0;
            ledger.Add(new DeviceTruth(id, protocol, refused ? [Owner, RefusedRecipient] : [Owner]));
        }

        await using ChaosSink sink = ChaosSink.Start([RefusedRecipient], o.Seed, _time);
        string config = Path.Combine(work, "edgemail.json");
        await WriteConfigAsync(config, work, sink.Port, ledger, graceful: false).ConfigureAwait(false);
        using var gateway = new GatewayProcess(gatewayDll, config, Path.Combine(outDir, "gateway.log"));
        log.WriteLine($"chaos seed {o.Seed}: {mqttDevices} MQTT + {smtpDevices} SMTP devices, {o.DurationSeconds:0} s, gateway {gatewayDll}");
        await gateway.StartAsync(TimeSpan.FromSeconds(120), cancel).ConfigureAwait(false);
        var gatewayDown = new List<(long From, long To)>();
        var sinkDown = new List<(long From, long To)>();

        await using var mqttProxy = new FaultProxy(() => gateway.MqttPort, o.Seed);
        await using var smtpProxy = new FaultProxy(() => gateway.SmtpPort, o.Seed + 1);

        Scenario Scenario(UplinkProtocol protocol, int count, string pattern, int port) => new()
        {
            Devices = count,
            Board = o.Board,
            IdPattern = pattern,
            SecretPattern = Secret,
            Host = "127.0.0.1",
            Port = port,
            Seed = o.Seed + (protocol == UplinkProtocol.Smtp ? 1_000_003 : 0),
            DurationSeconds = o.DurationSeconds,
            DrainSeconds = o.SettleSeconds,
            Speed = 1,
            StateDirectory = Path.Combine(work, "devices"),
            Alerts = new AlertModel { RatePerSecond = o.AlertRatePerSecond, StormEverySeconds = o.DurationSeconds / 2, StormSize = 10, StormSpacingMs = 50 },
            Link = new LinkModel { Mode = LinkMode.Flaps, MeanUpSeconds = Math.Max(10, o.DurationSeconds / 3), MeanDownSeconds = 3 },
            Power = new PowerModel { MeanSecondsBetweenCuts = Math.Max(10, o.DurationSeconds / 2), MidWriteFraction = 0.5, OffSeconds = 2 },
            Uplink = new UplinkModel
            {
                Protocol = protocol,
                Tls = protocol == UplinkProtocol.Smtp,
                TlsPin = protocol == UplinkProtocol.Smtp ? gateway.CertificateSha1 : null,
                TlsInsecure = protocol == UplinkProtocol.Smtp && gateway.CertificateSha1 is null,
                KeepAliveSeconds = 10, // a half-open link is noticed in seconds, not minutes
                HeartbeatSeconds = 300,
                Smtp = new SmtpModel { To = "edgemail@gw.chaos", TimeoutSeconds = 15 },
            },
        };

        var runners = new List<FleetRunner>();
        if (mqttDevices > 0)
        {
            runners.Add(new FleetRunner(Scenario(UplinkProtocol.Mqtt, mqttDevices, "dev-{n}", mqttProxy.Port), board, ledger, clock));
        }

        if (smtpDevices > 0)
        {
            runners.Add(new FleetRunner(Scenario(UplinkProtocol.Smtp, smtpDevices, "ups-{n}", smtpProxy.Port), board, ledger, clock));
        }

        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var settled = new SettleCheck(ledger, sink);
        clock.Start();
        DateTimeOffset t0 = _time.GetUtcNow();
        var fleets = runners.Select(r => Task.Factory.StartNew(() => r.Run(null, stop.Token, settled.IsSettled), TaskCreationOptions.LongRunning)).ToList();

        // Carry out the plan on time.
        FaultProxy[] proxies = [mqttProxy, smtpProxy];
        foreach (PlannedFault f in plan)
        {
            long wait = f.AtMs - clock.NowMs;
            if (wait > 0)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(wait), _time, cancel).ConfigureAwait(false);
            }

            await ApplyAsync(f).ConfigureAwait(false);
        }

        async Task ApplyAsync(PlannedFault f)
        {
            long at = clock.NowMs;
            switch (f.Kind)
            {
                case FaultKind.GatewayKill:
                    gateway.Kill();
                    await gateway.StartAsync(TimeSpan.FromSeconds(120), cancel).ConfigureAwait(false);
                    gatewayDown.Add((at, clock.NowMs));
                    timeline.Add(f.Kind, at, clock.NowMs - at, "gateway", "SIGKILL, started again on the same spool");
                    break;
                case FaultKind.GatewayRestart:
                    int code = await gateway.StopAsync(TimeSpan.FromSeconds(60)).ConfigureAwait(false);
                    await WriteConfigAsync(config, work, sink.Port, ledger, graceful: true).ConfigureAwait(false);
                    await gateway.StartAsync(TimeSpan.FromSeconds(120), cancel).ConfigureAwait(false);
                    gatewayDown.Add((at, clock.NowMs));
                    timeline.Add(f.Kind, at, clock.NowMs - at, "gateway", $"SIGTERM (exit {code}); Relay:Concurrency 4 → 2 and Relay:Backoff changed");
                    break;
                case FaultKind.ProxyReset:
                    timeline.Add(f.Kind, at, 0, "proxy", $"{proxies.Sum(p => p.ResetAll())} connections reset");
                    break;
                case FaultKind.ProxyStall:
                    foreach (FaultProxy p in proxies)
                    {
                        p.Stall(TimeSpan.FromMilliseconds(f.ForMs));
                    }

                    timeline.Add(f.Kind, at, f.ForMs, "proxy", "all traffic held");
                    break;
                case FaultKind.ProxyHalfOpen:
                    timeline.Add(f.Kind, at, 0, "proxy", $"{proxies.Sum(p => p.HalfOpen(0.3))} connections silently blackholed");
                    break;
                case FaultKind.ProxyBlackhole:
                    timeline.Add(f.Kind, at, f.ForMs, "proxy", "new connections reset");
                    _ = Window(f.ForMs, () => Array.ForEach(proxies, p => p.Refusing = true), () => Array.ForEach(proxies, p => p.Refusing = false));
                    break;
                case FaultKind.ProxyThrottle:
                    timeline.Add(f.Kind, at, f.ForMs, "proxy", "2 KB/s per connection and direction");
                    _ = Window(f.ForMs, () => Array.ForEach(proxies, p => p.BytesPerSecond = 2048), () => Array.ForEach(proxies, p => p.BytesPerSecond = 0));
                    break;
                default:
                    SinkFault mode = f.Kind switch
                    {
                        FaultKind.Sink421 => SinkFault.Refuse421,
                        FaultKind.Sink451 => SinkFault.Defer451,
                        FaultKind.Sink452 => SinkFault.Full452,
                        FaultKind.SinkSlow => SinkFault.Slow,
                        FaultKind.SinkDropAfterData => SinkFault.DropAfterData,
                        _ => SinkFault.Down,
                    };
                    if (mode is SinkFault.Down or SinkFault.Refuse421)
                    {
                        sinkDown.Add((at, at + f.ForMs));
                    }

                    timeline.Add(f.Kind, at, f.ForMs, "sink", string.Empty);
                    await Window(f.ForMs, () => sink.Fault = mode, () => sink.Fault = SinkFault.None).ConfigureAwait(false);
                    break;
            }
        }

        FleetReport[] reports = await Task.WhenAll(fleets).ConfigureAwait(false);
        DateTimeOffset end = _time.GetUtcNow();
        foreach (FleetRunner r in runners)
        {
            foreach (VirtualDevice d in r.Devices)
            {
                DeviceTruth truth = ledger.Devices[d.Id];
                truth.Drained = d.Stats.StillUnacked == 0;
                truth.DepthAtEnd = d.Stats.LastDepth;
                truth.RaisesCutShort = d.Stats.RaisesCutShort;
            }

            r.Dispose();
        }

        await gateway.StopAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        foreach (string refused in sink.Refused)
        {
            timeline.Add(FaultKind.SinkRefusedRecipient, 0, 0, refused, "550 to every RCPT for this address");
        }

        var verdict = ChaosVerdict.Judge(ledger, sink.Stored, Operator, RefusedRecipient, timeline.Events, t0, gatewayDown, sinkDown);
        return new ChaosResult(o, plan, timeline.Events, verdict, reports, gateway.Starts, gateway.Errors, t0, end - startWall, ledger, sink.Stored);
    }

    private async Task Window(long forMs, Action begin, Action finish)
    {
        begin();
        try
        {
            await Task.Delay(TimeSpan.FromMilliseconds(forMs), _time).ConfigureAwait(false);
        }
        finally
        {
            finish();
        }
    }

    private static async Task WriteConfigAsync(string path, string work, int sinkPort, ChaosLedger ledger, bool graceful)
    {
        string hash = Hash(Secret);
        var devices = ledger.Devices.Values.ToDictionary(
            d => d.Id,
            d => (object)new { Secret = hash, Name = "Chaos " + d.Id, Site = "Chaos lab", Owners = d.Recipients.Length > 1 ? new[] { "alice", "bob" } : new[] { "alice" } },
            StringComparer.Ordinal);
        var config = new Dictionary<string, object>
        {
            ["DataDirectory"] = Path.Combine(work, "gateway"),
            ["Mqtt"] = new { BindAddress = "127.0.0.1", Port = 0 },
            ["Smtp"] = new
            {
                Endpoints = new[] { new { BindAddress = "127.0.0.1", Port = 0, Tls = "Implicit" } },
                MaxConnectionsPerSource = 5000,
                MessagesPerMinutePerSource = 10_000_000,
            },
            ["Sender"] = new { Address = "edgemail@gw.chaos", DisplayName = "EdgeMail", Hostname = "gw.chaos", Operator },
            ["Users"] = new Dictionary<string, object>
            {
                ["alice"] = new { Name = "Alice", Email = Owner },
                ["bob"] = new { Name = "Bob", Email = RefusedRecipient },
            },
            ["Devices"] = devices,
            ["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "owners" } } },
            ["Storm"] = new { Window = "00:00:00" },
            ["Relay"] = new
            {
                Mode = "Smarthost",
                Host = "127.0.0.1",
                Port = sinkPort,
                Security = "None",
                Concurrency = graceful ? 2 : 4,
                Backoff = graceful ? new[] { "00:00:01", "00:00:03", "00:00:06" } : new[] { "00:00:02", "00:00:04", "00:00:08" },
            },
            ["Console"] = new { Port = 0 },
            ["Logging"] = new
            {
                LogLevel = new Dictionary<string, string> { ["Default"] = "Warning", ["EdgeMail.Gateway.Ingest"] = "Information", ["EdgeMail.Gateway.Web"] = "Information" },
            },
        };
        await File.WriteAllTextAsync(path, JsonSerializer.Serialize(config, new JsonSerializerOptions { WriteIndented = true })).ConfigureAwait(false);
    }

    /// <summary>The gateway's stored secret form (pbkdf2-sha256$ITERATIONS$SALT$HASH), made here so the emulator needs no gateway code.</summary>
    private static string Hash(string secret)
    {
        byte[] salt = RandomNumberGenerator.GetBytes(16);
        byte[] hash = Rfc2898DeriveBytes.Pbkdf2(Encoding.UTF8.GetBytes(secret), salt, 1000, HashAlgorithmName.SHA256, 32);
        return string.Join('$', "pbkdf2-sha256", 1000.ToString(CultureInfo.InvariantCulture), Convert.ToBase64String(salt), Convert.ToBase64String(hash));
    }

    /// <summary>Whether the gateway has done all it can: every acknowledged alert is at the sink for its deliverable recipients
    /// and its refused recipients' failure is reported to the operator and, over MQTT, to the device (its <c>failed</c>
    /// receipt, which a device away across a gateway restart gets when it subscribes again).</summary>
    private sealed class SettleCheck(ChaosLedger ledger, ChaosSink sink)
    {
        public bool IsSettled()
        {
            IReadOnlyList<SinkMessage> stored = sink.Stored;
            var delivered = new HashSet<(string, string)>();
            var noticed = new HashSet<(string, string)>();
            foreach (SinkMessage m in stored)
            {
                if (m.Device is not null && m.AlertId is not null)
                {
                    delivered.Add((m.Device, m.AlertId));
                }

                if (ChaosVerdict.NoticeFor(m) is (string device, string alert))
                {
                    noticed.Add((device, alert));
                }
            }

            foreach ((string device, string alert, bool refused, bool awaitsReceipt) in ledger.AlertKeys())
            {
                if (!delivered.Contains((device, alert)) || (refused && !noticed.Contains((device, alert))) || awaitsReceipt)
                {
                    return false;
                }
            }

            return true;
        }
    }
}
