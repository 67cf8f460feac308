using System;
using System.IO;

namespace EdgeMail.Firmware.Storage;

/// <summary>
/// Sector headers misread at mount (docs/flash-queue.md, "Mount and recovery"). Below its minimum supply, as in a
/// brownout while the device boots, a part's reads are undefined, commonly all ones. A header can only read invalid by
/// mistake, never valid (its CRC), and a misread head made the sector before it the head: the boot reused the real
/// head's sequence numbers and opened the real head as the next sector, erasing its entries.
/// </summary>
public sealed partial class FlashQueue
{
    // Whether a read since the mount found no newer head after the mount's: the first write of a mount waits for it.
    private bool _headConfirmed;

    // A mount gave up on headers reading differently: the next call mounts again (without formatting).
    private bool _mountAgain;

    // A header a check found valid and newer than the mount's head, kept for the mount that follows: trusting the read
    // that passed the check, as the header pass does, makes that mount settle even if the header is weak and reads
    // differently next time.
    private int _seenSector = -1;
    private uint _seenSeq;
    private uint _seenEpoch;
    private uint _seenFirst;
    private uint _seenAcked;

    /// <summary>
    /// Reads the headers around the live run the header pass found once more and extends the run by each that chains
    /// on: valid, of the run's epoch, with the next sector number (after the head) or the previous one (before the oldest
    /// sector). A correct pass cannot have left one out, so in the common case this costs two header reads; a misread
    /// one reads valid now if the brownout is over. Extending, rather than running the pass again, costs one read per
    /// sector the pass misread.
    /// </summary>
    /// <returns>The number of sectors in the live run.</returns>
    private int ExtendRun(int live)
    {
        while (live < _sectorCount && ReadHeaderOrSeen(Next(_head)) && _hEpoch == _epoch && _hSeq == _headSectorSeq + 1)
        {
            _head = Next(_head);
            _headSectorSeq = _hSeq;
            _nextSeq = _hFirst;
            _ackedThrough = _hAcked;
            live++;
        }

        // A misread in the middle of the run cut the older sectors off: the reader would skip their entries, an
        // acknowledgement of what it handed out would cover them, and the ring would erase them as free.
        while (live < _sectorCount && ReadHeaderOrSeen((_head - live + _sectorCount) % _sectorCount) && _hEpoch == _epoch && _hSeq == _headSectorSeq - (uint)live)
        {
            live++;
        }

        return live;
    }

    /// <summary>Reads a sector header; one that reads invalid counts as the newer header a check saw there, if one did.</summary>
    private bool ReadHeaderOrSeen(int sector)
    {
        if (ReadSectorHeader(sector))
        {
            return true;
        }

        if (sector != _seenSector)
        {
            return false;
        }

        _hSeq = _seenSeq;
        _hEpoch = _seenEpoch;
        _hFirst = _seenFirst;
        _hAcked = _seenAcked;
        return true;
    }

    /// <summary>
    /// Before the first write of a mount: a misread that outlasted the mount's second look (ExtendRun) may be over by
    /// now. Writing after a false head would give its entries numbers the real head's entries have.
    /// </summary>
    private void BeforeProgram()
    {
        if (!_headConfirmed)
        {
            ConfirmHead();
        }
    }

    /// <summary>
    /// Erases a sector unless its header reads newer than the head: a head the mount did not see, whose erase would lose
    /// every entry in it (the sector after the head is the one the ring opens next).
    /// </summary>
    private void Erase(int sector)
    {
        BeforeProgram();
        ThrowIfNewer(sector);
        _device.EraseSector(sector);
    }

    private void ConfirmHead()
    {
        ThrowIfNewer(Next(_head));
        _headConfirmed = true;
    }

    private void ThrowIfNewer(int sector)
    {
        // Any epoch: the header pass takes the highest sector number for the head whatever its epoch.
        if (ReadSectorHeader(sector) && _hSeq > _headSectorSeq)
        {
            _seenSector = sector;
            _seenSeq = _hSeq;
            _seenEpoch = _hEpoch;
            _seenFirst = _hFirst;
            _seenAcked = _hAcked;
            throw new HeadMisreadException(sector, _hSeq, _headSectorSeq);
        }
    }

    /// <summary>
    /// Mounts again after a check found a newer head than the mount's (nothing was written after that check), so the
    /// operation can be done again on what is really on flash; the second time, gives up without writing.
    /// </summary>
    private void MountAgain(HeadMisreadException e, int attempt)
    {
        if (attempt > 0)
        {
            throw Unresolved(e);
        }

        MountChecked(_epoch, mayFormat: false);
    }

    /// <summary>
    /// Gives up: the queue stays mounted, and its next write looks again first (and mounts again if it still disagrees).
    /// What the check saw is forgotten: a later mount must not trust a read from before writes it did not see.
    /// </summary>
    private IOException Unresolved(HeadMisreadException e)
    {
        _seenSector = -1;
        _headConfirmed = false;
        return new IOException("Flash sector headers read differently from one look to the next (" + e.Message
            + "); nothing was written or erased. Is the supply below the flash's minimum? Try again once it is stable.");
    }

    /// <summary>A sector header read newer than the head the mount chose: a header the mount read was misread.</summary>
    private sealed class HeadMisreadException : Exception
    {
        public HeadMisreadException(int sector, uint sectorSeq, uint headSeq)
            : base("sector " + sector + " holds sector number " + sectorSeq + ", above " + headSeq + " of the head the mount chose")
        {
        }
    }
}
