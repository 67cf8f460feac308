using System;

namespace EdgeMail.Firmware.Storage;

/// <summary>
/// A power-safe FIFO of entries on raw NOR flash: append (durable when it returns), read in order from a
/// cursor that survives reboot, acknowledge up to a sequence number, recover on mount. Sectors form a
/// ring; every record carries its length twice and a CRC-32; a unit is never programmed twice between
/// erases, so it runs on encrypted and ECC flash. Mount reads one small header per sector and scans
/// only the newest sector, so its cost does not depend on how many entries are stored. The layout and
/// the recovery rules are in docs/flash-queue.md.
/// </summary>
public sealed partial class FlashQueue
{
    /// <summary>Bytes of the header every record carries (length, its complement, sequence, type, CRC-32).</summary>
    public const int RecordOverhead = 16;

    private const int SectorHeaderBytes = 24;
    private const byte Magic0 = 0x45; // 'E'
    private const byte Magic1 = 0x51; // 'Q'
    private const byte LayoutVersion = 1;
    private const byte TypeItem = 1;
    private const byte TypeAck = 2;
    private const byte TypeDropped = 3;
    private const byte FlagRelocated = 1;
    private const int RelocationPrefix = 4;
    private const int DroppedPayload = 12;
    private const int UsedThroughPayload = 4;
    private const byte MarkerPriority = 3;
    private const int Priorities = 4;

    // What the first valid record of the head is (ScanHead): a reclaim's new sector starts with a moved entry or a marker.
    private const int FirstNone = 0;
    private const int FirstMoved = 1;
    private const int FirstMarker = 2;
    private const int FirstOther = 3;

    private readonly IFlashDevice _device;
    private readonly FullPolicy _policy;
    private readonly int _sectorBytes;
    private readonly int _sectorCount;
    private readonly int _pageBytes;
    private readonly int _unit;
    private readonly int _dataStart;
    private readonly int _ackReserve;
    private readonly int _entryLimit;
    private readonly byte[] _hdr = new byte[SectorHeaderBytes];
    private readonly byte[] _rec = new byte[RecordOverhead];
    private readonly byte[] _small = new byte[DroppedPayload];
    private readonly byte[] _chunk = new byte[64];
    private readonly byte[] _stage;
    private readonly int[] _pending = new int[Priorities];

    // Durable state, rebuilt by Mount.
    private uint _epoch;
    private int _head;
    private uint _headSectorSeq;
    private int _writeOffset;
    private int _tail;
    private uint _nextSeq;
    private uint _ackedThrough;
    private int _erasedSector = -1;
    private bool _mounted;
    private bool _pendingKnown;

    // Where the head's entries would end if all were moved to a fresh sector (each moved entry carries its
    // original sequence number, 4 bytes more): appends keep room for that and a marker, so a reclaim never
    // has to drop an entry the policy keeps.
    private int _headMovedEnd;

    // After a mount, the first record programmed in the head is an acknowledgement with these exact bytes,
    // at a position the visible flash determines: if power fails before any bit of it changes, the next
    // mount writes the same bytes at the same place, and no unit is ever programmed with two contents.
    private bool _recoveryPending;
    private uint _recoveryAck;

    // The head's last record at mount, if it is an entry or a marker with nothing after it: a cut may have left it
    // weak. Before the reader first hands it out, its number is made durable (WriteUsedThrough) unless a record of
    // a higher number was programmed in this boot: once the number may have left the device, a later mount must not
    // reuse it even if the record fades.
    private uint _weakSeq;

    private bool _headRecovered;

    // Results of the last ScanHead.
    private int _scanEnd;
    private int _scanDirtyEnd;
    private bool _scanTorn;
    private int _scanRecords;
    private int _scanFirst;
    private bool _scanCommitted;

    // Reader state (RAM only: after a reboot the reader starts again after the last acknowledgement).
    private bool _readerPositioned;
    private int _readSector;
    private uint _readSectorSeq;
    private int _readOffset;
    private uint _sentThrough;
    private uint _nextSeqAtReaderEnd;

    // The highest sequence number the reader has handed out since the mount (Rewind does not lower it), and the
    // drop marker that is the head's last record, if one is: a marker is never written right after a marker
    // already handed out, or the reader would merge it into the run the uplink sent, changing that alert's id
    // and count. An acknowledgement record goes between them.
    private uint _handedOutHigh;
    private uint _lastMarkerSeq;

    // Fields of the last sector header read by ReadSectorHeader.
    private uint _hSeq;
    private uint _hEpoch;
    private uint _hFirst;
    private uint _hAcked;

    // Staging of the record being programmed: bytes of one page, flushed at page ends.
    private int _stageAddress;
    private int _stageFill;

