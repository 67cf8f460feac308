using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;
using Xunit;
using Xunit.Abstractions;
using static EdgeMail.Firmware.Tests.Storage.FlashQueueRecoveryTests;

namespace EdgeMail.Firmware.Tests.Storage;

/// <summary>
/// A ring that earlier firmware left with every sector live and none free: its Reject policy opened the spare for an
/// acknowledgement, or its reclaim order (before the one of docs/flash-queue.md, "When full") was cut inside the erase of
/// a victim it had nothing to copy from. The mount cannot tell the two apart and leaves every sector live. Once the head
/// filled, every append threw <see cref="QueueFullException"/> whatever the policy, DropLowestPriority and DropOldest
/// included, and AlertStore.Raise with it, until acknowledgements went past the oldest sector's entries.
/// </summary>
public class FlashQueueNoFreeSectorTests(ITestOutputHelper output)
{
    internal const uint Epoch = 0x5EED;

    private static readonly FlashGeometry Ring3 = new(sizeBytes: 3 * 512, sectorBytes: 512, pageBytes: 64, programUnit: 1, allowsReprogram: true, encrypted: false);
    private static readonly FlashGeometry Ring4Strict = new(sizeBytes: 4 * 512, sectorBytes: 512, pageBytes: 64, programUnit: 16, allowsReprogram: false, encrypted: true);

    // ESP32 flash encryption: 32-byte program units, so an acknowledgement and a marker take 32 bytes each.
    private static readonly FlashGeometry Esp32Ring3 = new(sizeBytes: 3 * 4096, sectorBytes: 4096, pageBytes: 256, programUnit: 32, allowsReprogram: false, encrypted: true);

    private static FlashGeometry Ring(string name) => name switch
    {
        "nor3" => Ring3,
        "strict4" => Ring4Strict,
        _ => Esp32Ring3,
    };

    private static byte PriorityOf(uint id) => (byte)(id % 5 == 0 ? 2 : id % 3 == 0 ? 1 : 0);

    private static int SizeOf(uint id) => 20 + (int)(id * 7 % 40);

    private static byte[] Payload(uint id, int size) => FlashQueueTests.Payload(id, size);

    /// <summary>
    /// What earlier firmware's Reject policy did when the head had no slot left for an acknowledgement and only the spare
    /// was free: it opened the spare (its header, then the acknowledgement record), leaving no sector free. Written here
    /// byte for byte as layout v1 has it, after the sector that is the head now.
    /// </summary>
    internal static void OpenTheSpareForAnAcknowledgement(IFlashDevice flash, int head, uint firstSeq, uint headerAcked, uint ackSeq)
    {
        FlashGeometry g = flash.Geometry;
        var old = new byte[24];
        flash.Read(head * g.SectorBytes, old, 0, old.Length);
        int dataStart = (24 + g.ProgramUnit - 1) & ~(g.ProgramUnit - 1);
        var header = new byte[dataStart];
        Array.Fill(header, (byte)0xFF);
        Array.Copy(old, header, 4); // magic, layout version, program unit
        BitConverter.GetBytes(BitConverter.ToUInt32(old, 4) + 1).CopyTo(header, 4);
        BitConverter.GetBytes(BitConverter.ToUInt32(old, 8)).CopyTo(header, 8);
        BitConverter.GetBytes(firstSeq).CopyTo(header, 12);
        BitConverter.GetBytes(headerAcked).CopyTo(header, 16);
        BitConverter.GetBytes(Crc32.Compute(header, 0, 20)).CopyTo(header, 20);
        int spare = (head + 1) % g.SectorCount;
        flash.EraseSector(spare);
        flash.Program(spare * g.SectorBytes, header, 0, header.Length);

        var ack = new byte[(16 + g.ProgramUnit - 1) & ~(g.ProgramUnit - 1)];
        Array.Fill(ack, (byte)0xFF);
        ack[0] = 0;
        ack[1] = 0;
        ack[2] = 0xFF;
        ack[3] = 0xFF;
        BitConverter.GetBytes(ackSeq).CopyTo(ack, 4);
        ack[8] = 2; // acknowledgement
        ack[9] = 0;
        ack[10] = 0;
        ack[11] = 0;
        BitConverter.GetBytes(Crc32.Compute(ack, 0, 12)).CopyTo(ack, 12);
        flash.Program((spare * g.SectorBytes) + dataStart, ack, 0, ack.Length);
    }

