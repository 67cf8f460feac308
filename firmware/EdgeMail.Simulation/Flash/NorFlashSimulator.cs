using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Boards;

namespace EdgeMail.Simulation.Flash;

/// <summary>
/// NOR flash as its datasheet describes it: erase sets a sector to 0xFF, program can only clear bits
/// (the result is the AND of old and new), a program that crosses a page end wraps to the page start,
/// every operation costs simulated time, and every sector counts its erases. On top of that it injects
/// the faults that break flash stores in the field: power cuts before, inside and after operations
/// (<see cref="PowerCut"/>: a torn program clears only some of the intended bits, a torn erase leaves a
/// prefix, random bytes or random bits erased, and a cut can leave nothing visible at all), weak cells
/// that read differently from one boot to the next, and — in strict mode — programming a unit twice
/// between erases is refused as ESP32 flash encryption and ECC-protected internal flash refuse it.
/// A unit that a cut program may have touched counts as programmed even where no bit visibly changed
/// (its cells hold some charge): only the very bytes the cut program was writing may go there again,
/// which completes that program. A sector whose erase was cut takes no program until it is erased.
/// </summary>
public sealed class NorFlashSimulator : IFlashDevice, IDisposable
{
    private const byte UnitErased = 0;
    private const byte UnitProgrammed = 1;
    private const byte UnitTouched = 2;

    private readonly byte[] _cells;
    private readonly byte[] _units;
    private readonly Dictionary<int, byte[]> _cutIntent;
    private readonly bool[] _eraseTorn;
    private readonly int[] _opUnits;
    private readonly bool[] _opForbidden;
    private readonly int[] _eraseCounts;
    private readonly Dictionary<int, WeakCell> _weakBits;
    private readonly int[] _weakInSector; // weak cells per sector, so reads elsewhere skip the lookups
    private readonly FlashTiming? _timing;
    private readonly bool _strict;
    private readonly int _eraseCycles;
    private readonly FileStream? _image;
    private Random _random;
    private long _mutationsUntilCut = -1;
    private PowerCut _cut;
    private int _boot;
    private int _misreadStart;
    private int _misreadEnd;
    private int _misreadsLeft;

