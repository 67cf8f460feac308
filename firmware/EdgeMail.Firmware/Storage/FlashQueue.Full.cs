using System;

namespace EdgeMail.Firmware.Storage;

/// <summary>What the queue does when it runs out of free sectors (docs/flash-queue.md, "When full").</summary>
public sealed partial class FlashQueue
{
    private const int CollectedNothing = 0;
    private const int CollectedVictimFreed = 1;
    private const int CollectedIntoNewSector = 2;

    // The lowest priority queued when last counted; acknowledgements can only raise it, so between counts it
    // is a lower bound (0 after a mount).
    private int _lowestQueued;

    // Results of the last PlanReclaim.
    private bool _planFits;
    private int _planMoved;
    private int _planDropped;

    // Where a reclaim reads a record it moves (grown to the largest moved so far).
    private byte[]? _copy;

    // What the drop marker being assembled counts (CountDropped).
    private uint _dropCount;
    private uint _dropFirst;
    private uint _dropLast;
    private uint _dropEntries;

    /// <summary>
    /// Makes room for an entry of <paramref name="priority"/>: opens a free sector, or reclaims the oldest.
    /// With DropLowestPriority, returns true when the new entry is itself what the policy drops: its priority is
    /// the lowest queued (or lower), and the oldest sector holds nothing of that priority to drop, so reclaiming
    /// it would only move entries of higher priority around the ring. Only if even the marker that counts it does
    /// not fit in the head is a sector reclaimed first, the ordinary way.
    /// </summary>
    private bool OpenNextSector(int priority, bool markerFits)
    {
        ReclaimAcknowledged();
        if (FreeSectors() >= 2)
        {
            OpenSector(Next(_head), _headSectorSeq + 1);
            return false;
        }

        if (_policy == FullPolicy.Reject)
        {
            throw new QueueFullException("Alert queue full: " + Depth + " entries wait for acknowledgement; nothing was dropped.");
        }

        if (_policy == FullPolicy.DropLowestPriority)
        {
            int lowest = LowestQueuedPriority();
            bool dropNew = priority < lowest && lowest < MarkerPriority;
            if (priority == lowest)
            {
                PlanReclaim(_tail, lowest, 0);
                dropNew = _planDropped == 0;
            }

            if (dropNew)
            {
                if (!markerFits)
                {
                    FreeOldest();
                }

                return true;
            }
        }

        FreeOldest();
        return false;
    }

    /// <summary>
    /// Frees the oldest sector for the full policy: reclaimed into the spare, or, in a ring with no sector free (left by
    /// earlier firmware), dropped where it is, which makes it the spare (the caller then tries again).
    /// </summary>
    private void FreeOldest()
    {
        if (FreeSectors() < 1)
        {
            FreeTailWithoutSpare();
            return;
        }

        CollectTail(keepAll: false);
    }

    /// <summary>
    /// Frees the oldest sector of a ring with no sector free, which earlier firmware could leave and a mount keeps as it is
    /// (docs/flash-queue.md, "Images written by earlier firmware"). With no erased sector nothing can move, so every
    /// unacknowledged entry in it is dropped whatever its priority: first the marker that counts them goes into the head,
    /// then the sector is erased. A cut in between leaves them counted and still queued, never gone uncounted. Writes in
    /// the head keep room for that marker while no sector is free (KeepsRoomToFreeTail), so this throws only on an image
    /// whose head had less when it was mounted, or after cuts used that room up.
    /// </summary>
    private void FreeTailWithoutSpare()
    {
        int victim = _tail;
        int victimBase = victim * _sectorBytes;
        BeginDropCount();
        int pos = _dataStart;
        while (NextRecord(victimBase, ref pos, _sectorBytes))
        {
            uint seq = Le.U32(_rec, 4);
            if (_rec[8] != TypeAck && seq > _ackedThrough)
            {
                CountDropped(victimBase + pos - RoundUp(RecordOverhead + Le.U16(_rec, 0), _unit), seq);
            }
        }

        if (_dropCount > 0)
        {
            if (MarkerSlot() + RoundUp(RecordOverhead + DroppedPayload, _unit) > _sectorBytes)
            {
                throw new QueueFullException("Alert queue full: no sector is free (an image from earlier firmware) and the newest has no room left for the marker that would count the "
                    + _dropCount + " entries of the oldest; nothing was dropped. Acknowledging them frees it.");
            }

            WriteBeforeMarker();
            WriteDropMarker(HeaderSlot(_writeOffset));
            _lastMarkerSeq = _nextSeq - 1;
            _weakSeq = 0; // a higher number is now durable
            _pendingKnown = false;
            DroppedSinceMount += _dropEntries;
        }

        _device.EraseSector(victim);
        _erasedSector = victim;
        _tail = Next(victim);
    }

