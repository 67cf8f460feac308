using System.Buffers.Binary;
using System.Reflection;
using System.Text.Json;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;
using Xunit;

namespace EdgeMail.Firmware.Tests;

public class AlertStoreTests
{
    private static readonly FlashGeometry Geometry = new(64 * 1024, 4096, 256, 1, allowsReprogram: true, encrypted: false);

    internal sealed class ManualClock : IClock
    {
        public long UptimeMs { get; set; } = 1_000;
    }

    internal static (AlertStore Store, FlashQueue Queue) Boot(IFlashDevice flash, ManualClock clock, uint boot, long? wallUnixMs = null, FullPolicy policy = FullPolicy.DropLowestPriority)
    {
        var queue = new FlashQueue(flash, policy);
        queue.Mount(0x7F3A9C21);
        var wall = new WallClock(clock);
        if (wallUnixMs is long t)
        {
            wall.Set(t);
        }

        return (new AlertStore(queue, clock, wall, boot), queue);
    }

    internal static List<(JsonElement Json, uint Seq)> Drain(AlertStore store)
    {
        var list = new List<(JsonElement, uint)>();
        var buf = new byte[AlertJsonWriter.MaxLength];
        while (store.TryNext(buf, 0, out int len, out uint seq))
        {
            list.Add((JsonDocument.Parse(buf.AsMemory(0, len)).RootElement.Clone(), seq));
        }

        return list;
    }

    [Fact]
    public void Raise_ThenReboot_TheAlertIsSentWithItsIdAndTime()
    {
        using var flash = new NorFlashSimulator(Geometry);
        var clock = new ManualClock();
        var (store, _) = Boot(flash, clock, boot: 17, wallUnixMs: 1_795_859_892_000); // 2026-11-28T09:58:12Z
        var alert = new Alert("FREEZER_TEMP_HIGH", Severity.Critical, "Freezer 2 above -15 °C");
        alert.AddValue("temp_c", -95, 1);
        uint seq = store.Raise(alert);

        var (again, _) = Boot(flash, clock, boot: 18);
        var sent = Drain(again);

        var json = Assert.Single(sent).Json;
        Assert.Equal($"7f3a9c21-{seq}", json.GetProperty("id").GetString());
        Assert.Equal("critical", json.GetProperty("sev").GetString());
        Assert.Equal("2026-11-28T09:58:12Z", json.GetProperty("raised").GetString());
        Assert.Equal(-9.5m, json.GetProperty("values").GetProperty("temp_c").GetDecimal());
        Assert.Equal(17, json.GetProperty("boot").GetInt32());
    }

    [Fact]
    public void Storm_WhileOffline_CoalescesIntoOneAlert_AndDoesNotPushOutOthers()
    {
        using var flash = new NorFlashSimulator(Geometry);
        var clock = new ManualClock();
        var (store, queue) = Boot(flash, clock, boot: 1);
        store.Raise(new Alert("DOOR_OPEN", Severity.Warning, "Door open"));
        long recordsBefore = flash.ProgramOps;
        for (int i = 0; i < 10_000; i++)
        {
            clock.UptimeMs += 100; // ten per second for 1000 s
            store.Raise(new Alert("PUMP_CYCLING", Severity.Warning, "Pump restarted"));
        }

        store.Raise(new Alert("BATTERY_LOW", Severity.Info, "Battery at 9 %"));
        long storms = flash.ProgramOps - recordsBefore;
        var sent = Drain(store);

        Assert.InRange(storms, 1, 60); // 10,000 repeats cost a few dozen records, not 10,000
        Assert.Equal(new[] { "DOOR_OPEN", "PUMP_CYCLING", "BATTERY_LOW" }, sent.Select(s => s.Json.GetProperty("code").GetString()));
        var pump = sent[1].Json;
        Assert.Equal(10_000, pump.GetProperty("count").GetInt32());
        Assert.True(pump.TryGetProperty("first", out _) || pump.TryGetProperty("age_ms", out _));
        Assert.True(queue.Depth < 60);
    }