    /// <summary>Creates a blank (erased) flash region.</summary>
    /// <param name="geometry">Geometry and write rules.</param>
    /// <param name="timing">Datasheet timings; null costs nothing.</param>
    /// <param name="eraseCycles">Rated erase cycles per sector.</param>
    /// <param name="seed">Seed of every random choice the simulator makes (torn bits, weak bits).</param>
    /// <param name="strict">Refuse to program a unit twice between erases (forced when the geometry forbids it).</param>
    /// <param name="imagePath">Optional file that holds the cells across process restarts.</param>
    public NorFlashSimulator(FlashGeometry geometry, FlashTiming? timing = null, int eraseCycles = 100_000, int seed = 1, bool strict = false, string? imagePath = null)
    {
        ArgumentNullException.ThrowIfNull(geometry);
        Geometry = geometry;
        _timing = timing;
        _eraseCycles = eraseCycles;
        _strict = strict || !geometry.AllowsReprogram;
        _random = new Random(seed);
        _cells = new byte[geometry.SizeBytes];
        _eraseCounts = new int[geometry.SectorCount];
        _units = new byte[geometry.SizeBytes / geometry.ProgramUnit];
        _cutIntent = [];
        _eraseTorn = new bool[geometry.SectorCount];
        _opUnits = new int[geometry.PageBytes / geometry.ProgramUnit];
        _opForbidden = new bool[geometry.PageBytes / geometry.ProgramUnit];
        _weakBits = [];
        _weakInSector = new int[geometry.SectorCount];
        Array.Fill(_cells, (byte)0xFF);
        if (imagePath is not null)
        {
            bool exists = File.Exists(imagePath);
            _image = new FileStream(imagePath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            if (exists && _image.Length == _cells.Length)
            {
                _image.ReadExactly(_cells);
                MarkNonBlankUnitsProgrammed();
            }
            else
            {
                _image.SetLength(0);
                _image.Write(_cells);
                _image.Flush();
            }
        }
    }

    private NorFlashSimulator(NorFlashSimulator source, int seed)
    {
        Geometry = source.Geometry;
        _timing = source._timing;
        _eraseCycles = source._eraseCycles;
        _strict = source._strict;
        _random = new Random(seed);
        _cells = (byte[])source._cells.Clone();
        _units = (byte[])source._units.Clone();
        _cutIntent = new Dictionary<int, byte[]>(source._cutIntent);
        _eraseTorn = (bool[])source._eraseTorn.Clone();
        _opUnits = new int[source._opUnits.Length];
        _opForbidden = new bool[source._opForbidden.Length];
        _eraseCounts = (int[])source._eraseCounts.Clone();
        _weakBits = new Dictionary<int, WeakCell>(source._weakBits);
        _weakInSector = (int[])source._weakInSector.Clone();
        SimulatedMicros = source.SimulatedMicros;
        _boot = source._boot;
    }

    /// <summary>
    /// Called before every program or erase with its index (0-based) and arguments, so a test can fork
    /// the device at that instant (<see cref="Fork"/>) and replay the same operation torn.
    /// </summary>
    public MutationHook? BeforeMutation { get; set; }

    /// <summary>An independent copy of the cells, wear and weak bits, without image file or hook.</summary>
    /// <param name="seed">Seed of the copy's random choices.</param>
    /// <returns>The copy.</returns>
    public NorFlashSimulator Fork(int seed) => new(this, seed);

    /// <summary>Creates the queue region of a board profile.</summary>
    /// <param name="board">The board.</param>
    /// <param name="seed">Seed of the simulator's random choices.</param>
    /// <param name="strict">Refuse reprogramming even where the part allows it.</param>
    /// <param name="imagePath">Optional image file that keeps the cells across restarts.</param>
    /// <returns>The simulator.</returns>
    public static NorFlashSimulator FromProfile(BoardProfile board, int seed = 1, bool strict = false, string? imagePath = null)
    {
        ArgumentNullException.ThrowIfNull(board);
        var f = board.Flash;
        var geometry = new FlashGeometry(checked((int)f.SizeBytes), f.EraseSectorBytes, f.PageBytes, f.ProgramUnitBytes, f.AllowsReprogram, f.Encrypted);
        return new NorFlashSimulator(geometry, f.Timing, f.EraseCycles, seed, strict, imagePath);
    }

    /// <inheritdoc />
    public FlashGeometry Geometry { get; }

    /// <summary>Whether power is off after a cut; every operation then throws until <see cref="PowerOn"/>.</summary>
    public bool IsPoweredOff { get; private set; }

    /// <summary>Whether programming a unit twice between erases is refused.</summary>
    public bool Strict => _strict;

    /// <summary>Simulated time spent in flash operations, in microseconds.</summary>
    public double SimulatedMicros { get; private set; }

    /// <summary>Read operations so far.</summary>
    public long ReadOps { get; private set; }

    /// <summary>Bytes read so far.</summary>
    public long BytesRead { get; private set; }

    /// <summary>Program operations so far.</summary>
    public long ProgramOps { get; private set; }

    /// <summary>Bytes programmed so far.</summary>
    public long BytesProgrammed { get; private set; }

    /// <summary>Sector erases so far.</summary>
    public long EraseOps { get; private set; }

    /// <summary>Program and erase operations so far: the points where a power cut can strike.</summary>
    public long Mutations => ProgramOps + EraseOps;

    /// <summary>
    /// Programs that landed where the part forbids them (outside strict mode, which throws instead): over a unit
    /// already programmed or touched by a cut program with other bytes, or in a sector whose erase was cut.
    /// </summary>
    public long Reprograms { get; private set; }

    /// <summary>Sectors erased more often than the part is rated for.</summary>
    public int WornSectors => _eraseCounts.Count(c => c > _eraseCycles);

    /// <summary>Erase count of one sector.</summary>
    /// <param name="sector">Sector index.</param>
    /// <returns>How many times it was erased.</returns>
    public int EraseCount(int sector) => _eraseCounts[sector];

    /// <summary>Resets the operation counters and simulated time (not the erase counts).</summary>
    public void ResetCounters()
    {
        SimulatedMicros = 0;
        ReadOps = BytesRead = ProgramOps = BytesProgrammed = EraseOps = 0;
    }

    /// <summary>
    /// Schedules a power cut inside the mutation (program or erase) that follows
    /// <paramref name="mutationsBefore"/> more mutations. <paramref name="fraction"/> 0 cuts before the
    /// operation starts, 1 after it completed but before it returned; in between, every bit the
    /// operation was changing has that probability of having changed.
    /// </summary>
    /// <param name="mutationsBefore">Mutations allowed to complete first.</param>
    /// <param name="fraction">How far the cut operation got, 0 to 1.</param>
    /// <param name="weakBits">Whether bits the torn operation touched may read differently on each read.</param>
    public void ScheduleCut(long mutationsBefore, double fraction, bool weakBits = false) =>
        ScheduleCut(mutationsBefore, PowerCut.FromFraction(fraction, weakBits));

    /// <summary>Schedules a power cut inside the mutation that follows <paramref name="mutationsBefore"/> more mutations.</summary>
    /// <param name="mutationsBefore">Mutations allowed to complete first.</param>
    /// <param name="cut">Where inside the operation power fails, and what it leaves.</param>
    public void ScheduleCut(long mutationsBefore, PowerCut cut)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(mutationsBefore);
        _mutationsUntilCut = mutationsBefore;
        _cut = cut;
    }

