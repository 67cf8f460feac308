using System.Reflection;
using System.Text.Json;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;
using Xunit;

namespace EdgeMail.Firmware.Tests;

/// <summary>Defects found by the firmware review (branch fwhunt): each test fails on main and names the defect.</summary>
public class FwHuntAlertStoreTests
{
    private static readonly FlashGeometry Geometry = new(64 * 1024, 4096, 256, 1, allowsReprogram: true, encrypted: false);

    private sealed class ManualClock : IClock
    {
        public long UptimeMs { get; set; } = 1_000;
    }

    /// <summary>
    /// AlertStore.Raise counts coalesced repeats with `slot.Count++` (no saturation, unlike AlertRecord.AddRepeat and
    /// the documented "count … saturates"). The 2^32nd repeat while offline (1 kHz for ~50 days) wraps it to 0; 0 passes
    /// the power-of-two test, so an update with count 0 is written to flash. AlertRecordView.Attach refuses count 0, so
    /// TryNext throws ArgumentException for it on every call, in this boot and every later one: the queue is blocked.
    /// The slot's count is set by reflection to where such a storm leaves it (4.29 billion raises take too long here).
    /// </summary>
    [Fact]
    public void CoalescedRepeatCountPastUInt32Max_MustSaturate_NotWriteCountZeroThatBlocksTheQueue()
    {
        using var flash = new NorFlashSimulator(Geometry);
        var clock = new ManualClock();
        var queue = new FlashQueue(flash, FullPolicy.DropLowestPriority);
        queue.Mount(0x7F3A9C21);
        var store = new AlertStore(queue, clock, new WallClock(clock), 1);
        store.Raise(new Alert("PUMP_CYCLING", Severity.Warning, "Pump restarted"));

        var slots = (Array)typeof(AlertStore).GetField("_slots", BindingFlags.NonPublic | BindingFlags.Instance)!.GetValue(store)!;
        object slot = slots.Cast<object>().First(s => (string)s.GetType().GetField("Code")!.GetValue(s)! == "PUMP_CYCLING");
        slot.GetType().GetField("Count")!.SetValue(slot, uint.MaxValue);

        clock.UptimeMs += 1;
        store.Raise(new Alert("PUMP_CYCLING", Severity.Warning, "Pump restarted"));
        store.Raise(new Alert("BATTERY_LOW", Severity.Info, "Battery at 9 %"));

        var buf = new byte[AlertJsonWriter.MaxLength];
        var sent = new List<JsonElement>();
        while (store.TryNext(buf, 0, out int len, out _))
        {
            sent.Add(JsonDocument.Parse(buf.AsMemory(0, len)).RootElement.Clone());
        }

        Assert.Equal(2, sent.Count);
        Assert.Equal("PUMP_CYCLING", sent[0].GetProperty("code").GetString());
        Assert.True(sent[0].GetProperty("count").GetUInt32() >= 1);
    }

    /// <summary>
    /// A QUEUE_FULL alert's id is its drop marker's sequence number, and FlashQueue.MergeFollowingMarkers folds the
    /// markers that follow it into it, taking the last one's number. A marker handed out and sent, but not yet
    /// acknowledged (PUBACK lost with the link), is therefore resent after the next drop under a new id with a larger
    /// count: the gateway, which de-duplicates on id, mails the operator a second "queue full" notice and the counts of
    /// the two add up to more alerts than were dropped. A retransmission must keep its id.
    /// </summary>
    [Fact]
    public void QueueFullAlert_SentButNotAcknowledged_IsResentUnderItsOwnId_NotMergedIntoALaterDropUnderANewOne()
    {
        using var flash = new NorFlashSimulator(new FlashGeometry(8 * 4096, 4096, 256, 1, true, false));
        var clock = new ManualClock();
        var queue = new FlashQueue(flash, FullPolicy.DropLowestPriority);
        queue.Mount(0x7F3A9C21);
        var store = new AlertStore(queue, clock, new WallClock(clock), 1);
        for (int i = 0; i < 2000; i++)
        {
            store.Raise(new Alert("READING_" + (i % 500), Severity.Warning, new string('x', 100)));
        }

        store.Raise(new Alert("LOW_PRIORITY_1", Severity.Info, "info"));
        Assert.True(queue.LastAppendDropped, "the info alert is below everything queued: dropped on arrival, a marker written");

        var first = Drain(store); // sent; the link drops before any PUBACK
        store.Raise(new Alert("LOW_PRIORITY_2", Severity.Info, "info"));
        Assert.True(queue.LastAppendDropped);
        store.Rewind();
        var again = Drain(store);

        var markersFirst = first.Where(j => j.GetProperty("code").GetString() == AlertStore.DroppedCode)
            .ToDictionary(j => j.GetProperty("id").GetString()!, j => j.GetProperty("values").GetProperty("dropped").GetInt64());
        var markersAgain = again.Where(j => j.GetProperty("code").GetString() == AlertStore.DroppedCode)
            .ToDictionary(j => j.GetProperty("id").GetString()!, j => j.GetProperty("values").GetProperty("dropped").GetInt64());
        foreach (var (id, dropped) in markersFirst)
        {
            Assert.True(markersAgain.TryGetValue(id, out long resent),
                $"QUEUE_FULL {id} (dropped {dropped}) was not resent under its id; resent: {string.Join(", ", markersAgain.Select(m => m.Key + "=" + m.Value))}");
            Assert.Equal(dropped, resent);
        }
    }

    private static List<JsonElement> Drain(AlertStore store)
    {
        var buf = new byte[AlertJsonWriter.MaxLength];
        var sent = new List<JsonElement>();
        while (store.TryNext(buf, 0, out int len, out _))
        {
            sent.Add(JsonDocument.Parse(buf.AsMemory(0, len)).RootElement.Clone());
        }

        return sent;
    }
}
