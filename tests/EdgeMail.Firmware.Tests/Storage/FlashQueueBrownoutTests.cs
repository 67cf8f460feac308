using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;
using Xunit;
using Xunit.Abstractions;
using static EdgeMail.Firmware.Tests.Storage.FlashQueueRecoveryTests;

namespace EdgeMail.Firmware.Tests.Storage;

/// <summary>
/// Sector headers misread at mount, as reads below the part's minimum supply (a brownout while the device boots) often
/// give: all ones. The mount trusted one read of each header, so a misread head made the sector before it the head: the
/// boot reused sequence numbers already given to the real head's entries, and opened the real head as the next sector,
/// erasing its entries (docs/flash-queue.md, "Mount and recovery").
/// </summary>
public class FlashQueueBrownoutTests(ITestOutputHelper output)
{
    private const uint Epoch = 0xB20C;
    private const int SectorBytes = 512;
    private const int Sectors = 8;
    private const int RealHead = 3;
    private const int HeaderBytes = 24;

    private static readonly FlashGeometry Ring8 = new(sizeBytes: Sectors * SectorBytes, sectorBytes: SectorBytes, pageBytes: 64, programUnit: 1, allowsReprogram: true, encrypted: false);

    private static byte[] Payload(uint id, int size) => FlashQueueTests.Payload(id, size);

    /// <summary>
    /// Entries in sectors 0 to 3, the first few acknowledged, sector 3 the head with a few entries and room for more.
    /// Returns the entries owed (id → sequence number) and the next id.
    /// </summary>
    private static (Dictionary<uint, uint> Promised, uint NextId) FillFourSectors(NorFlashSimulator flash)
    {
        var q = new FlashQueue(flash);
        Assert.False(q.Mount(Epoch));
        var promised = new Dictionary<uint, uint>();
        uint id = 1;
        while (q.LiveSectors < RealHead + 1 || promised.Count(p => p.Value >= FirstSeqOf(flash, RealHead)) < 3)
        {
            promised[id] = q.Append(1, 1, Payload(id, 40), 0, 40);
            id++;
        }

        var reader = new QueueEntry();
        var buf = new byte[q.MaxPayload];
        for (int i = 0; i < 3; i++)
        {
            Assert.True(q.TryRead(reader, buf, 0));
        }

        q.Acknowledge(reader.Seq);
        foreach (uint done in promised.Where(p => p.Value <= reader.Seq).Select(p => p.Key).ToList())
        {
            promised.Remove(done);
        }

        return (promised, id);
    }

    private static uint FirstSeqOf(NorFlashSimulator flash, int sector)
    {
        var h = new byte[HeaderBytes];
        flash.Read(sector * SectorBytes, h, 0, HeaderBytes);
        return h[0] == 0x45 ? BitConverter.ToUInt32(h, 12) : uint.MaxValue;
    }

    private static void AssertHandedOutOnceInOrder(Dictionary<uint, uint> promised, Drained drained, string where)
    {
        AssertNothingLost(promised, drained, where);
        Assert.Empty(drained.Markers);
        Assert.Equal(promised.OrderBy(p => p.Value).Select(p => p.Key), drained.Items.Select(i => i.Id));
    }

    private void Report(Dictionary<uint, uint> promised, Drained drained, string where) =>
        output.WriteLine($"{where}: promised {string.Join(", ", promised.OrderBy(p => p.Value).Select(p => $"{p.Key}@{p.Value}"))}; "
            + $"handed out {string.Join(", ", drained.Items.Select(i => $"{i.Id}@{i.Seq}"))}");