    [Fact]
    public void Storm_AcrossAReboot_IsStillOneAlert_WithThePersistedCount()
    {
        using var flash = new NorFlashSimulator(Geometry);
        var clock = new ManualClock();
        var (store, _) = Boot(flash, clock, boot: 1);
        for (int i = 0; i < 1000; i++)
        {
            store.Raise(new Alert("PUMP_CYCLING", Severity.Warning, "Pump restarted"));
        }

        var (again, _) = Boot(flash, clock, boot: 2);
        var sent = Drain(again);

        var pump = Assert.Single(sent).Json;
        Assert.Equal(512, pump.GetProperty("count").GetInt32()); // counts persist at powers of two (or each minute)
    }

    [Fact]
    public void ARepeatOfAnAlertAlreadySent_IsANewAlert()
    {
        using var flash = new NorFlashSimulator(Geometry);
        var clock = new ManualClock();
        var (store, _) = Boot(flash, clock, boot: 1);
        store.Raise(new Alert("DOOR_OPEN", Severity.Warning, "Door open"));
        var first = Drain(store);
        store.Raise(new Alert("DOOR_OPEN", Severity.Warning, "Door open"));
        var second = Drain(store);

        Assert.Single(first);
        Assert.Single(second);
        Assert.NotEqual(first[0].Json.GetProperty("id").GetString(), second[0].Json.GetProperty("id").GetString());
    }

    [Fact]
    public void Acknowledge_RemovesAlerts_RewindResendsTheOthers()
    {
        using var flash = new NorFlashSimulator(Geometry);
        var clock = new ManualClock();
        var (store, _) = Boot(flash, clock, boot: 1);
        for (int i = 0; i < 3; i++)
        {
            store.Raise(new Alert("CODE_" + i, Severity.Info, "t"));
        }

        var sent = Drain(store);
        store.Acknowledge(sent[0].Seq);
        store.Rewind();
        var again = Drain(store);

        Assert.Equal(new[] { "CODE_1", "CODE_2" }, again.Select(s => s.Json.GetProperty("code").GetString()));
    }

    [Fact]
    public void AlertsDroppedByAFullQueue_AreReportedToTheGateway()
    {
        using var flash = new NorFlashSimulator(new FlashGeometry(8 * 4096, 4096, 256, 1, true, false));
        var clock = new ManualClock();
        var (store, _) = Boot(flash, clock, boot: 1);
        for (int i = 0; i < 2000; i++)
        {
            store.Raise(new Alert("READING_" + (i % 500), Severity.Info, new string('x', 100)));
        }

        var sent = Drain(store);
        var marker = sent.Select(s => s.Json).Where(j => j.GetProperty("code").GetString() == AlertStore.DroppedCode).ToList();

        Assert.NotEmpty(marker);
        int reported = marker.Sum(m => m.GetProperty("values").GetProperty("dropped").GetInt32());
        int delivered = sent.Count - marker.Count;
        Assert.Equal(2000, reported + delivered);
    }

