using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;
using Xunit;

namespace EdgeMail.Firmware.Tests.Storage;

/// <summary>Review 27 of the simhunt branch: cases where the used-through record or the torn-head rule does not hold.</summary>
public class Review27Tests
{
    // W25Q-like: 4 KiB sectors, 256-byte pages.
    private static readonly FlashGeometry W25QRing4 = new(sizeBytes: 4 * 4096, sectorBytes: 4096, pageBytes: 256, programUnit: 1, allowsReprogram: true, encrypted: false);

    private static byte[] Payload(uint id, int size) => FlashQueueTests.Payload(id, size);

    private static List<(uint Id, uint Seq)> Drain(FlashQueue q)
    {
        var items = new List<(uint, uint)>();
        var buf = new byte[q.MaxPayload];
        var e = new QueueEntry();
        while (q.TryRead(e, buf, 0))
        {
            if (e.Type == EntryType.Item)
            {
                items.Add((BitConverter.ToUInt32(buf, 0), e.Seq));
            }
        }

        return items;
    }

    private static int EndOfSector0(NorFlashSimulator flash)
    {
        byte[] image = flash.Snapshot();
        int end = 24;
        for (int i = 24; i < 4096; i++)
        {
            if (image[i] != 0xFF)
            {
                end = i + 1;
            }
        }

        return end;
    }

    /// <summary>
    /// The weak record ends in the sector's last page: the mount resumes on the next page (the sector end), so
    /// WriteUsedThrough finds "no slot below the kept acknowledgement slots" and silently pins nothing. The record is
    /// handed out, fades after a clean power cycle, and the next alert reuses its sequence number (its id). This is not
    /// "a cut inside an append that leaves no room for a 20-byte record": the append left 92 bytes; any weak record that
    /// ends in the last page of a sector (1/16 of a 4 KiB sector, half of a 512-byte one with 256-byte pages) hits it.
    /// </summary>
    [Theory]
    [InlineData(FullPolicy.DropLowestPriority)]
    [InlineData(FullPolicy.Reject)]
    public void WeakRecordEndingInTheLastPage_HandedOut_ThenFades_ItsSequenceNumberIsNotReused(FullPolicy policy)
    {
        using var flash = new NorFlashSimulator(W25QRing4, seed: 1);
        var q = new FlashQueue(flash, policy);
        q.Mount(5);
        q.Append(0, 1, Payload(1, 1700), 0, 1700);
        q.Append(0, 1, Payload(2, 1700), 0, 1700);
        uint id = 3;
        while (EndOfSector0(flash) < 3840)
        {
            q.Append(0, 1, Payload(id, 40), 0, 40);
            id++;
        }

        // The next record starts in the sector's last page and fits in it (one page program, well below the kept
        // acknowledgement slots): it completes as power fails.
        uint weak = id;
        flash.ScheduleCut(0, new PowerCut(CutMode.Complete, 1, WeakCells.Fade));
        Assert.Throws<PowerLossException>(() => q.Append(0, 1, Payload(weak, 40), 0, 40));
        Assert.InRange(EndOfSector0(flash), 3841, 3960); // 100+ bytes short of the kept slots (4064)

        flash.PowerOn(); // the boot after the cut: the record reads whole and is handed out; the link drops before the ack
        var second = new FlashQueue(flash, policy);
        second.Mount(5);
        uint handedOut = Drain(second).Single(i => i.Id == weak).Seq;

        flash.PowerOn(); // a clean power cycle: the cells the cut left have faded back to erased
        var third = new FlashQueue(flash, policy);
        third.Mount(5);
        uint next = third.Append(0, 1, Payload(100, 40), 0, 40);
        Assert.True(next > handedOut, $"alert 100 got sequence number {next}, the id of alert {weak} the gateway already has ({handedOut})");
    }
}
