using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;
using Xunit;

namespace EdgeMail.Firmware.Tests.Storage;

/// <summary>
/// Cases the NOR simulator and the power-cut campaign do not produce on their own but real flash does (simhunt review):
/// each drives the simulator by hand into the behaviour the reference describes and checks a promise of the queue.
/// </summary>
public class SimulatorFidelityTests
{
    // W25Q-like: 4 KiB sectors, 256-byte pages, bit-level reprogramming allowed.
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

    /// <summary>
    /// flash-stores.md section 3 (littlefs #671, Zephyr #103452): a cell can pass a check now and read erased later. The
    /// campaign's clean reboots did not advance the simulator's boot counter (only AfterCut called PowerOn), so a record that
    /// read whole in the boot after its cut never faded there. Here it is handed out (its id reaches the gateway), the
    /// device power-cycles cleanly, the record has faded, and the next alert gets the same sequence number: the same
    /// alert id, which the gateway de-duplicates, so the new alert is never mailed.
    /// </summary>
    [Fact]
    public void ACutAppendThatReadWholeAndWasHandedOut_ThenFadesAfterACleanPowerCycle_ItsSequenceNumberIsNotReused()
    {
        using var flash = new NorFlashSimulator(W25QRing4, seed: 1);
        var q = new FlashQueue(flash);
        q.Mount(5);
        q.Append(0, 1, Payload(1, 40), 0, 40);
        flash.ScheduleCut(0, new PowerCut(CutMode.Complete, 1, WeakCells.Fade));
        Assert.Throws<PowerLossException>(() => q.Append(0, 1, Payload(2, 40), 0, 40));

        flash.PowerOn(); // boot after the cut: the record reads whole and is handed out; the link drops before the ack
        var second = new FlashQueue(flash);
        second.Mount(5);
        var sent = Drain(second);
        uint handedOut = sent.Single(i => i.Id == 2).Seq;

        flash.PowerOn(); // a clean power cycle: the cells the cut left have faded back to erased
        var third = new FlashQueue(flash);
        third.Mount(5);
        uint next = third.Append(0, 1, Payload(3, 40), 0, 40);
        Assert.True(next > handedOut, $"new alert 3 got sequence number {next}, the id of alert 2 the gateway already has ({handedOut}): it is de-duplicated away");
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
    /// As above, with the weak record ending in the sector's last page: the mount resumes at the sector end, so no slot
    /// is left there for the used-through record. The queue continues in a new sector, whose header pins the number.
    /// Any weak record that ends in a sector's last page (1/16 of a 4 KiB sector) is such a case.
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