    /// <summary>
    /// Earlier firmware with the Reject policy filled all but the spare, then opened the spare for an acknowledgement: no
    /// sector is free (FlashQueueNoFreeSectorTests). Raise threw QueueFullException under every policy once the head filled.
    /// </summary>
    [Theory]
    [InlineData(FullPolicy.DropLowestPriority)]
    [InlineData(FullPolicy.DropOldest)]
    [InlineData(FullPolicy.Reject)]
    public void Raise_OnAQueueEarlierFirmwareLeftWithNoFreeSector_DropsAndReportsUnderADropPolicy_AndRefusesOnlyUnderReject(FullPolicy policy)
    {
        using var flash = new NorFlashSimulator(new FlashGeometry(4 * 4096, 4096, 256, 1, true, false));
        var clock = new ManualClock();
        var (old, oldQueue) = Boot(flash, clock, boot: 1, policy: FullPolicy.Reject);
        int raised = 0;
        Exception? full = null;
        while (full is null)
        {
            full = Record.Exception(() => old.Raise(new Alert("READING_" + raised, (Severity)(raised % 3), new string('x', 100))));
            raised += full is null ? 1 : 0;
        }

        Assert.IsType<QueueFullException>(full);
        var buf = new byte[AlertJsonWriter.MaxLength];
        var taken = new uint[3];
        for (int i = 0; i < taken.Length; i++)
        {
            Assert.True(old.TryNext(buf, 0, out _, out taken[i]));
        }

        old.Acknowledge(taken[0]);
        old.Acknowledge(taken[1]);
        Storage.FlashQueueNoFreeSectorTests.OpenTheSpareForAnAcknowledgement(flash, oldQueue.LiveSectors - 1, oldQueue.NextSeq, oldQueue.AckedThrough, taken[2]);

        var (store, queue) = Boot(flash, clock, boot: 2, policy: policy);
        Assert.Equal(4, queue.LiveSectors);
        int later = 0;
        Exception? refused = null;
        while (later < 200 && refused is null)
        {
            refused = Record.Exception(() => store.Raise(new Alert("LATER_" + later, (Severity)(later % 3), new string('y', 100))));
            later += refused is null ? 1 : 0;
        }

        var sent = Drain(store);
        var markers = sent.Select(s => s.Json).Where(j => j.GetProperty("code").GetString() == AlertStore.DroppedCode).ToList();
        int reported = markers.Sum(m => m.GetProperty("values").GetProperty("dropped").GetInt32());
        int delivered = sent.Count - markers.Count;
        if (policy == FullPolicy.Reject)
        {
            Assert.IsType<QueueFullException>(refused);
            Assert.Empty(markers);
            Assert.Equal(raised - 3 + later, delivered);
        }
        else
        {
            Assert.Null(refused);
            Assert.NotEmpty(markers);
            Assert.Equal(raised - 3 + later, reported + delivered);
        }
    }

    [Fact]
    public void CoalescedAlert_WhoseOlderRecordTheFullPolicyMovedPastItsNewest_IsSentWithItsLatestCount_AfterAReboot()
    {
        using var flash = new NorFlashSimulator(new FlashGeometry(4 * 1024, 1024, 256, 1, true, false));
        var clock = new ManualClock();
        var (store, queue) = Boot(flash, clock, boot: 1);
        var freezer = new Alert("FREEZER_TEMP_HIGH", Severity.Critical, "Freezer 2");
        store.Raise(freezer);
        store.Raise(freezer); // count 2: written, in the oldest sector
        while (queue.LiveSectors == 1)
        {
            clock.UptimeMs += 61_000; // a repeat a minute later is written as an update
            store.Raise(new Alert("READING", Severity.Info, "Reading"));
        }

        clock.UptimeMs += 61_000;
        store.Raise(freezer); // count 3
        store.Raise(freezer); // count 4: the newest record, in the second sector
        while (queue.DroppedSinceMount == 0)
        {
            clock.UptimeMs += 61_000;
            store.Raise(new Alert("READING", Severity.Info, "Reading"));
        }

        // Reclaiming the oldest sector moved the count-2 record forward, past the count-4 one.
        var (again, _) = Boot(flash, clock, boot: 2);
        var sent = Drain(again).Select(s => s.Json).Where(j => j.GetProperty("code").GetString() == "FREEZER_TEMP_HIGH").ToList();

        Assert.Equal([4], sent.Select(j => j.GetProperty("count").GetInt32()));
    }

    [Fact]
    public void CoalescedAlert_MovedPastItsNewest_WithMoreChainsThanTheStoreTracks_InBetween_IsSentFirstWithItsLatestCount()
    {
        // Found by the torture campaign: the boot's scan forgot the freezer's chain when 16 newer ones filled the table,
        // then learnt it again from the count-2 record the full policy had moved forward, took that for the latest,
        // skipped the count-4 record, and an acknowledgement of what followed removed it unsent.
        using var flash = new NorFlashSimulator(new FlashGeometry(4 * 4096, 4096, 256, 1, true, false));
        var clock = new ManualClock();
        var (store, queue) = Boot(flash, clock, boot: 1);
        var freezer = new Alert("FREEZER_TEMP_HIGH", Severity.Critical, "Freezer 2");
        store.Raise(freezer);
        store.Raise(freezer); // count 2: written, in the oldest sector
        while (queue.LiveSectors == 1)
        {
            clock.UptimeMs += 61_000;
            store.Raise(new Alert("READING", Severity.Info, "Reading"));
        }

        clock.UptimeMs += 61_000;
        store.Raise(freezer); // count 3
        store.Raise(freezer); // count 4: the newest record, in the second sector
        for (int code = 0; code < 18; code++)
        {
            var other = new Alert("SENSOR_" + code, Severity.Warning, "Sensor");
            store.Raise(other);
            store.Raise(other); // count 2: an update, so a chain the next boot's scan has to track
        }

        Assert.Equal(2, queue.LiveSectors); // all of them in the second sector, read before the moved records
        while (queue.DroppedSinceMount == 0)
        {
            clock.UptimeMs += 61_000;
            store.Raise(new Alert("READING", Severity.Info, "Reading"));
        }

        var (again, _) = Boot(flash, clock, boot: 2);
        var sent = Drain(again).Select(s => s.Json).Where(j => j.GetProperty("code").GetString() == "FREEZER_TEMP_HIGH").ToList();

        Assert.NotEmpty(sent);
        Assert.Equal(4, sent[0].GetProperty("count").GetInt32()); // the gateway keeps the first copy of an id
        Assert.Single(sent.Select(j => j.GetProperty("id").GetString()).Distinct());
    }