    /// <summary>Creates a queue over a flash region; call <see cref="Mount"/> before use.</summary>
    /// <param name="device">The flash region the queue owns entirely.</param>
    /// <param name="policy">What to do when full.</param>
    public FlashQueue(IFlashDevice device, FullPolicy policy = FullPolicy.DropLowestPriority)
    {
        if (device == null)
        {
            throw new ArgumentNullException(nameof(device));
        }

        FlashGeometry g = device.Geometry;
        if (g.SectorCount < 3)
        {
            throw new ArgumentException("The queue needs at least 3 sectors: one is always kept free to reclaim space.");
        }

        _device = device;
        _policy = policy;
        _sectorBytes = g.SectorBytes;
        _sectorCount = g.SectorCount;
        _pageBytes = g.PageBytes;
        _unit = g.ProgramUnit;
        _dataStart = RoundUp(SectorHeaderBytes, _unit);
        _stage = new byte[_pageBytes];
        _ackReserve = 2 * RoundUp(RecordOverhead, _unit);
        _entryLimit = _sectorBytes - _ackReserve;
        MaxPayload = _entryLimit - _dataStart - RecordOverhead - RelocationPrefix - DroppedPayload - RecordOverhead - (2 * _unit) - _pageBytes;
    }

    /// <summary>Largest payload one entry may carry, in bytes.</summary>
    public int MaxPayload { get; }

    /// <summary>Random number chosen when the flash was formatted; with a sequence number it names an entry forever.</summary>
    public uint Epoch => _epoch;

    /// <summary>Sequence number the next append will get.</summary>
    public uint NextSeq => _nextSeq;

    /// <summary>Every entry up to and including this sequence number is acknowledged.</summary>
    public uint AckedThrough => _ackedThrough;

    /// <summary>Sequence number of the last entry handed out by <see cref="TryRead"/> (or acknowledged).</summary>
    public uint HandedOutThrough => _sentThrough;

    /// <summary>Entries appended but not acknowledged (including markers and entries moved by the full policy).</summary>
    public uint Depth => _nextSeq - 1 - _ackedThrough;

    /// <summary>
    /// The entry the mount found last in the newest sector, with nothing written after it (0 when the last record
    /// there is not an entry). If power failed while it was written, its cells may read correctly now and not on a
    /// later boot (docs/flash-queue.md, "Weak cells"): a reader should not let it stand in for older entries
    /// before it is acknowledged itself.
    /// </summary>
    public uint LastEntryAtMount { get; private set; }

    /// <summary>
    /// Whether the last <see cref="Append"/> was dropped on arrival by the full policy: its sequence number is used, a
    /// drop marker counts it, and the entry itself is not on flash.
    /// </summary>
    public bool LastAppendDropped { get; private set; }

    /// <summary>Entries dropped by the full policy since mount.</summary>
    public long DroppedSinceMount { get; private set; }

    /// <summary>Sectors currently holding entries not yet reclaimed.</summary>
    public int LiveSectors => ((_head - _tail + _sectorCount) % _sectorCount) + 1;

    /// <summary>
    /// Finds the queue on flash and restores its state; formats blank or foreign flash. Reads one
    /// 24-byte header per sector and scans only the newest sector.
    /// </summary>
    /// <param name="epochIfFormatting">The epoch to use if the flash must be formatted (take it from a hardware random source).</param>
    /// <returns>True when an existing queue was found; false when the flash was formatted.</returns>
    public bool Mount(uint epochIfFormatting)
    {
        _mounted = false;
        _readerPositioned = false;
        _nextSeqAtReaderEnd = 0;
        _pendingKnown = false;
        _erasedSector = -1;
        _recoveryPending = false;
        LastEntryAtMount = 0;
        _weakSeq = 0;
        _lowestQueued = 0;
        DroppedSinceMount = 0;
        _handedOutHigh = 0;
        _lastMarkerSeq = 0;

        int head = -1;
        uint headSeq = 0;
        uint headFirst = 0;
        uint headAcked = 0;
        uint maxSeen = 0;
        int runStart = -1;
        int headRunStart = -1;
        bool prevValid = false;
        uint prevSeq = 0;
        uint prevEpoch = 0;
        bool firstValid = false;
        uint firstSeq = 0;
        uint firstEpoch = 0;
        for (int i = 0; i < _sectorCount; i++)
        {
            bool valid = ReadSectorHeader(i);
            if (valid)
            {
                if (!(prevValid && _hSeq == prevSeq + 1 && _hEpoch == prevEpoch))
                {
                    runStart = i;
                }

                if (_hSeq > maxSeen)
                {
                    maxSeen = _hSeq;
                }

                if (head < 0 || _hSeq > headSeq)
                {
                    // Keep the fields of the read that passed the check: a weak header may read differently next time.
                    head = i;
                    headSeq = _hSeq;
                    headRunStart = runStart;
                    _epoch = _hEpoch;
                    headFirst = _hFirst;
                    headAcked = _hAcked;
                }

                if (i == 0)
                {
                    firstValid = true;
                    firstSeq = _hSeq;
                    firstEpoch = _hEpoch;
                }
            }

            prevValid = valid;
            prevSeq = _hSeq;
            prevEpoch = _hEpoch;
        }

        if (head < 0)
        {
            Format(epochIfFormatting, maxSeen + 1);
            return false;
        }

        int live = head - headRunStart + 1;
        if (headRunStart == 0 && firstValid && prevValid && runStart != 0 && prevSeq + 1 == firstSeq && prevEpoch == firstEpoch && firstEpoch == _epoch)
        {
            live += _sectorCount - runStart; // the run wraps past the last sector
        }

        if (live > _sectorCount)
        {
            live = _sectorCount;
        }

        _head = head;
        _headSectorSeq = headSeq;
        _nextSeq = headFirst;
        _ackedThrough = headAcked;
        int oldest = (head - live + 1 + _sectorCount) % _sectorCount;
        _tail = oldest;
        ScanHead();
        _headRecovered = false;
        if (live == _sectorCount && HoldsUnacknowledged(oldest))
        {
            live = FinishOrUndoReclaim(oldest);
            oldest = (_head - live + 1 + _sectorCount) % _sectorCount;
        }

        _tail = FindSectorHolding(_ackedThrough + 1, oldest, live);
        if (!_headRecovered)
        {
            RecoverHead();
        }

        _sentThrough = _ackedThrough;
        _mounted = true;
        return true;
    }