    /// <summary>Cancels a scheduled cut.</summary>
    public void CancelCut() => _mutationsUntilCut = -1;

    /// <summary>
    /// Makes the next <paramref name="reads"/> reads that overlap <paramref name="count"/> bytes at <paramref name="address"/>
    /// return 0xFF there, as a read below the part's minimum supply commonly does (a brownout as the device boots); the
    /// cells are untouched and later reads are exact again. One range at a time: a new call replaces the last.
    /// </summary>
    /// <param name="address">Start of the range.</param>
    /// <param name="count">Bytes in the range.</param>
    /// <param name="reads">How many overlapping reads see ones.</param>
    public void MisreadAsErased(int address, int count, int reads)
    {
        CheckRange(address, count);
        ArgumentOutOfRangeException.ThrowIfNegative(reads);
        _misreadStart = address;
        _misreadEnd = address + count;
        _misreadsLeft = reads;
    }

    /// <summary>Reads still to be garbled by <see cref="MisreadAsErased"/>.</summary>
    public int MisreadsLeft => _misreadsLeft;

    /// <summary>Turns the device on again after a cut: the cells keep whatever state the cut left.</summary>
    /// <param name="seed">Reseeds the random source (weak-bit reads), so each boot is reproducible.</param>
    public void PowerOn(int? seed = null)
    {
        IsPoweredOff = false;
        _boot++;
        _mutationsUntilCut = -1;
        if (seed is int s)
        {
            _random = new Random(s);
        }
    }

