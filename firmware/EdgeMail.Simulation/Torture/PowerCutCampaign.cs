using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;

namespace EdgeMail.Simulation.Torture;

/// <summary>One step of a queue workload.</summary>
public enum Step
{
    /// <summary>Append an entry of pseudo-random size and priority.</summary>
    Append,

    /// <summary>Hand out up to four entries (an uplink batch in flight).</summary>
    ReadBatch,

    /// <summary>Acknowledge the batch in flight.</summary>
    AckBatch,

    /// <summary>The link drops: the batch in flight will be handed out again.</summary>
    LinkLost,

    /// <summary>A clean reboot: mount the queue again.</summary>
    Reboot,

    /// <summary>Idle-time maintenance.</summary>
    Maintain,
}

/// <summary>
/// Runs a workload against a <see cref="FlashQueue"/> on simulated flash while an oracle tracks what the
/// queue has promised. Before every program or erase the flash is forked, the same operation is
/// replayed on the fork with power cut at the chosen point, and the fork is remounted and checked
/// against the oracle: every entry whose append returned is present unless acknowledged (or reported
/// dropped by the full policy), nothing appears that was never appended, order holds, no payload is
/// corrupt, an acknowledged entry comes back only from the batch whose acknowledgement was in flight,
/// and sequence numbers never repeat.
/// </summary>
public sealed class PowerCutCampaign
{
    private readonly FlashGeometry _geometry;
    private readonly FullPolicy _policy;
    private readonly int _seed;
    private readonly Func<long, double[]> _cutsAt;
    private readonly bool _weakBits;
    private readonly List<string> _violations = [];

    // Oracle.
    private readonly Dictionary<uint, uint> _returned = []; // id → seq when its append returned
    private readonly HashSet<uint> _attempted = [];
    private readonly HashSet<uint> _acked = [];
    private readonly HashSet<uint> _ackInFlight = [];
    private readonly List<(uint Seq, uint Id)> _batch = [];
    private readonly List<(uint First, uint Last)> _droppedRanges = [];
    private uint _maxSeqSeen;
    private uint _epoch;
    private bool _formatted;

    private NorFlashSimulator _flash = null!;
    private FlashQueue _queue = null!;

    /// <summary>Prepares a campaign.</summary>
    /// <param name="geometry">The flash to run on.</param>
    /// <param name="policy">The queue's full policy.</param>
    /// <param name="seed">Seed of the flash's random choices and of the epoch.</param>
    /// <param name="cutsAt">For each mutation index, where inside it to cut (0 before, 1 after; empty for none).</param>
    /// <param name="weakBits">Whether torn operations leave weak bits.</param>
    public PowerCutCampaign(FlashGeometry geometry, FullPolicy policy, int seed, Func<long, double[]> cutsAt, bool weakBits)
    {
        _geometry = geometry;
        _policy = policy;
        _seed = seed;
        _cutsAt = cutsAt;
        _weakBits = weakBits;
    }

    /// <summary>Cut points at which the flash was forked, cut, remounted and checked.</summary>
    public long CutPointsChecked { get; private set; }

    /// <summary>Program and erase operations the workload performed.</summary>
    public long Mutations { get; private set; }

    /// <summary>Entries the queue reported dropped (full policy) to the reader during the workload.</summary>
    public long DroppedReported { get; private set; }

    /// <summary>Every broken promise found, with the seed and cut point that shows it.</summary>
    public IReadOnlyList<string> Violations => _violations;

    /// <summary>The self-checking payload of entry <paramref name="id"/>.</summary>
    /// <param name="id">Entry id (its first four bytes).</param>
    /// <param name="size">Payload size, at least 4.</param>
    /// <returns>The payload.</returns>
    public static byte[] Payload(uint id, int size)
    {
        var p = new byte[size];
        BitConverter.TryWriteBytes(p, id);
        for (int i = 4; i < size; i++)
        {
            p[i] = (byte)((id * 131) + (i * 7));
        }

        return p;
    }