    /// <summary>Erases the queue's identity and starts empty with a new epoch. Entries on flash are forgotten.</summary>
    /// <param name="epoch">The new epoch (take it from a hardware random source).</param>
    public void Format(uint epoch) => Format(epoch, _headSectorSeq + (uint)_sectorCount + 1);

    /// <summary>
    /// Appends one entry. When it returns, the entry is on flash and survives any power cut. When the
    /// queue is full the policy given to the constructor makes room, or throws <see cref="QueueFullException"/>.
    /// </summary>
    /// <param name="kind">Application-defined kind, returned by the reader.</param>
    /// <param name="priority">0 (lowest) to 2 (highest); the full policy drops low priorities first.</param>
    /// <param name="payload">Source bytes.</param>
    /// <param name="offset">Index of the first payload byte.</param>
    /// <param name="count">Payload length, at most <see cref="MaxPayload"/>.</param>
    /// <returns>The entry's sequence number.</returns>
    public uint Append(byte kind, byte priority, byte[] payload, int offset, int count)
    {
        EnsureMounted();
        if (count < 0 || count > MaxPayload)
        {
            throw new ArgumentOutOfRangeException(nameof(count), "Payload must be 0.." + MaxPayload + " bytes.");
        }

        if (priority >= MarkerPriority)
        {
            throw new ArgumentOutOfRangeException(nameof(priority), "Priority must be 0, 1 or 2.");
        }

        int pos = MakeRoom(RecordOverhead + count, priority);
        uint seq = _nextSeq;
        LastAppendDropped = pos < 0;
        if (pos < 0)
        {
            // Dropped on arrival (docs/flash-queue.md, "When full"): its number is used, and a marker counts it.
            Le.PutU32(_small, 0, 1);
            Le.PutU32(_small, 4, seq);
            Le.PutU32(_small, 8, seq);
            WriteRecord(HeaderSlot(_writeOffset), seq + 1, TypeDropped, MarkerPriority, 0, 0, _small, 0, _small, 0, DroppedPayload);
            _lastMarkerSeq = seq + 1;
            _nextSeq = seq + 2;
            _weakSeq = 0;
            DroppedSinceMount++;
            if (_pendingKnown)
            {
                _pending[MarkerPriority]++;
            }

            return seq;
        }

        WriteRecord(pos, seq, TypeItem, priority, kind, 0, _small, 0, payload, offset, count);
        _nextSeq = seq + 1;
        _weakSeq = 0; // a higher number is now durable
        _headMovedEnd = MovedEnd(_headMovedEnd, RelocationPrefix + count);
        if (priority < _lowestQueued)
        {
            _lowestQueued = priority;
        }

        if (_pendingKnown)
        {
            _pending[priority]++;
        }

        return seq;
    }

