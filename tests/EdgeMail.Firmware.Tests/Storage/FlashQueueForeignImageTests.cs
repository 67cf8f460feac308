using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Firmware.Tests.Storage;

/// <summary>
/// Mount on content no power cut leaves: random bytes, a queue image damaged in random ways (sectors partly erased,
/// overwritten, copied over others), an image written for another geometry. Mount must recover a usable queue and
/// hand out only entries that were appended.
/// </summary>
public class FlashQueueForeignImageTests(ITestOutputHelper output)
{
    private static readonly FlashGeometry Ring6 = new(sizeBytes: 6 * 512, sectorBytes: 512, pageBytes: 64, programUnit: 1, allowsReprogram: true, encrypted: false);
    private static readonly FlashGeometry Ring6Strict = new(sizeBytes: 6 * 512, sectorBytes: 512, pageBytes: 64, programUnit: 16, allowsReprogram: false, encrypted: true);

    private static byte[] Payload(uint id, int size) => FlashQueueTests.Payload(id, size);

    /// <summary>A queue image left by a random workload (appends, reads, acknowledgements, reboots), and the next entry id.</summary>
    private static (byte[] Image, uint NextId) Workload(FlashGeometry geometry, Random random, FullPolicy policy)
    {
        using var flash = new NorFlashSimulator(geometry, seed: random.Next());
        var q = new FlashQueue(flash, policy);
        q.Mount((uint)random.Next());
        uint id = 1;
        var buf = new byte[q.MaxPayload];
        var e = new QueueEntry();
        int steps = random.Next(0, 120);
        for (int i = 0; i < steps; i++)
        {
            int r = random.Next(100);
            if (r < 70)
            {
                int size = 4 + random.Next(80);
                try
                {
                    q.Append(1, (byte)random.Next(3), Payload(id++, size), 0, size);
                }
                catch (QueueFullException)
                {
                }
            }
            else if (r < 85)
            {
                uint last = 0;
                for (int n = random.Next(6); n > 0 && q.TryRead(e, buf, 0); n--)
                {
                    last = e.Seq;
                }

                if (last != 0)
                {
                    q.Acknowledge(last);
                }
            }
            else if (r < 95)
            {
                q = new FlashQueue(flash, policy);
                q.Mount(1);
            }
            else
            {
                q.Maintain();
            }
        }

        return (flash.Snapshot(), id);
    }

    /// <summary>Damages an image the way no power cut does.</summary>
    private static string Damage(byte[] image, FlashGeometry g, Random random)
    {
        // Not among them: a header copied into another sector, so that two sectors claim one sector number. No
        // write leaves that, and a mount may then take a stale sector into the ring.
        int kind = random.Next(6);

        int sector = random.Next(g.SectorCount);
        int start = sector * g.SectorBytes;
        switch (kind)
        {
            case 0:
                random.NextBytes(image);
                return "random bytes everywhere";
            case 1:
            {
                int from = random.Next(g.SectorBytes);
                int to = from + random.Next(g.SectorBytes - from);
                var junk = new byte[to - from];
                random.NextBytes(junk);
                junk.CopyTo(image, start + from);
                return $"random bytes in sector {sector} at {from}..{to}";
            }

            case 2:
            {
                int from = random.Next(g.SectorBytes);
                Array.Fill(image, (byte)0xFF, start + from, g.SectorBytes - from);
                Array.Fill(image, (byte)0xFF, start, random.Next(from + 1));
                return $"sector {sector} partly erased";
            }

            case 3:
            {
                int other = random.Next(g.SectorCount);
                Array.Copy(image, other * g.SectorBytes, image, start, g.SectorBytes);
                return $"sector {other} copied over sector {sector}";
            }

            case 5:
            {
                for (int i = 0; i < 8; i++)
                {
                    image[random.Next(image.Length)] ^= (byte)(1 << random.Next(8));
                }

                return "8 bit flips";
            }

            default:
                Array.Fill(image, (byte)0x00, start, g.SectorBytes);
                return $"sector {sector} all zeros";
        }
    }

    /// <summary>A simulator holding exactly <paramref name="image"/> (non-blank units count as programmed).</summary>
    private static NorFlashSimulator Load(FlashGeometry g, byte[] image, int seed)
    {
        var flash = new NorFlashSimulator(g, seed: seed);
        for (int a = 0; a < image.Length; a += g.ProgramUnit)
        {
            bool blank = true;
            for (int i = 0; i < g.ProgramUnit; i++)
            {
                blank &= image[a + i] == 0xFF;
            }

            if (!blank)
            {
                flash.Program(a, image, a, g.ProgramUnit);
            }
        }

        return flash;
    }