    [Theory]
    [InlineData(FullPolicy.DropLowestPriority)]
    [InlineData(FullPolicy.DropOldest)]
    public void ASuspectUpdateDroppedByTheFullPolicyBeforeItWasSent_NoLongerHoldsAcknowledgementsBack_TheQueueDrains(FullPolicy policy)
    {
        // Four 1 KiB sectors: the first reclaim takes the sector the next mount finds the update in. (Reject drops
        // nothing: there the update is always handed out, and its acknowledgement ends the hold.)
        using var flash = new NorFlashSimulator(new FlashGeometry(4 * 1024, 1024, 256, 1, true, false));
        var clock = new ManualClock();
        var (store, _) = Boot(flash, clock, boot: 1, policy: policy);
        var pump = new Alert("PUMP_CYCLING", Severity.Info, "Pump restarted");
        store.Raise(pump);
        store.Raise(new Alert("DOOR_OPEN", Severity.Info, "Door open"));
        uint update = store.Raise(pump); // count 2: the last entry on flash

        // The pump's first record is read and skipped: acknowledgements are held back below it until the update is.
        var (second, queue) = Boot(flash, clock, boot: 2, policy: policy);
        Assert.Equal(update, queue.LastEntryAtMount);
        var buf = new byte[AlertJsonWriter.MaxLength];
        Assert.True(second.TryNext(buf, 0, out _, out _));

        // Offline, the ring fills: the full policy drops the update, unsent, with the rest of its sector.
        var raised = new List<string>();
        while (queue.DroppedSinceMount < 3)
        {
            raised.Add("READING_" + raised.Count);
            second.Raise(new Alert(raised[^1], Severity.Info, "Reading"));
        }

        // Back online: everything queued is sent and acknowledged.
        second.Rewind();
        var sent = Drain(second);
        second.Acknowledge(sent[^1].Seq);

        Assert.Equal(0u, second.Depth);
        var codes = sent.Select(s => s.Json.GetProperty("code").GetString()).ToList();
        Assert.Contains(AlertStore.DroppedCode, codes);
        Assert.Contains(raised[^1], codes);
        var (third, _) = Boot(flash, clock, boot: 3, policy: policy);
        Assert.Empty(Drain(third)); // not sent again after every reconnect or reboot
    }