    /// <summary>
    /// Hands out the next entry after the last one handed out (or, after mount or <see cref="Rewind"/>,
    /// after the last acknowledged one) and copies its payload into <paramref name="buffer"/>.
    /// </summary>
    /// <param name="entry">Receives the entry's description.</param>
    /// <param name="buffer">Receives the payload; must have room for <see cref="MaxPayload"/> bytes.</param>
    /// <param name="offset">Index in <paramref name="buffer"/> of the first byte.</param>
    /// <returns>False when every entry has been handed out.</returns>
    public bool TryRead(QueueEntry entry, byte[] buffer, int offset)
    {
        EnsureMounted();
        if (entry == null || buffer == null)
        {
            throw new ArgumentNullException(entry == null ? nameof(entry) : nameof(buffer));
        }

        if (!_readerPositioned || SectorAge(_readSectorSeq) > SectorAge(SectorSeqOf(_tail)))
        {
            _readSector = _tail;
            _readSectorSeq = SectorSeqOf(_tail);
            _readOffset = _dataStart;
            _readerPositioned = true;
        }

        while (true)
        {
            int limit = _readSector == _head ? _writeOffset : _sectorBytes;
            int pos = _readOffset;
            int baseAddr = _readSector * _sectorBytes;
            int len = NextIntactHeader(baseAddr, ref pos, limit);
            if (len < 0)
            {
                if (_readSector == _head)
                {
                    _readOffset = pos;
                    _nextSeqAtReaderEnd = _nextSeq;
                    return false;
                }

                _readSector = Next(_readSector);
                _readSectorSeq++;
                _readOffset = _dataStart;
                continue;
            }

            int size = RoundUp(RecordOverhead + len, _unit);
            byte type = _rec[8];
            uint seq = Le.U32(_rec, 4);
            bool wanted = (type == TypeItem || type == TypeDropped) && seq > _sentThrough;
            if (!wanted)
            {
                // A torn record's extent is not trusted (see NextRecord).
                _readOffset = RecordCrcOk(baseAddr + pos, len) ? pos + size : NextPage(pos);
                continue;
            }

            bool relocated = (_rec[11] & FlagRelocated) != 0;
            uint state = Crc32.Update(Crc32.Seed, _rec, 0, 12);
            int body = baseAddr + pos + RecordOverhead;
            uint original = seq;
            int payloadLen = len;
            if (relocated)
            {
                _device.Read(body, _small, 0, RelocationPrefix);
                state = Crc32.Update(state, _small, 0, RelocationPrefix);
                original = Le.U32(_small, 0);
                body += RelocationPrefix;
                payloadLen -= RelocationPrefix;
            }

            byte[] target = type == TypeDropped ? _small : buffer;
            int targetOffset = type == TypeDropped ? 0 : offset;
            if (type == TypeDropped && payloadLen != DroppedPayload)
            {
                _readOffset = RecordCrcOk(baseAddr + pos, len) ? pos + size : NextPage(pos);
                continue;
            }

            if (payloadLen < 0 || payloadLen > MaxPayload)
            {
                // No record this queue writes is that long: a header read among a torn record's pages, whose own
                // check cannot pass (throwing for the caller's buffer would stop the reader at it for good).
                _readOffset = NextPage(pos);
                continue;
            }

            if (targetOffset + payloadLen > target.Length)
            {
                throw new ArgumentException("Buffer too small for a payload of " + payloadLen + " bytes.", nameof(buffer));
            }

            _device.Read(body, target, targetOffset, payloadLen);
            state = Crc32.Update(state, target, targetOffset, payloadLen);
            if (Crc32.Finish(state) != Le.U32(_rec, 12))
            {
                _readOffset = NextPage(pos);
                continue;
            }

            _readOffset = pos + size;
            _sentThrough = seq;
            entry.Seq = seq;
            entry.OriginalSeq = original;
            entry.Kind = _rec[10];
            entry.Priority = _rec[9];
            if (type == TypeDropped)
            {
                entry.Type = EntryType.Dropped;
                entry.Length = 0;
                entry.DroppedCount = Le.U32(_small, 0);
                entry.DroppedFirstSeq = Le.U32(_small, 4);
                entry.DroppedLastSeq = Le.U32(_small, 8);
                MergeFollowingMarkers(entry, baseAddr, limit);
            }
            else
            {
                entry.Type = EntryType.Item;
                entry.Length = payloadLen;
                entry.DroppedCount = 0;
            }

            if (_sentThrough > _handedOutHigh)
            {
                _handedOutHigh = _sentThrough;
            }

            if (_weakSeq != 0 && _sentThrough >= _weakSeq)
            {
                WriteUsedThrough();
            }

            return true;
        }
    }

    /// <summary>
    /// Folds the drop markers that directly follow the one just read (in the same sector) into it: a full queue
    /// that drops new entries on arrival writes one marker each, and the reader reports a run of them as one. A run
    /// never grows once handed out (see _lastMarkerSeq), so reading it again after a Rewind or a reboot gives the
    /// same entry: the same last sequence number (the alert's id) and the same count.
    /// </summary>
    private void MergeFollowingMarkers(QueueEntry entry, int baseAddr, int limit)
    {
        while (true)
        {
            int pos = _readOffset;
            if (NextIntactHeader(baseAddr, ref pos, limit) != DroppedPayload || _rec[8] != TypeDropped || (_rec[11] & FlagRelocated) != 0)
            {
                return;
            }

            uint seq = Le.U32(_rec, 4);
            int size = RoundUp(RecordOverhead + DroppedPayload, _unit);
            _device.Read(baseAddr + pos + RecordOverhead, _small, 0, DroppedPayload);
            uint state = Crc32.Update(Crc32.Update(Crc32.Seed, _rec, 0, 12), _small, 0, DroppedPayload);
            if (seq <= entry.Seq || Crc32.Finish(state) != Le.U32(_rec, 12))
            {
                return;
            }

            uint first = Le.U32(_small, 4);
            uint last = Le.U32(_small, 8);
            entry.DroppedCount += Le.U32(_small, 0);
            entry.DroppedFirstSeq = first < entry.DroppedFirstSeq ? first : entry.DroppedFirstSeq;
            entry.DroppedLastSeq = last > entry.DroppedLastSeq ? last : entry.DroppedLastSeq;
            entry.Seq = seq;
            entry.OriginalSeq = seq;
            _sentThrough = seq;
            _readOffset = pos + size;
        }
    }