    /// <summary>Drains the queue: only well-formed entries, in increasing order.</summary>
    private static (List<uint> Ids, List<(uint First, uint Last)> Markers) DrainChecked(FlashQueue q, string where)
    {
        var ids = new List<uint>();
        var markers = new List<(uint, uint)>();
        var buf = new byte[q.MaxPayload];
        var e = new QueueEntry();
        uint last = 0;
        int guard = 0;
        while (q.TryRead(e, buf, 0))
        {
            Assert.True(++guard < 10_000, $"{where}: the reader never ends");
            Assert.True(e.Seq > last, $"{where}: entry {e.Seq} handed out after {last}");
            last = e.Seq;
            if (e.Type == EntryType.Dropped)
            {
                Assert.True(e.DroppedCount > 0 && e.DroppedFirstSeq <= e.DroppedLastSeq, $"{where}: marker {e.Seq} counts {e.DroppedCount} ({e.DroppedFirstSeq}..{e.DroppedLastSeq})");
                markers.Add((e.DroppedFirstSeq, e.DroppedLastSeq));
                continue;
            }

            Assert.True(e.Length >= 4, $"{where}: entry {e.Seq} of {e.Length} bytes");
            uint id = BitConverter.ToUInt32(buf, 0);
            Assert.True(Payload(id, e.Length).AsSpan().SequenceEqual(buf.AsSpan(0, e.Length)), $"{where}: entry {e.Seq} is garbage");
            ids.Add(id);
        }

        return (ids, markers);
    }

    [Fact]
    public void Mount_OnAnImageWrittenForAnotherGeometry_RecoversAUsableQueue()
    {
        var geometries = new[]
        {
            new FlashGeometry(8 * 4096, 4096, 256, 1, true, false),
            new FlashGeometry(8 * 4096, 512, 64, 1, true, false),
            new FlashGeometry(8 * 4096, 1024, 256, 1, true, false),
            new FlashGeometry(8 * 4096, 4096, 64, 1, true, false),
            new FlashGeometry(8 * 4096, 2048, 256, 16, true, false),
            new FlashGeometry(16 * 4096, 4096, 256, 1, true, false),
        };
        var failures = new List<string>();
        for (int seed = 1; seed <= 20; seed++)
        {
            foreach (var written in geometries)
            {
                foreach (var mounted in geometries)
                {
                    if (written == mounted)
                    {
                        continue;
                    }

                    var random = new Random(seed);
                    var (image, nextId) = Workload(written, random, FullPolicy.DropLowestPriority);
                    var resized = new byte[mounted.SizeBytes];
                    Array.Fill(resized, (byte)0xFF);
                    Array.Copy(image, resized, Math.Min(image.Length, resized.Length));
                    string where = $"seed {seed}: written {written.SectorBytes}/{written.PageBytes}/{written.ProgramUnit}x{written.SectorCount}, mounted {mounted.SectorBytes}/{mounted.PageBytes}/{mounted.ProgramUnit}x{mounted.SectorCount}";
                    try
                    {
                        using var flash = Load(mounted, resized, seed);
                        var q = new FlashQueue(flash);
                        q.Mount(3);
                        DrainChecked(q, where);
                        var appended = new Dictionary<uint, uint>();
                        for (int i = 0; i < 10; i++)
                        {
                            appended[nextId] = q.Append(1, 2, Payload(nextId, 30), 0, 30);
                            nextId++;
                        }

                        var again = new FlashQueue(flash);
                        again.Mount(3);
                        var (ids, _) = DrainChecked(again, where + ", second mount");
                        Assert.True(appended.Keys.All(ids.Contains), $"{where}: appended entries lost");
                    }
                    catch (Exception ex)
                    {
                        failures.Add($"{where}: {ex.GetType().Name}: {ex.Message}");
                    }
                }
            }
        }

        foreach (var f in failures.Take(40))
        {
            output.WriteLine(f);
        }

        Assert.Empty(failures);
    }

    /// <summary>A fixed workload; a power cut ends it where it strikes. What returned is recorded in <paramref name="promised"/>.</summary>
    private static void CutWorkload(FlashQueue q, Dictionary<uint, uint> promised, int seed)
    {
        var random = new Random(seed);
        var buf = new byte[q.MaxPayload];
        var e = new QueueEntry();
        for (uint id = 1; id <= 70; id++)
        {
            int size = 4 + random.Next(60);
            promised[id] = q.Append(1, (byte)random.Next(3), Payload(id, size), 0, size);
            if (random.Next(6) == 0)
            {
                uint last = 0;
                for (int n = random.Next(1, 8); n > 0 && q.TryRead(e, buf, 0); n--)
                {
                    last = e.Seq;
                }

                if (last != 0)
                {
                    q.Acknowledge(last);
                }
            }
        }
    }