    [Fact]
    public void ASuspectUpdateCutAsItWasWritten_MovedByTheFullPolicy_StillStandsForItsAlertOnceTheHoldEnds()
    {
        // 1 KiB pages: each record is one program, the one the cut strikes.
        using var flash = new NorFlashSimulator(new FlashGeometry(4 * 4096, 4096, 1024, 1, true, false), seed: 5);
        var clock = new ManualClock();
        var (store, _) = Boot(flash, clock, boot: 1);
        var pump = new Alert("PUMP_CYCLING", Severity.Warning, "Pump restarted");
        store.Raise(pump);
        uint door = store.Raise(new Alert("DOOR_OPEN", Severity.Info, "Door open"));
        flash.ScheduleCut(0, new PowerCut(CutMode.RandomBits, 1, WeakCells.Fade)); // every bit written, none of them solid
        Assert.Throws<PowerLossException>(() => store.Raise(pump)); // the count-2 update
        flash.PowerOn();

        var (second, queue) = Boot(flash, clock, boot: 2);
        Assert.Equal(door + 1, queue.LastEntryAtMount); // the update reads well in the boot after the cut
        var buf = new byte[AlertJsonWriter.MaxLength];
        Assert.True(second.TryNext(buf, 0, out _, out _)); // the door alert; the pump's first record is skipped

        // Offline, the ring fills with info alerts: the reclaim of the first sector drops them and moves the pump's
        // records, the weak update among them, forward.
        for (int i = 0; queue.DroppedSinceMount == 0; i++)
        {
            second.Raise(new Alert("READING_" + i, Severity.Info, "Reading"));
        }

        // Back online, the gateway acknowledges everything sent before the moved update, which ends the hold.
        second.Rewind();
        uint beforePump = 0;
        while (second.TryNext(buf, 0, out int len, out uint seq) && JsonDocument.Parse(buf.AsMemory(0, len)).RootElement.GetProperty("code").GetString() != "PUMP_CYCLING")
        {
            beforePump = seq;
        }

        second.Acknowledge(beforePump);
        Assert.Equal(beforePump, queue.AckedThrough);

        flash.PowerOn(); // the update's cells would fade now; its copy does not
        var (third, _) = Boot(flash, clock, boot: 3);
        var pumps = Drain(third).Select(s => s.Json).Where(j => j.GetProperty("code").GetString() == "PUMP_CYCLING").ToList();

        Assert.Equal([2], pumps.Select(j => j.GetProperty("count").GetInt32()));
    }

    [Fact]
    public void AnUpdateCutAsItWasWritten_ThatReadsWellThenFades_NeverTakesTheAlertWithIt()
    {
        // 1 KiB pages: each record is one program, the one the cut strikes.
        using var flash = new NorFlashSimulator(new FlashGeometry(64 * 1024, 4096, 1024, 1, true, false), seed: 5);
        var clock = new ManualClock();
        var (store, _) = Boot(flash, clock, boot: 1);
        var pump = new Alert("PUMP_CYCLING", Severity.Warning, "Pump restarted");
        store.Raise(pump);
        store.Raise(new Alert("DOOR_OPEN", Severity.Warning, "Door open"));
        flash.ScheduleCut(0, new PowerCut(CutMode.RandomBits, 1, WeakCells.Fade)); // every bit written, none of them solid
        Assert.Throws<PowerLossException>(() => store.Raise(pump)); // the count-2 update of the first alert
        flash.PowerOn();

        // The boot after the cut reads the update: it stands in for the pump's first record. The gateway takes
        // the door alert and acknowledges it, which would also cover that first record.
        var (second, _) = Boot(flash, clock, boot: 2);
        var buf = new byte[AlertJsonWriter.MaxLength];
        Assert.True(second.TryNext(buf, 0, out int len, out uint seq));
        var door = JsonDocument.Parse(buf.AsMemory(0, len)).RootElement.Clone();
        Assert.Equal("DOOR_OPEN", door.GetProperty("code").GetString());
        second.Acknowledge(seq);

        flash.PowerOn(); // the update's cells fade
        var (third, _) = Boot(flash, clock, boot: 3);
        var sent = Drain(third).Select(s => s.Json).ToList();

        var pumps = sent.Where(j => j.GetProperty("code").GetString() == "PUMP_CYCLING").ToList();
        Assert.Equal([1], pumps.Select(j => j.GetProperty("count").GetInt32())); // the count promised: the second raise never returned
        // The door alert may come again under its id (its acknowledgement was held back): the gateway drops it.
        Assert.All(sent.Except(pumps), j => Assert.Equal(door.GetProperty("id").GetString(), j.GetProperty("id").GetString()));
    }

