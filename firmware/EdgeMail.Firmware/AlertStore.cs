using System;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;

namespace EdgeMail.Firmware;

/// <summary>
/// The device's alert inbox on flash: <see cref="Raise"/> for the application, <see cref="TryNext(OutgoingAlert)"/>,
/// <see cref="Acknowledge"/> and <see cref="Rewind"/> for the uplink. An alert is on flash before
/// <see cref="Raise"/> returns. Repeats of an alert that has not been sent yet (same code, state and
/// severity, same boot) coalesce into it: the count and last time grow, and an updated record replaces
/// the queued one, written when the count reaches a power of two or a minute after the last update, so
/// a storm costs a few records instead of pushing other alerts out. Thread-safe.
/// </summary>
public sealed class AlertStore
{
    /// <summary>Queue entry kind of an alert record.</summary>
    public const byte KindAlert = 1;

    /// <summary>Queue entry kind of an alert record that replaces an earlier one (payload: u32 replaced id seq, record).</summary>
    public const byte KindUpdate = 2;

    /// <summary>Code of the alert the uplink sends when the full policy dropped alerts.</summary>
    public const string DroppedCode = "EDGEMAIL.QUEUE_FULL";

    /// <summary>
    /// Code of the alert the uplink sends in place of a record this firmware cannot read (a newer layout left by a
    /// firmware rollback, bytes that break the layout's rules): it goes out under the record's id and its
    /// acknowledgement removes the record, so one bad record never blocks the queue.
    /// </summary>
    public const string UnreadableCode = "EDGEMAIL.RECORD_UNREADABLE";

    private const int Slots = 8;
    private const int Chains = 16;
    private const long UpdateIntervalMs = 60_000;

    private readonly FlashQueue _queue;
    private readonly IClock _clock;
    private readonly WallClock _wall;
    private readonly uint _boot;
    private readonly uint _firstSeqOfBoot;
    private readonly object _lock = new object();
    // One buffer for writing and reading records (every call holds the lock): the largest record plus
    // the replaced id of an update.
    private readonly byte[] _record = new byte[4 + AlertRecord.MaxSize];
    private readonly QueueEntry _entry = new QueueEntry();
    private AlertJsonWriter? _json; // only for TryNext(byte[], ...): created on its first call
    private readonly Alert _dropped = new Alert();
    private readonly AlertRecordView _view = new AlertRecordView();
    private readonly Slot[] _slots = new Slot[Slots];
    private readonly Chain[] _chains = new Chain[Chains];
    private int _chainCount;
    private bool _scanned;

    // While some alert's older records are held back (Chain.HeldFrom), the highest acknowledgement the uplink gave:
    // applied once the hold ends. And, while the reader goes over the queue a second time for alerts whose latest
    // update did not read (FallBack), the last sequence number its first time handed out.
    private uint _ackWanted;
    private uint _secondSweepThrough;
    private uint _secondSweepOrder;
    private uint _unreadableThrough;
    private uint _cutThrough;

    /// <summary>Creates the store over a mounted queue.</summary>
    /// <param name="queue">The mounted flash queue the store owns.</param>
    /// <param name="clock">Monotonic time.</param>
    /// <param name="wall">Wall-clock time, possibly unknown.</param>
    /// <param name="boot">This boot's number (kept by the application across reboots).</param>
    public AlertStore(FlashQueue queue, IClock clock, WallClock wall, uint boot)
    {
        if (queue == null || clock == null || wall == null)
        {
            throw new ArgumentNullException(queue == null ? nameof(queue) : clock == null ? nameof(clock) : nameof(wall));
        }

        _queue = queue;
        _clock = clock;
        _wall = wall;
        _boot = boot;
        _firstSeqOfBoot = queue.NextSeq;
        for (int i = 0; i < Slots; i++)
        {
            _slots[i] = new Slot();
        }

        for (int i = 0; i < Chains; i++)
        {
            _chains[i] = new Chain();
        }
    }

    /// <summary>The flash epoch: the first part of every alert id.</summary>
    public uint Epoch => _queue.Epoch;