    /// <summary>
    /// Earlier firmware with the Reject policy fills every sector but the spare, the gateway takes the first three
    /// entries, and the third acknowledgement finds no slot left in the head: the spare is opened for it. Returns the
    /// entries whose append returned and are owed, and the next entry id.
    /// </summary>
    internal static (Dictionary<uint, uint> Promised, uint NextId) WriteTheImage(IFlashDevice flash)
    {
        var q = new FlashQueue(flash, FullPolicy.Reject);
        q.Mount(Epoch);
        var promised = new Dictionary<uint, uint>();
        uint id = 1;
        while (true)
        {
            int size = SizeOf(id);
            try
            {
                promised[id] = q.Append(1, PriorityOf(id), Payload(id, size), 0, size);
            }
            catch (QueueFullException)
            {
                break;
            }

            id++;
        }

        Assert.Equal(flash.Geometry.SectorCount - 1, q.LiveSectors);
        q.Acknowledge(promised[1]); // in the head's last slots
        q.Acknowledge(promised[2]);
        OpenTheSpareForAnAcknowledgement(flash, q.LiveSectors - 1, q.NextSeq, q.AckedThrough, promised[3]);
        promised.Remove(1);
        promised.Remove(2);
        promised.Remove(3);
        return (promised, id);
    }

    public static TheoryData<string, FullPolicy> Cases => new()
    {
        { "nor3", FullPolicy.DropLowestPriority },
        { "nor3", FullPolicy.DropOldest },
        { "nor3", FullPolicy.Reject },
        { "strict4", FullPolicy.DropLowestPriority },
        { "strict4", FullPolicy.DropOldest },
        { "strict4", FullPolicy.Reject },
        { "esp32-3", FullPolicy.DropLowestPriority },
        { "esp32-3", FullPolicy.DropOldest },
        { "esp32-3", FullPolicy.Reject },
    };

    /// <summary>
    /// Appends of several turns of the ring, with reboots between: under DropLowestPriority and DropOldest none is
    /// refused, the policy drops and counts; under Reject appends are refused once the head is full and nothing is dropped.
    /// Either way every entry whose append returned is handed out or counted by a drop marker.
    /// </summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public void Appends_OnAnImageWithNoFreeSector_AreTakenUnderADropPolicy_AndRefusedOnlyUnderReject(string ring, FullPolicy policy)
    {
        FlashGeometry g = Ring(ring);
        using var flash = new NorFlashSimulator(g, seed: 1);
        var (promised, id) = WriteTheImage(flash);
        var q = new FlashQueue(flash, policy);
        Assert.True(q.Mount(Epoch));
        Assert.Equal(g.SectorCount, q.LiveSectors); // the image is the one described

        long dropped = 0;
        bool refused = false;
        int appends = 4 * g.SizeBytes / 40; // several turns of the ring
        for (int n = 0; n < appends && !refused; n++, id++)
        {
            if (n % (appends / 3) == (appends / 3) - 1)
            {
                dropped += q.DroppedSinceMount;
                flash.PowerOn(n);
                q = new FlashQueue(flash, policy);
                Assert.True(q.Mount(Epoch));
            }

            int size = SizeOf(id);
            uint seq = 0;
            var error = Record.Exception(() => seq = q.Append(1, PriorityOf(id), Payload(id, size), 0, size));
            if (policy == FullPolicy.Reject && error is QueueFullException)
            {
                refused = true;
                break;
            }

            Assert.True(error is null, $"{policy} on {ring}: append {n + 1} since the mount refused ({error?.Message}); {q.LiveSectors} of {g.SectorCount} sectors live");
            Assert.True(promised.Values.All(s => s < seq), $"{policy}: sequence number {seq} reused");
            promised[id] = seq; // also when dropped on arrival: a marker then counts it
        }

        dropped += q.DroppedSinceMount;
        var drained = Drain(q);
        AssertNothingLost(promised, drained, $"{policy} on {ring}");
        output.WriteLine($"{policy} on {ring}: {promised.Count} owed, {drained.Items.Count} handed out, {drained.Markers.Sum(m => (long)m.Count)} counted by {drained.Markers.Count} markers, {dropped} dropped; {q.LiveSectors} of {g.SectorCount} sectors live");
        if (policy == FullPolicy.Reject)
        {
            Assert.True(refused, "Reject took every append");
            Assert.Equal(0, dropped);
            Assert.Empty(drained.Markers);
            Assert.Equal(promised.Count, drained.Items.Count);
        }
        else
        {
            Assert.True(dropped > 0 && drained.Markers.Count > 0, "nothing was dropped: the test did not fill the ring");
            Assert.True(q.LiveSectors < g.SectorCount, "the ring has no free sector again");
        }
    }

