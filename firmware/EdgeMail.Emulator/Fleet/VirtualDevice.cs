using System.Globalization;
using EdgeMail.Firmware;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;
using EdgeMail.Firmware.Uplink;
using EdgeMail.Firmware.Uplink.Smtp;
using EdgeMail.Simulation.Boards;
using EdgeMail.Simulation.Flash;

namespace EdgeMail.Emulator.Fleet;

/// <summary>
/// One emulated device: the firmware core (flash queue, alert store, forwarder) on a simulated NOR flash kept in an
/// image file, a <see cref="SimulatedLink"/> over real TCP (or TLS), its uplink (the MQTT <see cref="Forwarder"/> or the
/// <see cref="SmtpUplink"/>), and seeded generators for its alerts, link and power.
/// Driven by <see cref="Tick"/> from one scheduler thread.
/// </summary>
internal sealed class VirtualDevice : IDisposable
{
    private const uint NoCut = 0;

    /// <summary>Real milliseconds between polls of an idle, always-on connection.</summary>
    private const int IdlePollRealMs = 250;

    private readonly Scenario _scenario;
    private readonly FleetClock _clock;
    private readonly NorFlashSimulator _flash;
    private readonly SimulatedLink _link;
    private readonly Random _alertRng;
    private readonly Random _linkRng;
    private readonly Random _powerRng;
    private readonly Alert _alert = new();
    private readonly string _bootFile;
    private readonly uint _epoch;
    private readonly ForwarderOptions _options;
    private readonly SmtpUplinkOptions? _smtpOptions;
    private readonly long _endAt;
    private readonly List<Pending> _unacked = [];
    private readonly List<long> _latencies = [];

    private FlashQueue _queue = null!;
    private AlertStore _store = null!;
    private IDeviceUplink _forwarder = null!;
    private bool _linkModelUp = true;
    private uint _boot;
    private long _nextAlertAt;
    private long _nextStormAt;
    private int _stormLeft;
    private string _stormCode = string.Empty;
    private long _nextLinkChangeAt = long.MaxValue;
    private int _outageIndex;
    private long _nextCutAt = long.MaxValue;
    private long _powerOnAt = long.MaxValue;
    private bool _off;
    private bool _quiet;
    private volatile bool _quiesceRequested;
    private int _alertNumber;