    /// <summary>
    /// The queue's next sequence number when the store was created: the id of every alert raised in this boot is at
    /// least this, and no alert id below it was raised in this boot.
    /// </summary>
    public uint FirstSeqOfBoot => _firstSeqOfBoot;

    /// <summary>Alerts raised and not yet acknowledged by the gateway (records, including replaced ones).</summary>
    public uint Depth => _queue.Depth;

    /// <summary>The sequence number in the id of the alert the last <see cref="Raise"/> wrote or merged a repeat into
    /// (the gateway's receipts name that id); 0 before the first raise.</summary>
    public uint LastRaisedIdSeq { get; private set; }

    /// <summary>
    /// Coalesced alerts whose chain of updates this boot stopped tracking (more than 16 at once): each of their
    /// queued records is then sent under the alert's id, older counts included, and the gateway keeps the first.
    /// </summary>
    public uint ForgottenChains { get; private set; }

    /// <summary>
    /// Records found unreadable this boot: each is handed out as an <see cref="UnreadableCode"/> alert instead (and
    /// leaves flash when that is acknowledged), as a drop marker is handed out as a <see cref="DroppedCode"/> alert.
    /// </summary>
    public uint Unreadable { get; private set; }

    /// <summary>
    /// Records found this boot whose JSON would exceed Contract 1's 4096 bytes (possible only for one this firmware did
    /// not write: its text full of control characters): each is handed out with its text cut to fit and ending in
    /// <see cref="AlertRecord.CutTextMarker"/>, its code, values and times whole.
    /// </summary>
    public uint CutTexts { get; private set; }

    /// <summary>
    /// Raises an alert: when this returns, it is on flash. A repeat of an alert not yet sent is merged
    /// into it instead (count and last time).
    /// </summary>
    /// <param name="alert">The alert; its fields are copied.</param>
    /// <returns>The queue sequence number of the record written, or 0 when the repeat was counted without a write.</returns>
    /// <exception cref="ArgumentException">The alert breaks a limit of Contract 1; the message says which.</exception>
    public uint Raise(Alert alert)
    {
        if (alert == null)
        {
            throw new ArgumentNullException(nameof(alert));
        }

        lock (_lock)
        {
            long uptime = _clock.UptimeMs;
            long unix = _wall.UnixMs;
            Slot? slot = FindUnsent(alert);
            if (slot == null)
            {
                int length = AlertRecord.Encode(alert, unix, uptime, _boot, _record, 0);
                uint seq = _queue.Append(KindAlert, (byte)alert.Severity, _record, 0, length);
                Remember(alert, seq, unix, uptime);
                LastRaisedIdSeq = seq;
                return seq;
            }

            if (slot.Count != uint.MaxValue)
            {
                slot.Count++; // saturates, as the record's count does (AlertRecord.AddRepeat): 0 would be unreadable
            }

            LastRaisedIdSeq = slot.IdSeq;
            slot.LastUnix = unix;
            slot.LastUptime = uptime;
            bool powerOfTwo = (slot.Count & (slot.Count - 1)) == 0;
            if (!powerOfTwo && uptime - slot.WrittenAtUptime < UpdateIntervalMs)
            {
                return 0;
            }

            // Write the merged alert under the first one's id; the earlier record is skipped when sent.
            int len = AlertRecord.Encode(alert, slot.FirstUnix, slot.FirstUptime, _boot, _record, 4);
            PatchRepeat(slot);
            Le.PutU32(_record, 0, slot.IdSeq);
            uint updateSeq = _queue.Append(KindUpdate, (byte)alert.Severity, _record, 0, 4 + len);
            if (_queue.LastAppendDropped)
            {
                // The full policy dropped the update itself: the older record stays queued and still stands for the
                // alert (sent with the count kept here), so it must not be skipped as replaced.
                return updateSeq;
            }

            SetChainLatest(slot.IdSeq, updateSeq, durable: true, evict: true);
            slot.LatestSeq = updateSeq;
            slot.WrittenAtUptime = uptime;
            return updateSeq;
        }
    }