    /// <summary>
    /// Whether a record that ends at <paramref name="end"/> in the head leaves room, while no sector is free, for the marker
    /// of <see cref="FreeTailWithoutSpare"/>: after a reboot too (a mount resumes on the next page, behind its recovery
    /// record), and again after a cut inside that marker or the recovery record before it. That cut costs two turns: the
    /// boot after it pins the place past the torn cells at once, and if it reboots before writing the marker, the next
    /// boot resumes on the page after that record.
    /// Always true with a sector free, and under Reject, which drops nothing.
    /// </summary>
    private bool KeepsRoomToFreeTail(int end) =>
        FreeSectors() > 0 || _policy == FullPolicy.Reject || MarkerEndAfterReboot(MarkerEndAfterReboot(MarkerEndAfterReboot(end))) <= _sectorBytes;

    /// <summary>Where a marker ends that the first write after a reboot puts in the head, if its last record ends at <paramref name="end"/>.</summary>
    private int MarkerEndAfterReboot(int end) =>
        HeaderSlot(NextPage(HeaderSlot(end)) + RoundUp(RecordOverhead, _unit)) + RoundUp(RecordOverhead + DroppedPayload, _unit);

    private void BeginDropCount()
    {
        _dropCount = 0;
        _dropFirst = 0xFFFFFFFFu;
        _dropLast = 0;
        _dropEntries = 0;
    }

    /// <summary>
    /// Adds the record at <paramref name="address"/>, whose header is in _rec, to the marker being assembled: an entry by
    /// its original sequence number, a marker by merging its count and range.
    /// </summary>
    private void CountDropped(int address, uint seq)
    {
        byte type = _rec[8];
        bool relocated = (_rec[11] & FlagRelocated) != 0;
        uint n = 1;
        uint lo = seq;
        if (relocated && type != TypeDropped)
        {
            _device.Read(address + RecordOverhead, _small, 0, RelocationPrefix);
            lo = Le.U32(_small, 0);
        }

        uint hi = lo;
        if (type == TypeDropped)
        {
            _device.Read(address + RecordOverhead + (relocated ? RelocationPrefix : 0), _small, 0, DroppedPayload);
            n = Le.U32(_small, 0);
            lo = Le.U32(_small, 4);
            hi = Le.U32(_small, 8);
        }

        _dropCount += n;
        _dropFirst = lo < _dropFirst ? lo : _dropFirst;
        _dropLast = hi > _dropLast ? hi : _dropLast;
        _dropEntries += type == TypeDropped ? 0u : 1u;
    }

    /// <summary>Writes the marker assembled by <see cref="CountDropped"/> at <paramref name="at"/> in the head, under the next sequence number.</summary>
    private void WriteDropMarker(int at)
    {
        Le.PutU32(_small, 0, _dropCount);
        Le.PutU32(_small, 4, _dropFirst);
        Le.PutU32(_small, 8, _dropLast);
        WriteRecord(at, _nextSeq, TypeDropped, MarkerPriority, 0, 0, _small, 0, _small, 0, DroppedPayload);
        _nextSeq++;
        if (_pendingKnown)
        {
            _pending[MarkerPriority]++;
        }
    }

