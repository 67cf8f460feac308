using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;
using Xunit;

namespace EdgeMail.Firmware.Tests.Storage;

public class FlashQueueTests
{
    internal static readonly FlashGeometry Nor = new(sizeBytes: 8 * 512, sectorBytes: 512, pageBytes: 64, programUnit: 1, allowsReprogram: true, encrypted: false);
    internal static readonly FlashGeometry Strict = new(sizeBytes: 8 * 512, sectorBytes: 512, pageBytes: 64, programUnit: 16, allowsReprogram: false, encrypted: true);

    /// <summary>A test entry of <paramref name="size"/> bytes that carries its id in the first four (little-endian).</summary>
    internal static byte[] Payload(uint id, int size)
    {
        var p = new byte[size];
        p[0] = (byte)id;
        p[1] = (byte)(id >> 8);
        p[2] = (byte)(id >> 16);
        p[3] = (byte)(id >> 24);
        for (int i = 4; i < size; i++)
        {
            p[i] = (byte)((id * 31) + i);
        }

        return p;
    }

    private static List<(QueueEntry Entry, byte[] Payload)> ReadAll(FlashQueue q)
    {
        var list = new List<(QueueEntry, byte[])>();
        var buf = new byte[q.MaxPayload];
        while (true)
        {
            var e = new QueueEntry();
            if (!q.TryRead(e, buf, 0))
            {
                return list;
            }

            list.Add((e, buf[..e.Length]));
        }
    }

    public static TheoryData<string> Geometries => new() { "nor", "strict" };

    private static FlashGeometry Geo(string name) => name == "nor" ? Nor : Strict;

    [Theory]
    [MemberData(nameof(Geometries))]
    public void Append_ThenRemountOnTheSameFlash_ReturnsEveryEntryInOrder(string geometry)
    {
        using var flash = new NorFlashSimulator(Geo(geometry));
        var q = new FlashQueue(flash);
        Assert.False(q.Mount(0x7F3A9C21));
        var seqs = new List<uint>();
        for (uint id = 1; id <= 12; id++)
        {
            seqs.Add(q.Append(1, 1, Payload(id, 40 + (int)id), 0, 40 + (int)id));
        }

        var again = new FlashQueue(flash);
        Assert.True(again.Mount(0xDEAD));
        var read = ReadAll(again);

        Assert.Equal(0x7F3A9C21u, again.Epoch);
        Assert.Equal(seqs, read.Select(r => r.Entry.Seq));
        for (int i = 0; i < read.Count; i++)
        {
            Assert.Equal(Payload((uint)i + 1, 41 + i), read[i].Payload);
        }
    }

    [Theory]
    [MemberData(nameof(Geometries))]
    public void Acknowledge_IsDurable_AcknowledgedEntriesDoNotComeBackAfterReboot(string geometry)
    {
        using var flash = new NorFlashSimulator(Geo(geometry));
        var q = new FlashQueue(flash);
        q.Mount(1);
        for (uint id = 1; id <= 6; id++)
        {
            q.Append(1, 1, Payload(id, 20), 0, 20);
        }

        var first = ReadAll(q).Take(4).ToList();
        q.Acknowledge(first[^1].Entry.Seq);

        var again = new FlashQueue(flash);
        again.Mount(1);
        Assert.Equal(new uint[] { 5, 6 }, ReadAll(again).Select(r => r.Entry.Seq));
    }

    [Fact]
    public void Rewind_HandsOutUnacknowledgedEntriesAgain()
    {
        using var flash = new NorFlashSimulator(Nor);
        var q = new FlashQueue(flash);
        q.Mount(1);
        for (uint id = 1; id <= 3; id++)
        {
            q.Append(1, 1, Payload(id, 20), 0, 20);
        }

        Assert.Equal(3, ReadAll(q).Count);
        Assert.Empty(ReadAll(q));
        q.Acknowledge(1);
        q.Rewind();
        Assert.Equal(new uint[] { 2, 3 }, ReadAll(q).Select(r => r.Entry.Seq));
    }