    /// <summary>A scripted workload: offline stretches that fill the queue, online stretches that drain it, reboots.</summary>
    /// <param name="seed">Seed of the script.</param>
    /// <param name="steps">Number of steps.</param>
    /// <returns>The steps, each with a random argument.</returns>
    public static List<(Step Step, int Arg)> Script(int seed, int steps)
    {
        var rng = new Random(seed);
        var script = new List<(Step, int)>();
        for (int i = 0; i < steps; i++)
        {
            bool online = (i / 120) % 2 == 1;
            int r = rng.Next(100);
            Step step = online
                ? r switch { < 35 => Step.Append, < 60 => Step.ReadBatch, < 85 => Step.AckBatch, < 90 => Step.LinkLost, < 95 => Step.Reboot, _ => Step.Maintain }
                : r switch { < 88 => Step.Append, < 92 => Step.Reboot, _ => Step.Maintain };
            script.Add((step, rng.Next()));
        }

        return script;
    }

    /// <summary>Runs the workload, checking every cut point <c>cutsAt</c> selects.</summary>
    /// <param name="script">The steps.</param>
    public void Run(IEnumerable<(Step Step, int Arg)> script)
    {
        _flash = new NorFlashSimulator(_geometry, seed: _seed);
        _flash.BeforeMutation = OnMutation;
        Boot(0x5EED0000u ^ (uint)_seed);
        uint nextId = 1;
        foreach (var (step, arg) in script)
        {
            switch (step)
            {
                case Step.Append:
                    uint id = nextId++;
                    int size = 4 + (arg % 150);
                    byte priority = (byte)(arg % 7 == 0 ? 2 : arg % 3 == 0 ? 1 : 0);
                    _attempted.Add(id);
                    uint seq;
                    try
                    {
                        seq = _queue.Append(1, priority, Payload(id, size), 0, size);
                    }
                    catch (QueueFullException)
                    {
                        _attempted.Remove(id);
                        continue;
                    }

                    _returned[id] = seq;
                    _maxSeqSeen = Math.Max(_maxSeqSeen, seq);
                    break;
                case Step.ReadBatch:
                    var buf = new byte[_queue.MaxPayload];
                    for (int n = 0; n < 1 + (arg % 4); n++)
                    {
                        var e = new QueueEntry();
                        if (!_queue.TryRead(e, buf, 0))
                        {
                            break;
                        }

                        _maxSeqSeen = Math.Max(_maxSeqSeen, e.Seq);
                        if (e.Type == EntryType.Dropped)
                        {
                            _droppedRanges.Add((e.DroppedFirstSeq, e.DroppedLastSeq));
                            DroppedReported += e.DroppedCount;
                            _batch.Add((e.Seq, 0));
                        }
                        else
                        {
                            _batch.Add((e.Seq, BitConverter.ToUInt32(buf, 0)));
                        }
                    }

                    break;
                case Step.AckBatch:
                    if (_batch.Count > 0)
                    {
                        foreach (var (_, bid) in _batch)
                        {
                            _ackInFlight.Add(bid);
                        }

                        _queue.Acknowledge(_batch[^1].Seq);
                        _acked.UnionWith(_ackInFlight);
                        _ackInFlight.Clear();
                        _batch.Clear();
                    }

                    break;
                case Step.LinkLost:
                    _batch.Clear();
                    _queue.Rewind();
                    break;
                case Step.Reboot:
                    _batch.Clear();
                    Boot(0xBAD);
                    break;
                case Step.Maintain:
                    _queue.Maintain();
                    break;
            }
        }

        Mutations = _flash.Mutations;
    }

    private void Boot(uint epochIfFormatting)
    {
        _queue = new FlashQueue(_flash, _policy);
        bool found = _queue.Mount(epochIfFormatting);
        if (!found && _formatted)
        {
            _violations.Add($"seed {_seed}: a clean reboot formatted the queue again");
        }

        if (!_formatted)
        {
            _epoch = _queue.Epoch;
            _formatted = true;
        }
    }

    private void OnMutation(long index, bool isErase, int address, byte[] buffer, int offset, int count)
    {
        foreach (double fraction in _cutsAt(index))
        {
            CheckCutAt(index, fraction, isErase, address, buffer, offset, count);
        }
    }

