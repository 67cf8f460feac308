using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Firmware.Tests.Storage;

/// <summary>
/// The cases of issue 16, each reproduced as found: power cuts inside the full policy's reclaim, torn writes that
/// fade, cuts that leave nothing visible, priorities when the oldest sector holds only critical entries, and a
/// header that reads differently the second time.
/// </summary>
public class FlashQueueRecoveryTests(ITestOutputHelper output)
{
    private static readonly FlashGeometry Ring4 = new(sizeBytes: 4 * 512, sectorBytes: 512, pageBytes: 64, programUnit: 1, allowsReprogram: true, encrypted: false);
    private static readonly FlashGeometry Ring4Strict = new(sizeBytes: 4 * 512, sectorBytes: 512, pageBytes: 64, programUnit: 16, allowsReprogram: false, encrypted: true);

    private static byte[] Payload(uint id, int size) => FlashQueueTests.Payload(id, size);

    private static byte PriorityOf(uint id) => (byte)(id % 5 == 0 ? 2 : id % 3 == 0 ? 1 : 0);

    private static int SizeOf(uint id) => 20 + (int)(id * 7 % 40);

    internal sealed record Drained(List<(uint Id, uint Seq, uint Original, byte Priority)> Items, List<(uint Count, uint First, uint Last)> Markers);

    internal static Drained Drain(FlashQueue q)
    {
        var items = new List<(uint, uint, uint, byte)>();
        var markers = new List<(uint, uint, uint)>();
        var buf = new byte[q.MaxPayload];
        var e = new QueueEntry();
        uint last = 0;
        while (q.TryRead(e, buf, 0))
        {
            Assert.True(e.Seq > last, $"entry {e.Seq} handed out after {last}");
            last = e.Seq;
            if (e.Type == EntryType.Dropped)
            {
                markers.Add((e.DroppedCount, e.DroppedFirstSeq, e.DroppedLastSeq));
                continue;
            }

            uint id = BitConverter.ToUInt32(buf, 0);
            Assert.Equal(Payload(id, e.Length), buf[..e.Length]);
            items.Add((id, e.Seq, e.OriginalSeq, e.Priority));
        }

        return new Drained(items, markers);
    }

    /// <summary>Every entry whose append returned is handed out once, or lies in a marker's range and is counted.</summary>
    internal static void AssertNothingLost(Dictionary<uint, uint> promised, Drained drained, string where)
    {
        var seen = new HashSet<uint>();
        foreach (var item in drained.Items)
        {
            Assert.True(seen.Add(item.Id), $"{where}: entry {item.Id} handed out twice");
            if (promised.TryGetValue(item.Id, out uint original))
            {
                Assert.True(original == item.Original, $"{where}: entry {item.Id} appended as {original}, handed out as original {item.Original}");
            }
        }

        var missing = promised.Where(p => !seen.Contains(p.Key)).ToList();
        foreach (var (id, seq) in missing)
        {
            Assert.True(drained.Markers.Any(m => seq >= m.First && seq <= m.Last), $"{where}: entry {id} (seq {seq}) neither handed out nor counted by a drop marker");
        }

        long counted = drained.Markers.Sum(m => (long)m.Count);
        Assert.True(counted >= missing.Count, $"{where}: {missing.Count} entries missing, markers count {counted}");
    }

    /// <summary>Appends entries until one append runs the full policy's reclaim; returns the mutations that append made.</summary>
    private static (uint ReclaimingId, List<(long Index, bool IsErase)> Mutations) FindReclaim(FlashGeometry geometry, FullPolicy policy)
    {
        using var flash = new NorFlashSimulator(geometry, seed: 1);
        var q = new FlashQueue(flash, policy);
        q.Mount(0xC0FFEE);
        var log = new List<(long, bool)>();
        flash.BeforeMutation = (index, isErase, _, _, _, _) => log.Add((index, isErase));
        for (uint id = 1; id < 1000; id++)
        {
            log.Clear();
            int live = q.LiveSectors;
            q.Append(1, PriorityOf(id), Payload(id, SizeOf(id)), 0, SizeOf(id));
            if (q.LiveSectors <= live && log.Count(m => m.Item2) > 0)
            {
                return (id, [.. log]);
            }
        }

        throw new InvalidOperationException("the workload never filled the ring");
    }

    /// <summary>
    /// Noisy cells under one address: counts the reads that start there since <see cref="Arm"/> and flips a bit in the
    /// one numbered <see cref="FlipAt"/> (1-based; 0: none), as cells a cut left weak may read differently each time.
    /// </summary>
    private sealed class NoisyRead(IFlashDevice inner) : IFlashDevice
    {
        public int Address = -1;
        public int FlipAt;
        public int Reads;

        public FlashGeometry Geometry => inner.Geometry;

        public void Arm(int flipAt)
        {
            FlipAt = flipAt;
            Reads = 0;
        }

        public void Read(int address, byte[] buffer, int offset, int count)
        {
            inner.Read(address, buffer, offset, count);
            if (address == Address && ++Reads == FlipAt)
            {
                buffer[offset + (count / 2)] ^= 0x10;
            }
        }

        public void Program(int address, byte[] buffer, int offset, int count) => inner.Program(address, buffer, offset, count);

        public void EraseSector(int sector) => inner.EraseSector(sector);
    }