    /// <summary>
    /// Writes the next alert to send as Contract 1 JSON, without allocating. Alerts replaced by a later
    /// update are skipped; a drop marker becomes an <see cref="DroppedCode"/> alert, a record this firmware cannot read an
    /// <see cref="UnreadableCode"/> alert. Needs a buffer for the whole JSON;
    /// <see cref="TryNext(OutgoingAlert)"/> does not.
    /// </summary>
    /// <param name="json">Destination; <see cref="AlertJsonWriter.MaxLength"/> bytes always suffice.</param>
    /// <param name="offset">Where to start writing.</param>
    /// <param name="length">JSON length in bytes.</param>
    /// <param name="seq">The entry's sequence number: acknowledge up to it once the gateway owns the alert.</param>
    /// <returns>False when nothing is left to send.</returns>
    public bool TryNext(byte[] json, int offset, out int length, out uint seq)
    {
        lock (_lock)
        {
            if (!ReadNext(_record, out int start, out int recordLength, out uint idSeq, out seq))
            {
                length = 0;
                return false;
            }

            _json ??= new AlertJsonWriter();
            length = _json.Write(_record, start, recordLength, _queue.Epoch, idSeq, _boot, _clock.UptimeMs, _wall.UnixMs, json, offset);
            return true;
        }
    }

    /// <summary>
    /// Loads the next alert to send into <paramref name="alert"/> — its record, not its JSON — and measures its JSON,
    /// without allocating; the same order and skipping as <see cref="TryNext(byte[], int, out int, out uint)"/>. The
    /// JSON is then streamed from <paramref name="alert"/> without the store's lock.
    /// </summary>
    /// <param name="alert">Receives the alert; <see cref="OutgoingAlert.Seq"/> is what to acknowledge.</param>
    /// <returns>False when nothing is left to send (the alert is then cleared).</returns>
    public bool TryNext(OutgoingAlert alert)
    {
        if (alert == null)
        {
            throw new ArgumentNullException(nameof(alert));
        }

        lock (_lock)
        {
            if (!ReadNext(alert.Buffer, out int start, out int recordLength, out uint idSeq, out uint seq))
            {
                alert.Clear();
                return false;
            }

            alert.Load(start, recordLength, _queue.Epoch, idSeq, seq, _boot, _clock, _wall);
            return true;
        }
    }

    /// <summary>
    /// The gateway owns the alert handed out as <paramref name="seq"/> and every one handed out before it: remove them
    /// from flash. (Alerts go out in sequence order, except an older record a second sweep hands out in place of an
    /// update that no longer reads; see docs/flash-queue.md, "Weak cells".)
    /// </summary>
    /// <param name="seq">Sequence number from <see cref="TryNext(OutgoingAlert)"/>.</param>
    public void Acknowledge(uint seq)
    {
        lock (_lock)
        {
            if (seq > _ackWanted)
            {
                _ackWanted = seq;
            }

            // Acknowledgements follow the order alerts were handed out in. A record a second sweep handed out went out
            // after records with higher numbers: only its own number, one handed out after it by that sweep, or one
            // above all the first sweep handed out says the gateway has it; and then it has everything handed out before.
            uint order = 0;
            uint firstSweep = 0;
            for (int i = 0; i < _chainCount; i++)
            {
                if (_chains[i].SentAfter != 0 && _chains[i].SentAt == seq)
                {
                    order = _chains[i].SentOrder;
                    firstSweep = _chains[i].SentAfter;
                }
            }

            for (int i = 0; i < _chainCount; i++)
            {
                Chain c = _chains[i];
                bool has = c.SentAt != 0 && (order != 0
                    ? (c.SentAfter == 0 ? c.SentAt <= firstSweep : order >= c.SentOrder)
                    : seq >= c.SentAt && (c.SentAfter == 0 || seq > c.SentAfter));
                if (has)
                {
                    c.HeldFrom = 0;
                    c.Settled = true; // an older record passed over later (moved past it) needs no hold either
                    if (c.SentAfter > _ackWanted)
                    {
                        _ackWanted = c.SentAfter;
                    }
                }
            }

            uint through = _ackWanted;
            for (int i = 0; i < _chainCount; i++)
            {
                uint held = _chains[i].HeldFrom;
                if (held != 0 && through >= held)
                {
                    through = held - 1;
                }
            }

            _queue.Acknowledge(through);
        }
    }