    /// <inheritdoc />
    public void Read(int address, byte[] buffer, int offset, int count)
    {
        EnsurePowered();
        CheckRange(address, count);
        Buffer.BlockCopy(_cells, address, buffer, offset, count);
        if (_weakBits.Count > 0 && AnyWeak(address, count))
        {
            for (int i = 0; i < count; i++)
            {
                // A weak cell passes the first check after the cut and drifts from the boot after:
                // from then on each read may see either value, or it has settled back to its old value.
                if (_weakBits.TryGetValue(address + i, out WeakCell weak) && _boot >= weak.Boot + 2)
                {
                    byte drifted = weak.Fades ? weak.Settled : (byte)_random.Next(256);
                    buffer[offset + i] = (byte)((buffer[offset + i] & ~weak.Mask) | (drifted & weak.Mask));
                }
            }
        }

        if (_misreadsLeft > 0 && address < _misreadEnd && address + count > _misreadStart)
        {
            _misreadsLeft--;
            int from = Math.Max(address, _misreadStart);
            int to = Math.Min(address + count, _misreadEnd);
            Array.Fill(buffer, (byte)0xFF, offset + from - address, to - from);
        }

        ReadOps++;
        BytesRead += count;
        if (_timing is not null)
        {
            SimulatedMicros += _timing.ReadSetupUs + (count * _timing.ReadPerByteUs);
        }
    }

    /// <inheritdoc />
    public void Program(int address, byte[] buffer, int offset, int count)
    {
        EnsurePowered();
        CheckRange(address, count);
        int unit = Geometry.ProgramUnit;
        if (address % unit != 0 || count % unit != 0 || count == 0)
        {
            throw new FlashViolationException($"Program at 0x{address:X} of {count} bytes is not aligned to the {unit}-byte program unit.");
        }

        if (count > Geometry.PageBytes)
        {
            throw new FlashViolationException($"Program of {count} bytes exceeds the {Geometry.PageBytes}-byte page buffer.");
        }

        int pageStart = address & ~(Geometry.PageBytes - 1);
        int units = count / unit;
        int[] unitAddress = _opUnits;
        bool[] forbidden = _opForbidden;
        bool anyForbidden = false;
        for (int u = 0; u < units; u++)
        {
            // A page program that runs past the page end wraps to the page start (datasheet behaviour).
            int a = pageStart + ((address - pageStart + (u * unit)) & (Geometry.PageBytes - 1));
            unitAddress[u] = a;
            forbidden[u] = false;
            string? why = WhyForbidden(a, buffer, offset + (u * unit));
            if (why is not null)
            {
                if (_strict)
                {
                    throw new FlashViolationException($"Unit at 0x{a:X} programmed twice without an erase: {why} (strict mode: encrypted or ECC flash forbids it).");
                }

                forbidden[u] = anyForbidden = true;
            }
        }

        BeforeMutation?.Invoke(Mutations, false, address, buffer, offset, count);
        bool cut = ConsumeCut();
        if (!cut && !anyForbidden && CleanUnits(unitAddress, units))
        {
            // The common case, kept fast for the campaigns: erased units, no cut, no weak cells.
            for (int u = 0; u < units; u++)
            {
                int a = unitAddress[u];
                for (int i = 0; i < unit; i++)
                {
                    _cells[a + i] &= buffer[offset + (u * unit) + i];
                }

                _units[a / unit] = UnitProgrammed;
            }
        }
        else if (!cut || _cut.Mode != CutMode.BeforeStart)
        {
            for (int u = 0; u < units; u++)
            {
                ProgramUnit(unitAddress[u], buffer, offset + (u * unit), forbidden[u], cut, (double)(u * unit) / count);
            }

            if (anyForbidden)
            {
                Reprograms++;
            }
        }

        ProgramOps++;
        BytesProgrammed += count;
        if (_timing is not null)
        {
            double perByte = (_timing.PageProgramUs - _timing.ProgramSetupUs) / Geometry.PageBytes;
            SimulatedMicros += _timing.ProgramSetupUs + (count * perByte);
        }

        Persist(address, count);
        if (cut)
        {
            ThrowCut($"program of {count} bytes at 0x{address:X}");
        }
    }

