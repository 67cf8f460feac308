using System;

namespace EdgeMail.Firmware.Storage;

/// <summary>The on-flash layout: sector headers, records, page-by-page programming (docs/flash-queue.md).</summary>
public sealed partial class FlashQueue
{
    /// <summary>
    /// Writes an acknowledgement record. Also written right after a sector opened for an acknowledgement,
    /// so that sector is never header-only: mount rewrites header-only sectors (their header may be weak),
    /// and must not erase the only copy of an acknowledgement.
    /// </summary>
    private void WriteAckRecord(uint seq)
    {
        WriteRecord(HeaderSlot(_writeOffset), seq, TypeAck, 0, 0, 0, _small, 0, _small, 0, 0);
    }

    /// <summary>Position of the byte after the last non-0xFF byte at or after <paramref name="from"/> in a sector.</summary>
    private int LastNonBlank(int baseAddr, int from)
    {
        int last = from;
        for (int pos = from; pos < _sectorBytes; pos += _chunk.Length)
        {
            int n = _sectorBytes - pos < _chunk.Length ? _sectorBytes - pos : _chunk.Length;
            _device.Read(baseAddr + pos, _chunk, 0, n);
            for (int i = 0; i < n; i++)
            {
                if (_chunk[i] != 0xFF)
                {
                    last = pos + i + 1;
                }
            }
        }

        return last;
    }

    /// <summary>
    /// Moves <paramref name="pos"/> to the next record header that is intact (length and its complement
    /// agree, known type, fits below <paramref name="limit"/>) and leaves it in _rec. After a bad header
    /// the search resumes at the next page, where records start again after a torn write.
    /// </summary>
    /// <returns>The record's payload length, or -1 at the end.</returns>
    private int NextIntactHeader(int baseAddr, ref int pos, int limit)
    {
        while (true)
        {
            pos = HeaderSlot(pos);
            if (pos + RecordOverhead > limit)
            {
                return -1;
            }

            _device.Read(baseAddr + pos, _rec, 0, RecordOverhead);
            int len = IntactLength(_rec, pos, limit);
            if (len >= 0)
            {
                return len;
            }

            pos = NextPage(pos);
        }
    }

    /// <summary>Advances past the next valid record in a sector, leaving its header in _rec; false at the end.</summary>
    private bool NextRecord(int baseAddr, ref int pos, int limit)
    {
        while (true)
        {
            int len = NextIntactHeader(baseAddr, ref pos, limit);
            if (len < 0)
            {
                return false;
            }

            if (RecordCrcOk(baseAddr + pos, len))
            {
                pos += RoundUp(RecordOverhead + len, _unit);
                return true;
            }

            // A torn record's extent is not trusted: where a boot read its header bad, it resumed writing inside that
            // extent (docs/flash-queue.md, "Mount and recovery", step 3).
            pos = NextPage(pos);
        }
    }

    private void OpenSector(int sector, uint sectorSeq)
    {
        if (_erasedSector != sector)
        {
            _device.EraseSector(sector);
        }

        _erasedSector = -1;
        _recoveryPending = false;
        _lastMarkerSeq = 0;
        WriteSectorHeader(sector, sectorSeq);
        _head = sector;
        _headSectorSeq = sectorSeq;
        _writeOffset = _dataStart;
        _headMovedEnd = _dataStart;
    }

    private void WriteSectorHeader(int sector, uint sectorSeq)
    {
        Array.Clear(_stage, 0, _stage.Length);
        _stage[0] = Magic0;
        _stage[1] = Magic1;
        _stage[2] = LayoutVersion;
        _stage[3] = (byte)BitsOf(_unit);
        Le.PutU32(_stage, 4, sectorSeq);
        Le.PutU32(_stage, 8, _epoch);
        Le.PutU32(_stage, 12, _nextSeq);
        Le.PutU32(_stage, 16, _ackedThrough);
        Le.PutU32(_stage, 20, Crc32.Compute(_stage, 0, 20));
        for (int i = SectorHeaderBytes; i < _dataStart; i++)
        {
            _stage[i] = 0xFF;
        }

        FlashWriter.Program(_device, sector * _sectorBytes, _stage, 0, _dataStart);
    }

    private bool ReadSectorHeader(int sector)
    {
        _device.Read(sector * _sectorBytes, _hdr, 0, SectorHeaderBytes);
        _hSeq = Le.U32(_hdr, 4);
        _hEpoch = Le.U32(_hdr, 8);
        _hFirst = Le.U32(_hdr, 12);
        _hAcked = Le.U32(_hdr, 16);
        return _hdr[0] == Magic0 && _hdr[1] == Magic1 && _hdr[2] == LayoutVersion && _hdr[3] == BitsOf(_unit)
            && Le.U32(_hdr, 20) == Crc32.Compute(_hdr, 0, 20);
    }

    private uint SectorSeqOf(int sector) => _headSectorSeq - (uint)((_head - sector + _sectorCount) % _sectorCount);

    private uint SectorAge(uint sectorSeq) => _headSectorSeq - sectorSeq;

