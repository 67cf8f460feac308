using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using EdgeMail.Emulator.Fleet;
using EdgeMail.Firmware;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;
using EdgeMail.Firmware.Uplink;
using EdgeMail.Firmware.Uplink.Smtp;
using EdgeMail.Simulation.Boards;
using EdgeMail.Simulation.Flash;
using EdgeMail.Simulation.Network;

namespace EdgeMail.Emulator;

/// <summary>
/// The <c>bench</c> command: device-side uplink numbers (heap footprint per device, allocations per alert, bytes on the
/// wire per alert, radio-on time per alert in duty-cycled mode), for the MQTT uplink and, footprint and allocations, for
/// the SMTP uplink. Results are in docs/uplink-benchmarks.md.
/// </summary>
internal static class BenchCommand
{
    public static Command Create(Option<string?> boardsDir, TextWriter stdout, TextWriter stderr)
    {
        var board = new Option<string>("--board") { Description = "Board profile id", DefaultValueFactory = _ => "esp32-wroom-32" };
        var devices = new Option<int>("--devices") { Description = "Devices for the footprint measurement", DefaultValueFactory = _ => 200 };
        var alerts = new Option<int>("--alerts") { Description = "Alerts for the allocation and wire measurements", DefaultValueFactory = _ => 20_000 };
        var wakes = new Option<int>("--wakes") { Description = "Duty-cycle wakes per batch size", DefaultValueFactory = _ => 20 };
        var cmd = new Command("bench", "Measure the device side of the uplink: heap per device, allocations and wire bytes per alert, connection time per alert when duty-cycled");
        foreach (Option o in new Option[] { board, devices, alerts, wakes, boardsDir })
        {
            cmd.Options.Add(o);
        }

        cmd.SetAction(async (parse, cancel) =>
        {
            BoardProfile profile;
            try
            {
                profile = BoardProfile.LoadById(parse.GetValue(boardsDir) ?? BoardProfile.FindBoardsDirectory(), parse.GetValue(board)!);
            }
            catch (Exception ex) when (ex is IOException or InvalidDataException or ArgumentException)
            {
                stderr.WriteLine($"error: {ex.Message}");
                return 2;
            }

            stdout.WriteLine($"board {profile.Id}; .NET {Environment.Version}; {Environment.ProcessorCount} cores; server GC {System.Runtime.GCSettings.IsServerGC}");
            Footprint(profile, parse.GetValue(devices), stdout);
            AllocationsAndWire(profile, parse.GetValue(alerts), stdout);
            SmtpFootprintAndAllocations(profile, parse.GetValue(devices), parse.GetValue(alerts), stdout);
            await DutyCycle(profile, parse.GetValue(wakes), stdout).ConfigureAwait(false);
            return 0;
        });
        return cmd;
    }

    private static readonly string[] Codes = [.. Enumerable.Range(0, 64).Select(i => "BENCH_CODE_" + i.ToString(CultureInfo.InvariantCulture))];

    private sealed class Device
    {
        public required NorFlashSimulator Flash { get; init; }

        public required ITransport Link { get; init; }

        public FlashQueue? Queue { get; set; }

        public AlertStore? Store { get; set; }

        public Forwarder? Forwarder { get; set; }
    }

    private static Device Boot(Device d, IClock clock, long dutyMs = 0)
    {
        var queue = new FlashQueue(d.Flash);
        queue.Mount(0xBE7C4u);
        var wall = new WallClock(clock);
        var store = new AlertStore(queue, clock, wall, 1);
        d.Queue = queue;
        d.Store = store;
        d.Forwarder = new Forwarder(store, d.Link, clock, wall, new ForwarderOptions
        {
            DeviceId = "bench-device-0001",
            Secret = "secret-bench-device-0001",
            DutyCycleIntervalMs = dutyMs,
            HeartbeatIntervalMs = 0,
            FirmwareVersion = "bench",
        });
        return d;
    }

    private static void Drain(Device d, Alert alert, int count, ref int code)
    {
        for (int i = 0; i < count; i++)
        {
            alert.Code = Codes[code++ % Codes.Length];
            d.Store!.Raise(alert);
        }

        int guard = 0;
        while ((d.Store!.Depth > 0 || d.Forwarder!.State != ForwarderState.Idle) && guard++ < 100_000)
        {
            d.Forwarder!.Step(0);
        }
    }