    public static TheoryData<string, FullPolicy> DropPolicies => new()
    {
        { "nor3", FullPolicy.DropLowestPriority },
        { "nor3", FullPolicy.DropOldest },
        { "strict4", FullPolicy.DropLowestPriority },
        { "strict4", FullPolicy.DropOldest },
    };

    private static readonly PowerCut[] Cuts =
    [
        new(CutMode.BeforeStart),
        new(CutMode.NothingVisible, 0.5, WeakCells.Noisy),
        new(CutMode.RandomBits, 0.5, WeakCells.Fade),
        new(CutMode.RandomBytes, 0.3, WeakCells.Noisy),
        new(CutMode.Prefix, 0.5, WeakCells.Fade),
        new(CutMode.Complete, 1, WeakCells.Fade),
    ];

    /// <summary>
    /// Appends, and every fourth step the gateway takes the oldest entry and the markers before it (so acknowledgements land
    /// in the head while no sector is free). An entry whose append or acknowledgement a cut interrupted is neither owed nor
    /// known gone.
    /// </summary>
    private static void Workload(FlashQueue q, Dictionary<uint, uint> promised, ref uint id, int steps)
    {
        var buf = new byte[q.MaxPayload];
        var e = new QueueEntry();
        for (int n = 0; n < steps; n++, id++)
        {
            if (n % 4 == 3)
            {
                q.Rewind();
                while (q.TryRead(e, buf, 0))
                {
                    if (e.Type == EntryType.Dropped)
                    {
                        // The gateway has the count: what the marker's range holds is no longer owed one by one.
                        foreach (var owed in promised.Where(p => p.Value >= e.DroppedFirstSeq && p.Value <= e.DroppedLastSeq).ToList())
                        {
                            promised.Remove(owed.Key);
                        }

                        continue;
                    }

                    promised.Remove(BitConverter.ToUInt32(buf, 0));
                    q.Acknowledge(e.Seq);
                    break;
                }
            }

            int size = SizeOf(id);
            promised.Remove(id);
            uint seq = q.Append(1, PriorityOf(id), Payload(id, size), 0, size);
            Assert.True(promised.Values.All(s => s < seq), $"sequence number {seq} reused");
            promised[id] = seq;
        }
    }

    /// <summary>
    /// The appends that free a sector of the ring (a drop marker in the head, then the oldest sector's erase) and the
    /// ones around them, cut at every flash operation in several ways, then three boots with more appends each: nothing
    /// whose append returned is lost uncounted or handed out twice, no later append is refused, and on strict flash no
    /// unit is programmed twice.
    /// </summary>
    [Theory]
    [MemberData(nameof(DropPolicies))]
    public void Appends_OnAnImageWithNoFreeSector_CutAtEveryOperation_LoseNothing_AndLaterAppendsAreTaken(string ring, FullPolicy policy)
    {
        FlashGeometry g = Ring(ring);
        const int Steps = 48;
        long first;
        long last;
        using (var probe = new NorFlashSimulator(g, seed: 1))
        {
            var (promised, id) = WriteTheImage(probe);
            var q = new FlashQueue(probe, policy);
            q.Mount(Epoch);
            first = probe.Mutations;
            Workload(q, promised, ref id, Steps);
            last = probe.Mutations;
            Assert.True(q.LiveSectors < g.SectorCount && q.DroppedSinceMount > 0, "the workload did not free a sector");
        }

        output.WriteLine($"{policy} on {ring}: {last - first} flash operations cut in {Cuts.Length} ways");
        int runs = 0;
        for (long k = first; k < last; k++)
        {
            foreach (var cut in Cuts)
            {
                string where = $"{policy} on {ring}, cut {cut} at operation {k}";
                using var flash = new NorFlashSimulator(g, seed: 1);
                var (promised, id) = WriteTheImage(flash);
                var q = new FlashQueue(flash, policy);
                q.Mount(Epoch);
                flash.ScheduleCut(k - flash.Mutations, cut);
                var lost = Record.Exception(() => Workload(q, promised, ref id, Steps));
                Assert.True(lost is PowerLossException, $"{where}: {lost?.GetType().Name ?? "the cut did not strike"} {lost?.Message}");
                promised.Remove(id); // its append or the acknowledgement before it was cut
                id++;
                runs++;
                for (int boot = 0; boot < 3; boot++)
                {
                    flash.PowerOn((int)k + boot);
                    q = new FlashQueue(flash, policy);
                    Assert.True(q.Mount(Epoch), $"{where}: the queue was formatted");
                    AssertNothingLost(promised, Drain(q), $"{where}, boot {boot + 1} after the cut");
                    var refused = Record.Exception(() => Workload(q, promised, ref id, 16));
                    Assert.True(refused is null, $"{where}, boot {boot + 1} after the cut: {refused?.GetType().Name} {refused?.Message}; {q.LiveSectors} of {g.SectorCount} sectors live");
                    q.Rewind();
                    AssertNothingLost(promised, Drain(q), $"{where}, boot {boot + 1} after the cut and {promised.Count} owed");
                }
            }
        }

        output.WriteLine($"{runs} cuts checked");
    }