    /// <summary>The link was lost: hand out every unacknowledged alert again.</summary>
    public void Rewind()
    {
        lock (_lock)
        {
            _queue.Rewind();
            _secondSweepThrough = 0;
            _ackWanted = 0;
            for (int i = 0; i < _chainCount; i++)
            {
                _chains[i].NewPass();
            }
        }
    }

    /// <summary>Idle-time flash maintenance (pre-erases the next sector).</summary>
    public void Maintain()
    {
        lock (_lock)
        {
            _queue.Maintain();
        }
    }

    /// <summary>Reads the next record to send into <paramref name="buffer"/> (caller holds the lock).</summary>
    private bool ReadNext(byte[] buffer, out int start, out int recordLength, out uint idSeq, out uint seq)
    {
        if (!_scanned)
        {
            ScanReplaced();
        }

        while (true)
        {
            if (!_queue.TryRead(_entry, buffer, 0))
            {
                if (_secondSweepThrough == 0 && FallBack())
                {
                    _secondSweepThrough = _queue.HandedOutThrough;
                    _queue.Rewind();
                    continue;
                }

                _secondSweepThrough = 0;
                ReleaseUnfound();
                break;
            }

            seq = _entry.Seq;
            bool again = seq <= _secondSweepThrough;
            Chain? chain = ChainOf(buffer);
            if (chain != null && chain.Latest != _entry.OriginalSeq)
            {
                Skip(chain, seq);
                continue;
            }

            if (again && (chain == null || chain.SentAt != 0))
            {
                continue; // handed out by the first sweep
            }

            if (chain != null)
            {
                chain.SentAt = seq;
                chain.SentAfter = again ? _secondSweepThrough : 0;
                chain.SentOrder = again ? ++_secondSweepOrder : 0;
                if (!again && seq >= _firstSeqOfBoot)
                {
                    // Programmed whole in this boot (appended, or moved by the full policy): it cannot fade.
                    chain.Durable = true;
                    chain.HeldFrom = 0;
                }
            }

            if (_entry.Type == EntryType.Dropped)
            {
                SettleDropped();
                start = 0;
                recordLength = EncodeDropped(buffer);
                idSeq = _entry.Seq;
                return true;
            }

            start = _entry.Kind == KindUpdate ? 4 : 0;
            AlertError error = Check(buffer);
            if (error != AlertError.None)
            {
                idSeq = _entry.Kind == KindUpdate && _entry.Length >= 4 ? IdOf(buffer) : _entry.OriginalSeq;
                start = 0;
                recordLength = EncodeUnreadable(buffer, error);
                return true;
            }

            recordLength = _entry.Length - start;
            if (AlertRecord.CutTextToFit(_view, out int size))
            {
                // Only a record this firmware did not write can be this large: sent whole it was over Contract 1's
                // limit, refused by the gateway, and nobody saw it. Cut, it still reaches a person.
                recordLength = size;
                if (seq > _cutThrough)
                {
                    _cutThrough = seq;
                    CutTexts++;
                }
            }

            idSeq = IdOf(buffer);
            CountUnwrittenRepeats(idSeq, buffer, start);
            MarkHandedOut(idSeq);
            return true;
        }

        start = 0;
        recordLength = 0;
        idSeq = 0;
        seq = 0;
        return false;
    }

    private Slot? FindUnsent(Alert alert)
    {
        string code = alert.Code;
        for (int i = 0; i < Slots; i++)
        {
            Slot s = _slots[i];
            if (s.LatestSeq != 0 && !s.HandedOut && s.State == alert.State && s.Severity == alert.Severity && s.Code == code)
            {
                return s;
            }
        }

        return null;
    }