    /// <summary>Heap held by queue + store + forwarder (MQTT client included) per device, flash cells and transport excluded.</summary>
    private static void Footprint(BoardProfile profile, int n, TextWriter stdout)
    {
        var clock = new StopwatchClock();
        var devices = Enumerable.Range(0, n).Select(i => new Device { Flash = NorFlashSimulator.FromProfile(profile, seed: i + 1), Link = new LoopbackBroker() }).ToList();
        var alert = new Alert("BENCH", Severity.Warning, "A bench alert of typical size: freezer 2 above -15 °C for 10 minutes");
        alert.AddValue("temp_c", -95, 1);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        long before = GC.GetTotalMemory(forceFullCollection: true);
        var queues = devices.Select(d =>
        {
            var q = new FlashQueue(d.Flash);
            q.Mount(0xBE7C4u);
            return q;
        }).ToList();
        long afterQueues = GC.GetTotalMemory(forceFullCollection: true);
        var stores = queues.Select(q => new AlertStore(q, clock, new WallClock(clock), 1)).ToList();
        long afterStores = GC.GetTotalMemory(forceFullCollection: true);
        int code = 0;
        for (int i = 0; i < n; i++)
        {
            Device d = devices[i];
            d.Queue = queues[i];
            d.Store = stores[i];
            d.Forwarder = new Forwarder(stores[i], d.Link, clock, new WallClock(clock), new ForwarderOptions
            {
                DeviceId = "bench-device-" + i.ToString("D4", CultureInfo.InvariantCulture),
                Secret = "secret-bench-device-" + i.ToString("D4", CultureInfo.InvariantCulture),
                HeartbeatIntervalMs = 0,
                FirmwareVersion = "bench",
            });
        }

        long afterForwarders = GC.GetTotalMemory(forceFullCollection: true);
        foreach (Device d in devices)
        {
            Drain(d, alert, 8, ref code);
        }

        long after = GC.GetTotalMemory(forceFullCollection: true);
        GC.KeepAlive(devices);
        double Per(long bytes) => bytes / (double)n;
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"footprint: {Per(after - before):0} bytes of managed heap per device in steady state (after 8 alerts; {n} devices; flash cells and transport excluded): flash queue {Per(afterQueues - before):0}, alert store {Per(afterStores - afterQueues):0}, forwarder with MQTT client and options {Per(afterForwarders - afterStores):0}, after connecting and forwarding {Per(after - afterForwarders):0}"));
    }

    private static void AllocationsAndWire(BoardProfile profile, int total, TextWriter stdout)
    {
        var clock = new StopwatchClock();
        var broker = new LoopbackBroker();
        Device d = Boot(new Device { Flash = NorFlashSimulator.FromProfile(profile, seed: 7), Link = broker }, clock);
        var alert = new Alert("BENCH", Severity.Warning, "A bench alert of typical size: freezer 2 above -15 °C for 10 minutes");
        alert.AddValue("temp_c", -95, 1);
        int code = 0;
        Drain(d, alert, 200, ref code); // warm up: connect, JIT, first sectors

        const int Batch = 100;
        long raiseBytes = 0, forwardBytes = 0, forwarded = 0;
        long wireBefore = broker.BytesFromDevice + broker.BytesToDevice;
        long publishesBefore = broker.Publishes;
        var watch = Stopwatch.StartNew();
        while (forwarded < total)
        {
            long a0 = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < Batch; i++)
            {
                alert.Code = Codes[code++ % Codes.Length];
                d.Store!.Raise(alert);
            }

            long a1 = GC.GetAllocatedBytesForCurrentThread();
            while (d.Store!.Depth > 0 || d.Forwarder!.State != ForwarderState.Idle)
            {
                d.Forwarder!.Step(0);
                d.Store.Maintain();
            }

            long a2 = GC.GetAllocatedBytesForCurrentThread();
            raiseBytes += a1 - a0;
            forwardBytes += a2 - a1;
            forwarded += Batch;
        }

        watch.Stop();
        long wire = broker.BytesFromDevice + broker.BytesToDevice - wireBefore;
        var json = new byte[AlertJsonWriter.MaxLength];
        d.Store!.Raise(alert);
        d.Store.TryNext(json, 0, out int jsonLength, out _);
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"allocations: {forwardBytes / (double)forwarded:0.##} bytes per forwarded alert (TryNext + PUBLISH + PUBACK + flash ack), {raiseBytes / (double)forwarded:0.##} bytes per Raise; {forwarded} alerts"));
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"wire: {wire / (double)(broker.Publishes - publishesBefore):0.#} bytes per alert on a steady connection (PUBLISH with {jsonLength} B of JSON + PUBACK; topic edgemail/v1/bench-device-0001/alert)"));
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"cpu: {watch.Elapsed.TotalMicroseconds / forwarded:0.#} µs per alert raised and forwarded (simulated flash, in-memory broker, one thread)"));
    }

    private static SmtpUplink SmtpDevice(AlertStore store, ITransport link, IClock clock, int i) => new(store, link, clock, new SmtpUplinkOptions
    {
        DeviceId = "bench-device-" + i.ToString("D4", CultureInfo.InvariantCulture),
        Password = "secret-bench-device-" + i.ToString("D4", CultureInfo.InvariantCulture),
        From = "bench-device-" + i.ToString("D4", CultureInfo.InvariantCulture) + "@devices.bench",
        To = "alerts@gateway.bench",
    });

    /// <summary>
    /// The same footprint for a device whose uplink is <see cref="SmtpUplink"/> (queue + store + uplink with its SMTP
    /// client and options, over the in-memory <see cref="InMemorySmtpServer"/>), and its allocations per alert.
    /// </summary>
    private static void SmtpFootprintAndAllocations(BoardProfile profile, int n, int total, TextWriter stdout)
    {
        var clock = new StopwatchClock();
        var links = Enumerable.Range(0, n).Select(_ => new InMemorySmtpServer(record: false)).ToList();
        var flashes = Enumerable.Range(0, n).Select(i => NorFlashSimulator.FromProfile(profile, seed: i + 1)).ToList();
        var alert = new Alert("BENCH", Severity.Warning, "A bench alert of typical size: freezer 2 above -15 °C for 10 minutes");
        alert.AddValue("temp_c", -95, 1);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        long before = GC.GetTotalMemory(forceFullCollection: true);
        var queues = flashes.Select(f =>
        {
            var q = new FlashQueue(f);
            q.Mount(0xBE7C4u);
            return q;
        }).ToList();
        long afterQueues = GC.GetTotalMemory(forceFullCollection: true);
        var stores = queues.Select(q => new AlertStore(q, clock, new WallClock(clock), 1)).ToList();
        long afterStores = GC.GetTotalMemory(forceFullCollection: true);
        var uplinks = stores.Select((s, i) => SmtpDevice(s, links[i], clock, i)).ToList();
        long afterUplinks = GC.GetTotalMemory(forceFullCollection: true);
        int code = 0;
        for (int i = 0; i < n; i++)
        {
            for (int k = 0; k < 8; k++)
            {
                alert.Code = Codes[code++ % Codes.Length];
                stores[i].Raise(alert);
            }

            uplinks[i].SendPending();
        }

        long after = GC.GetTotalMemory(forceFullCollection: true);
        GC.KeepAlive(uplinks);
        GC.KeepAlive(links);
        double Per(long bytes) => bytes / (double)n;
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"footprint, SMTP uplink: {Per(after - before):0} bytes of managed heap per device in steady state (after 8 alerts; {n} devices; flash cells and transport excluded): flash queue {Per(afterQueues - before):0}, alert store {Per(afterStores - afterQueues):0}, SMTP uplink with client and options {Per(afterUplinks - afterStores):0}, after a session {Per(after - afterUplinks):0}"));

        // Allocations: sessions of 100 alerts each (a session's own cost, e.g. the AUTH PLAIN scratch, is spread over them).
        var server = new InMemorySmtpServer(record: false);
        using NorFlashSimulator flash = NorFlashSimulator.FromProfile(profile, seed: 11);
        var queue = new FlashQueue(flash);
        queue.Mount(0xBE7C4u);
        var store = new AlertStore(queue, clock, new WallClock(clock), 1);
        SmtpUplink uplink = SmtpDevice(store, server, clock, 1);
        const int Batch = 100;
        long sent = 0, sendBytes = 0;
        for (int warm = 0; warm < 2; warm++)
        {
            for (int i = 0; i < Batch; i++)
            {
                alert.Code = Codes[code++ % Codes.Length];
                store.Raise(alert);
            }

            uplink.SendPending();
        }

        long wireBefore = server.BytesFromDevice + server.BytesToDevice;
        long messagesBefore = server.MessageCount;
        while (sent < total)
        {
            for (int i = 0; i < Batch; i++)
            {
                alert.Code = Codes[code++ % Codes.Length];
                store.Raise(alert);
            }

            long a0 = GC.GetAllocatedBytesForCurrentThread();
            sent += uplink.SendPending();
            sendBytes += GC.GetAllocatedBytesForCurrentThread() - a0;
            store.Maintain();
        }

        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"allocations, SMTP uplink: {sendBytes / (double)sent:0.##} bytes per submitted alert in sessions of {Batch} (connect, EHLO, AUTH PLAIN, MAIL/RCPT/DATA per alert, QUIT); {(server.BytesFromDevice + server.BytesToDevice - wireBefore) / (double)(server.MessageCount - messagesBefore):0} bytes on the wire per alert; {sent} alerts"));
    }

    /// <summary>Radio-on time per alert when duty-cycled: connect, subscribe, heartbeat, drain k alerts, disconnect — over real TCP to the in-process MQTTnet broker.</summary>
    private static async Task DutyCycle(BoardProfile profile, int wakes, TextWriter stdout)
    {
        const string Id = "bench-device-0001";
        await using EmbeddedBroker broker = await EmbeddedBroker.StartAsync(new Dictionary<string, string> { [Id] = "secret-" + Id }).ConfigureAwait(false);
        foreach (int k in new[] { 1, 10, 100 })
        {
            var clock = new StopwatchClock();
            using var link = new SimulatedLink();
            using var flash = NorFlashSimulator.FromProfile(profile, seed: k);
            var d = new Device { Flash = flash, Link = link };
            Boot(d, clock, dutyMs: 3_600_000);
            var options = d.Forwarder!;
            d.Forwarder = new Forwarder(d.Store!, link, clock, new WallClock(clock), new ForwarderOptions
            {
                DeviceId = Id,
                Secret = "secret-" + Id,
                Port = broker.Port,
                DutyCycleIntervalMs = 3_600_000,
                FirmwareVersion = "bench",
            });
            var alert = new Alert("BENCH", Severity.Warning, "A bench alert of typical size: freezer 2 above -15 °C for 10 minutes");
            var perWake = new List<double>();
            var bytesPerWake = new List<long>();
            int code = 0;
            for (int w = 0; w <= wakes; w++)
            {
                for (int i = 0; i < k; i++)
                {
                    alert.Code = Codes[code++ % Codes.Length];
                    d.Store!.Raise(alert);
                }

                long connected = d.Forwarder.ConnectedMs;
                long bytes = link.BytesSent + link.BytesReceived;
                long started = Stopwatch.GetTimestamp();
                d.Forwarder.Wake();
                d.Forwarder.Step(0);
                while (d.Forwarder.State != ForwarderState.Offline)
                {
                    d.Forwarder.Step(1);
                }

                if (w > 0)
                {
                    perWake.Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                    bytesPerWake.Add(link.BytesSent + link.BytesReceived - bytes);
                }
            }

            perWake.Sort();
            double median = perWake[perWake.Count / 2];
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"duty cycle, {k,3} alert(s) per wake: connected {median:0.00} ms per wake (median of {wakes}), {median / k:0.000} ms per alert; {bytesPerWake.Average() / k:0} bytes on the wire per alert ({bytesPerWake.Average():0} per wake incl. CONNECT, SUBSCRIBE, status, DISCONNECT)"));
        }
    }

    private sealed class StopwatchClock : IClock
    {
        private readonly Stopwatch _watch = Stopwatch.StartNew();

        public long UptimeMs => _watch.ElapsedMilliseconds + 1;
    }
}