    [Theory]
    [MemberData(nameof(Geometries))]
    public void SequenceNumbers_NeverRepeat_AcrossRebootsAndManySectorWraps(string geometry)
    {
        using var flash = new NorFlashSimulator(Geo(geometry));
        uint last = 0;
        for (int boot = 0; boot < 40; boot++)
        {
            var q = new FlashQueue(flash);
            q.Mount(9);
            for (int i = 0; i < 10; i++)
            {
                uint seq = q.Append(0, 1, Payload((uint)i, 60), 0, 60);
                Assert.True(seq > last, $"seq {seq} after {last} on boot {boot}");
                last = seq;
            }

            ReadAll(q);
            q.Acknowledge(last);
        }

        // 400 entries of ~76 bytes through 8 sectors of 512 bytes: the ring wrapped many times.
        Assert.True(flash.EraseCount(0) > 5, "the workload should have wrapped the ring several times");
    }

    [Fact]
    public void Format_ChoosesANewEpoch_SoIdsDifferEvenIfSequenceNumbersRestart()
    {
        using var flash = new NorFlashSimulator(Nor);
        var q = new FlashQueue(flash);
        q.Mount(111);
        q.Append(0, 0, [1], 0, 1);
        q.Format(222);
        var again = new FlashQueue(flash);
        again.Mount(333);
        Assert.Equal(222u, again.Epoch);
        Assert.Empty(ReadAll(again));
    }

    [Fact]
    public void Full_DropsLowestPriorityFirst_KeepsCritical_AndReportsTheCount()
    {
        using var flash = new NorFlashSimulator(Nor);
        var q = new FlashQueue(flash);
        q.Mount(5);
        var priorities = new Dictionary<uint, byte>();
        for (uint id = 1; id <= 200; id++)
        {
            byte prio = id % 10 == 0 ? (byte)2 : (byte)0; // every tenth is critical
            q.Append(0, prio, Payload(id, 60), 0, 60);
            priorities[id] = prio;
        }

        var read = ReadAll(q);
        var items = read.Where(r => r.Entry.Type == EntryType.Item).ToList();
        var criticalIds = items.Where(r => r.Entry.Priority == 2).Select(r => BitConverter.ToUInt32(r.Payload, 0)).ToHashSet();
        uint reported = (uint)read.Where(r => r.Entry.Type == EntryType.Dropped).Sum(r => r.Entry.DroppedCount);

        Assert.Equal(priorities.Where(p => p.Value == 2).Select(p => p.Key).ToHashSet(), criticalIds);
        Assert.Equal(200u, (uint)items.Count + reported);
        Assert.True(reported > 0);
        Assert.All(items, r => Assert.Equal(Payload(BitConverter.ToUInt32(r.Payload, 0), 60), r.Payload));
    }

    [Fact]
    public void Full_OfCriticalEntries_DropsLowerOnesOnArrival_AndOldestCriticalsForNewOnes_WithoutMovingTheRing()
    {
        using var flash = new NorFlashSimulator(Nor);
        var q = new FlashQueue(flash);
        q.Mount(5);
        uint id = 1;
        while (q.DroppedSinceMount == 0)
        {
            q.Append(0, 2, Payload(id++, 60), 0, 60); // critical only, until the first is dropped
        }

        long erases = flash.EraseOps;
        long bytes = flash.BytesProgrammed;
        var info = new List<uint>();
        for (int i = 0; i < 50; i++)
        {
            info.Add(q.Append(0, 0, Payload(id++, 60), 0, 60));
        }

        // Each info entry is dropped as it arrives, counted by a 28-byte marker of its own: no entry is moved, and
        // sectors are reclaimed only as the markers need room (50 × 28 bytes, in sectors of 512).
        Assert.InRange(flash.BytesProgrammed - bytes, 50 * 28, (50 * 28) + (5 * (24 + 16 + 28)));
        Assert.InRange(flash.EraseOps - erases, 0, 5);

        long before = flash.EraseOps;
        for (int i = 0; i < 20; i++)
        {
            q.Append(0, 2, Payload(id++, 60), 0, 60);
        }

        Assert.InRange(flash.EraseOps - before, 1, 8); // new critical entries reclaim the oldest sector, not every one

        var read = ReadAll(q);
        var markers = read.Where(r => r.Entry.Type == EntryType.Dropped).ToList();
        Assert.All(info, seq => Assert.Contains(markers, m => seq >= m.Entry.DroppedFirstSeq && seq <= m.Entry.DroppedLastSeq));
        Assert.DoesNotContain(read, r => r.Entry.Type == EntryType.Item && r.Entry.Priority == 0);
        Assert.True(markers.Count < 20, $"{markers.Count} markers handed out: consecutive ones should be reported as one");
    }