    /// <summary>The lowest priority of the entries queued (markers not counted); 3 when none is.</summary>
    private int LowestQueuedPriority()
    {
        EnsurePendingCounts();
        int lowest = 0;
        while (lowest < MarkerPriority && _pending[lowest] == 0)
        {
            lowest++;
        }

        _lowestQueued = lowest;
        return lowest;
    }

    /// <summary>
    /// Frees the oldest sector (the victim): drops its entries of the lowest queued priority (none when
    /// <paramref name="keepAll"/>) and moves the others to the spare sector. In this order, so that a power
    /// cut at any point leaves a state the next mount completes or undoes (docs/flash-queue.md, "When full"):
    /// open the spare (erase, header); copy the survivors under new sequence numbers; write the marker
    /// that counts the dropped entries and merges the victim's markers; write an acknowledgement that closes
    /// the reclaim; erase the victim.
    /// </summary>
    /// <returns>Whether the victim was freed, and whether a new sector was opened for it.</returns>
    private int CollectTail(bool keepAll)
    {
        int victim = _tail;
        int threshold = -1;
        if (!keepAll)
        {
            EnsurePendingCounts();
            threshold = _policy == FullPolicy.DropLowestPriority ? LowestQueuedPriority() : MarkerPriority;
        }

        // Appends keep room for their sector's entries to move with a marker, so the survivors always fit.
        // Sectors written by firmware before that rule may not: then also drop the oldest survivors of the
        // next priority, one at a time, until they do. An acknowledgement never drops anything.
        int extraCount = 0;
        PlanReclaim(victim, threshold, extraCount);
        while (!_planFits)
        {
            if (keepAll)
            {
                return CollectedNothing;
            }

            extraCount++;
            if (extraCount > _sectorBytes / RecordOverhead)
            {
                threshold++;
                extraCount = 0;
            }

            PlanReclaim(victim, threshold, extraCount);
        }

        if (_planMoved == 0 && _planDropped == 0)
        {
            // Nothing in it is owed to anyone (its numbers were acknowledged or skipped): just free it.
            _device.EraseSector(victim);
            _erasedSector = victim;
            _tail = Next(victim);
            return CollectedVictimFreed;
        }

        int victimBase = victim * _sectorBytes;
        OpenSector(Next(_head), _headSectorSeq + 1);
        BeginDropCount();
        int copied = 0;
        int pos = _dataStart;
        while (NextRecord(victimBase, ref pos, _sectorBytes))
        {
            int len = Le.U16(_rec, 0);
            byte type = _rec[8];
            uint seq = Le.U32(_rec, 4);
            int start = pos - RoundUp(RecordOverhead + len, _unit);
            if (type == TypeAck || seq <= _ackedThrough)
            {
                continue;
            }

            byte priority = _rec[9];
            bool relocated = (_rec[11] & FlagRelocated) != 0;

            // Markers in the victim are merged into the new one rather than moved, so they never pile up.
            bool extra = priority == threshold + 1 && extraCount > 0;
            if (extra)
            {
                extraCount--;
            }

            if (priority <= threshold || type == TypeDropped || extra)
            {
                CountDropped(victimBase + start, seq);
                if (_pendingKnown)
                {
                    _pending[priority]--;
                }

                continue;
            }

            // Move forward under a new sequence number, keeping the original one (entry ids never change). The record
            // is read once and checked against its own check value: a copy programmed from a second read could differ
            // from the first where a cut left cells weak, and fail its check (readers would go on at the next page and
            // skip what follows it) or pass it with changed bytes. A record that does not read back whole now is such a
            // write, whose raise never returned: it is not moved.
            if (_copy == null || _copy.Length < len)
            {
                _copy = new byte[len];
            }

            _device.Read(victimBase + start + RecordOverhead, _copy, 0, len);
            if (Crc32.Finish(Crc32.Update(Crc32.Update(Crc32.Seed, _rec, 0, 12), _copy, 0, len)) != Le.U32(_rec, 12))
            {
                if (_pendingKnown)
                {
                    _pending[priority]--;
                }

                continue;
            }

            int prefix = relocated ? RelocationPrefix : 0;
            Le.PutU32(_small, 0, relocated ? Le.U32(_copy, 0) : seq);
            WriteRecord(HeaderSlot(_writeOffset), _nextSeq, type, priority, _rec[10], FlagRelocated, _small, RelocationPrefix, _copy, prefix, len - prefix);
            _nextSeq++;
            _headMovedEnd = MovedEnd(_headMovedEnd, RelocationPrefix + len - prefix);
            copied++;
        }

        DroppedSinceMount += _dropEntries;
        if (_dropCount > 0)
        {
            WriteDropMarker(HeaderSlot(_writeOffset));
        }

        // The closing record: from here on the moved entries and the marker are complete, and a mount that
        // finds the victim still there erases it rather than this sector. Unless nothing was copied or dropped (the
        // survivors did not read back whole: raises that never returned), so the victim holds nothing owed: then this
        // sector would begin with the closing record, as the spare that earlier firmware's Reject policy used for
        // acknowledgements does, which a mount leaves live, and a cut inside the erase would leave no sector free. So
        // the victim is erased first: a cut there leaves this sector header-only, which a mount erases (victim still
        // live) or rewrites (victim gone).
        bool closeFirst = copied > 0 || _dropCount > 0;
        if (closeFirst)
        {
            WriteAckRecord(_ackedThrough);
        }

        // The victim's entries now live here or are counted in the marker: erase it so no reboot can bring
        // them back, and remember it is blank for when the ring reaches it.
        _device.EraseSector(victim);
        _erasedSector = victim;
        _tail = Next(victim);
        if (!closeFirst)
        {
            WriteAckRecord(_ackedThrough);
        }

        return CollectedIntoNewSector;
    }

