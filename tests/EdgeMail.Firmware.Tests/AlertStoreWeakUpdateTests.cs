using System.Text.Json;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;
using Xunit;

namespace EdgeMail.Firmware.Tests;

/// <summary>
/// An update of a coalesced alert stands for its older records, which the store passes over. When a power cut struck the
/// update as it was written, its cells may read whole in one read and torn in the next, or fade on a later boot
/// (docs/flash-queue.md, "Weak cells"): the alert must still reach the gateway, from the update or from an older record.
/// </summary>
public class AlertStoreWeakUpdateTests
{
    private static (AlertStore Store, FlashQueue Queue) Boot(IFlashDevice flash, AlertStoreTests.ManualClock clock, uint boot) =>
        AlertStoreTests.Boot(flash, clock, boot, policy: FullPolicy.DropLowestPriority);

    private static List<(JsonElement Json, uint Seq)> Drain(AlertStore store) => AlertStoreTests.Drain(store);

    /// <summary>
    /// The simulator's noisy weak cells, one outcome of them: reads of [Start, End) pass until the header at Start has
    /// been read <see cref="PassingHeaderReads"/> times, then read with a bit flipped.
    /// </summary>
    internal sealed class NoisyRange(IFlashDevice inner) : IFlashDevice
    {
        public int Start = -1;
        public int End = -1;
        public int PassingHeaderReads = int.MaxValue;
        private int _headerReads;

        public FlashGeometry Geometry => inner.Geometry;

        public void Reset(int passing)
        {
            PassingHeaderReads = passing;
            _headerReads = 0;
        }

        public void Read(int address, byte[] buffer, int offset, int count)
        {
            inner.Read(address, buffer, offset, count);
            if (address == Start)
            {
                _headerReads++;
            }

            if (_headerReads > PassingHeaderReads && address < End && address + count > Start)
            {
                int at = Math.Max(address, Start) - address;
                buffer[offset + at] ^= 0x10;
            }
        }

        public void Program(int address, byte[] buffer, int offset, int count) => inner.Program(address, buffer, offset, count);

        public void EraseSector(int sector) => inner.EraseSector(sector);
    }

    /// <summary>
    /// A cut update X of the pump alert reads whole in boot 2 and is handed out (the mount's and used-through records
    /// now follow it, so it is no longer the last entry on flash). Boot 3 is the first in which X's cells drift: X reads
    /// whole in the store's scan, so the pump's first record R is passed over as replaced, and torn when handed out.
    /// Acknowledging what the gateway got must not cover R: the pump, whose first raise returned, is still sent.
    /// </summary>
    [Fact]
    public void AWeakUpdateHandedOutInTheBootAfterItsCut_ReadsTornInTheNextBoot_ThePromisedAlertIsNotLost()
    {
        using var sim = new NorFlashSimulator(new FlashGeometry(64 * 1024, 4096, 1024, 1, true, false), seed: 5);
        var (flash, clock) = PumpUpdateCut(sim);

        // Boot 2: everything is handed out (the pump as X, count 2); the gateway acknowledges only the door alert.
        var (second, _) = Boot(flash, clock, boot: 2);
        var sent2 = Drain(second);
        Assert.Contains(sent2, s => s.Json.GetProperty("code").GetString() == "PUMP_CYCLING");
        second.Acknowledge(sent2.Single(s => s.Json.GetProperty("code").GetString() == "DOOR_OPEN").Seq);

        // Boot 3: X passes the mount's scan and the store's scan, then reads torn.
        sim.PowerOn();
        flash.Reset(passing: 2);
        var (third, _) = Boot(flash, clock, boot: 3);
        var sent3 = Drain(third);
        if (sent3.Count > 0)
        {
            third.Acknowledge(sent3[^1].Seq);
        }

        // Boot 4: X reads torn every time.
        sim.PowerOn();
        flash.Reset(passing: 0);
        var (fourth, _) = Boot(flash, clock, boot: 4);
        var sent4 = Drain(fourth);
        bool pumpSent = sent3.Concat(sent4).Any(s => s.Json.GetProperty("code").GetString() == "PUMP_CYCLING");
        Assert.True(pumpSent, $"the pump alert (first raise returned) was never sent after boot 2; boot 3 sent [{string.Join(", ", sent3.Select(s => s.Json.GetProperty("code").GetString()))}]");
    }