    private void Remember(Alert alert, uint seq, long unix, long uptime)
    {
        // Reuse the slot of the same code, else the oldest.
        Slot target = _slots[0];
        for (int i = 0; i < Slots; i++)
        {
            Slot s = _slots[i];
            if (s.Code == alert.Code)
            {
                target = s;
                break;
            }

            if (s.LatestSeq < target.LatestSeq)
            {
                target = s;
            }
        }

        target.Code = alert.Code;
        target.State = alert.State;
        target.Severity = alert.Severity;
        target.IdSeq = seq;
        target.LatestSeq = seq;
        target.HandedOut = false;
        target.Count = 1;
        target.FirstUnix = unix;
        target.FirstUptime = uptime;
        target.LastUnix = unix;
        target.LastUptime = uptime;
        target.WrittenAtUptime = uptime;
    }

    /// <summary>
    /// Once an alert has been handed to the uplink, repeats start a new alert, even if the link drops before the
    /// gateway acknowledges it: the gateway keeps the first copy of an id, so a count added later under the same
    /// id could be lost. (The record's sequence number cannot tell: the full policy may have moved it.)
    /// </summary>
    private void MarkHandedOut(uint idSeq)
    {
        for (int i = 0; i < Slots; i++)
        {
            if (_slots[i].LatestSeq != 0 && _slots[i].IdSeq == idSeq)
            {
                _slots[i].HandedOut = true;
            }
        }
    }

    /// <summary>Repeats counted since the last update was written go out with the alert (this boot only).</summary>
    private void CountUnwrittenRepeats(uint idSeq, byte[] record, int recordOffset)
    {
        for (int i = 0; i < Slots; i++)
        {
            Slot s = _slots[i];
            if (s.LatestSeq != 0 && s.IdSeq == idSeq && s.LatestSeq == _entry.OriginalSeq && s.Count > 1)
            {
                PatchRepeat(s, record, recordOffset);
                return;
            }
        }
    }

    private void PatchRepeat(Slot slot) => PatchRepeat(slot, _record, 4);

    private static void PatchRepeat(Slot slot, byte[] record, int o)
    {
        Le.PutU32(record, o + AlertRecord.OffsetCount, slot.Count);
        bool firstWall = slot.FirstUnix != AlertRecord.UnknownTime;
        bool lastWall = slot.LastUnix != AlertRecord.UnknownTime;
        PutI64(record, o + AlertRecord.OffsetFirst, firstWall ? slot.FirstUnix : slot.FirstUptime);
        PutI64(record, o + AlertRecord.OffsetLast, lastWall ? slot.LastUnix : slot.LastUptime);
        record[o + AlertRecord.OffsetFlags] = (byte)((firstWall ? 0 : AlertRecord.FlagFirstIsUptime) | (lastWall ? 0 : AlertRecord.FlagLastIsUptime));
    }

    /// <summary>
    /// Once per boot, before the first send, learns the latest update of each coalesced alert: the one appended
    /// last (highest original sequence number), not the one read last, since the full policy moves older
    /// records forward under new numbers.
    /// </summary>
    private void ScanReplaced()
    {
        while (_queue.TryRead(_entry, _record, 0))
        {
            if (_entry.Type == EntryType.Item && _entry.Kind == KindUpdate && Check(_record) == AlertError.None)
            {
                SetChainLatest(Le.U32(_record, 0), _entry.OriginalSeq, _entry.Seq >= _firstSeqOfBoot, evict: false);
            }
        }

        _queue.Rewind();
        _scanned = true;
    }