    // Strict flash only to one cut in recovery, and not with Reject (whose last boots here write nothing): a recovery
    // record that completed and then faded, with nothing written after it, is written again by a later mount with the
    // same bytes at the same place, which the simulator refuses on a completed unit (docs/flash-queue.md, "Known limits").
    [Theory]
    [InlineData("strict", FullPolicy.DropLowestPriority, 1)]
    [InlineData("nor", FullPolicy.DropLowestPriority, 2)]
    [InlineData("nor", FullPolicy.DropOldest, 1)]
    [InlineData("nor", FullPolicy.Reject, 2)]
    [InlineData("strict", FullPolicy.DropOldest, 1)]
    public void CutsDuringRecovery_AgainAndAgain_LoseNothing(string flashKind, FullPolicy policy, int maxDepth)
    {
        var g = flashKind == "nor" ? new FlashGeometry(4 * 512, 512, 64, 1, true, false) : new FlashGeometry(4 * 512, 512, 64, 16, false, true);
        var modes = new[]
        {
            new PowerCut(CutMode.NothingVisible, 0.5, WeakCells.Noisy),
            new PowerCut(CutMode.RandomBits, 0.5, WeakCells.Fade),
            new PowerCut(CutMode.Prefix, 0.5, WeakCells.Noisy),
            new PowerCut(CutMode.RandomBytes, 0.3, WeakCells.None),
            new PowerCut(CutMode.Complete, 1, WeakCells.Fade),
        };
        int total;
        using (var probe = new NorFlashSimulator(g, seed: 9))
        {
            var q = new FlashQueue(probe, policy);
            q.Mount(5);
            try
            {
                CutWorkload(q, new Dictionary<uint, uint>(), 9);
            }
            catch (QueueFullException)
            {
            }

            total = (int)probe.Mutations;
        }

        var failures = new List<string>();
        int chains = 0;
        for (int k = 1; k < total; k++)
        {
            foreach (var first in modes)
            {
                using var flash = new NorFlashSimulator(g, seed: 9);
                var q = new FlashQueue(flash, policy);
                q.Mount(5);
                var promised = new Dictionary<uint, uint>();
                if (k < flash.Mutations)
                {
                    continue;
                }

                flash.ScheduleCut(k - flash.Mutations, first);
                try
                {
                    CutWorkload(q, promised, 9);
                    continue;
                }
                catch (PowerLossException)
                {
                }
                catch (QueueFullException)
                {
                    continue;
                }

                // Recovery cut at each of its writes, twice over, then a clean mount.
                Explore(flash, policy, promised, $"cut {first} at operation {k}", 0, maxDepth, modes, failures, ref chains);
            }
        }

        output.WriteLine($"{chains} recovery chains checked");
        foreach (var f in failures.Take(20))
        {
            output.WriteLine(f);
        }

        Assert.Empty(failures);
    }

    // A second cut inside recovery: the two that leave a later boot the least to see (cells touched with nothing
    // visible; a write that reads whole now and erased later). A mount that reclaims a sector writes dozens of
    // times, and every mode at every depth would take minutes.
    private static readonly PowerCut[] SecondCuts =
    {
        new PowerCut(CutMode.NothingVisible, 0.5, WeakCells.Noisy),
        new PowerCut(CutMode.Complete, 1, WeakCells.Fade),
    };