    /// <summary>
    /// The head's header reads all ones for <paramref name="misreads"/> reads from the mount on; then the boot raises until
    /// the ring opens the sector after the real head. Every entry raised before and after is handed out once, in order,
    /// under a number no other entry has, in that boot and the next; the real head is never erased. One misread is
    /// caught by the mount's second look at the sector after its head; two outlast it, and the queue's look before its
    /// first write of the boot catches them.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void Mount_HeadHeaderMisreadAsErased_ThenAppendsUntilTheNextSectorOpens_LosesNothingAndReusesNoNumber(int misreads)
    {
        using var flash = new NorFlashSimulator(Ring8, seed: 1);
        var (promised, id) = FillFourSectors(flash);
        int headErasesBefore = flash.EraseCount(RealHead);

        flash.PowerOn(1);
        flash.MisreadAsErased(RealHead * SectorBytes, HeaderBytes, misreads);
        var q = new FlashQueue(flash);
        Assert.True(q.Mount(Epoch));
        while (q.LiveSectors < RealHead + 2)
        {
            promised[id] = q.Append(1, 1, Payload(id, 40), 0, 40);
            id++;
            Assert.True(id < 200, "the ring never opened the sector after the head");
        }

        promised[id] = q.Append(1, 1, Payload(id, 40), 0, 40);
        Assert.Equal(headErasesBefore, flash.EraseCount(RealHead));
        Assert.Equal(promised.Count, promised.Values.Distinct().Count());
        var drained = Drain(q);
        Report(promised, drained, "same boot");
        AssertHandedOutOnceInOrder(promised, drained, "in the boot of the misread");

        flash.PowerOn(2);
        var after = new FlashQueue(flash);
        Assert.True(after.Mount(Epoch));
        AssertHandedOutOnceInOrder(promised, Drain(after), "after a clean reboot");
        Assert.Equal(0, flash.MisreadsLeft); // the case is the one described
    }

    /// <summary>
    /// The misread outlasts the mount's second look and the look before the boot's first write: the first write is the
    /// erase of the sector after the mount's head (the entry does not fit there), and the look at that sector's header
    /// just before erasing it finds the real head. The queue mounts again and the entry goes after the real head's.
    /// </summary>
    [Fact]
    public void Mount_HeadHeaderMisreadThreeTimes_TheEraseOfTheRealHeadIsRefusedAndTheQueueMountsAgain()
    {
        using var flash = new NorFlashSimulator(Ring8, seed: 1);
        var (promised, id) = FillFourSectors(flash);
        int headErasesBefore = flash.EraseCount(RealHead);

        flash.PowerOn(1);
        flash.MisreadAsErased(RealHead * SectorBytes, HeaderBytes, 3);
        var q = new FlashQueue(flash);
        Assert.True(q.Mount(Epoch));
        int big = q.MaxPayload; // fits in no sector that holds an entry already
        promised[id] = q.Append(1, 1, Payload(id, big), 0, big);
        id++;
        promised[id] = q.Append(1, 1, Payload(id, 40), 0, 40);

        Assert.Equal(headErasesBefore, flash.EraseCount(RealHead));
        Assert.Equal(promised.Count, promised.Values.Distinct().Count());
        var drained = Drain(q);
        Report(promised, drained, "same boot");
        AssertHandedOutOnceInOrder(promised, drained, "in the boot of the misread");

        flash.PowerOn(2);
        var after = new FlashQueue(flash);
        Assert.True(after.Mount(Epoch));
        AssertHandedOutOnceInOrder(promised, Drain(after), "after a clean reboot");
        Assert.Equal(0, flash.MisreadsLeft); // the case is the one described
    }

    /// <summary>
    /// A header in the middle of the live run misread once: the run looked as if it began after it, the reader started
    /// there, and the entries before it were neither handed out nor counted (an acknowledgement of what was handed out
    /// would have covered them, and the ring would later have erased their sectors as free).
    /// </summary>
    [Fact]
    public void Mount_HeaderInTheMiddleOfTheRunMisreadOnce_HandsOutTheOlderSectorsToo()
    {
        using var flash = new NorFlashSimulator(Ring8, seed: 1);
        var (promised, _) = FillFourSectors(flash);

        flash.PowerOn(1);
        flash.MisreadAsErased(1 * SectorBytes, HeaderBytes, 1);
        var q = new FlashQueue(flash);
        Assert.True(q.Mount(Epoch));
        var drained = Drain(q);
        Report(promised, drained, "same boot");
        AssertHandedOutOnceInOrder(promised, drained, "in the boot of the misread");
    }

    /// <summary>Every read of the mount's header pass misread: the queue is not formatted over its entries.</summary>
    [Fact]
    public void Mount_EveryHeaderMisreadInOnePass_DoesNotFormatTheQueue()
    {
        using var flash = new NorFlashSimulator(Ring8, seed: 1);
        var (promised, id) = FillFourSectors(flash);

        flash.PowerOn(1);
        flash.MisreadAsErased(0, Ring8.SizeBytes, Sectors);
        var q = new FlashQueue(flash);
        Assert.True(q.Mount(Epoch));
        Assert.Equal(Epoch, q.Epoch);
        promised[id] = q.Append(1, 1, Payload(id, 40), 0, 40);
        AssertHandedOutOnceInOrder(promised, Drain(q), "in the boot of the misread");
    }
}