    /// <summary>Makes the reader hand out again everything not acknowledged (after a lost connection).</summary>
    public void Rewind()
    {
        EnsureMounted();
        _readerPositioned = false;
        _nextSeqAtReaderEnd = 0;
        _sentThrough = _ackedThrough;
    }

    /// <summary>
    /// Acknowledges every entry up to and including <paramref name="seq"/>: they will not be handed out
    /// again, and their sectors may be reused. Durable when it returns.
    /// </summary>
    /// <param name="seq">Sequence number of the last entry the receiver owns.</param>
    public void Acknowledge(uint seq)
    {
        EnsureMounted();
        // Acknowledging the last entry handed out when nothing follows also covers numbers that no entry
        // kept (skipped after a torn write), so the queue reads as empty.
        if (seq == _sentThrough && _nextSeqAtReaderEnd == _nextSeq)
        {
            seq = _nextSeq - 1;
        }

        if (seq <= _ackedThrough)
        {
            return;
        }

        if (seq >= _nextSeq)
        {
            throw new ArgumentOutOfRangeException(nameof(seq), "Cannot acknowledge " + seq + ": the last entry appended is " + (_nextSeq - 1) + ".");
        }

        _ackedThrough = seq;
        if (_sentThrough < seq)
        {
            _sentThrough = seq;
        }

        _pendingKnown = false;

        // The end of every sector is kept for acknowledgements, so a full queue can still drain.
        int ackBytes = RoundUp(RecordOverhead, _unit);
        int at = HeaderSlot(_writeOffset);
        if (_recoveryPending)
        {
            at = HeaderSlot(at + ackBytes);
        }

        // With no sector free (an image from earlier firmware), room is kept for the drop marker that frees the oldest:
        // unless this acknowledgement frees it, it waits in RAM rather than take that room.
        if (FreeSectors() < 1)
        {
            ReclaimAcknowledged();
        }

        if (at + ackBytes <= _sectorBytes && KeepsRoomToFreeTail(at + ackBytes))
        {
            WritePendingRecovery();
            WriteAckRecord(seq);
            return;
        }

        // Otherwise the acknowledgement goes into a new sector. The sectors it covers are free again; if
        // only the spare is, the oldest sector's unacknowledged entries move forward (nothing is dropped
        // for an acknowledgement) and the reclaim's closing record is this acknowledgement.
        ReclaimAcknowledged();
        if (FreeSectors() == 1 && CollectTail(keepAll: true) == CollectedIntoNewSector)
        {
            return;
        }

        if (FreeSectors() >= 2)
        {
            OpenSector(Next(_head), _headSectorSeq + 1);
            WriteAckRecord(seq);
        }

        // Only on an image whose ring has no spare sector (left by earlier firmware, see above), or whose oldest sector
        // cannot be moved whole: the acknowledgement stays in RAM until the next sector opens. A power cut before that
        // hands the batch out again; the receiver drops the duplicates.
    }

    /// <summary>
    /// Work worth doing while idle: erases the sector the next append will need, so that append does not
    /// stall for a sector erase (tens of milliseconds on SPI NOR).
    /// </summary>
    public void Maintain()
    {
        EnsureMounted();
        ReclaimAcknowledged();
        int next = Next(_head);
        if (_erasedSector != next && FreeSectors() >= 2)
        {
            _device.EraseSector(next);
            _erasedSector = next;
        }
    }

    private void Format(uint epoch, uint sectorSeq)
    {
        _epoch = epoch;
        _head = 0;
        _tail = 0;
        _nextSeq = 1;
        _ackedThrough = 0;
        _sentThrough = 0;
        _readerPositioned = false;
        _pendingKnown = true;
        Array.Clear(_pending, 0, Priorities);
        _erasedSector = -1;
        _recoveryPending = false;
        LastEntryAtMount = 0;
        _weakSeq = 0;
        _lowestQueued = 0;
        _handedOutHigh = 0;
        OpenSector(0, sectorSeq);
        WriteAckRecord(0); // never header-only: a mount rewrites such a head, costing an erase per boot
        _mounted = true;
    }