    private void CheckCutAt(long index, double fraction, bool isErase, int address, byte[] buffer, int offset, int count)
    {
        CutPointsChecked++;
        int forkSeed = HashCode.Combine(_seed, index, fraction);
        using var fork = _flash.Fork(forkSeed);
        fork.ScheduleCut(0, fraction, _weakBits);
        try
        {
            if (isErase)
            {
                fork.EraseSector(address / _geometry.SectorBytes);
            }
            else
            {
                fork.Program(address, buffer, offset, count);
            }

            _violations.Add($"seed {_seed} cut {index}: the scheduled cut did not strike");
            return;
        }
        catch (PowerLossException)
        {
        }

        fork.PowerOn(forkSeed + 1);
        string where = $"seed {_seed}, mutation {index}, cut at {fraction:0.###} of {(isErase ? "erase" : "program")} 0x{address:X}+{count}";
        try
        {
            Verify(fork, where);
        }
        catch (Exception ex) when (ex is not PowerLossException)
        {
            _violations.Add($"{where}: {ex.GetType().Name}: {ex.Message}");
        }
    }

    private void Verify(NorFlashSimulator fork, string where)
    {
        var q = new FlashQueue(fork, _policy);
        bool mounted = q.Mount(0xF0F0F0F0);
        if (_formatted && _returned.Count > 0 && (!mounted || q.Epoch != _epoch))
        {
            _violations.Add($"{where}: epoch changed or queue lost ({q.Epoch:x8} vs {_epoch:x8})");
            return;
        }

        var seen = new HashSet<uint>();
        var ranges = new List<(uint, uint)>(_droppedRanges);
        var buf = new byte[q.MaxPayload];
        var e = new QueueEntry();
        uint lastOriginalId = 0;
        uint lastSeq = 0;
        while (q.TryRead(e, buf, 0))
        {
            if (e.Seq <= lastSeq)
            {
                _violations.Add($"{where}: sequence {e.Seq} after {lastSeq}");
            }

            lastSeq = e.Seq;
            if (e.Type == EntryType.Dropped)
            {
                ranges.Add((e.DroppedFirstSeq, e.DroppedLastSeq));
                continue;
            }

            uint id = BitConverter.ToUInt32(buf, 0);
            bool relocated = e.Seq != e.OriginalSeq;
            if (e.Length < 4 || !buf.AsSpan(0, e.Length).SequenceEqual(Payload(id, e.Length)))
            {
                _violations.Add($"{where}: corrupt payload for entry {e.Seq}");
                continue;
            }

            if (!_attempted.Contains(id))
            {
                _violations.Add($"{where}: entry {id} was never appended");
            }

            if (_returned.TryGetValue(id, out uint firstSeq) && firstSeq != e.OriginalSeq)
            {
                _violations.Add($"{where}: entry {id} came back under original seq {e.OriginalSeq}, appended as {firstSeq}");
            }

            if (_acked.Contains(id) && !relocated)
            {
                _violations.Add($"{where}: acknowledged entry {id} came back");
            }

            if (!seen.Add(id) && !relocated)
            {
                _violations.Add($"{where}: entry {id} returned twice");
            }

            if (!relocated)
            {
                if (id < lastOriginalId)
                {
                    _violations.Add($"{where}: entry {id} after {lastOriginalId}: order broken");
                }

                lastOriginalId = id;
            }
        }

        foreach (var (id, seq) in _returned)
        {
            if (seen.Contains(id) || _acked.Contains(id) || _ackInFlight.Contains(id))
            {
                continue;
            }

            if (!ranges.Any(r => seq >= r.Item1 && seq <= r.Item2))
            {
                _violations.Add($"{where}: entry {id} (seq {seq}) lost without a drop marker");
            }
        }

        // The recovered queue keeps working, and never reuses a sequence number.
        uint fresh;
        try
        {
            fresh = q.Append(1, 2, Payload(0xFFFF_FFF0, 12), 0, 12);
        }
        catch (QueueFullException) when (_policy == FullPolicy.Reject)
        {
            return; // full and told to refuse: nothing to append until the reader acknowledges
        }

        if (fresh <= _maxSeqSeen || fresh <= lastSeq)
        {
            _violations.Add($"{where}: sequence {fresh} reused (max seen {Math.Max(_maxSeqSeen, lastSeq)})");
        }

        // Making room may move older entries forward first; the new entry follows them.
        bool found = false;
        while (!found && q.TryRead(e, buf, 0))
        {
            found = e.Seq == fresh;
        }

        if (!found)
        {
            _violations.Add($"{where}: entry appended after recovery not readable");
        }
    }
}