    /// <inheritdoc />
    public void EraseSector(int sector)
    {
        EnsurePowered();
        if ((uint)sector >= (uint)Geometry.SectorCount)
        {
            throw new ArgumentOutOfRangeException(nameof(sector), sector, $"The region has {Geometry.SectorCount} sectors.");
        }

        BeforeMutation?.Invoke(Mutations, true, sector * Geometry.SectorBytes, [], 0, Geometry.SectorBytes);
        bool cut = ConsumeCut();
        int start = sector * Geometry.SectorBytes;
        int size = Geometry.SectorBytes;
        if (!cut || _cut.Mode == CutMode.Complete)
        {
            for (int a = start; a < start + size; a++)
            {
                _cells[a] = 0xFF;
                RemoveWeak(a);
            }

            int firstUnit = start / Geometry.ProgramUnit;
            for (int u = firstUnit; u < firstUnit + (size / Geometry.ProgramUnit); u++)
            {
                if (_units[u] == UnitTouched)
                {
                    _cutIntent.Remove(u);
                }

                _units[u] = UnitErased;
            }

            _eraseTorn[sector] = false;
        }
        else if (_cut.Mode != CutMode.BeforeStart)
        {
            // A cut erase leaves the cells between programmed and erased; the sector takes no program until erased again.
            int prefixEnd = start + (int)(size * _cut.Fraction);
            for (int a = start; a < start + size; a++)
            {
                _cells[a] = _cut.Mode switch
                {
                    CutMode.Prefix => a < prefixEnd ? Settle(a, _cells[a], 0xFF) : _cells[a],
                    CutMode.RandomBytes => _random.NextDouble() < _cut.Fraction ? Settle(a, _cells[a], 0xFF) : _cells[a],
                    CutMode.RandomBits => Tear(a, _cells[a], 0xFF, clearing: false),
                    _ => _cells[a],
                };
            }

            _eraseTorn[sector] = true;
        }

        if (!cut || _cut.Mode != CutMode.BeforeStart)
        {
            _eraseCounts[sector]++;
        }

        EraseOps++;
        if (_timing is not null)
        {
            SimulatedMicros += _timing.SectorEraseUs;
        }

        Persist(start, size);
        if (cut)
        {
            ThrowCut($"erase of sector {sector}");
        }
    }

    /// <summary>Copies the cells (for inspection in tests).</summary>
    /// <returns>A copy of every byte as stored, weak bits at their last stored value.</returns>
    public byte[] Snapshot() => (byte[])_cells.Clone();

    /// <inheritdoc />
    public void Dispose() => _image?.Dispose();

    /// <summary>Why programming <paramref name="buffer"/> into the unit at <paramref name="a"/> is not allowed, or null.</summary>
    private string? WhyForbidden(int a, byte[] buffer, int offset)
    {
        int u = a / Geometry.ProgramUnit;
        if (_eraseTorn[a / Geometry.SectorBytes])
        {
            return "the last erase of its sector was cut";
        }

        if (_units[u] == UnitProgrammed)
        {
            return "it was programmed before";
        }

        if (_units[u] == UnitTouched && !SameBytes(_cutIntent[u], buffer, offset))
        {
            return "a cut program may have touched it, and these bytes differ from what that program wrote";
        }

        return null;
    }