    private static readonly FlashGeometry W25QRing4 = new(sizeBytes: 4 * 4096, sectorBytes: 4096, pageBytes: 256, programUnit: 1, allowsReprogram: true, encrypted: false);

    /// <summary>
    /// Boot 1 fills most of sector 0 (one low-priority entry first, then normal ones) and is cut as the append of W
    /// completes: W's cells may read differently each time. Boot 2 appends K and more until the full policy reclaims
    /// sector 0: the low entry is dropped, the rest moved. Returns what boot 2's reader hands out afterwards, the
    /// entries whose append returned, and, when <paramref name="flipAt"/> is 0, the reads of W's payload the reclaiming
    /// append made (the last is the copy's second read).
    /// </summary>
    private static (Drained Drained, Dictionary<uint, uint> Promised, int Reads) ReclaimAWeakRecord(int fillerSize, int flipAt)
    {
        using var sim = new NorFlashSimulator(W25QRing4, seed: 1);
        var flash = new NoisyRead(sim);
        var q = new FlashQueue(flash, FullPolicy.DropLowestPriority);
        q.Mount(5);
        var promised = new Dictionary<uint, uint> { [1] = q.Append(1, 0, Payload(1, 4), 0, 4) };
        uint id = 2;
        while (q.NextSeq < 5)
        {
            promised[id] = q.Append(1, 1, Payload(id, fillerSize), 0, fillerSize);
            id++;
        }

        byte[] before = sim.Snapshot();
        sim.ScheduleCut(0, new PowerCut(CutMode.Complete, 1, WeakCells.None)); // the cells' noise is NoisyRead's
        Assert.Throws<PowerLossException>(() => q.Append(1, 1, Payload(id, 60), 0, 60)); // W
        byte[] after = sim.Snapshot();
        flash.Address = Enumerable.Range(0, before.Length).First(i => before[i] != after[i]) + FlashQueue.RecordOverhead;
        id++;
        sim.PowerOn();

        q = new FlashQueue(flash, FullPolicy.DropLowestPriority);
        q.Mount(5);
        int reads = 0;
        while (q.DroppedSinceMount == 0)
        {
            flash.Arm(q.LiveSectors == 3 ? flipAt : 0);
            promised[id] = q.Append(1, 1, Payload(id, 200), 0, 200);
            reads = flash.Reads;
            id++;
        }

        return (Drain(q), promised, reads);
    }

    /// <summary>
    /// 855fce8 starts the record after a copy that fails its check (its source read differently twice) at the next page,
    /// where readers go on from it, "if the plan's slack allows". When it does not, the next moved entry starts inside
    /// the page the reader skips, and the reader then finds no header at a page start until one happens to begin there:
    /// here K (right after W) and the five entries after it, whose appends returned, are neither handed out nor counted
    /// by a marker, and the acknowledgements that follow remove them unsent (with other sizes the drop marker goes too).
    /// W itself may go: its append never returned.
    /// </summary>
    [Fact]
    public void Reclaim_CopyOfANoisyRecordFailsWithLittleSlack_TheEntriesMovedAfterItAreNotLost()
    {
        const int fillerSize = 100; // one of the sizes (8 of 60 tried between 100 and 513) that leave too little slack
        int reads = ReclaimAWeakRecord(fillerSize, flipAt: 0).Reads;
        Assert.True(reads >= 2, $"the reclaim read W's payload {reads} times");

        var (drained, promised, _) = ReclaimAWeakRecord(fillerSize, flipAt: reads);

        output.WriteLine("handed out (id@seq/original): " + string.Join(", ", drained.Items.Select(i => $"{i.Id}@{i.Seq}/{i.Original}")));
        AssertNothingLost(promised, drained, "after the reclaim whose copy of W failed its check");
    }

    private static readonly FlashGeometry Ring3 = new(sizeBytes: 3 * 512, sectorBytes: 512, pageBytes: 64, programUnit: 1, allowsReprogram: true, encrypted: false);

    /// <summary>
    /// Weak cells under one record's payload: while armed, a read of the whole payload in one go (a reclaim's copy) sees a
    /// bit flipped; the checks before it read in 64-byte chunks and see the record whole.
    /// </summary>
    private sealed class WeakCopyRead(IFlashDevice inner) : IFlashDevice
    {
        public int Address = -1;
        public int Length;
        public bool Armed;
        public int Flips;

        public FlashGeometry Geometry => inner.Geometry;

        public void Read(int address, byte[] buffer, int offset, int count)
        {
            inner.Read(address, buffer, offset, count);
            if (Armed && address == Address && count == Length)
            {
                buffer[offset + (count / 2)] ^= 0x10;
                Flips++;
            }
        }

        public void Program(int address, byte[] buffer, int offset, int count) => inner.Program(address, buffer, offset, count);

        public void EraseSector(int sector) => inner.EraseSector(sector);
    }