    /// <summary>
    /// What reclaiming <paramref name="sector"/> would do: how many entries it moves and drops (markers
    /// count as dropped: they are merged), and whether the moved entries, and a marker if anything is
    /// dropped, fit in a fresh sector.
    /// </summary>
    private void PlanReclaim(int sector, int threshold, int extraCount)
    {
        int baseAddr = sector * _sectorBytes;
        int pos = _dataStart;
        int at = _dataStart;
        int moved = 0;
        int dropped = 0;
        while (NextRecord(baseAddr, ref pos, _sectorBytes))
        {
            int len = Le.U16(_rec, 0);
            byte priority = _rec[9];
            byte type = _rec[8];
            if (type == TypeAck || Le.U32(_rec, 4) <= _ackedThrough)
            {
                continue;
            }

            if (type == TypeDropped || priority <= threshold)
            {
                dropped++;
                continue;
            }

            if (priority == threshold + 1 && extraCount > 0)
            {
                extraCount--;
                dropped++;
                continue;
            }

            int payload = len - ((_rec[11] & FlagRelocated) != 0 ? RelocationPrefix : 0);
            at = MovedEnd(at, RelocationPrefix + payload);
            moved++;
        }

        if (dropped > 0)
        {
            at = MovedEnd(at, DroppedPayload);
        }

        _planFits = at <= _entryLimit;
        _planMoved = moved;
        _planDropped = dropped;
    }

    /// <summary>Counts unacknowledged entries per priority by walking the live sectors (only when the queue first fills).</summary>
    private void EnsurePendingCounts()
    {
        if (_pendingKnown)
        {
            return;
        }

        Array.Clear(_pending, 0, Priorities);
        int sector = _tail;
        while (true)
        {
            int baseAddr = sector * _sectorBytes;
            int limit = sector == _head ? _writeOffset : _sectorBytes;
            int pos = _dataStart;
            while (NextRecord(baseAddr, ref pos, limit))
            {
                if (_rec[8] != TypeAck && Le.U32(_rec, 4) > _ackedThrough)
                {
                    _pending[_rec[9]]++;
                }
            }

            if (sector == _head)
            {
                break;
            }

            sector = Next(sector);
        }

        _pendingKnown = true;
    }
}