    /// <summary>
    /// Records that the alert first queued as <paramref name="idSeq"/> was updated by <paramref name="updateSeq"/> (kept
    /// if it is the latest so far; <paramref name="durable"/> when that record was programmed whole in this boot). With
    /// the table full, a new chain is not tracked: all its records are then sent, under the same id, and the gateway
    /// keeps the first. A raise may make room by forgetting the oldest chain that holds nothing back, because its update
    /// is the latest of its alert; the scan may not: a chain forgotten and learnt again from an older record moved
    /// forward would take that record for the latest and skip the newest one.
    /// </summary>
    private void SetChainLatest(uint idSeq, uint updateSeq, bool durable, bool evict)
    {
        for (int i = 0; i < _chainCount; i++)
        {
            Chain c = _chains[i];
            if (c.Id == idSeq)
            {
                if (updateSeq > c.Latest)
                {
                    c.Latest = updateSeq;
                    c.Durable = durable;
                    c.Settled = false;
                    c.SentAt = 0;
                }
                else if (updateSeq == c.Latest)
                {
                    c.Durable |= durable; // a copy the full policy moved in this boot
                }

                return;
            }
        }

        if (_chainCount == Chains)
        {
            ForgottenChains++;
            int victim = 0;
            while (victim < Chains && _chains[victim].HeldFrom != 0)
            {
                victim++;
            }

            if (!evict || victim == Chains)
            {
                return;
            }

            Chain forgotten = _chains[victim];
            Array.Copy(_chains, victim + 1, _chains, victim, Chains - 1 - victim);
            _chains[Chains - 1] = forgotten;
            _chainCount--;
        }

        Chain added = _chains[_chainCount];
        added.Id = idSeq;
        added.Latest = updateSeq;
        added.Durable = durable;
        added.Settled = false;
        added.HeldFrom = 0;
        added.NewPass();
        _chainCount++;
    }

    /// <summary>
    /// An older record of <paramref name="chain"/>'s alert, replaced by its latest update, is passed over. Unless that
    /// update was programmed whole in this boot or is acknowledged, it may be a write a power cut interrupted: readable
    /// now, and torn or faded when handed out or on a later boot. Until the gateway acknowledges it, acknowledgements
    /// stay below this record, so the alert is never acknowledged unsent (docs/flash-queue.md, "Weak cells").
    /// </summary>
    private void Skip(Chain chain, uint seq)
    {
        if (_entry.OriginalSeq < chain.Latest && _entry.OriginalSeq > chain.Fallback)
        {
            chain.Fallback = _entry.OriginalSeq;
        }

        if (!chain.Durable && !chain.Settled && (chain.HeldFrom == 0 || seq < chain.HeldFrom))
        {
            chain.HeldFrom = seq;
        }
    }

    /// <summary>
    /// At the end of the queue: an alert whose older records are held back and whose latest update was not handed out
    /// in this pass (it read torn, or the full policy dropped it) falls back to its newest older record seen. Returns
    /// whether the reader must go over the queue again to hand those out.
    /// </summary>
    private bool FallBack()
    {
        bool again = false;
        for (int i = 0; i < _chainCount; i++)
        {
            Chain c = _chains[i];
            if (c.HeldFrom == 0 || c.SentAt != 0 || c.FellBack)
            {
                continue;
            }

            c.FellBack = true;
            if (c.Fallback != 0)
            {
                c.Latest = c.Fallback;
                c.Durable = false;
                again = true;
            }
            else
            {
                c.HeldFrom = 0; // nothing of the alert left to read: holding on would only stop the queue draining
            }
        }

        return again;
    }

    /// <summary>
    /// A drop marker is handed out: an alert whose latest update it counts (the full policy dropped the update) is told
    /// of by the marker, so its older records are neither held back nor sent in its place.
    /// </summary>
    private void SettleDropped()
    {
        for (int i = 0; i < _chainCount; i++)
        {
            Chain c = _chains[i];
            if (c.Latest >= _entry.DroppedFirstSeq && c.Latest <= _entry.DroppedLastSeq && c.SentAt == 0)
            {
                c.Settled = true;
                c.HeldFrom = 0;
            }
        }
    }

    /// <summary>Ends the holds of alerts whose fallback record did not read either: nothing of them is left to send.</summary>
    private void ReleaseUnfound()
    {
        for (int i = 0; i < _chainCount; i++)
        {
            Chain c = _chains[i];
            if (c.FellBack && c.SentAt == 0)
            {
                c.HeldFrom = 0;
            }
        }
    }

    /// <summary>
    /// Whether the entry just read is a record this firmware can send: a known kind and a record that
    /// <see cref="AlertRecordView.Attach"/> accepts. (An unreadable update is not taken to replace the older records
    /// of its alert: they stay readable and are sent.)
    /// </summary>
    private AlertError Check(byte[] payload)
    {
        int start = _entry.Kind == KindUpdate ? 4 : 0;
        if ((_entry.Kind != KindAlert && _entry.Kind != KindUpdate) || _entry.Length <= start)
        {
            return AlertError.RecordMalformed;
        }

        return _view.Attach(payload, start, _entry.Length - start);
    }