    [Fact]
    public void AnUpdateDroppedOnArrivalByAFullQueue_DoesNotTakeTheQueuedAlertWithIt()
    {
        // The oldest sector holds only critical alerts and the pump's own info records sit in the newest: when the ring
        // is full, the pump's next update is the entry the policy drops, on arrival. Its older record stays queued and
        // must still be sent: the update that was to replace it is not on flash.
        using var flash = new NorFlashSimulator(new FlashGeometry(3 * 1024, 1024, 256, 1, true, false));
        var clock = new ManualClock();
        var (store, queue) = Boot(flash, clock, boot: 1);
        int critical = 0;
        while (queue.LiveSectors == 1)
        {
            store.Raise(new Alert("CRITICAL_" + critical++, Severity.Critical, "Critical"));
        }

        var pump = new Alert("PUMP_CYCLING", Severity.Info, "Pump restarted");
        store.Raise(pump);
        bool droppedOnArrival = false;
        for (int i = 0; i < 200 && !droppedOnArrival; i++)
        {
            store.Raise(new Alert("CRITICAL_" + critical++, Severity.Critical, "Critical"));
            clock.UptimeMs += 61_000; // a repeat a minute later is written as an update
            long dropped = queue.DroppedSinceMount;
            uint seq = store.Raise(pump);
            droppedOnArrival = queue.DroppedSinceMount > dropped && queue.NextSeq == seq + 2; // a marker took its place
        }

        Assert.True(droppedOnArrival, "the workload should make the full policy drop a pump update on arrival");
        using var copy = flash.Fork(seed: 1);
        Assert.Contains("PUMP_CYCLING", Drain(Boot(copy, clock, boot: 2).Store).Select(s => s.Json.GetProperty("code").GetString())); // still on flash

        var codes = Drain(store).Select(s => s.Json.GetProperty("code").GetString()).ToList();
        Assert.Contains(AlertStore.DroppedCode, codes);
        Assert.Contains("PUMP_CYCLING", codes);
    }

    [Fact]
    public void Raise_RepeatCountPastUInt32Max_SaturatesAndTheQueueStillDrains()
    {
        // The 2^32nd repeat while offline (1 kHz for ~50 days) wrapped the store's count to 0, and an update with count 0
        // was written that no reader accepts: TryNext threw on it in this boot and every later one. The slot's count is
        // set by reflection to where such a storm leaves it (4.29 billion raises take too long here).
        using var flash = new NorFlashSimulator(Geometry);
        var clock = new ManualClock();
        var (store, _) = Boot(flash, clock, boot: 1);
        store.Raise(new Alert("PUMP_CYCLING", Severity.Warning, "Pump restarted"));
        var slots = (Array)typeof(AlertStore).GetField("_slots", BindingFlags.NonPublic | BindingFlags.Instance)!.GetValue(store)!;
        object slot = slots.Cast<object>().First(s => (string)s.GetType().GetField("Code")!.GetValue(s)! == "PUMP_CYCLING");
        slot.GetType().GetField("Count")!.SetValue(slot, uint.MaxValue);

        clock.UptimeMs += 61_000; // a repeat a minute later is written as an update
        store.Raise(new Alert("PUMP_CYCLING", Severity.Warning, "Pump restarted"));
        store.Raise(new Alert("BATTERY_LOW", Severity.Info, "Battery at 9 %"));
        var sent = Drain(store).Select(s => s.Json).ToList();

        Assert.Equal(["PUMP_CYCLING", "BATTERY_LOW"], sent.Select(j => j.GetProperty("code").GetString()));
        Assert.Equal(uint.MaxValue, sent[0].GetProperty("count").GetUInt32());
        Assert.Equal(0u, store.Unreadable);
    }