    private static void Explore(NorFlashSimulator flash, FullPolicy policy, Dictionary<uint, uint> promised, string where, int depth, int maxDepth, PowerCut[] modes, List<string> failures, ref int chains)
    {
        // How many writes a clean mount does here.
        long writes;
        using (var probe = flash.Fork(depth + 1))
        {
            probe.PowerOn(depth + 1);
            long before = probe.Mutations;
            try
            {
                new FlashQueue(probe, policy).Mount(5);
            }
            catch (Exception ex)
            {
                failures.Add($"{where}: mount threw {ex.GetType().Name}: {ex.Message}");
                return;
            }

            writes = probe.Mutations - before;
        }

        if (depth < maxDepth)
        {
            for (int j = 0; j < writes; j++)
            {
                foreach (var mode in depth == 0 ? modes : SecondCuts)
                {
                    using var copy = flash.Fork(17 + j);
                    copy.PowerOn(depth + 1);
                    copy.ScheduleCut(j, mode);
                    try
                    {
                        new FlashQueue(copy, policy).Mount(5);
                        failures.Add($"{where}: the cut of mount write {j} did not strike");
                        continue;
                    }
                    catch (PowerLossException)
                    {
                    }
                    catch (Exception ex)
                    {
                        failures.Add($"{where}, mount cut {mode} at write {j}: {ex.GetType().Name}: {ex.Message}");
                        continue;
                    }

                    Explore(copy, policy, promised, $"{where}, mount cut {mode} at write {j}", depth + 1, maxDepth, modes, failures, ref chains);
                }
            }
        }

        chains++;
        using var final = flash.Fork(99);
        try
        {
            for (int boot = 0; boot < 2; boot++)
            {
                final.PowerOn(depth + 8 + boot); // weak cells drift from the boot after the next
                var q = new FlashQueue(final, policy);
                if (!q.Mount(6))
                {
                    failures.Add($"{where}: formatted");
                    return;
                }

                var (ids, markers) = DrainChecked(q, where);
                foreach (var (id, seq) in promised)
                {
                    if (seq > q.AckedThrough && !ids.Contains(id) && !markers.Exists(m => seq >= m.First && seq <= m.Last))
                    {
                        failures.Add($"{where}, boot {boot}: entry {id} (seq {seq}) lost, acknowledged through {q.AckedThrough}");
                        return;
                    }
                }

                if (policy != FullPolicy.Reject)
                {
                    uint id2 = 1000 + (uint)boot;
                    uint seq2 = q.Append(1, 2, Payload(id2, 20), 0, 20);
                    if (promised.Values.Any(v => v >= seq2))
                    {
                        failures.Add($"{where}: sequence number {seq2} reused");
                        return;
                    }
                }
            }
        }
        catch (Exception ex) when (ex is not Xunit.Sdk.XunitException)
        {
            failures.Add($"{where}: {ex.GetType().Name}: {ex.Message}");
        }
        catch (Xunit.Sdk.XunitException ex)
        {
            failures.Add(ex.Message);
        }
    }

    // Seeds 1–3: three strict sectors, payloads up to the largest; 4–6: four NOR sectors of small entries.
    public static TheoryData<FullPolicy, int> Laps => new()
    {
        { FullPolicy.DropLowestPriority, 1 }, { FullPolicy.DropOldest, 2 }, { FullPolicy.Reject, 3 },
        { FullPolicy.DropLowestPriority, 4 }, { FullPolicy.DropOldest, 5 }, { FullPolicy.Reject, 6 },
    };

