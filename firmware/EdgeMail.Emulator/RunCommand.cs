using System.CommandLine;
using System.Globalization;
using EdgeMail.Emulator.Fleet;
using EdgeMail.Simulation.Boards;
using Spectre.Console;

namespace EdgeMail.Emulator;

/// <summary>The <c>run</c> command: a fleet from flags and/or a scenario file, live progress, a final report.</summary>
internal static class RunCommand
{
    public static Command Create(Option<string?> boardsDir, TextWriter stdout, TextWriter stderr)
    {
        var scenarioFile = new Option<string?>("--scenario") { Description = "JSON scenario file (flags override its values); see docs/emulator.md" };
        var devices = new Option<int?>("--devices") { Description = "Number of devices (default 10)" };
        var board = new Option<string?>("--board") { Description = "Board profile id (default esp32-wroom-32)" };
        var idPattern = new Option<string?>("--id-pattern") { Description = "Device ids; {n} is the device number (default dev-{n})" };
        var ids = new Option<string?>("--ids") { Description = "Comma-separated device ids instead of --id-pattern/--devices (e.g. demo-freezer,demo-door)" };
        var secretPattern = new Option<string?>("--secret-pattern") { Description = "Device secrets; {id} and {n} are replaced (default secret-{id})" };
        var secretsFile = new Option<string?>("--secrets-file") { Description = "File of 'deviceId secret' lines (e.g. the gateway's demo-secrets.txt)" };
        var host = new Option<string?>("--host") { Description = "Gateway/broker host (default 127.0.0.1)" };
        var port = new Option<int?>("--port") { Description = "Gateway/broker port (default: MQTT 1883, 8883 with --tls; SMTP 2525, 465 with --tls)" };
        var embedded = new Option<bool>("--embedded-broker") { Description = "Start an MQTTnet broker (or with --uplink smtp an SMTP receiver) in this process that accepts the fleet's credentials" };
        var uplink = new Option<string?>("--uplink") { Description = "mqtt (Contract 1, default) or smtp (Contract 2: one message per alert, acknowledged on 250)" };
        var smtpFrom = new Option<string?>("--smtp-from") { Description = "SMTP envelope sender and From; {id} and {n} are replaced (default {id}@devices.edgemail)" };
        var smtpTo = new Option<string?>("--smtp-to") { Description = "SMTP recipient: the gateway's sender address, a user, group or alias (default edgemail@gateway.localhost)" };
        var smtpAuth = new Option<bool?>("--smtp-auth") { Description = "AUTH PLAIN with device id and secret: true or false (default: with --tls or the embedded receiver)" };
        var tls = new Option<bool>("--tls") { Description = "TLS from the first byte (MQTT 8883, SMTP implicit TLS 465)" };
        var tlsPin = new Option<string?>("--tls-pin") { Description = "Trust only the certificate with this SHA-1 or SHA-256 thumbprint (hex)" };
        var tlsInsecure = new Option<bool>("--tls-insecure") { Description = "Accept any server certificate (tests and labs only)" };
        var seed = new Option<int?>("--seed") { Description = "Seed of every random choice (default 1)" };
        var duration = new Option<double?>("--duration") { Description = "Simulated seconds of activity (default 60)" };
        var drain = new Option<double?>("--drain") { Description = "Simulated seconds afterwards to drain the queues, links up, no cuts (default 30)" };
        var speed = new Option<double?>("--speed") { Description = "Simulated time per real time (default 1)" };
        var stateDir = new Option<string?>("--state-dir") { Description = "Folder of the devices' flash images (default emulator-state); running again reboots them" };
        var fresh = new Option<bool>("--fresh") { Description = "Erase the state folder's images first (factory-new devices)" };
        var rate = new Option<double?>("--rate") { Description = "Mean alerts per second per device (default 0.1)" };
        var mix = new Option<string?>("--severity-mix") { Description = "Weights info,warning,critical (default 70,25,5)" };
        var codes = new Option<string?>("--codes") { Description = "Comma-separated alert codes to draw from" };
        var stormEvery = new Option<double?>("--storm-every") { Description = "Mean seconds between alert storms per device (0: none)" };
        var stormSize = new Option<int?>("--storm-size") { Description = "Alerts per storm (default 50)" };
        var link = new Option<LinkMode?>("--link") { Description = "Link model: up, outages or flaps" };
        var outage = new Option<string[]>("--outage") { Description = "AT:FOR seconds, e.g. 20:10 (repeatable; implies --link outages)", AllowMultipleArgumentsPerToken = false };
        var meanUp = new Option<double?>("--mean-up") { Description = "Flaps: mean seconds up (default 60)" };
        var meanDown = new Option<double?>("--mean-down") { Description = "Flaps: mean seconds down (default 10)" };
        var cutMean = new Option<double?>("--power-cut-mean") { Description = "Mean seconds between power cuts per device (0: none)" };
        var midWrite = new Option<double?>("--mid-write") { Description = "Share of cuts that tear a flash write (default 0.5)" };
        var offSeconds = new Option<double?>("--off-seconds") { Description = "Seconds a device stays off after a cut (default 2)" };
        var inFlight = new Option<int?>("--max-in-flight") { Description = "QoS 1 alerts in flight per device (default 4)" };
        var duty = new Option<double?>("--duty-cycle") { Description = "Duty-cycled uplink: connect every this many seconds (0: always on)" };
        var heartbeat = new Option<double?>("--heartbeat") { Description = "Status heartbeat period in seconds (default 300)" };
        var json = new Option<string?>("--json") { Description = "Write the report as JSON to this file ('-' for stdout instead of the table)" };
        var rows = new Option<int>("--rows") { Description = "Devices shown in the table", DefaultValueFactory = _ => 20 };
        var progressMode = new Option<string>("--progress") { Description = "auto, live, plain or none", DefaultValueFactory = _ => "auto" };

        var cmd = new Command("run", "Run a fleet of emulated devices against a broker or gateway and report what happened to every alert");
        foreach (Option o in new Option[]
        {
            scenarioFile, devices, board, idPattern, ids, secretPattern, secretsFile, host, port, embedded, uplink, smtpFrom, smtpTo, smtpAuth, tls, tlsPin, tlsInsecure, seed, duration, drain, speed, stateDir, fresh,
            rate, mix, codes, stormEvery, stormSize, link, outage, meanUp, meanDown, cutMean, midWrite, offSeconds, inFlight, duty, heartbeat,
            json, rows, progressMode, boardsDir,
        })
        {
            cmd.Options.Add(o);
        }

        cmd.SetAction(async (parse, cancel) =>
        {
            Scenario s;
            BoardProfile profile;
            try
            {
                s = parse.GetValue(scenarioFile) is string file ? Scenario.Load(file) : new Scenario();
                Set(parse.GetValue(devices), v => s.Devices = v);
                Set(parse.GetValue(board), v => s.Board = v);
                Set(parse.GetValue(idPattern), v => s.IdPattern = v);
                Set(parse.GetValue(ids), v => s.Ids = v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
                Set(parse.GetValue(secretPattern), v => s.SecretPattern = v);
                Set(parse.GetValue(secretsFile), v => s.SecretsFile = v);
                Set(parse.GetValue(host), v => s.Host = v);
                Set(parse.GetValue(port), v => s.Port = v);
                s.EmbeddedBroker |= parse.GetValue(embedded);
                Set(parse.GetValue(uplink), v => s.Uplink.Protocol = ParseUplink(v));
                Set(parse.GetValue(smtpFrom), v => s.Uplink.Smtp.From = v);
                Set(parse.GetValue(smtpTo), v => s.Uplink.Smtp.To = v);
                Set(parse.GetValue(smtpAuth), v => s.Uplink.Smtp.Auth = v);
                s.Uplink.Tls |= parse.GetValue(tls);
                Set(parse.GetValue(tlsPin), v => s.Uplink.TlsPin = v.Replace(":", string.Empty, StringComparison.Ordinal));
                s.Uplink.TlsInsecure |= parse.GetValue(tlsInsecure);
                Set(parse.GetValue(seed), v => s.Seed = v);
                Set(parse.GetValue(duration), v => s.DurationSeconds = v);
                Set(parse.GetValue(drain), v => s.DrainSeconds = v);
                Set(parse.GetValue(speed), v => s.Speed = v);
                Set(parse.GetValue(stateDir), v => s.StateDirectory = v);
                Set(parse.GetValue(rate), v => s.Alerts.RatePerSecond = v);
                Set(parse.GetValue(mix), v => s.Alerts.SeverityMix = [.. v.Split(',').Select(x => double.Parse(x, CultureInfo.InvariantCulture))]);
                Set(parse.GetValue(codes), v => s.Alerts.Codes = v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
                Set(parse.GetValue(stormEvery), v => s.Alerts.StormEverySeconds = v);
                Set(parse.GetValue(stormSize), v => s.Alerts.StormSize = v);
                Set(parse.GetValue(link), v => s.Link.Mode = v);
                if (parse.GetValue(outage) is { Length: > 0 } outages)
                {
                    s.Link.Mode = LinkMode.Outages;
                    s.Link.Outages = [.. outages.Select(ParseOutage).OrderBy(o => o.AtSeconds)];
                }

                Set(parse.GetValue(meanUp), v => s.Link.MeanUpSeconds = v);
                Set(parse.GetValue(meanDown), v => s.Link.MeanDownSeconds = v);
                Set(parse.GetValue(cutMean), v => s.Power.MeanSecondsBetweenCuts = v);
                Set(parse.GetValue(midWrite), v => s.Power.MidWriteFraction = v);
                Set(parse.GetValue(offSeconds), v => s.Power.OffSeconds = v);
                Set(parse.GetValue(inFlight), v => s.Uplink.MaxInFlight = v);
                Set(parse.GetValue(duty), v => s.Uplink.DutyCycleSeconds = v);
                Set(parse.GetValue(heartbeat), v => s.Uplink.HeartbeatSeconds = v);
                s.Validate();
                profile = BoardProfile.LoadById(parse.GetValue(boardsDir) ?? BoardProfile.FindBoardsDirectory(), s.Board);
                if (parse.GetValue(fresh) && Directory.Exists(s.StateDirectory))
                {
                    foreach (string f in Directory.EnumerateFiles(s.StateDirectory, "*.flash").Concat(Directory.EnumerateFiles(s.StateDirectory, "*.boot")))
                    {
                        File.Delete(f);
                    }
                }
            }
            catch (Exception ex) when (ex is IOException or InvalidDataException or ArgumentException or FormatException or UnauthorizedAccessException)
            {
                stderr.WriteLine($"error: {ex.Message}");
                return 2;
            }

            EmbeddedBroker? broker = null;
            EmbeddedSmtpReceiver? receiver = null;
            try
            {
                if (s.EmbeddedBroker)
                {
                    if (s.Uplink.Tls)
                    {
                        stderr.WriteLine("error: --embedded-broker listens without TLS; leave out --tls (or point --host/--port at a gateway's TLS listener).");
                        return 2;
                    }

                    var secrets = new Secrets(s.SecretPattern, s.SecretsFile);
                    var credentials = Enumerable.Range(1, s.Devices).ToDictionary(n => s.DeviceId(n), n => secrets.For(s.DeviceId(n), n), StringComparer.Ordinal);
                    s.Host = "127.0.0.1";
                    if (s.Uplink.Protocol == UplinkProtocol.Smtp)
                    {
                        receiver = await EmbeddedSmtpReceiver.StartAsync(credentials).ConfigureAwait(false);
                        s.Port = receiver.Port;
                        stderr.WriteLine($"embedded SMTP receiver on 127.0.0.1:{receiver.Port}");
                    }
                    else
                    {
                        broker = await EmbeddedBroker.StartAsync(credentials).ConfigureAwait(false);
                        s.Port = broker.Port;
                        stderr.WriteLine($"embedded broker on 127.0.0.1:{broker.Port}");
                    }
                }

                using var runner = new FleetRunner(s, profile);
                FleetReport report = Execute(runner, parse.GetValue(progressMode) ?? "auto", stderr, cancel);
                string? jsonPath = parse.GetValue(json);
                if (jsonPath == "-")
                {
                    stdout.WriteLine(report.ToJson());
                }
                else
                {
                    if (jsonPath is not null)
                    {
                        File.WriteAllText(jsonPath, report.ToJson());
                    }

                    report.Render(EmulatorCli.Console(stdout, interactive: ReferenceEquals(stdout, System.Console.Out) && !System.Console.IsOutputRedirected), parse.GetValue(rows));
                    if (broker is not null)
                    {
                        stdout.WriteLine($"embedded broker: {broker.AlertsReceived} alert PUBLISHes received (resends included)");
                    }

                    if (receiver is not null)
                    {
                        stdout.WriteLine($"embedded SMTP receiver: {receiver.AlertsReceived} alert messages received (resends included)");
                    }
                }

                return 0;
            }
            finally
            {
                if (broker is not null)
                {
                    await broker.DisposeAsync().ConfigureAwait(false);
                }

                if (receiver is not null)
                {
                    await receiver.DisposeAsync().ConfigureAwait(false);
                }
            }
        });
        return cmd;
    }

    private static FleetReport Execute(FleetRunner runner, string mode, TextWriter stderr, CancellationToken cancel)
    {
        bool terminal = ReferenceEquals(stderr, System.Console.Error) && !System.Console.IsErrorRedirected;
        if (mode == "none")
        {
            return runner.Run(null, cancel);
        }

        if (mode == "live" || (mode == "auto" && terminal))
        {
            IAnsiConsole console = EmulatorCli.Console(stderr, interactive: true);
            FleetReport? result = null;
            console.Live(Progress(runner.Snapshot())).AutoClear(false).Start(ctx =>
            {
                result = runner.Run(p =>
                {
                    ctx.UpdateTarget(Progress(p));
                    ctx.Refresh();
                }, cancel);
            });
            return result!;
        }

        // Plain: one line every 5 real seconds, for logs and CI.
        double last = -5;
        return runner.Run(p =>
        {
            if (p.RealSeconds - last >= 5 || p.Phase == "done")
            {
                last = p.RealSeconds;
                stderr.WriteLine(Line(p));
            }
        }, cancel);
    }

    private static Table Progress(FleetProgress p)
    {
        var t = new Table().Border(TableBorder.Rounded).AddColumns("phase", "simulated", "real", "devices", "connected", "off", "raised", "acked", "queued", "power cuts");
        t.AddRow(p.Phase, F(p.SimulatedSeconds) + " s", F(p.RealSeconds) + " s", N(p.Devices), N(p.Connected), N(p.Off), N(p.Raised), N(p.Acknowledged), N(p.Queued), N(p.PowerCuts));
        return t;
    }

    private static string Line(FleetProgress p) => string.Create(CultureInfo.InvariantCulture,
        $"[{p.Phase}] sim {p.SimulatedSeconds:0.0} s, real {p.RealSeconds:0.0} s: {p.Connected}/{p.Devices} connected, {p.Off} off, raised {p.Raised}, acked {p.Acknowledged}, queued {p.Queued}, cuts {p.PowerCuts}");

    private static string F(double v) => v.ToString("0.0", CultureInfo.InvariantCulture);

    private static string N(long v) => v.ToString(CultureInfo.InvariantCulture);

    private static UplinkProtocol ParseUplink(string text) => text.Trim().ToLowerInvariant() switch
    {
        "mqtt" => UplinkProtocol.Mqtt,
        "smtp" => UplinkProtocol.Smtp,
        _ => throw new ArgumentException($"--uplink {text}: expected mqtt or smtp."),
    };

    private static Outage ParseOutage(string text)
    {
        string[] parts = text.Split(':');
        if (parts.Length != 2 || !double.TryParse(parts[0], NumberStyles.Float, CultureInfo.InvariantCulture, out double at)
            || !double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out double length) || at < 0 || length <= 0)
        {
            throw new ArgumentException($"--outage {text}: expected AT:FOR in seconds, e.g. 20:10 (down at 20 s for 10 s).");
        }

        return new Outage { AtSeconds = at, ForSeconds = length };
    }

    private static void Set<T>(T? value, Action<T> apply)
        where T : class
    {
        if (value is not null)
        {
            apply(value);
        }
    }

    private static void Set<T>(T? value, Action<T> apply)
        where T : struct
    {
        if (value is T v)
        {
            apply(v);
        }
    }
}