    /// <summary>
    /// A reclaim whose only unacknowledged entry is W, a raise cut as it completed, whose copy reads W differently from
    /// the check before it: W is not moved and nothing is dropped, so the new sector began with the reclaim's closing
    /// acknowledgement. Power fails inside the victim's erase, leaving the victim's header intact. The mount took the new
    /// sector for the old Reject policy's spare and kept every sector live, so with no spare left the full policy could
    /// not run: once the new sector filled, every raise threw QueueFullException, whatever its priority, until
    /// acknowledgements went past W. Such a reclaim now erases the victim before its closing record; the cases that cut
    /// the write after the erase check that order.
    /// </summary>
    [Theory]
    [InlineData(CutMode.BeforeStart, 0)]
    [InlineData(CutMode.NothingVisible, 0)]
    [InlineData(CutMode.Complete, 0)]
    [InlineData(CutMode.NothingVisible, 1)]
    [InlineData(CutMode.RandomBits, 1)]
    public void Reclaim_WhoseOnlySurvivorDoesNotReadBackWhole_CutAtTheVictimsErase_TheQueueStillTakesNewAlerts(CutMode mode, int operationsAfterTheErase)
    {
        using var sim = new NorFlashSimulator(Ring3, seed: 1);
        var flash = new WeakCopyRead(sim);
        var q = new FlashQueue(flash, FullPolicy.DropLowestPriority);
        q.Mount(5);
        var promised = new Dictionary<uint, uint> { [1] = q.Append(1, 2, Payload(1, 4), 0, 4) };
        byte[] before = sim.Snapshot();
        // W, critical: its record takes five page programs, and power fails as the last completes. The cells' noise is WeakCopyRead's.
        sim.ScheduleCut(4, new PowerCut(CutMode.Complete, 1, WeakCells.None));
        Assert.Throws<PowerLossException>(() => q.Append(1, 2, Payload(2, 300), 0, 300));
        byte[] after = sim.Snapshot();
        flash.Address = Enumerable.Range(0, before.Length).First(i => before[i] != after[i]) + FlashQueue.RecordOverhead;
        flash.Length = 300;
        sim.PowerOn();

        q = new FlashQueue(flash, FullPolicy.DropLowestPriority);
        q.Mount(5);
        promised[3] = q.Append(1, 0, Payload(3, 200), 0, 200);
        Assert.Equal(2, q.LiveSectors); // W ends sector 0: entry 3 opened sector 1
        q.Acknowledge(promised[1]);
        promised.Remove(1);

        // Entry 4 fits in no sector but the spare: the oldest is reclaimed (entry 4 outranks the lowest priority queued),
        // and power fails as it is erased.
        bool cutTheVictim = false;
        sim.BeforeMutation = (_, isErase, address, _, _, _) =>
        {
            if (isErase && address == 0)
            {
                cutTheVictim = true;
                sim.ScheduleCut(operationsAfterTheErase, new PowerCut(mode));
            }
        };
        flash.Armed = true;
        Assert.Throws<PowerLossException>(() => q.Append(1, 1, Payload(4, q.MaxPayload), 0, q.MaxPayload));
        Assert.True(cutTheVictim && flash.Flips == 1, $"the scenario did not form: victim erase cut {cutTheVictim}, W's copy misread {flash.Flips} times");
        sim.BeforeMutation = null;
        flash.Armed = false;
        sim.PowerOn(2);

        string where = operationsAfterTheErase == 0 ? $"cut {mode} in the victim's erase" : $"cut {mode} in the write after the victim's erase";
        for (int boot = 0; boot < 2; boot++)
        {
            var again = new FlashQueue(flash, FullPolicy.DropLowestPriority);
            Assert.True(again.Mount(6), $"{where}: the queue was formatted");
            AssertNothingLost(promised, Drain(again), $"{where}, after reboot {boot + 1}");
            uint id = 10 + (100 * (uint)boot);
            for (int n = 0; n < 12; n++, id++)
            {
                uint seq = 0;
                var refused = Record.Exception(() => seq = again.Append(1, PriorityOf(id), Payload(id, 120), 0, 120));
                Assert.True(refused is null, $"{where}, reboot {boot + 1}: alert {n + 1} since the mount refused ({refused?.Message}); {again.LiveSectors} of 3 sectors live");
                Assert.True(promised.Values.All(s => s < seq), $"{where}: sequence number {seq} reused");
                promised[id] = seq;
            }

            again.Rewind();
            AssertNothingLost(promised, Drain(again), $"{where}, after {promised.Count} appends in reboot {boot + 1}");
            sim.PowerOn(3 + boot);
        }
    }

    /// <summary>
    /// Cells under one record header that a cut left weak: while <see cref="Noisy"/>, every read that covers the header's
    /// first byte sees a bit of the length flipped, so the header fails its length check; otherwise it reads whole.
    /// </summary>
    private sealed class NoisyHeader(IFlashDevice inner) : IFlashDevice
    {
        public int Address = -1;
        public bool Noisy;
        public int Flips;

        public FlashGeometry Geometry => inner.Geometry;

        public void Read(int address, byte[] buffer, int offset, int count)
        {
            inner.Read(address, buffer, offset, count);
            if (Noisy && Address >= address && Address < address + count)
            {
                buffer[offset + Address - address] ^= 0x01;
                Flips++;
            }
        }

        public void Program(int address, byte[] buffer, int offset, int count) => inner.Program(address, buffer, offset, count);

        public void EraseSector(int sector) => inner.EraseSector(sector);
    }

    public static TheoryData<string, bool> TornExtentRings => new()
    {
        { "nor3", true },
        { "strict4", true },
        { "nor3", false },
        { "strict4", false },
    };