    /// <summary>
    /// Scans the head sector: the end of its last valid record, anything written after it (a torn write),
    /// the highest sequence number, the latest acknowledgement, where its entries would end if moved, and
    /// whether it is the new sector of a reclaim (moved entries or a marker first) whose closing
    /// acknowledgement was written. Only reads.
    /// </summary>
    private void ScanHead()
    {
        int baseAddr = _head * _sectorBytes;
        int pos = _dataStart;
        int lastValidEnd = _dataStart;
        int dirtyPages = 0;
        bool torn = false;
        bool tornLast = false;
        int records = 0;
        int first = FirstNone;
        bool committed = false;
        int movedEnd = _dataStart;
        uint lastEntry = 0;
        uint lastNumbered = 0;
        int len;
        while ((len = NextIntactHeader(baseAddr, ref pos, _sectorBytes)) >= 0)
        {
            int size = RoundUp(RecordOverhead + len, _unit);
            uint seq = Le.U32(_rec, 4);
            byte type = _rec[8];
            bool moved = (_rec[11] & FlagRelocated) != 0;
            if (!RecordCrcOk(baseAddr + pos, len))
            {
                // A torn record whose header survived: its sequence number may have been seen, never reuse it.
                torn = true;
                tornLast = true;
                if (type != TypeAck && seq >= _nextSeq && seq - _nextSeq < 0x10000000u)
                {
                    _nextSeq = seq + 1;
                }

                // Writing resumes past all of it, so the torn cells are never programmed; but records are looked for
                // from the next page on: a boot that read this header bad resumed writing inside its extent.
                int extentEnd = NextPage(pos + size - 1);
                dirtyPages = extentEnd > dirtyPages ? extentEnd : dirtyPages;
                pos = NextPage(pos);
                continue;
            }

            tornLast = false;
            records++;
            if (first == FirstNone)
            {
                first = type == TypeDropped ? FirstMarker : type == TypeItem && moved ? FirstMoved : FirstOther;
            }

            if (type == TypeAck)
            {
                if (seq > _ackedThrough)
                {
                    _ackedThrough = seq;
                }

                // A used-through record (WriteUsedThrough): the record that held that number may have faded
                // since, and its number may have been handed out.
                if (len == UsedThroughPayload)
                {
                    _device.Read(baseAddr + pos + RecordOverhead, _small, 0, UsedThroughPayload);
                    uint used = Le.U32(_small, 0);
                    if (used >= _nextSeq && used - _nextSeq < 0x10000000u)
                    {
                        _nextSeq = used + 1;
                    }
                }

                committed |= !torn && first != FirstOther;
            }
            else if (seq >= _nextSeq)
            {
                _nextSeq = seq + 1;
            }

            if (type == TypeItem)
            {
                movedEnd = MovedEnd(movedEnd, len + (moved ? 0 : RelocationPrefix));
            }

            lastEntry = type == TypeItem ? seq : 0;
            lastNumbered = type == TypeAck ? 0 : seq;
            pos += size;
            lastValidEnd = pos;
        }

        int dirtyEnd = LastNonBlank(baseAddr, lastValidEnd);
        _scanEnd = lastValidEnd;
        _scanDirtyEnd = dirtyPages > dirtyEnd ? dirtyPages : dirtyEnd;
        _scanTorn = torn || dirtyEnd > lastValidEnd || dirtyPages > lastValidEnd;
        _scanRecords = records;
        _scanFirst = first;
        _scanCommitted = committed;
        // Only a torn record after the last valid one shows that record completed; one before it does not (a boot that
        // read the torn header bad wrote after it, and its last record may be the one a later cut left weak).
        LastEntryAtMount = tornLast ? 0 : lastEntry;
        _weakSeq = tornLast ? 0 : lastNumbered;
        _headMovedEnd = movedEnd;
    }

    /// <summary>Whether the oldest live sector still holds entries nobody acknowledged (its successor's first number is above the next one owed).</summary>
    private bool HoldsUnacknowledged(int oldest)
    {
        int next = Next(oldest);
        return next != _head && ReadSectorHeader(next) && _hEpoch == _epoch && _hFirst > _ackedThrough + 1;
    }

    /// <summary>
    /// Every sector holds a live header and the oldest still holds unacknowledged entries: power failed
    /// inside a reclaim (docs/flash-queue.md, "When full"). If the new sector (the head) holds its closing
    /// acknowledgement, the moved entries and the marker are complete: close it again with a record
    /// programmed in this boot, then erase the victim. Otherwise the victim still holds everything: erase
    /// the new sector and continue in the one before. An image whose head starts with neither a moved
    /// entry nor a marker is the older Reject policy's use of the spare for acknowledgements: left as it is.
    /// </summary>
    /// <returns>The number of live sectors afterwards.</returns>
    private int FinishOrUndoReclaim(int victim)
    {
        if (_scanFirst == FirstOther)
        {
            return _sectorCount;
        }

        if (_scanCommitted)
        {
            // The closing record read now may be weak; the one written here is not, so a cut inside the
            // erase below cannot make a later boot undo a reclaim whose victim is half erased.
            RecoverHead();
            _headRecovered = true;
            WritePendingRecovery();
            _device.EraseSector(victim);
            _erasedSector = victim;
            _tail = Next(victim);
            return _sectorCount - 1;
        }

        _device.EraseSector(_head);
        _erasedSector = _head;
        _head = (_head - 1 + _sectorCount) % _sectorCount;
        _headSectorSeq--;
        ReadSectorHeader(_head);
        _nextSeq = _hFirst;
        _ackedThrough = _hAcked;
        ScanHead();
        return _sectorCount - 1;
    }