    private void ProgramUnit(int a, byte[] buffer, int offset, bool forbidden, bool cut, double position)
    {
        int unit = Geometry.ProgramUnit;
        int u = a / unit;
        byte[]? intent = _units[u] == UnitTouched ? _cutIntent[u] : null;
        for (int i = 0; i < unit; i++)
        {
            byte before = _cells[a + i];
            byte target = (byte)(before & buffer[offset + i]);
            if (!cut || _cut.Mode == CutMode.Complete)
            {
                if (cut)
                {
                    _cells[a + i] = Tear(a + i, before, target, clearing: true);
                }
                else
                {
                    _cells[a + i] = target;
                    RemoveWeak(a + i);
                }
            }
            else
            {
                _cells[a + i] = _cut.Mode switch
                {
                    CutMode.RandomBits => Tear(a + i, before, target, clearing: true),
                    CutMode.RandomBytes => _random.NextDouble() < _cut.Fraction ? Settle(a + i, before, target) : before,
                    CutMode.Prefix => position < _cut.Fraction ? Settle(a + i, before, target) : before,
                    _ => NothingVisible(a + i, before, target),
                };
            }

            if (intent is not null && !forbidden)
            {
                continue;
            }

            if (intent is not null)
            {
                // Cells the cut program was charging and this one leaves alone keep part of that charge.
                byte residual = (byte)(~intent[i] & before & buffer[offset + i]);
                if (residual != 0)
                {
                    SetWeak(a + i, new WeakCell((byte)(residual | Existing(a + i)), _boot, false, 0));
                }
            }
        }

        if (forbidden && Geometry.Encrypted)
        {
            // Clearing bits of ciphertext does not clear the same bits of plaintext: the block decrypts to noise.
            for (int i = 0; i < unit; i++)
            {
                _cells[a + i] = (byte)_random.Next(256);
            }
        }

        if (!cut)
        {
            _units[u] = UnitProgrammed;
            _cutIntent.Remove(u);
        }
        else if (_units[u] != UnitProgrammed)
        {
            // Whatever became visible, every unit of a started program holds some charge now. Even a program that
            // completed as power failed is one the firmware never saw return: programming the same bytes there again
            // only adds charge the weak cells lack, which NOR, ECC flash and encryption (same plaintext and address,
            // same ciphertext) accept; other bytes are refused in strict mode.
            _units[u] = UnitTouched;
            _cutIntent[u] = buffer.AsSpan(offset, unit).ToArray();
        }
    }

    private bool CleanUnits(int[] unitAddress, int units)
    {
        // A program stays within one page, so within one sector.
        if (_weakBits.Count > 0 && AnyWeak(unitAddress[0], 1))
        {
            return false;
        }

        for (int u = 0; u < units; u++)
        {
            if (_units[unitAddress[u] / Geometry.ProgramUnit] != UnitErased)
            {
                return false;
            }
        }

        return true;
    }

    private bool AnyWeak(int address, int count)
    {
        for (int sector = address / Geometry.SectorBytes; sector <= (address + count - 1) / Geometry.SectorBytes; sector++)
        {
            if (_weakInSector[sector] > 0)
            {
                return true;
            }
        }

        return false;
    }

    private void SetWeak(int address, WeakCell cell)
    {
        if (!_weakBits.ContainsKey(address))
        {
            _weakInSector[address / Geometry.SectorBytes]++;
        }

        _weakBits[address] = cell;
    }

    private void RemoveWeak(int address)
    {
        if (_weakBits.Remove(address))
        {
            _weakInSector[address / Geometry.SectorBytes]--;
        }
    }

    private byte Existing(int address) => _weakBits.TryGetValue(address, out WeakCell w) ? w.Mask : (byte)0;

    /// <summary>A cut that changed nothing visible may still leave sub-threshold charge that reads 0 later (noisy weak cells only).</summary>
    private byte NothingVisible(int address, byte before, byte target)
    {
        byte changing = (byte)(before ^ target);
        if (changing != 0 && _cut.Weak == WeakCells.Noisy && _random.Next(4) == 0)
        {
            SetWeak(address, new WeakCell((byte)(changing | Existing(address)), _boot, false, 0));
        }

        return before;
    }

    /// <summary>The whole byte reaches its target; with weak cells, the bits it changed may drift later.</summary>
    private byte Settle(int address, byte before, byte target)
    {
        byte changing = (byte)(before ^ target);
        MarkWeak(address, before, changing);
        return target;
    }