    [Fact]
    public void RecordsThisFirmwareCannotRead_GoOutAsUnreadableAlertsUnderTheirIds_AndTheAlertsAfterThemStillGoOut()
    {
        // What a rollback can leave on flash, each passing the flash CRC: a record of a newer layout, an entry kind
        // this firmware does not know, and an update (count 0) that breaks version 1's rules. Neither uplink could send
        // them; acknowledging past them must not need a reader that can.
        using var flash = new NorFlashSimulator(Geometry);
        var clock = new ManualClock();
        var (store, queue) = Boot(flash, clock, boot: 1);
        uint before = store.Raise(new Alert("BEFORE", Severity.Info, "first"));
        var record = new byte[4 + 1472];
        int length = AlertRecord.Encode(new Alert("FROM_NEWER_FIRMWARE", Severity.Critical, "v2"), AlertRecord.UnknownTime, 2_000, 1, record, 0);
        record[0] = 2;
        uint newer = queue.Append(AlertStore.KindAlert, (byte)Severity.Critical, record, 0, length);
        record[0] = AlertRecord.Version;
        uint unknownKind = queue.Append(7, (byte)Severity.Warning, record, 0, length);
        length = AlertRecord.Encode(new Alert("BEFORE", Severity.Info, "first"), AlertRecord.UnknownTime, 3_000, 1, record, 4);
        BinaryPrimitives.WriteUInt32LittleEndian(record, before);
        BinaryPrimitives.WriteUInt32LittleEndian(record.AsSpan(4 + 8), 0); // count, docs/alert-record.md
        queue.Append(AlertStore.KindUpdate, (byte)Severity.Info, record, 0, 4 + length);

        var (rebooted, _) = Boot(flash, clock, boot: 2);
        uint after = rebooted.Raise(new Alert("AFTER", Severity.Warning, "later"));
        var outgoing = new OutgoingAlert();
        var sent = new List<JsonElement>();
        var buf = new byte[AlertJsonWriter.MaxLength];
        while (rebooted.TryNext(outgoing))
        {
            sent.Add(JsonDocument.Parse(buf.AsMemory(0, outgoing.WriteTo(buf, 0))).RootElement.Clone());
            rebooted.Acknowledge(outgoing.Seq);
        }

        Assert.Equal(
            [("BEFORE", before), (AlertStore.UnreadableCode, newer), (AlertStore.UnreadableCode, unknownKind), (AlertStore.UnreadableCode, before), ("AFTER", after)],
            sent.Select(j => (j.GetProperty("code").GetString(), uint.Parse(j.GetProperty("id").GetString()!.Split('-')[1]))));
        Assert.Equal(1u, sent[0].GetProperty("count").GetUInt32()); // the bad update replaces nothing: the gateway keeps this first copy of the id
        Assert.Equal("critical", sent[1].GetProperty("sev").GetString());
        Assert.Contains("record version 2", sent[1].GetProperty("text").GetString());
        Assert.Equal(3u, rebooted.Unreadable);
        Assert.Equal(0u, rebooted.Depth);
        Assert.Empty(Drain(Boot(flash, clock, boot: 3).Store));
    }

    [Fact]
    public void ARecordWhoseJsonWouldExceed4KiB_GoesOutWithItsTextCutAndMarked_AndTheAlertsAfterItStillGoOut()
    {
        // Encode refuses text whose escaped JSON would not fit, but a record on flash from firmware that did not check
        // (or a foreign image) passes every rule of the layout: 900 control characters escape to 5,400 bytes. The
        // byte[] TryNext threw on it (the SMTP uplink stopped at it for good), and the streamed JSON was over the limit,
        // refused by the gateway with a receipt and acknowledged: nobody saw the alert.
        using var flash = new NorFlashSimulator(Geometry);
        var clock = new ManualClock();
        var (store, queue) = Boot(flash, clock, boot: 1);
        var alert = new Alert("FREEZER_TEMP_HIGH", Severity.Critical, "Freezer 2: " + new string('x', 889));
        alert.AddValue("temp_c", -9.5, 1);
        var record = new byte[AlertRecord.MaxSize];
        int length = AlertRecord.Encode(alert, AlertRecord.UnknownTime, 2_000, 1, record, 0);
        int text = AlertRecord.HeaderSize + "FREEZER_TEMP_HIGH".Length + "Freezer 2: ".Length;
        record.AsSpan(text, 889).Fill(0x01);
        uint big = queue.Append(AlertStore.KindAlert, (byte)Severity.Critical, record, 0, length);
        uint after = store.Raise(new Alert("AFTER", Severity.Warning, "later"));

        var outgoing = new OutgoingAlert();
        Assert.True(store.TryNext(outgoing));
        Assert.InRange(outgoing.Length, 3_000, AlertJsonWriter.MaxLength);
        var streamed = new byte[outgoing.Length];
        outgoing.WriteTo(streamed, 0);
        store.Rewind();
        var sent = Drain(store);

        Assert.Equal([big, after], sent.Select(a => a.Seq));
        JsonElement cut = sent[0].Json;
        Assert.Equal(JsonDocument.Parse(streamed).RootElement.ToString(), cut.ToString());
        Assert.Equal("FREEZER_TEMP_HIGH", cut.GetProperty("code").GetString());
        Assert.Equal("critical", cut.GetProperty("sev").GetString());
        Assert.Equal(-9.5, cut.GetProperty("values").GetProperty("temp_c").GetDouble());
        string cutText = cut.GetProperty("text").GetString()!;
        Assert.StartsWith("Freezer 2: \u0001\u0001", cutText, StringComparison.Ordinal);
        Assert.EndsWith(AlertRecord.CutTextMarker, cutText, StringComparison.Ordinal);
        Assert.Equal(1u, store.CutTexts);
        Assert.Equal(0u, store.Unreadable);
        store.Acknowledge(after);
        Assert.Equal(0u, store.Depth);
    }

