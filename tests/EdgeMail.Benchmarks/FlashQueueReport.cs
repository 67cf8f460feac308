using System.Globalization;
using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Boards;
using EdgeMail.Simulation.Flash;

namespace EdgeMail.Benchmarks;

/// <summary>
/// The flash queue's figures of merit, measured on the simulated flash of real board profiles:
/// per-record overhead, write amplification, mount cost, RAM, wear and throughput in simulated flash time.
/// Run: <c>dotnet run -c Release --project tests/EdgeMail.Benchmarks -- flash</c>.
/// </summary>
internal static class FlashQueueReport
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static int Run(TextWriter o)
    {
        string boards = BoardProfile.FindBoardsDirectory(AppContext.BaseDirectory);
        var w25q = BoardProfile.LoadById(boards, "w25q128jv");
        var esp32 = BoardProfile.LoadById(boards, "esp32-wroom-32");
        o.WriteLine($"# Flash queue report ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores, .NET {Environment.Version})");
        o.WriteLine();
        Overhead(o);
        WriteAmplification(o, w25q, 1 << 20);
        WriteAmplification(o, esp32, (int)esp32.Flash.SizeBytes);
        FullQueue(o, w25q, 1 << 20);
        FullQueue(o, esp32, (int)esp32.Flash.SizeBytes);
        Mount(o, w25q);
        Ram(o, w25q);
        Wear(o, w25q);
        Throughput(o, w25q);
        return 0;
    }

    private static NorFlashSimulator Flash(BoardProfile board, int sizeBytes)
    {
        var f = board.Flash;
        var geometry = new FlashGeometry(sizeBytes, f.EraseSectorBytes, f.PageBytes, f.ProgramUnitBytes, f.AllowsReprogram, f.Encrypted);
        return new NorFlashSimulator(geometry, f.Timing, f.EraseCycles);
    }

    private static void Overhead(TextWriter o)
    {
        o.WriteLine("## Per-record overhead");
        o.WriteLine();
        o.WriteLine($"Every record carries a {FlashQueue.RecordOverhead}-byte header: length (2), its complement (2), sequence number (4), type, priority, kind, flags (4) and a CRC-32 (4) over header and payload. On flash with a program unit above 1 byte the record is padded to the unit.");
        o.WriteLine();
    }

    private static void WriteAmplification(TextWriter o, BoardProfile board, int size)
    {
        o.WriteLine($"## Write amplification on {board.Id} ({size / 1024} KiB region, program unit {board.Flash.ProgramUnitBytes} B)");
        o.WriteLine();
        o.WriteLine("Bytes programmed (records, acknowledgements, sector headers) ÷ payload bytes, over 20 turns of the ring.");
        o.WriteLine();
        o.WriteLine("| payload | ack after every alert | ack every 8 alerts |");
        o.WriteLine("| ---: | ---: | ---: |");
        foreach (int payload in new[] { 64, 256, 1024 })
        {
            double one = Amplification(board, size, payload, 1);
            double eight = Amplification(board, size, payload, 8);
            o.WriteLine(string.Create(Inv, $"| {payload} B | {one:0.000} | {eight:0.000} |"));
        }

        o.WriteLine();
    }

    private static double Amplification(BoardProfile board, int size, int payload, int batch)
    {
        using var flash = Flash(board, size);
        var q = new FlashQueue(flash);
        q.Mount(1);
        var data = new byte[payload];
        var buf = new byte[q.MaxPayload];
        var e = new QueueEntry();
        long payloadBytes = 0;
        flash.ResetCounters();
        long target = 20L * size;
        while (flash.BytesProgrammed < target)
        {
            for (int i = 0; i < batch; i++)
            {
                q.Append(1, 1, data, 0, payload);
                payloadBytes += payload;
            }

            uint last = 0;
            while (q.TryRead(e, buf, 0))
            {
                last = e.Seq;
            }

            q.Acknowledge(last);
        }

        return (double)flash.BytesProgrammed / payloadBytes;
    }

    private static void FullQueue(TextWriter o, BoardProfile board, int size)
    {
        o.WriteLine($"## A full queue on {board.Id} ({size / 1024} KiB region, program unit {board.Flash.ProgramUnitBytes} B)");
        o.WriteLine();
        o.WriteLine("The link is down: alerts keep coming into a full queue and the full policy reclaims the oldest sector for each new one. "
            + "Capacity is the entries held when the first one is dropped; then 20 turns of the ring's worth of appends. "
            + "DropLowestPriority gets one critical alert in four (kept and moved), the rest info (dropped first).");
        o.WriteLine();
        o.WriteLine("| policy | payload | capacity (entries) | bytes programmed ÷ payload bytes | bytes moved per alert | erases per 1,000 alerts | dropped |");
        o.WriteLine("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        foreach (FullPolicy policy in new[] { FullPolicy.DropOldest, FullPolicy.DropLowestPriority })
        {
            foreach (int payload in new[] { 64, 256 })
            {
                using var flash = Flash(board, size);
                var q = new FlashQueue(flash, policy);
                q.Mount(1);
                var data = new byte[payload];
                long n = 0;
                while (q.DroppedSinceMount == 0)
                {
                    q.Append(1, Priority(policy, n++), data, 0, payload);
                }

                long capacity = q.Depth;
                flash.ResetCounters();
                long appends = 20 * capacity;
                for (long i = 0; i < appends; i++)
                {
                    q.Append(1, Priority(policy, n++), data, 0, payload);
                }

                // Bytes beyond the new records, their headers and the sector headers: moved entries, markers, closing records.
                double moved = (flash.BytesProgrammed - (appends * (FlashQueue.RecordOverhead + payload))) / (double)appends;
                o.WriteLine(string.Create(Inv,
                    $"| {policy} | {payload} B | {capacity:N0} | {flash.BytesProgrammed / (double)(appends * payload):0.000} | {moved:0} B | {flash.EraseOps * 1000.0 / appends:0.0} | {q.DroppedSinceMount:N0} |"));
            }
        }

        o.WriteLine();
    }

    private static byte Priority(FullPolicy policy, long n) => (byte)(policy == FullPolicy.DropLowestPriority && n % 4 == 0 ? 2 : 0);

    private static void Mount(TextWriter o, BoardProfile board)
    {
        o.WriteLine($"## Mount cost on {board.Id} ({board.Flash.SizeBytes / (1024 * 1024)} MiB, whole chip as queue)");
        o.WriteLine();
        o.WriteLine("| queue state | entries stored | read operations | bytes read | simulated time |");
        o.WriteLine("| --- | ---: | ---: | ---: | ---: |");
        using var flash = Flash(board, (int)board.Flash.SizeBytes);
        var q = new FlashQueue(flash);
        q.Mount(1);
        var data = new byte[256];
        for (int i = 0; i < 10; i++)
        {
            q.Append(1, 1, data, 0, data.Length);
        }

        MountRow(o, flash, "10 entries");
        // Fill to the brim: the next append would make the full policy run.
        int sectors = flash.Geometry.SectorCount;
        while (q.LiveSectors < sectors - 1)
        {
            q.Append(1, 1, data, 0, data.Length);
        }

        MountRow(o, flash, "full");

        // Power cut inside the reclaim the next append runs (docs/flash-queue.md, "When full"): before the reclaim's
        // closing record the mount undoes it (erases the new sector), after it the mount completes it (erases the victim).
        // Append until the next append runs the reclaim; note its flash operations.
        var steps = new List<bool>();
        while (true)
        {
            using var probe = flash.Fork(3);
            var pq = new FlashQueue(probe);
            pq.Mount(2);
            long start = probe.Mutations;
            steps.Clear();
            probe.BeforeMutation = (_, isErase, _, _, _, _) => steps.Add(isErase);
            pq.Append(1, 1, data, 0, data.Length);
            if (steps.Count(e => e) >= 2)
            {
                break;
            }

            q.Append(1, 1, data, 0, data.Length);
        }

        long victimErase = steps.LastIndexOf(true);
        foreach (var (label, at) in new[] { ("full, cut inside a reclaim before its closing record", victimErase - 1), ("full, cut inside a reclaim after its closing record", victimErase) })
        {
            using var cut = flash.Fork(4);
            var cq = new FlashQueue(cut);
            cq.Mount(2);
            cut.ScheduleCut(at, new PowerCut(CutMode.BeforeStart));
            try
            {
                cq.Append(1, 1, data, 0, data.Length);
            }
            catch (PowerLossException)
            {
            }

            cut.PowerOn();
            MountRow(o, cut, label);
        }

        o.WriteLine();
    }

    private static void MountRow(TextWriter o, NorFlashSimulator flash, string label)
    {
        var probe = new FlashQueue(flash);
        flash.ResetCounters();
        probe.Mount(2);
        long reads = flash.ReadOps;
        long bytes = flash.BytesRead;
        double ms = flash.SimulatedMicros / 1000;
        o.WriteLine(string.Create(Inv, $"| {label} | {probe.Depth:N0} | {reads:N0} | {bytes:N0} | {ms:0.0} ms |"));
    }

    private static void Ram(TextWriter o, BoardProfile board)
    {
        o.WriteLine("## RAM");
        o.WriteLine();
        o.WriteLine("| flash region | bytes allocated by construction and mount (the queue's whole RAM) | allocations per append (steady state) | allocations per read |");
        o.WriteLine("| ---: | ---: | ---: | ---: |");
        foreach (int size in new[] { 64 * 1024, 1 << 20, (int)board.Flash.SizeBytes })
        {
            using var flash = Flash(board, size);
            new FlashQueue(flash).Mount(1); // warm up code paths, so only the object graph is counted
            long before = GC.GetAllocatedBytesForCurrentThread();
            var q = new FlashQueue(flash);
            q.Mount(1);
            long footprint = GC.GetAllocatedBytesForCurrentThread() - before;
            var data = new byte[256];
            var buf = new byte[q.MaxPayload];
            var e = new QueueEntry();
            for (int i = 0; i < 2000; i++)
            {
                q.Append(1, 1, data, 0, 256);
                q.TryRead(e, buf, 0);
                q.Acknowledge(e.Seq);
            }

            long a0 = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 1000; i++)
            {
                q.Append(1, 1, data, 0, 256);
            }

            long a1 = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 1000; i++)
            {
                q.TryRead(e, buf, 0);
            }

            long a2 = GC.GetAllocatedBytesForCurrentThread();
            GC.KeepAlive(q);
            o.WriteLine(string.Create(Inv, $"| {size / 1024:N0} KiB | {footprint:N0} B | {(a1 - a0) / 1000.0:0} B | {(a2 - a1) / 1000.0:0} B |"));
        }

        o.WriteLine();
    }

    private static void Wear(TextWriter o, BoardProfile board)
    {
        const int size = 1 << 20;
        using var flash = Flash(board, size);
        var q = new FlashQueue(flash);
        q.Mount(1);
        var data = new byte[256];
        var buf = new byte[q.MaxPayload];
        var e = new QueueEntry();
        long alerts = 0;
        int sectors = flash.Geometry.SectorCount;
        var rng = new Random(42);
        while (flash.EraseOps < sectors * 50L)
        {
            int burst = 1 + rng.Next(20);
            for (int i = 0; i < burst; i++)
            {
                q.Append(1, (byte)rng.Next(3), data, 0, 256);
                alerts++;
            }

            while (q.TryRead(e, buf, 0))
            {
            }

            q.Acknowledge(e.Seq);
        }

        var counts = Enumerable.Range(0, sectors).Select(flash.EraseCount).ToArray();
        double mean = counts.Average();
        double erasesPerAlert = (double)flash.EraseOps / alerts;
        double years = board.Flash.EraseCycles * (double)sectors / (erasesPerAlert * 1000) / 365.25;
        o.WriteLine("## Wear (1 MiB partition, 256-byte alerts in random bursts, each burst acknowledged)");
        o.WriteLine();
        o.WriteLine(string.Create(Inv, $"{alerts:N0} alerts, {flash.EraseOps:N0} erases over {sectors} sectors: min {counts.Min()}, max {counts.Max()}, mean {mean:0.0}, max ÷ mean = {counts.Max() / mean:0.000}."));
        o.WriteLine(string.Create(Inv, $"{erasesPerAlert:0.0000} erases per alert → at 1,000 alerts a day and {board.Flash.EraseCycles:N0} cycles per sector, the partition wears out after about {years:N0} years."));
        o.WriteLine();
    }

    private static void Throughput(TextWriter o, BoardProfile board)
    {
        var t = board.Flash.Timing;
        double limit = board.Flash.PageBytes / t.PageProgramUs; // bytes per µs
        o.WriteLine($"## Append throughput on {board.Id}, simulated flash time");
        o.WriteLine();
        o.WriteLine(string.Create(Inv, $"Physical limit set by page program: {board.Flash.PageBytes} B per {t.PageProgramUs} µs = {limit * 1e6 / 1024:N0} KiB/s. Sectors are erased ahead in idle time (`Maintain`), as the forwarder does; the erase time is shown apart."));
        o.WriteLine();
        o.WriteLine("| payload | payload throughput | % of the page-program limit | erase time per alert (idle) |");
        o.WriteLine("| ---: | ---: | ---: | ---: |");
        foreach (int payload in new[] { 64, 256, 1024, 3600 })
        {
            using var flash = Flash(board, 1 << 20);
            var q = new FlashQueue(flash);
            q.Mount(1);
            var data = new byte[payload];
            double appendUs = 0;
            double eraseUs = 0;
            long bytes = 0;
            for (int i = 0; i < 2000; i++)
            {
                double t0 = flash.SimulatedMicros;
                q.Maintain();
                double t1 = flash.SimulatedMicros;
                q.Append(1, 1, data, 0, payload);
                double t2 = flash.SimulatedMicros;
                eraseUs += t1 - t0;
                appendUs += t2 - t1;
                bytes += payload;
                if (q.LiveSectors > 100)
                {
                    q.Acknowledge(q.NextSeq - 1);
                }
            }

            double rate = bytes / appendUs;
            o.WriteLine(string.Create(Inv, $"| {payload} B | {rate * 1e6 / 1024:N0} KiB/s | {rate / limit * 100:0.0} % | {eraseUs / 2000 / 1000:0.00} ms |"));
        }

        o.WriteLine();
    }
}