    /// <summary>
    /// Decides where to write next in the head after a mount, from what ScanHead found (docs/flash-queue.md,
    /// "Mount and recovery"). Programs only the head's header again (after erasing it) or one acknowledgement
    /// whose bytes and place follow from what is visible.
    /// </summary>
    private void RecoverHead()
    {
        if (_scanTorn)
        {
            _nextSeq++; // the torn append may have been handed out under this number once
        }

        if (_nextSeq <= _ackedThrough)
        {
            // A torn write whose number was skipped and acknowledged may no longer be visible.
            _nextSeq = _ackedThrough + 1;
        }

        if (_scanRecords == 0 && (!_scanTorn || LiveSectors > 1))
        {
            // No record was completed after the header before the last power loss: its cells may be weakly
            // programmed. As the only live sector it holds nothing: continue in a fresh one (if its header fades,
            // the run just starts after it; erasing the only valid header would let a cut inside that erase format
            // the queue with a new epoch). Behind older sectors it is the link that chains them to the head: if it
            // were left weak and faded, they would drop out of the ring with their entries. So erase and rewrite
            // it with the same values, also when a torn write follows the header (its number is skipped in the new
            // header): a cut inside that erase may leave the header readable over cells that take no program until
            // erased, and the next mount then erases again rather than writing after the torn cells.
            if (LiveSectors == 1)
            {
                OpenSector(Next(_head), _headSectorSeq + 1);
            }
            else
            {
                uint sectorSeq = _headSectorSeq;
                _device.EraseSector(_head);
                WriteSectorHeader(_head, sectorSeq);
                _writeOffset = _dataStart;
                _headMovedEnd = _dataStart;
            }

            // And a record after it, so the next mount finds more than a header and erases nothing.
            WriteAckRecord(_ackedThrough);
            return;
        }

        if (_scanTorn && ContinueInNewSector(mayMoveOldest: true))
        {
            return;
        }

        // The write that followed the last valid record, if power failed inside it before anything became
        // visible, touched at most the rest of the page it started in (later pages are written only after
        // the first one completed, and that shows): resume on the page after it.
        int resume = NextPage(HeaderSlot(_scanEnd));
        if (_scanTorn && _scanDirtyEnd > _scanEnd && NextPage(_scanDirtyEnd - 1) > resume)
        {
            resume = NextPage(_scanDirtyEnd - 1);
        }

        _writeOffset = resume < _sectorBytes ? resume : _sectorBytes;
        _recoveryAck = _ackedThrough;
        _recoveryPending = true;
        if (_scanTorn)
        {
            // Pin the place past the torn cells at once: they may read erased on a later boot.
            WritePendingRecovery();
        }
    }

    /// <summary>
    /// Continues in a fresh sector, so nothing more is programmed in the head: after a torn write, whose cells may read
    /// erased on a later boot (if the record pinning the place past them were itself cut with nothing visible, that boot
    /// would see clean flash, resume inside the torn write's pages and reach cells both cuts touched; docs/flash-queue.md,
    /// "Mount and recovery"); and to pin a handed-out number when the head has no slot left for a used-through record
    /// (the new sector's header names the next number). A fresh sector is erased before every try, so a cut there leaves
    /// nothing to trip over. With only the spare free, the oldest sector moves into it whole, as for an acknowledgement,
    /// if <paramref name="mayMoveOldest"/>: not while the reader is handing entries out, as moved entries come again.
    /// </summary>
    /// <returns>Whether writing continues in a new head.</returns>
    private bool ContinueInNewSector(bool mayMoveOldest)
    {
        if (mayMoveOldest && FreeSectors() == 1 && CollectTail(keepAll: true) == CollectedIntoNewSector)
        {
            return true;
        }

        if (FreeSectors() < 2)
        {
            return false;
        }

        OpenSector(Next(_head), _headSectorSeq + 1);
        WriteAckRecord(_ackedThrough);
        return true;
    }

    /// <summary>Writes the first record after a mount (see _recoveryPending) if it is still owed and fits in the head.</summary>
    private void WritePendingRecovery()
    {
        if (_recoveryPending && HeaderSlot(_writeOffset) + RoundUp(RecordOverhead, _unit) <= _sectorBytes)
        {
            WriteAckRecord(_recoveryAck);
        }

        _recoveryPending = false;
    }

    /// <summary>
    /// Records that every number up to the one before <see cref="NextSeq"/> is used: an acknowledgement of the
    /// acknowledged-through number whose 4-byte payload is that number, programmed after the mount's recovery record
    /// (which keeps the exact bytes invariant 1 needs) and before the reader first hands out the record a cut may have
    /// left weak. It takes a slot below the ones kept for acknowledgements; with none left the queue continues in a new
    /// sector, whose header pins the number (with only the spare free, the number stays unpinned).
    /// </summary>
    private void WriteUsedThrough()
    {
        _weakSeq = 0;
        int at = HeaderSlot(_writeOffset);
        if (_recoveryPending)
        {
            at = HeaderSlot(at + RoundUp(RecordOverhead, _unit));
        }

        int end = at + RoundUp(RecordOverhead + UsedThroughPayload, _unit);
        if (end > _entryLimit || !KeepsRoomToFreeTail(end))
        {
            ContinueInNewSector(mayMoveOldest: false);
            return;
        }

        WritePendingRecovery();
        Le.PutU32(_small, 0, _nextSeq - 1);
        WriteRecord(HeaderSlot(_writeOffset), _ackedThrough, TypeAck, 0, 0, 0, _small, 0, _small, 0, UsedThroughPayload);
    }