    /// <summary>
    /// In the boot after the cut, X reads whole in the mount's and the store's scans and torn when the reader reaches
    /// it. The pump's first record R, passed over as replaced, is handed out in the same boot once the reader finds X
    /// missing, after the door alert that follows it on flash. The gateway acknowledges in the order it received: the
    /// door's acknowledgement (a higher number than R's) does not cover R; R's own then clears both.
    /// </summary>
    [Fact]
    public void AWeakUpdateThatReadsTornWhenHandedOut_ItsAlertGoesOutInTheSameBootFromItsOlderRecord()
    {
        using var sim = new NorFlashSimulator(new FlashGeometry(64 * 1024, 4096, 1024, 1, true, false), seed: 5);
        var (flash, clock) = PumpUpdateCut(sim);

        flash.Reset(passing: 2); // the mount's scan and the store's
        var (second, queue) = Boot(flash, clock, boot: 2);
        var sent = Drain(second);

        Assert.Equal(["DOOR_OPEN", "PUMP_CYCLING"], sent.Select(s => s.Json.GetProperty("code").GetString()));
        Assert.Equal(1, sent[1].Json.GetProperty("count").GetInt32()); // the count promised: the second raise never returned
        Assert.True(sent[1].Seq < sent[0].Seq, "the pump's first record is the older entry");
        second.Acknowledge(sent[0].Seq);
        Assert.Equal(0u, queue.AckedThrough);
        second.Acknowledge(sent[1].Seq);
        Assert.Equal(0u, second.Depth);

        sim.PowerOn();
        var (third, _) = Boot(flash, clock, boot: 3);
        Assert.Empty(Drain(third));
    }

    /// <summary>
    /// Two coalesced alerts each have an update cut as it was written, in boots 1 and 2 (the pump's X, the fan's Y), and
    /// boot 2 hands nothing out. In boot 3 both read whole in the scans and torn when handed out: the store hands out the
    /// door, then from its second sweep the pump's first record and the fan's. The gateway has all three and acknowledges
    /// the last one handed out, which by the order acknowledgements follow (docs/flash-queue.md, "Weak cells": "its own
    /// acknowledges them too") covers the pump's as well. The pump's hold must end with it, or nothing more is
    /// acknowledged in this boot until some later alert is.
    /// </summary>
    [Fact]
    public void TwoWeakUpdatesFallBackInOneSweep_AcknowledgingTheLastHandedOut_DrainsTheQueue()
    {
        using var sim = new NorFlashSimulator(new FlashGeometry(64 * 1024, 4096, 1024, 1, true, false), seed: 5);
        var pumpCells = new NoisyRange(sim);
        var fanCells = new NoisyRange(pumpCells);
        var clock = new AlertStoreTests.ManualClock();
        var (store, _) = Boot(fanCells, clock, boot: 1);
        var pump = new Alert("PUMP_CYCLING", Severity.Warning, "Pump restarted");
        store.Raise(pump);
        store.Raise(new Alert("DOOR_OPEN", Severity.Warning, "Door open"));
        CutInside(sim, pumpCells, () => store.Raise(pump)); // the pump's count-2 update X

        var (second, _) = Boot(fanCells, clock, boot: 2);
        var fan = new Alert("FAN_STALLED", Severity.Warning, "Fan stalled");
        second.Raise(fan);
        CutInside(sim, fanCells, () => second.Raise(fan)); // the fan's count-2 update Y

        pumpCells.Reset(passing: 2); // the mount's scan and the store's
        fanCells.Reset(passing: 2);
        var (third, queue) = Boot(fanCells, clock, boot: 3);
        var sent = Drain(third);

        Assert.Equal(["DOOR_OPEN", "PUMP_CYCLING", "FAN_STALLED"], sent.Select(s => s.Json.GetProperty("code").GetString()));
        third.Acknowledge(sent[^1].Seq);
        Assert.True(third.Depth == 0, $"acknowledging the last alert handed out left {third.Depth} queued (acknowledged through {queue.AckedThrough}; handed out {string.Join(", ", sent.Select(s => s.Seq))})");
    }