    /// <summary>
    /// Power fails as the first page of X, a record of several pages, is programmed: its header is on flash, its CRC can
    /// never match. Boot 1 reads that header bad. With no sector free (the image earlier firmware's Reject policy left) it
    /// resumes in X's sector on the next page, inside the extent X's length claims, and takes five entries of
    /// <paramref name="priority"/> there; with a sector free it continues in that one. Returns the flash powered on for
    /// boot 2, which reads X's header whole, and the entries owed (A, appended just before X, among them).
    /// </summary>
    private static (NoisyHeader Flash, Dictionary<uint, uint> Promised, uint NextId) EntriesAfterATornHeader(NorFlashSimulator sim, bool noFreeSector, byte priority)
    {
        var flash = new NoisyHeader(sim);
        var promised = new Dictionary<uint, uint>();
        uint id = 1;
        if (noFreeSector)
        {
            (promised, id) = FlashQueueNoFreeSectorTests.WriteTheImage(flash);
        }
        else
        {
            Assert.False(new FlashQueue(flash, FullPolicy.Reject).Mount(FlashQueueNoFreeSectorTests.Epoch));
        }

        var q = new FlashQueue(flash, FullPolicy.Reject);
        Assert.True(q.Mount(FlashQueueNoFreeSectorTests.Epoch));
        Assert.Equal(noFreeSector ? sim.Geometry.SectorCount : 1, q.LiveSectors);
        promised[id] = q.Append(1, 1, Payload(id, 20), 0, 20);
        id++;
        const int XPayload = 300;
        byte[] before = sim.Snapshot();
        sim.ScheduleCut(0, new PowerCut(CutMode.Complete, 1, WeakCells.None)); // the header's noise is NoisyHeader's
        Assert.Throws<PowerLossException>(() => q.Append(1, 1, Payload(id, XPayload), 0, XPayload));
        byte[] after = sim.Snapshot();
        flash.Address = Enumerable.Range(0, before.Length).First(i => before[i] != after[i]);
        int extentEnd = flash.Address + FlashQueue.RecordOverhead + XPayload;
        Assert.True(after.AsSpan(flash.Address, extentEnd - flash.Address).Contains((byte)0xFF), "X was programmed whole");
        id++;

        sim.PowerOn(1);
        flash.Noisy = true;
        q = new FlashQueue(flash, FullPolicy.Reject);
        Assert.True(q.Mount(FlashQueueNoFreeSectorTests.Epoch));
        before = sim.Snapshot();
        for (int n = 0; n < 5; n++, id++)
        {
            uint seq = q.Append(1, priority, Payload(id, 20), 0, 20);
            Assert.True(promised.Values.All(s => s < seq), $"boot 1: sequence number {seq} reused");
            promised[id] = seq;
        }

        after = sim.Snapshot();
        int firstWritten = Enumerable.Range(0, before.Length).First(i => before[i] != after[i]);
        Assert.True(flash.Flips > 0, "boot 1 never read X's header");
        Assert.True(noFreeSector == (firstWritten > flash.Address && firstWritten < extentEnd), $"boot 1 wrote first at 0x{firstWritten:X}; X's header is at 0x{flash.Address:X}, its extent ends at 0x{extentEnd:X}");
        sim.PowerOn(2);
        flash.Noisy = false;
        return (flash, promised, id);
    }

    /// <summary>
    /// Boot 2 reads X's header (<see cref="EntriesAfterATornHeader"/>) whole. Readers that skipped a torn record by its
    /// extent skipped the entries boot 1 wrote inside it (never handed out) and the mount missed their numbers (given
    /// again). With a sector free, nothing was written inside the extent and nothing changes.
    /// </summary>
    [Theory]
    [MemberData(nameof(TornExtentRings))]
    public void TornRecord_ItsHeaderReadBadThenWhole_EntriesWrittenInsideItsExtentAreHandedOutOnce(string ring, bool noFreeSector)
    {
        using var sim = new NorFlashSimulator(ring == "nor3" ? Ring3 : Ring4Strict, seed: 1);
        var (flash, promised, id) = EntriesAfterATornHeader(sim, noFreeSector, priority: 1);
        var q = new FlashQueue(flash, FullPolicy.Reject);
        Assert.True(q.Mount(FlashQueueNoFreeSectorTests.Epoch));
        var drained = Drain(q);
        var owed = promised.OrderBy(p => p.Value).Select(p => (p.Key, p.Value)).ToList();
        var handedOut = drained.Items.Select(i => (i.Id, i.Seq)).ToList();
        output.WriteLine($"{ring}, no free sector {noFreeSector}: handed out (id@seq) " + string.Join(", ", handedOut.Select(i => $"{i.Id}@{i.Seq}")));
        Assert.Empty(drained.Markers);
        Assert.Equal(owed, handedOut);
        Assert.True(q.NextSeq > promised.Values.Max(), $"boot 2: the next append would get {q.NextSeq}, already used");

        q.Acknowledge(handedOut[^1].Seq);
        uint later = q.Append(1, 1, Payload(id, 20), 0, 20);
        Assert.True(promised.Values.All(s => s < later), $"boot 2: sequence number {later} reused");
        q.Rewind();
        Assert.Equal([(id, later)], Drain(q).Items.Select(i => (i.Id, i.Seq)));
    }