    [Fact]
    public void QueueFullAlert_SentThenAnotherDropBeforeItsAcknowledgement_IsResentUnderItsOwnIdAndCount()
    {
        // The reader folds drop markers that follow one another into one QUEUE_FULL alert named after the last. A marker
        // handed out and sent, its PUBACK lost with the link, was folded on the resend into the next drop's marker: a new
        // id with a larger count, so the gateway (which de-duplicates on id) mailed a second notice and over-counted.
        using var flash = new NorFlashSimulator(new FlashGeometry(8 * 4096, 4096, 256, 1, true, false));
        var clock = new ManualClock();
        var (store, queue) = Boot(flash, clock, boot: 1);
        for (int i = 0; i < 2000; i++)
        {
            store.Raise(new Alert("READING_" + (i % 500), Severity.Warning, new string('x', 100)));
        }

        store.Raise(new Alert("LOW_PRIORITY_1", Severity.Info, "info"));
        Assert.True(queue.LastAppendDropped, "the info alert is below everything queued: dropped on arrival, a marker written");
        var first = Markers(Drain(store)); // sent; the link drops before any PUBACK
        store.Raise(new Alert("LOW_PRIORITY_2", Severity.Info, "info"));
        Assert.True(queue.LastAppendDropped);
        store.Rewind();
        var again = Markers(Drain(store));
        using var copy = flash.Fork(seed: 1);
        var afterReboot = Markers(Drain(Boot(copy, clock, boot: 2).Store));

        foreach (var (id, dropped) in first)
        {
            Assert.Equal(dropped, again.GetValueOrDefault(id));
            Assert.Equal(dropped, afterReboot.GetValueOrDefault(id));
        }

        var later = Assert.Single(again.Keys.Except(first.Keys)); // the second drop: a QUEUE_FULL alert of its own
        Assert.Equal(1, again[later]);
        Assert.Equal(again, afterReboot);

        static Dictionary<string, long> Markers(List<(JsonElement Json, uint Seq)> sent) =>
            sent.Select(s => s.Json).Where(j => j.GetProperty("code").GetString() == AlertStore.DroppedCode)
                .ToDictionary(j => j.GetProperty("id").GetString()!, j => j.GetProperty("values").GetProperty("dropped").GetInt64());
    }

    [Fact]
    public void RaiseAndSend_AllocateNothing_InSteadyState()
    {
        using var flash = new NorFlashSimulator(Geometry);
        var clock = new ManualClock();
        var (store, _) = Boot(flash, clock, boot: 1, wallUnixMs: 1_795_859_892_000);
        var alert = new Alert("FREEZER_TEMP_HIGH", Severity.Critical, "Freezer 2 above -15 °C");
        alert.AddValue("temp_c", -95, 1);
        var buf = new byte[AlertJsonWriter.MaxLength];
        for (int i = 0; i < 50; i++)
        {
            store.Raise(alert);
            store.TryNext(buf, 0, out _, out uint s);
            store.Acknowledge(s);
        }

        ZeroAllocation.AssertNone(ZeroAllocation.Measure(5, 200, _ =>
        {
            store.Raise(alert);
            store.TryNext(buf, 0, out _, out uint s);
            store.Acknowledge(s);
        }));
    }
}