    /// <summary>
    /// The pump's update X is cut in boot 1; in boot 2 the fan is raised twice (its update U returns,
    /// but from boot 3 on it is an earlier boot's update, so the fan's first record is held behind it). In boot 3 X reads
    /// whole in the scans and torn when handed out: the store hands out the door, the fan's U (first sweep), then the
    /// pump's first record R (second sweep, a lower number than U). Acknowledging R, the last handed out, says the gateway
    /// has everything handed out before it, U included; but the fan's hold is released only by an acknowledgement at or
    /// above U's number, so the queue stays below the fan's first record until some later alert is acknowledged.
    /// </summary>
    [Fact]
    public void AFallbackAcknowledged_CoversAnEarlierBootsUpdateHandedOutBeforeIt_DrainsTheQueue()
    {
        using var sim = new NorFlashSimulator(new FlashGeometry(64 * 1024, 4096, 1024, 1, true, false), seed: 5);
        var pumpCells = new NoisyRange(sim);
        var clock = new AlertStoreTests.ManualClock();
        var (store, _) = Boot(pumpCells, clock, boot: 1);
        var pump = new Alert("PUMP_CYCLING", Severity.Warning, "Pump restarted");
        store.Raise(pump);
        store.Raise(new Alert("DOOR_OPEN", Severity.Warning, "Door open"));
        CutInside(sim, pumpCells, () => store.Raise(pump)); // the pump's count-2 update X

        var (second, _) = Boot(pumpCells, clock, boot: 2);
        var fan = new Alert("FAN_STALLED", Severity.Warning, "Fan stalled");
        second.Raise(fan);
        second.Raise(fan); // the fan's count-2 update U, whose raise returned
        sim.PowerOn();

        pumpCells.Reset(passing: 2); // the mount's scan and the store's
        var (third, queue) = Boot(pumpCells, clock, boot: 3);
        var sent = Drain(third);

        Assert.Equal(["DOOR_OPEN", "FAN_STALLED", "PUMP_CYCLING"], sent.Select(s => s.Json.GetProperty("code").GetString()));
        Assert.Equal(2, sent[1].Json.GetProperty("count").GetInt32());
        Assert.True(sent[2].Seq < sent[1].Seq, "the pump's first record is older than the fan's update");
        third.Acknowledge(sent[^1].Seq);
        Assert.True(third.Depth == 0, $"acknowledging the last alert handed out left {third.Depth} queued (acknowledged through {queue.AckedThrough}; handed out {string.Join(", ", sent.Select(s => s.Seq))})");
    }

    /// <summary>Boot 1: the pump alert, then the door alert, then the pump's count-2 update X, cut as it completes.</summary>
    private static (NoisyRange Flash, AlertStoreTests.ManualClock Clock) PumpUpdateCut(NorFlashSimulator sim)
    {
        var flash = new NoisyRange(sim);
        var clock = new AlertStoreTests.ManualClock();
        var (store, _) = Boot(flash, clock, boot: 1);
        var pump = new Alert("PUMP_CYCLING", Severity.Warning, "Pump restarted");
        store.Raise(pump);
        store.Raise(new Alert("DOOR_OPEN", Severity.Warning, "Door open"));
        CutInside(sim, flash, () => store.Raise(pump));
        return (flash, clock);
    }

    /// <summary>Makes <paramref name="raise"/> hit a cut that completes its write unreturned, and points <paramref name="cells"/> at what it programmed.</summary>
    private static void CutInside(NorFlashSimulator sim, NoisyRange cells, Action raise)
    {
        byte[] before = sim.Snapshot();
        sim.ScheduleCut(0, new PowerCut(CutMode.Complete, 1, WeakCells.None)); // the cells' drift is NoisyRange's
        Assert.Throws<PowerLossException>(raise);
        byte[] after = sim.Snapshot();
        cells.Start = Enumerable.Range(0, before.Length).First(i => before[i] != after[i]);
        cells.End = Enumerable.Range(0, before.Length).Last(i => before[i] != after[i]) + 1;
        sim.PowerOn();
    }
}