    /// <summary>
    /// Returns where a record of <paramref name="bytes"/> (header included) goes, opening or reclaiming sectors as
    /// needed; or -1 when the full policy drops the new entry itself (then a drop marker fits in the head).
    /// </summary>
    private int MakeRoom(int bytes, int priority)
    {
        int size = RoundUp(bytes, _unit);
        int ackBytes = RoundUp(RecordOverhead, _unit);
        int markerBytes = RoundUp(RecordOverhead + DroppedPayload, _unit);

        // A full queue takes nothing below the lowest priority it holds: room freed by dropping entries of a
        // priority goes to that priority or higher. (Letting a lower one in would make the next entry of a higher
        // priority move the whole ring to reach it.) The counts are those of the last reclaim, or exact.
        bool dropNew = _policy == FullPolicy.DropLowestPriority && FreeSectors() <= 1 && priority < _lowestQueued;
        // Each collection frees the lowest priority in one sector; in the worst case every priority
        // needs a full turn of the ring before enough room is free.
        for (int attempt = 0; attempt <= (Priorities + 1) * _sectorCount; attempt++)
        {
            int pos = HeaderSlot(_writeOffset);
            if (_recoveryPending)
            {
                pos = HeaderSlot(pos + ackBytes);
            }

            int markerAt = MarkerSlot();
            bool markerFits = markerAt + markerBytes <= _entryLimit && KeepsRoomToFreeTail(markerAt + markerBytes);

            if (dropNew && markerFits)
            {
                WriteBeforeMarker();
                return -1;
            }

            // With DropLowestPriority an append also keeps room for its sector to move whole with a marker.
            if (!dropNew && pos + size <= _entryLimit && (_policy != FullPolicy.DropLowestPriority || MovedEnd(MovedEnd(_headMovedEnd, RelocationPrefix + bytes - RecordOverhead), DroppedPayload) <= _entryLimit)
                && KeepsRoomToFreeTail(pos + size))
            {
                WritePendingRecovery();
                return HeaderSlot(_writeOffset);
            }

            dropNew |= OpenNextSector(priority, markerFits);
        }

        throw new InvalidOperationException("No room for a record of " + bytes + " bytes after reclaiming every sector.");
    }

    /// <summary>
    /// Whether the head's last record is a drop marker the reader has handed out and that is not acknowledged: a
    /// marker written right after it would join its run on the next read (docs/flash-queue.md, "When full").
    /// </summary>
    private bool MarkerNeedsSeparator() => _lastMarkerSeq > _ackedThrough && _lastMarkerSeq <= _handedOutHigh;

    /// <summary>
    /// Where a drop marker written next goes in the head: after the mount's pending recovery record and the acknowledgement
    /// that separates it from a marker handed out (<see cref="WriteBeforeMarker"/> writes them). Reckoned before either is
    /// written, so it allows for both even when the recovery record makes the separator needless.
    /// </summary>
    private int MarkerSlot()
    {
        int ackBytes = RoundUp(RecordOverhead, _unit);
        int at = HeaderSlot(_writeOffset);
        if (_recoveryPending)
        {
            at = HeaderSlot(at + ackBytes);
        }

        return MarkerNeedsSeparator() ? HeaderSlot(at + ackBytes) : at;
    }

    /// <summary>Writes what goes before a drop marker (<see cref="MarkerSlot"/>): the pending recovery record, then the separator if still needed.</summary>
    private void WriteBeforeMarker()
    {
        WritePendingRecovery();
        if (MarkerNeedsSeparator())
        {
            WriteAckRecord(_ackedThrough);
        }
    }

    private void ReclaimAcknowledged()
    {
        while (_tail != _head)
        {
            // A header that does not read back as written (a weak cell) frees nothing.
            int next = Next(_tail);
            if (!ReadSectorHeader(next) || _hSeq != SectorSeqOf(next) || _hEpoch != _epoch || _hFirst > _ackedThrough + 1)
            {
                break;
            }

            _tail = Next(_tail);
        }
    }

    /// <summary>Finds, by binary search over the live sectors' headers, the last one whose first sequence number is at most <paramref name="seq"/>.</summary>
    private int FindSectorHolding(uint seq, int oldest, int live)
    {
        int lo = 0;
        int hi = live - 1;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) / 2;
            if (ReadSectorHeader((oldest + mid) % _sectorCount) && _hEpoch == _epoch && _hFirst <= seq)
            {
                lo = mid;
            }
            else
            {
                hi = mid - 1;
            }
        }

        return (oldest + lo) % _sectorCount;
    }

    private void EnsureMounted()
    {
        if (!_mounted)
        {
            throw new InvalidOperationException("Mount the queue first.");
        }
    }
}
