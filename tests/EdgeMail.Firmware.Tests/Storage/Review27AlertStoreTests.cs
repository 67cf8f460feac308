using System.Text.Json;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;
using Xunit;

namespace EdgeMail.Firmware.Tests.Storage;

/// <summary>Review 27: the used-through record ends the suspect status of a weak update one boot early.</summary>
public class Review27AlertStoreTests
{
    private sealed class ManualClock : IClock
    {
        public long UptimeMs { get; set; } = 1_000;
    }

    /// <summary>
    /// The simulator's noisy weak cells, one outcome of them: reads of [Start, End) pass until the header at Start has
    /// been read <see cref="PassingHeaderReads"/> times, then read with a bit flipped.
    /// </summary>
    private sealed class NoisyRange(NorFlashSimulator inner) : IFlashDevice
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

    private static (AlertStore Store, FlashQueue Queue) Boot(IFlashDevice flash, ManualClock clock, uint boot)
    {
        var queue = new FlashQueue(flash);
        queue.Mount(0x7F3A9C21);
        return (new AlertStore(queue, clock, new WallClock(clock), boot), queue);
    }

    private static List<(JsonElement Json, uint Seq)> Drain(AlertStore store)
    {
        var list = new List<(JsonElement, uint)>();
        var buf = new byte[AlertJsonWriter.MaxLength];
        while (store.TryNext(buf, 0, out int len, out uint seq))
        {
            list.Add((JsonDocument.Parse(buf.AsMemory(0, len)).RootElement.Clone(), seq));
        }

        return list;
    }

    /// <summary>
    /// A cut update X of the pump alert reads whole in boot 2 (LastEntryAtMount: acknowledgements are held below the
    /// pump's first record R). Handing X out now writes the recovery and used-through records after it, so boot 3's
    /// mount no longer sees X as the suspect last entry, although boot 3 is the first boot in which X's weak cells drift.
    /// X reads whole in the store's scan (R is taken as replaced) and torn when handed out: the pump is not sent, the
    /// gateway acknowledges what it got, the acknowledgement is no longer held and covers R. Boot 4: the pump alert, whose
    /// first raise returned, is gone. (Before the change boot 2 wrote nothing, X stayed the suspect and R was held.)
    /// </summary>
    [Fact]
    public void AWeakUpdateHandedOutInTheBootAfterItsCut_ReadsTornInTheNextBoot_ThePromisedAlertIsNotLost()
    {
        using var sim = new NorFlashSimulator(new FlashGeometry(64 * 1024, 4096, 1024, 1, true, false), seed: 5);
        var flash = new NoisyRange(sim);
        var clock = new ManualClock();
        var (store, _) = Boot(flash, clock, boot: 1);
        var pump = new Alert("PUMP_CYCLING", Severity.Warning, "Pump restarted");
        store.Raise(pump);
        store.Raise(new Alert("DOOR_OPEN", Severity.Warning, "Door open"));
        byte[] before = sim.Snapshot();
        sim.ScheduleCut(0, new PowerCut(CutMode.Complete, 1, WeakCells.None)); // the cells' drift is NoisyRange's
        Assert.Throws<PowerLossException>(() => store.Raise(pump)); // the count-2 update X
        byte[] after = sim.Snapshot();
        flash.Start = Enumerable.Range(0, before.Length).First(i => before[i] != after[i]);
        flash.End = Enumerable.Range(0, before.Length).Last(i => before[i] != after[i]) + 1;
        sim.PowerOn();

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
}