    public static TheoryData<string, FullPolicy, CutMode> TornFirstWrites => new()
    {
        { "nor3", FullPolicy.DropLowestPriority, CutMode.Prefix },
        { "nor3", FullPolicy.DropOldest, CutMode.RandomBytes },
        { "strict4", FullPolicy.DropLowestPriority, CutMode.RandomBytes },
        { "strict4", FullPolicy.DropOldest, CutMode.RandomBits },
        { "esp32-3", FullPolicy.DropLowestPriority, CutMode.RandomBits },
        { "esp32-3", FullPolicy.DropOldest, CutMode.RandomBytes },
    };

    /// <summary>
    /// The append that frees the oldest sector comes first in its boot, so its first write is the mount's recovery record;
    /// power fails inside it. The next boot pins the place past the torn cells with a record of its own and reboots before
    /// anything else is raised (a watchdog, a brown-out, the battery). The boot after that must still be able to count the
    /// oldest sector's entries and free it: one cut is what the room kept in the head is for.
    /// </summary>
    [Theory]
    [MemberData(nameof(TornFirstWrites))]
    public void FreeingAppend_TornInItsBootsFirstWrite_ThenACleanReboot_LaterAppendsAreStillTaken(string ring, FullPolicy policy, CutMode mode)
    {
        FlashGeometry g = Ring(ring);
        using var flash = new NorFlashSimulator(g, seed: 1);
        var (promised, id) = WriteTheImage(flash);
        var q = new FlashQueue(flash, policy);
        Assert.True(q.Mount(Epoch));
        Assert.Equal(g.SectorCount, q.LiveSectors);

        // Small entries until the next append, made first in a new boot, would free the oldest sector: the head then has
        // just the room kept for the marker.
        const int Small = 4;
        while (true)
        {
            using (var probe = flash.Fork(1))
            {
                var pq = new FlashQueue(probe, policy);
                pq.Mount(Epoch);
                pq.Append(1, 2, Payload(id, Small), 0, Small);
                if (pq.LiveSectors < g.SectorCount)
                {
                    break;
                }
            }

            promised[id] = q.Append(1, 2, Payload(id, Small), 0, Small);
            id++;
        }

        flash.PowerOn(1);
        q = new FlashQueue(flash, policy);
        Assert.True(q.Mount(Epoch));
        flash.ScheduleCut(0, new PowerCut(mode, 0.5));
        Assert.Throws<PowerLossException>(() => q.Append(1, 2, Payload(id, Small), 0, Small));
        id++;

        flash.PowerOn(2);
        q = new FlashQueue(flash, policy); // pins the place past the torn record
        Assert.True(q.Mount(Epoch));
        flash.PowerOn(3);
        q = new FlashQueue(flash, policy);
        Assert.True(q.Mount(Epoch));
        for (int n = 0; n < 8; n++, id++)
        {
            int size = SizeOf(id);
            uint seq = 0;
            var refused = Record.Exception(() => seq = q.Append(1, 2, Payload(id, size), 0, size));
            Assert.True(refused is null, $"{policy} on {ring}, cut {mode}: append {n + 1} after the reboots refused ({refused?.Message}); {q.LiveSectors} of {g.SectorCount} sectors live");
            promised[id] = seq;
        }

        output.WriteLine($"{policy} on {ring}, cut {mode}: {q.DroppedSinceMount} dropped; {q.LiveSectors} of {g.SectorCount} sectors live");
        AssertNothingLost(promised, Drain(q), $"{policy} on {ring}, cut {mode}");
    }
}