    private int FreeSectors() => _sectorCount - LiveSectors;

    private int Next(int sector) => sector + 1 == _sectorCount ? 0 : sector + 1;

    /// <summary>A record header never straddles a page: if fewer than 16 bytes remain in the page, skip to the next.</summary>
    private int HeaderSlot(int pos)
    {
        pos = RoundUp(pos, _unit);
        int room = _pageBytes - (pos & (_pageBytes - 1));
        return room < RecordOverhead ? pos + room : pos;
    }

    private int NextPage(int pos) => (pos & ~(_pageBytes - 1)) + _pageBytes;

    /// <summary>Length of the record whose header is in _rec, or -1 if the header is not intact or does not fit.</summary>
    private int IntactLength(byte[] h, int pos, int limit)
    {
        int len = Le.U16(h, 0);
        if ((Le.U16(h, 2) ^ 0xFFFF) != len)
        {
            return -1;
        }

        byte type = h[8];
        if (type != TypeItem && type != TypeAck && type != TypeDropped)
        {
            return -1;
        }

        if (h[9] > MarkerPriority || pos + RoundUp(RecordOverhead + len, _unit) > limit)
        {
            return -1;
        }

        return len;
    }

    private bool RecordCrcOk(int address, int len)
    {
        uint state = Crc32.Update(Crc32.Seed, _rec, 0, 12);
        int at = address + RecordOverhead;
        while (len > 0)
        {
            int n = len < _chunk.Length ? len : _chunk.Length;
            _device.Read(at, _chunk, 0, n);
            state = Crc32.Update(state, _chunk, 0, n);
            at += n;
            len -= n;
        }

        return Crc32.Finish(state) == Le.U32(_rec, 12);
    }

    /// <summary>Fills the header fields of a record in _rec and returns the CRC state over them.</summary>
    private uint RecordHeader(int len, uint seq, byte type, byte priority, byte kind, byte flags)
    {
        Le.PutU16(_rec, 0, len);
        Le.PutU16(_rec, 2, len ^ 0xFFFF);
        Le.PutU32(_rec, 4, seq);
        _rec[8] = type;
        _rec[9] = priority;
        _rec[10] = kind;
        _rec[11] = flags;
        return Crc32.Update(Crc32.Seed, _rec, 0, 12);
    }

    /// <summary>Writes a record whose payload is in RAM: header and payload in one pass of page programs.</summary>
    private void WriteRecord(int pos, uint seq, byte type, byte priority, byte kind, byte flags, byte[] prefix, int prefixLen, byte[] payload, int offset, int count)
    {
        uint state = RecordHeader(prefixLen + count, seq, type, priority, kind, flags);
        state = Crc32.Update(state, prefix, 0, prefixLen);
        state = Crc32.Update(state, payload, offset, count);
        Le.PutU32(_rec, 12, Crc32.Finish(state));
        StageBegin(pos);
        Stage(_rec, 0, RecordOverhead);
        Stage(prefix, 0, prefixLen);
        Stage(payload, offset, count);
        StageEnd();
    }

    private void StageBegin(int pos)
    {
        _lastMarkerSeq = 0; // the record about to be written follows it; a marker sets it again once written
        _stageAddress = (_head * _sectorBytes) + pos;
        _stageFill = 0;
        _writeOffset = pos;
    }

    /// <summary>Adds bytes to the page being assembled; programs it when the page end is reached.</summary>
    private void Stage(byte[] source, int offset, int count)
    {
        while (count > 0)
        {
            int room = _pageBytes - ((_stageAddress + _stageFill) & (_pageBytes - 1));
            int n = count < room ? count : room;
            Array.Copy(source, offset, _stage, _stageFill, n);
            _stageFill += n;
            offset += n;
            count -= n;
            if (n == room)
            {
                FlushStage();
            }
        }
    }

    /// <summary>Pads the record to the program unit with 0xFF, programs the rest, and moves the write offset past it.</summary>
    private void StageEnd()
    {
        int padded = RoundUp(_stageFill, _unit);
        for (int i = _stageFill; i < padded; i++)
        {
            _stage[i] = 0xFF;
        }

        _stageFill = padded;
        FlushStage();
        _writeOffset = _stageAddress - (_head * _sectorBytes);
    }

    private void FlushStage()
    {
        if (_stageFill > 0)
        {
            _device.Program(_stageAddress, _stage, 0, _stageFill);
            _stageAddress += _stageFill;
            _stageFill = 0;
        }
    }

    /// <summary>Where a record with a payload of <paramref name="payload"/> bytes ends when written at <paramref name="end"/> (the end of the one before).</summary>
    private int MovedEnd(int end, int payload) => HeaderSlot(end) + RoundUp(RecordOverhead + payload, _unit);

    private static int RoundUp(int value, int unit) => (value + unit - 1) & ~(unit - 1);

    private static int BitsOf(int powerOfTwo)
    {
        int bits = 0;
        while ((1 << bits) < powerOfTwo)
        {
            bits++;
        }

        return bits;
    }
}