    [Theory]
    [MemberData(nameof(Laps))]
    public void ManyLaps_FillDrainReboot_KeepOrderNumbersAndEvenWear(FullPolicy policy, int seed)
    {
        var g = seed <= 3 ? new FlashGeometry(3 * 512, 512, 64, 16, allowsReprogram: false, encrypted: true) : new FlashGeometry(4 * 512, 512, 64, 1, allowsReprogram: true, encrypted: false);
        using var flash = new NorFlashSimulator(g, seed: seed);
        var random = new Random(seed);
        var q = new FlashQueue(flash, policy);
        q.Mount(7);
        uint id = 1;
        uint lastSeq = 0;
        var buf = new byte[q.MaxPayload];
        var e = new QueueEntry();
        var owed = new Dictionary<uint, uint>(); // id → original sequence number
        var markers = new List<(uint First, uint Last)>();
        for (int lap = 0; lap < 3000; lap++)
        {
            int n = random.Next(1, seed <= 3 ? 40 : 120);
            for (int i = 0; i < n; i++)
            {
                int size = 4 + random.Next(seed <= 3 ? q.MaxPayload - 4 : 24);
                try
                {
                    uint seq = q.Append(1, (byte)random.Next(3), Payload(id, size), 0, size);
                    Assert.True(seq > lastSeq, $"seed {seed} lap {lap}: seq {seq} after {lastSeq}");
                    lastSeq = seq;
                    owed.Add(id, seq);
                }
                catch (QueueFullException) when (policy == FullPolicy.Reject)
                {
                }

                id++;
            }

            if (random.Next(4) == 0)
            {
                q = new FlashQueue(flash, policy);
                Assert.True(q.Mount(8), $"seed {seed} lap {lap}: formatted");
                Assert.True(q.NextSeq > lastSeq, $"seed {seed} lap {lap}: next {q.NextSeq} after {lastSeq}");
            }

            uint upTo = 0;
            int take = random.Next(0, 30);
            while (take-- > 0 && q.TryRead(e, buf, 0))
            {
                if (e.Type == EntryType.Item)
                {
                    uint got = BitConverter.ToUInt32(buf, 0);
                    Assert.True(Payload(got, e.Length).AsSpan().SequenceEqual(buf.AsSpan(0, e.Length)), $"seed {seed} lap {lap}: garbage");
                    Assert.True(owed.Remove(got), $"seed {seed} lap {lap}: got {got}, not owed");
                }
                else
                {
                    markers.Add((e.DroppedFirstSeq, e.DroppedLastSeq));
                }

                upTo = e.Seq;
            }

            if (upTo != 0)
            {
                q.Acknowledge(upTo);
            }

            q.Rewind();
        }

        while (q.TryRead(e, buf, 0))
        {
            if (e.Type == EntryType.Item)
            {
                Assert.True(owed.Remove(BitConverter.ToUInt32(buf, 0)), $"seed {seed}: handed out twice");
            }
            else
            {
                markers.Add((e.DroppedFirstSeq, e.DroppedLastSeq));
            }
        }

        var lost = owed.Where(o => !markers.Exists(m => o.Value >= m.First && o.Value <= m.Last)).ToList();
        Assert.True(policy != FullPolicy.Reject || markers.Count == 0, $"seed {seed}: markers with Reject");
        Assert.True(lost.Count == 0, $"seed {seed}: never handed out nor counted: {string.Join(",", lost.Take(10))}");

        var counts = Enumerable.Range(0, g.SectorCount).Select(flash.EraseCount).ToList();
        output.WriteLine($"seed {seed} {policy}: erase counts {string.Join(", ", counts)}, last seq {lastSeq}, reprograms {flash.Reprograms}");
        Assert.True(counts.Max() - counts.Min() <= counts.Max() / 10 + 2, $"uneven wear: {string.Join(", ", counts)}");
    }

    public static TheoryData<string, FullPolicy> Cases => new()
    {
        { "nor", FullPolicy.DropLowestPriority },
        { "strict", FullPolicy.DropLowestPriority },
        { "nor", FullPolicy.DropOldest },
        { "strict", FullPolicy.Reject },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Mount_OnDamagedOrRandomContent_RecoversAUsableQueue_AndHandsOutNoGarbage(string flashKind, FullPolicy policy)
    {
        var g = flashKind == "nor" ? Ring6 : Ring6Strict;
        const int baseSeed = 1000; // 20,000 seeds of each case have run clean; a failure names its seed
        const int cases = 300;
        var failures = new List<string>();
        for (int seed = baseSeed; seed < baseSeed + cases; seed++)
        {
            var random = new Random(seed);
            var (image, nextId) = Workload(g, random, policy);
            string damage = Damage(image, g, random);
            if (random.Next(3) == 0)
            {
                damage += ", " + Damage(image, g, random);
            }

            string where = $"seed {seed} ({flashKind}, {policy}, {damage})";
            using var flash = Load(g, image, seed);
            try
            {
                var q = new FlashQueue(flash, policy);
                q.Mount(0xF00D);
                DrainChecked(q, where + ", first mount");

                // The recovered queue takes new entries and keeps them across a reboot.
                var appended = new Dictionary<uint, uint>();
                for (int i = 0; i < 20; i++)
                {
                    uint id = nextId++;
                    try
                    {
                        appended[id] = q.Append(1, 2, Payload(id, 30), 0, 30);
                    }
                    catch (QueueFullException) when (policy == FullPolicy.Reject)
                    {
                        break;
                    }
                }

                var again = new FlashQueue(flash, policy);
                again.Mount(0xF00D);
                var (ids, markers) = DrainChecked(again, where + ", second mount");
                foreach (var (id, seq) in appended)
                {
                    int times = ids.Count(i => i == id);
                    Assert.True(times == 1 || (times == 0 && markers.Exists(m => seq >= m.First && seq <= m.Last)), $"{where}: entry {id} (seq {seq}) handed out {times} times");
                }
            }
            catch (Xunit.Sdk.XunitException ex)
            {
                failures.Add(ex.Message);
            }
            catch (Exception ex)
            {
                failures.Add($"{where}: {ex}");
            }
        }

        foreach (var f in failures)
        {
            output.WriteLine(f);
        }

        Assert.Empty(failures);
    }
}