    /// <summary>
    /// The reclaim reads a sector as the reader does: when X's sector is the oldest and the full policy reclaims it, the
    /// critical entries boot 1 wrote inside X's extent move forward with their original numbers, and A (the lowest
    /// priority queued) is dropped and counted.
    /// </summary>
    [Theory]
    [InlineData("nor3")]
    [InlineData("strict4")]
    public void TornRecord_ItsHeaderReadBadThenWhole_EntriesWrittenInsideItsExtentMoveWhenItsSectorIsReclaimed(string ring)
    {
        using var sim = new NorFlashSimulator(ring == "nor3" ? Ring3 : Ring4Strict, seed: 1);
        var (flash, promised, id) = EntriesAfterATornHeader(sim, noFreeSector: true, priority: 2);
        var q = new FlashQueue(flash, FullPolicy.DropLowestPriority);
        Assert.True(q.Mount(FlashQueueNoFreeSectorTests.Epoch));
        uint image = promised.Values.Order().ElementAt(promised.Count - 7); // before A, then boot 1's five
        q.Acknowledge(image);
        foreach (var done in promised.Where(p => p.Value <= image).ToList())
        {
            promised.Remove(done.Key);
        }

        Assert.True(q.LiveSectors < sim.Geometry.SectorCount, "the acknowledgement freed no sector");
        while (q.DroppedSinceMount == 0)
        {
            Assert.True(id < 1000, "the full policy never reclaimed X's sector");
            promised[id] = q.Append(1, 1, Payload(id, 20), 0, 20);
            id++;
        }

        var drained = Drain(q);
        output.WriteLine($"{ring}: handed out (id@seq/original) " + string.Join(", ", drained.Items.Select(i => $"{i.Id}@{i.Seq}/{i.Original}")));
        AssertNothingLost(promised, drained, $"{ring}, after the reclaim of X's sector");
        Assert.Equal(5, drained.Items.Count(i => i.Priority == 2 && i.Seq != i.Original));
    }

    /// <summary>
    /// X (several pages) is cut in its first page. Boot 1 reads X's header bad (or whole), resumes in X's sector (no
    /// sector free), appends <paramref name="fillers"/> entries, then E, cut as it completes with cells that fade from
    /// boot 3. Boot 2 reads X and E whole and hands E out. Boot 3 reads X bad and E faded: its next number must be above
    /// E's. A mount that saw any torn record in the head took its last record for complete and wrote no used-through
    /// record for it, though X came before it; E's number went to the next alert, and the gateway took that alert for
    /// a copy of E.
    /// </summary>
    [Theory]
    [InlineData("nor3", true, 150, 3)]
    [InlineData("nor3", false, 60, 1)]
    [InlineData("strict4", false, 60, 1)]
    public void WeakLastRecordAfterATornOne_HandedOut_ItsNumberIsNeverGivenAgain(string ring, bool boot1ReadsBad, int xPayload, int fillers)
    {
        using var sim = new NorFlashSimulator(ring == "nor3" ? Ring3 : Ring4Strict, seed: 1);
        var flash = new NoisyHeader(sim);
        var (promised, id) = FlashQueueNoFreeSectorTests.WriteTheImage(flash);
        var q = new FlashQueue(flash, FullPolicy.Reject);
        Assert.True(q.Mount(FlashQueueNoFreeSectorTests.Epoch));
        promised[id] = q.Append(1, 1, Payload(id, 20), 0, 20);
        id++;
        byte[] before = sim.Snapshot();
        sim.ScheduleCut(0, new PowerCut(CutMode.Complete, 1, WeakCells.None)); // the header's noise is NoisyHeader's
        Assert.Throws<PowerLossException>(() => q.Append(1, 1, Payload(id, xPayload), 0, xPayload));
        byte[] after = sim.Snapshot();
        flash.Address = Enumerable.Range(0, before.Length).First(i => before[i] != after[i]);
        id++;

        sim.PowerOn(1);
        flash.Noisy = boot1ReadsBad;
        q = new FlashQueue(flash, FullPolicy.Reject);
        Assert.True(q.Mount(FlashQueueNoFreeSectorTests.Epoch));
        for (int n = 0; n < fillers; n++, id++)
        {
            promised[id] = q.Append(1, 1, Payload(id, 20), 0, 20);
        }

        uint eSeq = q.NextSeq;
        sim.ScheduleCut(0, new PowerCut(CutMode.Complete, 1, WeakCells.Fade));
        Assert.Throws<PowerLossException>(() => q.Append(1, 1, Payload(id, 20), 0, 20));
        uint eId = id++;

        sim.PowerOn(2);
        flash.Noisy = false;
        q = new FlashQueue(flash, FullPolicy.Reject);
        Assert.True(q.Mount(FlashQueueNoFreeSectorTests.Epoch));
        var boot2 = Drain(q);
        output.WriteLine($"E {eId}@{eSeq}; boot 2 handed out " + string.Join(", ", boot2.Items.Select(i => $"{i.Id}@{i.Seq}")) + $"; markers {boot2.Markers.Count}");
        Assert.Contains((eId, eSeq), boot2.Items.Select(i => (i.Id, i.Seq)));

        sim.PowerOn(3);
        flash.Noisy = true;
        q = new FlashQueue(flash, FullPolicy.Reject);
        Assert.True(q.Mount(FlashQueueNoFreeSectorTests.Epoch));
        Drain(q);
        Assert.True(q.NextSeq > eSeq, $"boot 3: next sequence number {q.NextSeq}, but {eSeq} was handed out in boot 2");
    }