    public VirtualDevice(int number, string id, string secret, BoardProfile board, Scenario scenario, FleetClock clock, string stateDirectory, IDeviceObserver? observer = null)
    {
        Number = number;
        Observer = observer;
        Id = id;
        _scenario = scenario;
        _clock = clock;
        int seed = scenario.Seed;
        _alertRng = new Random(Mix(seed, number, 1));
        _linkRng = new Random(Mix(seed, number, 2));
        _powerRng = new Random(Mix(seed, number, 3));
        _epoch = (uint)Mix(seed, number, 4);
        string safe = string.Concat(id.Select(c => char.IsLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_'));
        _flash = NorFlashSimulator.FromProfile(board, seed: Mix(seed, number, 5), imagePath: Path.Combine(stateDirectory, safe + ".flash"));
        _bootFile = Path.Combine(stateDirectory, safe + ".boot");
        _boot = File.Exists(_bootFile) && uint.TryParse(File.ReadAllText(_bootFile), NumberStyles.None, CultureInfo.InvariantCulture, out uint b) ? b : 0;
        _options = new ForwarderOptions
        {
            DeviceId = id,
            Secret = secret,
            Host = scenario.Host,
            Port = scenario.EffectivePort,
            MaxInFlight = scenario.Uplink.MaxInFlight,
            KeepAliveSeconds = scenario.Uplink.KeepAliveSeconds,
            HeartbeatIntervalMs = (long)(scenario.Uplink.HeartbeatSeconds * 1000),
            DutyCycleIntervalMs = (long)(scenario.Uplink.DutyCycleSeconds * 1000),
            HasRtc = scenario.Uplink.HasRtc,
            JitterSeed = (uint)Mix(seed, number, 6),
            FirmwareVersion = "emulator-1",
            BackoffBaseMs = 1_000,
            BackoffMaxMs = 30_000,
        };

        if (scenario.Uplink.Protocol == UplinkProtocol.Smtp)
        {
            string n = number.ToString(CultureInfo.InvariantCulture);
            _smtpOptions = new SmtpUplinkOptions
            {
                DeviceId = id,
                Password = scenario.SmtpAuthenticates ? secret : null,
                Host = scenario.Host,
                Port = scenario.EffectivePort,
                From = scenario.Uplink.Smtp.From.Replace("{id}", id, StringComparison.Ordinal).Replace("{n}", n, StringComparison.Ordinal),
                To = scenario.Uplink.Smtp.To,
                ClientName = id,
                TimeoutMs = (int)(scenario.Uplink.Smtp.TimeoutSeconds * 1000),
            };
        }

        _link = new SimulatedLink(Transports.Create(scenario.Uplink), clock);
        _endAt = (long)(scenario.DurationSeconds * 1000);
        long now = clock.NowMs;
        _nextAlertAt = NextArrival(now, scenario.Alerts.RatePerSecond, _alertRng);
        _nextStormAt = NextArrival(now, scenario.Alerts.StormEverySeconds > 0 ? 1 / scenario.Alerts.StormEverySeconds : 0, _alertRng);
        ScheduleLink(now, initial: true);
        _nextCutAt = NextArrival(now, scenario.Power.MeanSecondsBetweenCuts > 0 ? 1 / scenario.Power.MeanSecondsBetweenCuts : 0, _powerRng);
        PowerUp(now);
    }

    public int Number { get; }

    /// <summary>Told of every raise, acknowledgement, receipt, power cut and link change (the chaos run's ground truth).</summary>
    public IDeviceObserver? Observer { get; }

    /// <summary>The alert id the gateway sees for the record first queued as <paramref name="idSeq"/> (Contract 1).</summary>
    public string AlertId(uint idSeq) => _epoch.ToString("x8", CultureInfo.InvariantCulture) + "-" + idSeq.ToString(CultureInfo.InvariantCulture);

    /// <summary>Simulated time of the last <see cref="Tick"/>.</summary>
    public long LastTickMs { get; private set; } = -1;

    public string Id { get; }

    public DeviceStats Stats { get; } = new();

    public bool IsOff => _off;

    public bool IsConnected => !_off && _forwarder.IsConnected;

    /// <summary>Whether a <see cref="Tick"/> at <paramref name="now"/> may block on the network (a boot, a connect, an SMTP session).</summary>
    public bool MayBlock(long now) => _off ? now >= _powerOnAt || _quiesceRequested : _forwarder.MayBlock;

    public ForwarderState State => _off ? ForwarderState.Offline : _forwarder.State;

    public uint Depth => _off ? Stats.LastDepth : _store.Depth;

    /// <summary>True when everything raised is acknowledged (or dropped) and the flash queue is empty.</summary>
    public bool Drained => !_off && _quiet && _unacked.Count == 0
        && (_forwarder.State == ForwarderState.Idle || (_options.DutyCycleIntervalMs > 0 && _forwarder.State == ForwarderState.Offline));

    /// <summary>Asks the device (from any thread) to stop generating alerts, link changes and cuts, and to drain.</summary>
    public void RequestQuiesce() => _quiesceRequested = true;

    private void Quiesce()
    {
        _quiet = true;
        _linkModelUp = true;
        _link.DownAtMs = long.MaxValue;
        _link.Up = true;
        if (_off)
        {
            _powerOnAt = _clock.NowMs;
        }
        else
        {
            _flash.CancelCut();
            _forwarder.Wake();
        }
    }

    /// <summary>Runs what is due at <paramref name="now"/>; returns the simulated time it is next due.</summary>
    public long Tick(long now)
    {
        LastTickMs = now;
        try
        {
            if (_off)
            {
                if (_quiesceRequested)
                {
                    _powerOnAt = Math.Min(_powerOnAt, now);
                }

                if (now < _powerOnAt)
                {
                    return _powerOnAt;
                }

                PowerUp(now);
            }

            RunEvents(now);
            if (_off)
            {
                return _powerOnAt;
            }

            if (_quiesceRequested && !_quiet && now >= _endAt)
            {
                Quiesce();
            }

            long wait = _forwarder.Step();
            Account(_clock.NowMs);
            long next = NextEvent();
            long poll = _forwarder.State switch
            {
                ForwarderState.Sending => now + Math.Max(1, (long)_clock.Speed),
                // Idle: nothing in flight, and a raise steps the uplink in the same tick; the poll only picks up receipts,
                // keep-alive and heartbeats (seconds apart), so it can be coarse. Duty-cycled devices time their linger with it.
                ForwarderState.Idle => now + Math.Max(1, (long)((_options.DutyCycleIntervalMs > 0 ? 20 : IdlePollRealMs) * _clock.Speed)),
                ForwarderState.Connecting => now,
                _ => now + Math.Max(wait, 1),
            };
            return Math.Min(next, poll);
        }
        catch (PowerLossException)
        {
            PowerDown(now, torn: true);
            return _powerOnAt;
        }
    }

    public void Finish()
    {
        if (!_off)
        {
            Account(_clock.NowMs);
            CollectForwarder();
            Stats.LastDepth = _store.Depth;
            _forwarder.Disconnect();
        }

        Stats.StillUnacked = _unacked.Sum(p => (long)p.Count);
        Stats.Latencies = [.. _latencies];
        Stats.BytesSent = _link.BytesSent;
        Stats.BytesReceived = _link.BytesReceived;
        Stats.Boots = _boot;
    }

    public void Dispose()
    {
        _link.Dispose();
        _flash.Dispose();
    }

    private void RunEvents(long now)
    {
        while (!_off && now >= _nextCutAt && _nextCutAt < _endAt)
        {
            long at = _nextCutAt;
            _nextCutAt = NextArrival(at, 1 / _scenario.Power.MeanSecondsBetweenCuts, _powerRng);
            if (_powerRng.NextDouble() < _scenario.Power.MidWriteFraction)
            {
                // Strike inside one of the next few flash writes (a raise, an acknowledgement or maintenance).
                _flash.ScheduleCut(_powerRng.Next(0, 3), _powerRng.NextDouble(), weakBits: true);
                Stats.CutsArmedMidWrite++;
                Observer?.CutArmed(this, at);
            }
            else
            {
                PowerDown(now, torn: false);
                return;
            }
        }

        while (now >= _nextLinkChangeAt && _nextLinkChangeAt < _endAt)
        {
            ChangeLink(_nextLinkChangeAt);
        }

        while (now >= _nextStormAt && _nextStormAt < _endAt)
        {
            _stormLeft += _scenario.Alerts.StormSize;
            _stormCode = _scenario.Alerts.Codes[_alertRng.Next(_scenario.Alerts.Codes.Length)];
            Stats.Storms++;
            _nextStormAt = NextArrival(_nextStormAt, 1 / _scenario.Alerts.StormEverySeconds, _alertRng);
        }

        while (_stormLeft > 0 && now >= _nextAlertAt && _nextAlertAt < _endAt)
        {
            _stormLeft--;
            RaiseOne(now, _stormCode, Severity.Warning);
            _nextAlertAt += (long)_scenario.Alerts.StormSpacingMs;
        }

        while (_stormLeft == 0 && now >= _nextAlertAt && _nextAlertAt < _endAt)
        {
            string code = _scenario.Alerts.Codes[_alertRng.Next(_scenario.Alerts.Codes.Length)];
            RaiseOne(now, code, PickSeverity());
            _nextAlertAt = NextArrival(_nextAlertAt, _scenario.Alerts.RatePerSecond, _alertRng);
        }
    }

    private void RaiseOne(long now, string code, Severity severity)
    {
        _alertNumber++;
        _alert.Reset();
        _alert.Code = code;
        _alert.Severity = severity;
        _alert.Text = code + " on " + Id + " (#" + _alertNumber.ToString(CultureInfo.InvariantCulture) + ")";
        _alert.AddValue("n", _alertNumber, 0);
        Stats.RaiseCalls++;

        // The store merges a repeat (same code, severity and state) into its queued record while that is not handed
        // out yet: counted only (seq 0), or written as an update record that replaces it. Mirror that here so the
        // report counts raises, not records.
        uint handedOut = _queue.HandedOutThrough;
        int merged = _unacked.FindLastIndex(p => p.Code == code && p.Severity == severity && p.Seq > handedOut);
        uint seq;
        try
        {
            seq = _forwarder.Raise(_alert);
        }
        catch (PowerLossException)
        {
            Stats.RaisesCutShort++;
            throw;
        }

        // The alert's id as the store chose it (the mirror above only keeps the report's counts).
        Observer?.Raised(this, _store.LastRaisedIdSeq, seq, now, code, severity);
        if (seq == NoCut)
        {
            Stats.Coalesced++;
            if (merged >= 0)
            {
                _unacked[merged].Count++;
            }
            else
            {
                Stats.Acknowledged++; // merged into a record of an earlier run of the emulator: not tracked
            }

            return;
        }

        Stats.Written++;
        if (merged >= 0)
        {
            Stats.Coalesced++;
            Pending old = _unacked[merged];
            _unacked.RemoveAt(merged);
            _unacked.Add(new Pending(seq, old.At, code, severity) { Count = old.Count + 1, IdSeq = _store.LastRaisedIdSeq });
        }
        else
        {
            _unacked.Add(new Pending(seq, now, code, severity) { Count = 1, IdSeq = _store.LastRaisedIdSeq });
        }
    }

    private Severity PickSeverity()
    {
        double[] w = _scenario.Alerts.SeverityMix;
        double r = _alertRng.NextDouble() * (w[0] + w[1] + w[2]);
        return r < w[0] ? Severity.Info : r < w[0] + w[1] ? Severity.Warning : Severity.Critical;
    }

    private void Account(long now)
    {
        uint acked = _queue.AckedThrough;
        int done = 0;
        while (done < _unacked.Count && _unacked[done].Seq <= acked)
        {
            Pending p = _unacked[done++];
            _latencies.Add(now - p.At);
            Observer?.Acknowledged(this, p.IdSeq, p.Seq, now);
            Stats.Acknowledged += p.Count;
        }

        if (done > 0)
        {
            _unacked.RemoveRange(0, done);
        }
    }

    private void PowerUp(long now)
    {
        _off = false;
        _powerOnAt = long.MaxValue;
        if (_flash.IsPoweredOff)
        {
            _flash.PowerOn(seed: Mix(_scenario.Seed, Number, 100 + (int)_boot));
        }

        _boot++;
        File.WriteAllText(_bootFile, _boot.ToString(CultureInfo.InvariantCulture));
        var deviceClock = new DeviceClock(_clock, now);
        var wall = new WallClock(deviceClock);
        _queue = new FlashQueue(_flash);
        _queue.Mount(_epoch);
        _store = new AlertStore(_queue, deviceClock, wall, _boot);
        _link.Close();
        _forwarder = _smtpOptions is null
            ? new MqttDeviceUplink(new Forwarder(_store, _link, deviceClock, wall, _options) { Boot = _boot, ReceiptHandler = Observer is null ? null : new ReceiptRelay(this, Observer) })
            : new SmtpDeviceUplink(_store, _queue, _link, deviceClock, _smtpOptions, _options.DutyCycleIntervalMs, _options.JitterSeed + _boot);
        Account(now);
        if (Stats.HandedOutAtCut > 0)
        {
            // Records handed out before the cut and not durably acknowledged go out again under the same id.
            Stats.ResentAfterReboot += Math.Max(0, (long)Stats.HandedOutAtCut - _queue.AckedThrough);
            Stats.HandedOutAtCut = 0;
        }
    }

    private void PowerDown(long now, bool torn)
    {
        if (!_off)
        {
            CollectForwarder();
            Stats.HandedOutAtCut = _queue.HandedOutThrough;
            Stats.LastDepth = _queue.Depth;
        }

        _off = true;
        Observer?.PowerCut(this, now, torn, (long)(_scenario.Power.OffSeconds * 1000));
        _flash.CancelCut();
        _link.Close();
        Stats.PowerCuts++;
        if (torn)
        {
            Stats.TornWrites++;
        }

        _powerOnAt = now + (long)(_scenario.Power.OffSeconds * 1000);
    }

    private void CollectForwarder()
    {
        Stats.Published += _forwarder.Published;
        Stats.Resent += _forwarder.Resent;
        Stats.Connects += _forwarder.Connects;
        Stats.Failures += _forwarder.Failures;
        Stats.ConnectedMs += _forwarder.ConnectedMs;
        Stats.Heartbeats += _forwarder.Heartbeats;
        Stats.Receipts += _forwarder.Receipts;
        Stats.Rejected += _forwarder.Rejected;
        Stats.Dropped += _queue.DroppedSinceMount;
    }

    private void ScheduleLink(long now, bool initial)
    {
        LinkModel m = _scenario.Link;
        switch (m.Mode)
        {
            case LinkMode.Flaps:
                _linkModelUp = true;
                _link.Up = true;
                _nextLinkChangeAt = now + Exponential(m.MeanUpSeconds, _linkRng);
                _link.DownAtMs = _nextLinkChangeAt < _endAt ? _nextLinkChangeAt : long.MaxValue;
                break;
            case LinkMode.Outages when initial:
                _outageIndex = 0;
                _nextLinkChangeAt = m.Outages.Length > 0 ? (long)(m.Outages[0].AtSeconds * 1000) : long.MaxValue;
                _link.DownAtMs = _nextLinkChangeAt < _endAt ? _nextLinkChangeAt : long.MaxValue;
                break;
            default:
                _nextLinkChangeAt = long.MaxValue;
                break;
        }
    }

    private void ChangeLink(long at)
    {
        LinkModel m = _scenario.Link;
        if (m.Mode == LinkMode.Flaps)
        {
            _linkModelUp = !_linkModelUp;
            Stats.LinkDowns += _linkModelUp ? 0 : 1;
            _nextLinkChangeAt = at + Exponential(_linkModelUp ? m.MeanUpSeconds : m.MeanDownSeconds, _linkRng);
        }
        else
        {
            // Outages: down at AtSeconds, up after ForSeconds.
            Outage o = m.Outages[_outageIndex];
            if (_linkModelUp)
            {
                _linkModelUp = false;
                Stats.LinkDowns++;
                _nextLinkChangeAt = (long)((o.AtSeconds + o.ForSeconds) * 1000);
            }
            else
            {
                _linkModelUp = true;
                _outageIndex++;
                _nextLinkChangeAt = _outageIndex < m.Outages.Length ? (long)(m.Outages[_outageIndex].AtSeconds * 1000) : long.MaxValue;
            }
        }

        // While up, the link also breaks by itself at the next drop (inside a call sequence, e.g. an SMTP session).
        _link.DownAtMs = _linkModelUp && _nextLinkChangeAt < _endAt ? _nextLinkChangeAt : long.MaxValue;
        _link.Up = _linkModelUp;
        Observer?.LinkChanged(this, at, _linkModelUp);
    }

    private long NextEvent()
    {
        if (_quiet)
        {
            return long.MaxValue;
        }

        long next = Math.Min(_nextCutAt, _nextLinkChangeAt);
        next = Math.Min(next, _nextStormAt);
        next = Math.Min(next, _nextAlertAt);
        // Be due at the end of the run too, to notice the drain phase promptly.
        return next < _endAt ? next : Math.Max(_endAt, LastTickMs + 10);
    }

    private static long NextArrival(long from, double ratePerSecond, Random rng) =>
        ratePerSecond <= 0 ? long.MaxValue : from + Exponential(1 / ratePerSecond, rng);

    private static long Exponential(double meanSeconds, Random rng) =>
        Math.Max(1, (long)(-Math.Log(1 - rng.NextDouble()) * meanSeconds * 1000));

    /// <summary>A well-mixed seed for one purpose of one device (SplitMix64 finaliser).</summary>
    private static int Mix(int seed, int device, int purpose)
    {
        ulong z = ((ulong)(uint)seed << 32) ^ ((ulong)(uint)device * 0x9E3779B97F4A7C15UL) ^ ((ulong)(uint)purpose << 48);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (int)(z & 0x7FFFFFFF);
    }
}

/// <summary>A written record not yet acknowledged, with the raises it carries.</summary>
internal sealed class Pending(uint seq, long at, string code, Severity severity)
{
    public uint Seq { get; } = seq;

    public long At { get; } = at;

    public string Code { get; } = code;

    public Severity Severity { get; } = severity;

    public int Count { get; set; }

    /// <summary>The sequence number in the alert's id: its first record's (an update record keeps its original's id).</summary>
    public uint IdSeq { get; init; }
}

/// <summary>What a chaos run learns from each device as it happens (called on the device's scheduler thread).</summary>
internal interface IDeviceObserver
{
    /// <summary>A raise returned: the alert <paramref name="idSeq"/> is on flash as record <paramref name="seq"/> (a repeat merged into a queued alert keeps its id).</summary>
    void Raised(VirtualDevice device, uint idSeq, uint seq, long at, string code, Severity severity);

    /// <summary>The gateway acknowledged the alert (the record left flash).</summary>
    void Acknowledged(VirtualDevice device, uint idSeq, uint seq, long at);

    void Receipt(VirtualDevice device, string json);

    void PowerCut(VirtualDevice device, long at, bool torn, long offMs);

    void CutArmed(VirtualDevice device, long at);

    void LinkChanged(VirtualDevice device, long at, bool up);
}

/// <summary>Hands the forwarder's receipts to the observer as text.</summary>
internal sealed class ReceiptRelay(VirtualDevice device, IDeviceObserver observer) : IReceiptHandler
{
    public void OnReceipt(byte[] buffer, int offset, int count) => observer.Receipt(device, System.Text.Encoding.UTF8.GetString(buffer, offset, count));
}

/// <summary>What one device did over the run (all boots).</summary>
internal sealed class DeviceStats
{
    public long RaiseCalls { get; set; }

    public long Written { get; set; }

    public long Coalesced { get; set; }

    public long RaisesCutShort { get; set; }

    public long Acknowledged { get; set; }

    public long Dropped { get; set; }

    public long Published { get; set; }

    public long Resent { get; set; }

    public long ResentAfterReboot { get; set; }

    public long Connects { get; set; }

    public long Failures { get; set; }

    public long ConnectedMs { get; set; }

    public long Heartbeats { get; set; }

    public long Receipts { get; set; }

    public long Rejected { get; set; }

    public long PowerCuts { get; set; }

    public long TornWrites { get; set; }

    public long CutsArmedMidWrite { get; set; }

    public long LinkDowns { get; set; }

    public long Storms { get; set; }

    public uint HandedOutAtCut { get; set; }

    public uint LastDepth { get; set; }

    public long StillUnacked { get; set; }

    public long BytesSent { get; set; }

    public long BytesReceived { get; set; }

    public uint Boots { get; set; }

    public long[] Latencies { get; set; } = [];
}