    [Fact]
    public void Full_WithRejectPolicy_ThrowsAndKeepsEverything()
    {
        using var flash = new NorFlashSimulator(Nor);
        var q = new FlashQueue(flash, FullPolicy.Reject);
        q.Mount(5);
        uint appended = 0;
        var ex = Record.Exception(() =>
        {
            for (uint id = 1; id <= 1000; id++)
            {
                q.Append(0, 0, Payload(id, 60), 0, 60);
                appended++;
            }
        });

        Assert.IsType<QueueFullException>(ex);
        Assert.Equal((int)appended, ReadAll(q).Count);
    }

    [Fact]
    public void Maintain_PreErasesTheNextSector_SoTheAppendThatCrossesIntoItDoesNotErase()
    {
        using var flash = new NorFlashSimulator(Nor);
        var q = new FlashQueue(flash);
        q.Mount(5);
        while (q.LiveSectors == 1)
        {
            q.Maintain();
            long erasesBefore = flash.EraseOps;
            q.Append(0, 1, Payload(1, 100), 0, 100);
            if (q.LiveSectors == 2)
            {
                Assert.Equal(erasesBefore, flash.EraseOps);
            }
        }
    }

    [Fact]
    public void Append_RefusesOversizedPayloads_WithTheLimitInTheMessage()
    {
        using var flash = new NorFlashSimulator(Nor);
        var q = new FlashQueue(flash);
        q.Mount(5);
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => q.Append(0, 0, new byte[q.MaxPayload + 1], 0, q.MaxPayload + 1));
        Assert.Contains(q.MaxPayload.ToString(System.Globalization.CultureInfo.InvariantCulture), ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Acknowledge_BeyondTheLastAppend_IsRefused()
    {
        using var flash = new NorFlashSimulator(Nor);
        var q = new FlashQueue(flash);
        q.Mount(5);
        q.Append(0, 0, [1], 0, 1);
        Assert.Throws<ArgumentOutOfRangeException>(() => q.Acknowledge(2));
    }

    [Fact]
    public void AfterATornAppend_AcknowledgingEverythingHandedOut_LeavesTheQueueEmpty()
    {
        using var flash = new NorFlashSimulator(Nor, seed: 4);
        var q = new FlashQueue(flash);
        q.Mount(5);
        q.Append(0, 1, Payload(1, 40), 0, 40);
        flash.ScheduleCut(0, 0.5);
        Assert.Throws<PowerLossException>(() => q.Append(0, 1, Payload(2, 40), 0, 40));
        flash.PowerOn();

        var again = new FlashQueue(flash);
        again.Mount(5);
        var read = ReadAll(again);
        again.Acknowledge(read[^1].Entry.Seq);

        Assert.Equal(0u, again.Depth); // the number the torn append may have used is skipped, not owed
        uint next = again.Append(0, 1, Payload(3, 40), 0, 40);
        Assert.Equal(next, ReadAll(again).Single().Entry.Seq);
    }
}