    private byte Tear(int address, byte before, byte target, bool clearing)
    {
        // Bits that the operation changes: 1→0 for a program, 0→1 for an erase.
        byte changing = (byte)(before ^ target);
        if (changing == 0)
        {
            return before;
        }

        double fraction = _cut.Mode == CutMode.Complete ? 1 : _cut.Fraction;
        byte done = 0;
        for (int bit = 0; bit < 8; bit++)
        {
            byte m = (byte)(1 << bit);
            if ((changing & m) != 0 && _random.NextDouble() < fraction)
            {
                done |= m;
            }
        }

        MarkWeak(address, before, done);
        return clearing ? (byte)(before & ~done) : (byte)(before | done);
    }

    private void MarkWeak(int address, byte before, byte changed)
    {
        if (changed == 0 || _cut.Weak == WeakCells.None)
        {
            return;
        }

        byte weak = 0;
        for (int bit = 0; bit < 8; bit++)
        {
            byte m = (byte)(1 << bit);
            if ((changed & m) != 0 && (_cut.Weak == WeakCells.Fade || _random.Next(4) == 0))
            {
                weak |= m;
            }
        }

        if (weak != 0)
        {
            SetWeak(address, new WeakCell((byte)(weak | Existing(address)), _boot, _cut.Weak == WeakCells.Fade, before));
        }
    }

    private static bool SameBytes(byte[] intent, byte[] buffer, int offset)
    {
        for (int i = 0; i < intent.Length; i++)
        {
            if (intent[i] != buffer[offset + i])
            {
                return false;
            }
        }

        return true;
    }

    private bool ConsumeCut()
    {
        if (_mutationsUntilCut < 0)
        {
            return false;
        }

        if (_mutationsUntilCut == 0)
        {
            _mutationsUntilCut = -1;
            return true;
        }

        _mutationsUntilCut--;
        return false;
    }

    private void ThrowCut(string what)
    {
        IsPoweredOff = true;
        throw new PowerLossException($"Power lost during {what} (cut {_cut})");
    }

    private void EnsurePowered()
    {
        if (IsPoweredOff)
        {
            throw new PowerLossException("Flash accessed while power is off");
        }
    }

    private void CheckRange(int address, int count)
    {
        if (address < 0 || count < 0 || address > Geometry.SizeBytes - count)
        {
            throw new ArgumentOutOfRangeException(nameof(address), $"Range 0x{address:X}+{count} is outside the {Geometry.SizeBytes}-byte region.");
        }
    }

    private void MarkNonBlankUnitsProgrammed()
    {
        int unit = Geometry.ProgramUnit;
        for (int a = 0; a < _cells.Length; a += unit)
        {
            for (int i = 0; i < unit; i++)
            {
                if (_cells[a + i] != 0xFF)
                {
                    _units[a / unit] = UnitProgrammed;
                    break;
                }
            }
        }
    }

    private void Persist(int address, int count)
    {
        if (_image is null)
        {
            return;
        }

        // Page wrap can touch the start of the page: write the whole page range that may have changed.
        int start = address & ~(Geometry.PageBytes - 1);
        int end = Math.Min(_cells.Length, Math.Max(address + count, start + Geometry.PageBytes));
        _image.Position = start;
        _image.Write(_cells, start, end - start);
        _image.Flush();
    }
}

/// <summary>Observes a program or erase about to happen.</summary>
/// <param name="index">How many mutations happened before this one.</param>
/// <param name="isErase">True for a sector erase (then <paramref name="address"/> is the sector start).</param>
/// <param name="address">Start address.</param>
/// <param name="buffer">Bytes to program (empty for an erase).</param>
/// <param name="offset">Index of the first byte in <paramref name="buffer"/>.</param>
/// <param name="count">Number of bytes.</param>
public delegate void MutationHook(long index, bool isErase, int address, byte[] buffer, int offset, int count);

/// <summary>
/// Bits of one byte left near the read threshold by a torn operation during boot <see cref="Boot"/>: from the boot
/// after the next they read at random, or (<see cref="Fades"/>) settle back to their value in <see cref="Settled"/>.
/// </summary>
internal readonly record struct WeakCell(byte Mask, int Boot, bool Fades, byte Settled);