    /// <summary>
    /// Readers look for records page by page after a torn one, so they read headers among its programmed payload pages.
    /// Here the payload carries, every 16 bytes, the image of an entry header one byte longer than any entry the queue
    /// writes (its check can never pass). The reader threw for the caller's buffer at it, on every read from then on:
    /// the uplink stopped for good.
    /// </summary>
    [Fact]
    public void TornRecord_WhosePayloadLooksLikeAnOverlongHeader_DoesNotStopTheReader()
    {
        using var sim = new NorFlashSimulator(Ring4Strict, seed: 1);
        var q = new FlashQueue(sim, FullPolicy.Reject);
        Assert.False(q.Mount(FlashQueueNoFreeSectorTests.Epoch));
        var fake = new byte[FlashQueue.RecordOverhead];
        int len = q.MaxPayload + 1;
        BitConverter.GetBytes((ushort)len).CopyTo(fake, 0);
        BitConverter.GetBytes((ushort)(len ^ 0xFFFF)).CopyTo(fake, 2);
        BitConverter.GetBytes(4096u).CopyTo(fake, 4);
        fake[8] = 1; // an entry
        fake[9] = 1;
        fake[10] = 1;
        BitConverter.GetBytes(0xDEADBEEFu).CopyTo(fake, 12);
        var x = new byte[300];
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = fake[i % fake.Length];
        }

        sim.ScheduleCut(2, new PowerCut(CutMode.Complete, 1, WeakCells.None)); // three pages on flash, the rest never
        Assert.Throws<PowerLossException>(() => q.Append(1, 1, x, 0, x.Length));