    /// <summary>The id of the alert the entry just read belongs to (its own number, or the one an update names).</summary>
    private uint IdOf(byte[] record) => _entry.Kind == KindUpdate ? Le.U32(record, 0) : _entry.OriginalSeq;

    /// <summary>The chain of updates the entry just read belongs to, if its alert has one.</summary>
    private Chain? ChainOf(byte[] record)
    {
        if (_entry.Type != EntryType.Item || (_entry.Kind == KindUpdate && _entry.Length < 4))
        {
            return null;
        }

        // Sequence numbers as first appended: stable when the full policy moves entries forward.
        uint idSeq = IdOf(record);
        for (int i = 0; i < _chainCount; i++)
        {
            if (_chains[i].Id == idSeq)
            {
                return _chains[i];
            }
        }

        return null;
    }

    /// <summary>Encodes the alert that reports a drop marker into <paramref name="record"/>; returns its length.</summary>
    private int EncodeDropped(byte[] record)
    {
        _dropped.Reset();
        _dropped.Code = DroppedCode;
        _dropped.Severity = Severity.Warning;
        _dropped.Text = _entry.DroppedCount + " alerts dropped while the device queue was full (sequence numbers " + _entry.DroppedFirstSeq + " to " + _entry.DroppedLastSeq + ").";
        _dropped.AddValue("dropped", _entry.DroppedCount, 0);
        return AlertRecord.Encode(_dropped, _wall.UnixMs, _clock.UptimeMs, _boot, record, 0);
    }

    /// <summary>
    /// Encodes the alert that stands for an unreadable record into <paramref name="record"/> (over the record's bytes,
    /// after reading what it reports from them); returns its length.
    /// </summary>
    private int EncodeUnreadable(byte[] record, AlertError error)
    {
        int version = _entry.Length > (_entry.Kind == KindUpdate ? 4 : 0) ? record[_entry.Kind == KindUpdate ? 4 : 0] : -1;
        if (_entry.Seq > _unreadableThrough)
        {
            _unreadableThrough = _entry.Seq;
            Unreadable++;
        }

        _dropped.Reset();
        _dropped.Code = UnreadableCode;
        _dropped.Severity = _entry.Priority <= (byte)Severity.Critical ? (Severity)_entry.Priority : Severity.Warning;
        _dropped.Text = "Queue entry " + _entry.OriginalSeq + " (kind " + _entry.Kind + ", record version " + version + ", " + _entry.Length
            + " bytes) cannot be read by this firmware and was dropped: " + AlertErrors.Describe(error);
        _dropped.AddValue("dropped", 1, 0);
        return AlertRecord.Encode(_dropped, _wall.UnixMs, _clock.UptimeMs, _boot, record, 0);
    }

    private static void PutI64(byte[] b, int o, long v)
    {
        Le.PutU32(b, o, (uint)v);
        Le.PutU32(b, o + 4, (uint)(v >> 32));
    }

    /// <summary>A coalesced alert: its id and the original sequence number of its latest update.</summary>
    private sealed class Chain
    {
        public uint Id;
        public uint Latest;
        public bool Durable;
        public bool Settled;

        // Acknowledgements stay below this sequence number (0: none held back).
        public uint HeldFrom;

        // This pass: where the latest was handed out, and if a second sweep did it, the last number the first handed out.
        public uint SentAt;
        public uint SentAfter;
        public uint SentOrder;
        public uint Fallback;
        public bool FellBack;

        public void NewPass()
        {
            SentAt = 0;
            SentAfter = 0;
            SentOrder = 0;
            Fallback = 0;
            FellBack = false;
        }
    }

    private sealed class Slot
    {
        public string Code = string.Empty;
        public AlertState State;
        public Severity Severity;
        public uint IdSeq;
        public uint LatestSeq;
        public bool HandedOut;
        public uint Count;
        public long FirstUnix;
        public long FirstUptime;
        public long LastUnix;
        public long LastUptime;
        public long WrittenAtUptime;
    }
}