        sim.PowerOn(1);
        q = new FlashQueue(sim, FullPolicy.Reject);
        Assert.True(q.Mount(FlashQueueNoFreeSectorTests.Epoch));
        uint seq = q.Append(1, 1, Payload(7, 20), 0, 20);
        Assert.Equal([(7u, seq)], Drain(q).Items.Select(i => (i.Id, i.Seq)));
    }

    public static TheoryData<FullPolicy, CutMode> ReclaimCuts => new()
    {
        { FullPolicy.DropLowestPriority, CutMode.BeforeStart },
        { FullPolicy.DropLowestPriority, CutMode.RandomBits },
        { FullPolicy.DropLowestPriority, CutMode.Complete },
        { FullPolicy.DropOldest, CutMode.BeforeStart },
        { FullPolicy.DropOldest, CutMode.Complete },
    };

    [Theory]
    [MemberData(nameof(ReclaimCuts))]
    public void Reclaim_CutAtAnyStep_ThenRebootAndMoreAppends_LosesNothing(FullPolicy policy, CutMode mode)
    {
        var (reclaimingId, mutations) = FindReclaim(Ring4, policy);
        output.WriteLine($"append {reclaimingId} reclaims the oldest sector in {mutations.Count} flash operations: {string.Join(", ", mutations.Select(m => m.IsErase ? "erase" : "program"))}");
        foreach (var (index, isErase) in mutations)
        {
            string where = $"{policy}, cut {mode} at operation {index} ({(isErase ? "erase" : "program")})";
            using var flash = new NorFlashSimulator(Ring4, seed: 1);
            var q = new FlashQueue(flash, policy);
            q.Mount(0xC0FFEE);
            var promised = new Dictionary<uint, uint>();
            flash.ScheduleCut(index - flash.Mutations, new PowerCut(mode, 0.5));
            uint id = 1;
            try
            {
                for (; id <= reclaimingId; id++)
                {
                    promised[id] = q.Append(1, PriorityOf(id), Payload(id, SizeOf(id)), 0, SizeOf(id));
                }

                Assert.Fail($"{where}: the cut did not strike");
            }
            catch (PowerLossException)
            {
                id++; // the cut append may be on flash (and handed out) under this id: the next raise is another alert
            }

            flash.PowerOn(7);
            for (int boot = 0; boot < 2; boot++)
            {
                var again = new FlashQueue(flash, policy);
                Assert.True(again.Mount(0xBAD), $"{where}: the queue was formatted");
                AssertNothingLost(promised, Drain(again), $"{where}, after reboot {boot + 1}");
                again.Rewind();
                for (int n = 0; n < 22; n++, id++)
                {
                    uint seq = again.Append(1, PriorityOf(id), Payload(id, SizeOf(id)), 0, SizeOf(id));
                    Assert.True(promised.Values.All(s => s < seq), $"{where}: sequence number {seq} reused");
                    promised[id] = seq;
                }

                AssertNothingLost(promised, Drain(again), $"{where}, after {promised.Count} appends");
            }
        }
    }

    [Theory]
    [InlineData(CutMode.Complete, 1.0)]
    [InlineData(CutMode.RandomBits, 0.999)]
    public void SectorHeader_CutAsItIsWrittenThenFading_DoesNotCutTheOlderSectorsOffTheRing(CutMode mode, double fraction)
    {
        // The append that opens the second sector is cut as its header is programmed: the header reads well in the boot
        // after the cut and fades from the one after that. A mount that continued in a third sector left that weak header
        // as the link between the first sector and the rest: once it faded, the first sector's entries were orphaned.
        using var flash = new NorFlashSimulator(Ring4, seed: 5);
        var q = new FlashQueue(flash);
        q.Mount(5);
        var promised = new Dictionary<uint, uint>();
        uint id = 1;
        long headerOp = -1;
        flash.BeforeMutation = (index, isErase, address, _, _, _) =>
        {
            if (!isErase && address == 512)
            {
                headerOp = index;
            }
        };
        for (; q.LiveSectors == 1; id++)
        {
            promised[id] = q.Append(1, 1, Payload(id, 40), 0, 40);
        }

        flash.BeforeMutation = null;
        promised.Remove(id - 1); // appended in the second sector: the replay below cuts it
        using var cut = new NorFlashSimulator(Ring4, seed: 5);
        var replay = new FlashQueue(cut);
        replay.Mount(5);
        cut.ScheduleCut(headerOp - cut.Mutations, new PowerCut(mode, fraction, WeakCells.Fade));
        Assert.Throws<PowerLossException>(() =>
        {
            for (uint i = 1; i < id; i++)
            {
                replay.Append(1, 1, Payload(i, 40), 0, 40);
            }
        });

        for (int boot = 1; boot <= 3; boot++)
        {
            cut.PowerOn(boot);
            var again = new FlashQueue(cut);
            Assert.True(again.Mount(6), $"boot {boot}: formatted");
            AssertNothingLost(promised, Drain(again), $"boot {boot} after the cut");
        }
    }

    [Fact]
    public void AfterATornAppendThatLaterFades_TheNextAppendIsNotBornAcknowledged()
    {
        using var flash = new NorFlashSimulator(Ring4, seed: 4);
        var q = new FlashQueue(flash);
        q.Mount(5);
        q.Append(0, 1, Payload(1, 40), 0, 40);
        flash.ScheduleCut(0, new PowerCut(CutMode.RandomBits, 0.6, WeakCells.Fade));
        Assert.Throws<PowerLossException>(() => q.Append(0, 1, Payload(2, 40), 0, 40));

        flash.PowerOn(); // the torn append is visible: its number is skipped, and acknowledging entry 1 covers it
        var second = new FlashQueue(flash);
        second.Mount(5);
        var read = Drain(second);
        second.Acknowledge(read.Items.Single().Seq);
        Assert.Equal(0u, second.Depth);

        flash.PowerOn(); // the torn cells have faded: nothing shows that the number was skipped
        var third = new FlashQueue(flash);
        third.Mount(5);
        Assert.True(third.NextSeq > third.AckedThrough, $"next sequence number {third.NextSeq} is already acknowledged ({third.AckedThrough})");
        uint seq = third.Append(0, 1, Payload(3, 40), 0, 40);
        Assert.Equal([(3u, seq)], Drain(third).Items.Select(i => (i.Id, i.Seq)));
    }

    [Theory]
    [InlineData(CutMode.NothingVisible)]
    [InlineData(CutMode.RandomBits)]
    public void Append_CutWhereTheLastRecordEndsOnAPageBoundary_ThenReboot_NeverReprogramsTheTouchedUnits(CutMode mode)
    {
        using var flash = new NorFlashSimulator(Ring4Strict, seed: 2);
        var q = new FlashQueue(flash);
        q.Mount(5);
        var promised = new Dictionary<uint, uint> { [1] = q.Append(0, 1, Payload(1, 16), 0, 16) }; // 32 + 32: ends at the page end
        flash.ScheduleCut(0, new PowerCut(mode, 0.001));
        Assert.Throws<PowerLossException>(() => q.Append(0, 1, Payload(2, 40), 0, 40));
        flash.PowerOn();

        var again = new FlashQueue(flash);
        again.Mount(5);
        promised[3] = again.Append(0, 1, Payload(3, 40), 0, 40);
        promised[4] = again.Append(0, 1, Payload(4, 40), 0, 40);
        AssertNothingLost(promised, Drain(again), "after the reboot");
    }

    [Fact]
    public void Append_CutBeforeAnyBitChanged_RightAfterACleanReboot_ThenReboot_NeverReprogramsTheTouchedUnits()
    {
        using var flash = new NorFlashSimulator(Ring4Strict, seed: 2);
        var q = new FlashQueue(flash);
        q.Mount(5);
        var promised = new Dictionary<uint, uint> { [1] = q.Append(0, 1, Payload(1, 30), 0, 30) };
        var rebooted = new FlashQueue(flash);
        rebooted.Mount(5);
        flash.ScheduleCut(0, new PowerCut(CutMode.NothingVisible));
        Assert.Throws<PowerLossException>(() => rebooted.Append(0, 1, Payload(2, 40), 0, 40));
        flash.PowerOn();

        for (int boot = 0; boot < 3; boot++)
        {
            var again = new FlashQueue(flash);
            again.Mount(5);
            uint id = 3 + (uint)boot;
            promised[id] = again.Append(0, 1, Payload(id, 40), 0, 40);
            AssertNothingLost(promised, Drain(again), $"boot {boot}");
        }
    }

    [Fact]
    public void RecoveryRecord_CutBeforeAnyBitChanged_IsWrittenAgainWithTheSameBytes_AndTheQueueCarriesOn()
    {
        using var flash = new NorFlashSimulator(Ring4Strict, seed: 2);
        var q = new FlashQueue(flash);
        q.Mount(5);
        var promised = new Dictionary<uint, uint> { [1] = q.Append(0, 1, Payload(1, 30), 0, 30) };
        flash.ScheduleCut(0, new PowerCut(CutMode.RandomBits, 0.5));
        Assert.Throws<PowerLossException>(() => q.Append(0, 1, Payload(2, 40), 0, 40));
        flash.PowerOn();
        // The mount after a torn write records at once where writing resumes (in a fresh sector); cut it before any bit changes.
        flash.ScheduleCut(0, new PowerCut(CutMode.NothingVisible));
        Assert.Throws<PowerLossException>(() => new FlashQueue(flash).Mount(5));
        flash.PowerOn();

        var again = new FlashQueue(flash);
        again.Mount(5);
        promised[3] = again.Append(0, 1, Payload(3, 40), 0, 40);
        AssertNothingLost(promised, Drain(again), "after the second reboot");
    }

    /// <summary>
    /// An append whose first page completed as power failed (its header reads whole, the rest of the record was never
    /// written), a mount whose record past it is cut before any bit changes, then the first page fades: the next boot
    /// sees clean flash after entry 1 and resumes on the next page, where the first mount's cut record touched a unit.
    /// Before, every later write in that sector could reach it (strict flash refuses; encrypted flash decrypts it to
    /// noise). The mount after a torn write now continues in a fresh sector instead.
    /// </summary>
    [Fact]
    public void TornAppend_ThenTheMountsRecordCutUnseen_ThenTheTornCellsFade_LaterWritesNeverReachTheTouchedUnits()
    {
        using var flash = new NorFlashSimulator(Ring4Strict, seed: 2);
        var q = new FlashQueue(flash);
        q.Mount(5);
        var promised = new Dictionary<uint, uint> { [1] = q.Append(0, 1, Payload(1, 30), 0, 30) };
        flash.ScheduleCut(0, new PowerCut(CutMode.Complete, 1, WeakCells.Fade));
        Assert.Throws<PowerLossException>(() => q.Append(0, 1, Payload(2, 60), 0, 60)); // spans two pages: only the first is written
        flash.PowerOn();
        flash.ScheduleCut(0, new PowerCut(CutMode.NothingVisible));
        Assert.Throws<PowerLossException>(() => new FlashQueue(flash).Mount(5));

        for (int boot = 0; boot < 3; boot++)
        {
            flash.PowerOn(); // from the second boot after the cut, the torn page reads erased
            var again = new FlashQueue(flash);
            again.Mount(5);
            for (uint i = 0; i < 3; i++)
            {
                uint id = 10 + ((uint)boot * 3) + i;
                promised[id] = again.Append(0, 1, Payload(id, 40), 0, 40);
            }

            AssertNothingLost(promised, Drain(again), $"boot {boot}");
        }
    }

    [Fact]
    public void DropLowestPriority_NeverDropsACriticalEntry_WhileALowerPriorityOneStaysQueued()
    {
        int cases = 0;
        for (int size = 0; size <= 60; size++)
        {
            using var flash = new NorFlashSimulator(Ring4, seed: 3);
            var q = new FlashQueue(flash);
            q.Mount(5);
            uint id = 1;
            var critical = new HashSet<uint>();
            while (q.LiveSectors == 1)
            {
                q.Append(1, 2, Payload(id, 4 + size), 0, 4 + size); // the oldest sector: critical entries only
                critical.Add(id++);
            }

            // Info entries fill the rest of the ring until the oldest sector has to be reclaimed.
            while (q.DroppedSinceMount == 0 && id < 2000)
            {
                q.Append(1, 0, Payload(id, 30), 0, 30);
                id++;
            }

            var drained = Drain(q);
            bool infoQueued = drained.Items.Any(i => i.Priority == 0);
            var lostCritical = critical.Where(c => drained.Items.All(i => i.Id != c)).ToList();
            Assert.False(infoQueued && lostCritical.Count > 0, $"payload {4 + size} B: critical entries {string.Join(", ", lostCritical)} dropped while info entries stay queued");
            cases++;
        }

        output.WriteLine($"{cases} payload sizes checked");
    }

    [Fact]
    public void Mount_WhenTheHeadHeaderReadsDifferentlyTheSecondTime_TrustsOnlyTheCheckedCopy()
    {
        using var flash = new NorFlashSimulator(Ring4, seed: 3);
        var q = new FlashQueue(flash);
        q.Mount(5);
        var promised = new Dictionary<uint, uint>();
        for (uint id = 1; q.LiveSectors < 2 || promised.Count < 12; id++)
        {
            promised[id] = q.Append(1, 1, Payload(id, 30), 0, 30);
        }

        var weak = new FlakyHeaderReads(flash, sectorAddress: 512, fromRead: 2);
        var again = new FlashQueue(weak);
        again.Mount(5);
        Assert.True(again.AckedThrough == 0, $"a garbled re-read acknowledged everything through {again.AckedThrough}");
        AssertNothingLost(promised, Drain(again), "after the mount");
    }

    /// <summary>The flash as seen through a weak header: reads of one sector's header garble its acknowledged-through field from the n-th read on.</summary>
    private sealed class FlakyHeaderReads(NorFlashSimulator inner, int sectorAddress, int fromRead) : IFlashDevice
    {
        private int _reads;

        public FlashGeometry Geometry => inner.Geometry;

        public void Read(int address, byte[] buffer, int offset, int count)
        {
            inner.Read(address, buffer, offset, count);
            if (address == sectorAddress && count >= 20 && ++_reads >= fromRead)
            {
                buffer[offset + 18] = 0x7F; // acknowledged-through becomes about two billion
            }
        }

        public void Program(int address, byte[] buffer, int offset, int count) => inner.Program(address, buffer, offset, count);

        public void EraseSector(int sector) => inner.EraseSector(sector);
    }
}
