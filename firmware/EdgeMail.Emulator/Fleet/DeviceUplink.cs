using EdgeMail.Firmware;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;
using EdgeMail.Firmware.Uplink;
using EdgeMail.Firmware.Uplink.Smtp;

namespace EdgeMail.Emulator.Fleet;

/// <summary>What a <see cref="VirtualDevice"/> needs from its uplink, MQTT or SMTP: one boot's worth of forwarding.</summary>
internal interface IDeviceUplink
{
    ForwarderState State { get; }

    bool IsConnected { get; }

    /// <summary>Whether the next <see cref="Step"/> may block on the network for a round trip or more (a connect, a
    /// session), so the scheduler runs it off its own thread.</summary>
    bool MayBlock { get; }

    /// <summary>Alerts sent for the first time.</summary>
    long Published { get; }

    /// <summary>Alerts sent again after a broken link (this boot).</summary>
    long Resent { get; }

    long Connects { get; }

    long Failures { get; }

    long ConnectedMs { get; }

    long Heartbeats { get; }

    long Receipts { get; }

    /// <summary>Alerts the gateway refused for good (SMTP 5xx), dropped so the queue moves on.</summary>
    long Rejected { get; }

    uint Raise(Alert alert);

    void Wake();

    /// <summary>Does what is due; returns milliseconds until the uplink next needs a call (0: soon).</summary>
    long Step();

    void Disconnect();
}

/// <summary>Contract 1: the firmware's <see cref="Forwarder"/> as it is.</summary>
internal sealed class MqttDeviceUplink(Forwarder forwarder) : IDeviceUplink
{
    public ForwarderState State => forwarder.State;

    public bool IsConnected => forwarder.IsConnected;

    public bool MayBlock => !forwarder.IsConnected; // a Step while disconnected connects when it is due

    public long Published => forwarder.Published;

    public long Resent => forwarder.Resent;

    public long Connects => forwarder.Connects;

    public long Failures => forwarder.Failures;

    public long ConnectedMs => forwarder.ConnectedMs;

    public long Heartbeats => forwarder.Heartbeats;

    public long Receipts => forwarder.Receipts;

    public long Rejected => 0;

    public uint Raise(Alert alert) => forwarder.Raise(alert);

    public void Wake() => forwarder.Wake();

    public long Step() => forwarder.Step(0);

    public void Disconnect() => forwarder.Disconnect();
}

/// <summary>
/// Contract 2: the firmware's <see cref="SmtpUplink"/>, scheduled the way a mail-only device would run it. Always-on: a
/// session (connect, EHLO, AUTH, one message per queued alert, QUIT) as soon as something new is queued. Duty-cycled:
/// a session every <c>dutyCycleMs</c>, or at once after a critical alert. A failed session (refused connect, 4xx, broken
/// link, timeout) backs off with full jitter, like the MQTT forwarder. A session runs to its end inside one
/// <see cref="Step"/>: the device is synchronous.
/// </summary>
internal sealed class SmtpDeviceUplink : IDeviceUplink
{
    private const long BackoffBaseMs = 1_000;
    private const long BackoffMaxMs = 30_000;

    private readonly AlertStore _store;
    private readonly FlashQueue _queue;
    private readonly SimulatedLink _link;
    private readonly IClock _clock;
    private readonly SmtpUplink _uplink;
    private readonly long _dutyCycleMs;
    private readonly ForwarderRandom _random;
    private uint _cleanThrough;
    private uint _sentThrough;
    private int _attempt;
    private long _nextAttemptMs;
    private long _nextWakeMs;
    private bool _wakeRequested;

    public SmtpDeviceUplink(AlertStore store, FlashQueue queue, SimulatedLink link, IClock clock, SmtpUplinkOptions options, long dutyCycleMs, uint jitterSeed)
    {
        _store = store;
        _queue = queue;
        _link = link;
        _clock = clock;
        _dutyCycleMs = dutyCycleMs;
        _random = new ForwarderRandom(jitterSeed);
        _uplink = new SmtpUplink(store, link, clock, options);

        // Anything left on flash from before the boot is sent at once (a burnt sequence number alone costs one empty session).
        _cleanThrough = queue.AckedThrough;
        _sentThrough = queue.AckedThrough;
        _wakeRequested = true;
    }

    public ForwarderState State { get; private set; } = ForwarderState.Offline;

    public bool IsConnected => false; // a session opens and closes inside one Step

    public bool MayBlock => State == ForwarderState.Backoff || _queue.NextSeq - 1 > _cleanThrough;

    public long Published { get; private set; }

    public long Resent { get; private set; }

    public long Connects { get; private set; }

    public long Failures { get; private set; }

    public long ConnectedMs { get; private set; }

    public long Heartbeats => 0;

    public long Receipts => 0;

    public long Rejected => _uplink.Rejected;

    /// <summary>Why the last session failed; null after a good one.</summary>
    public string? LastError { get; private set; }

    public uint Raise(Alert alert)
    {
        uint seq = _store.Raise(alert);
        if (alert.Severity == Severity.Critical)
        {
            _wakeRequested = true;
        }

        return seq;
    }

    public void Wake() => _wakeRequested = true;

    public long Step()
    {
        long now = _clock.UptimeMs;
        if (State == ForwarderState.Backoff && now < _nextAttemptMs)
        {
            return _nextAttemptMs - now;
        }

        bool somethingNew = _queue.NextSeq - 1 > _cleanThrough;
        if (!somethingNew && State != ForwarderState.Backoff)
        {
            _wakeRequested = false;
            if (_dutyCycleMs == 0)
            {
                State = ForwarderState.Idle;
                return 20;
            }

            // A scheduled wake with nothing to send: no session, next wake on the schedule.
            State = ForwarderState.Offline;
            if (now >= _nextWakeMs)
            {
                _nextWakeMs = now + _dutyCycleMs;
            }

            return _nextWakeMs - now;
        }

        if (_dutyCycleMs > 0 && State != ForwarderState.Backoff && !_wakeRequested && now < _nextWakeMs)
        {
            return _nextWakeMs - now;
        }

        return Session(now);
    }

    public void Disconnect()
    {
        // Sessions end with QUIT inside Step; nothing stays open.
    }

    private long Session(long start)
    {
        _wakeRequested = false;
        State = ForwarderState.Sending;
        Connects++;
        uint ackedBefore = _queue.AckedThrough;
        long endedBefore = _link.MessagesEnded;
        bool ok;
        try
        {
            _uplink.SendPending();
            ok = true;
            LastError = null;
        }
        catch (SmtpException ex)
        {
            ok = false;
            LastError = ex.Message;
        }
        catch (TransportException ex)
        {
            ok = false;
            LastError = ex.Message;
        }
        finally
        {
            ConnectedMs += _clock.UptimeMs - start;
        }

        // Messages whose end of data left the device: the server may have taken them. Those at or below the earlier
        // high-water mark are resends (their 250 was lost with the link); the rest go out for the first time.
        // Sequence numbers stand for messages here: records merged into a later update are skipped by the store.
        long ended = _link.MessagesEnded - endedBefore;
        long again = Math.Clamp((long)_sentThrough - ackedBefore, 0, ended);
        Resent += again;
        Published += ended - again;
        _sentThrough = Math.Max(_sentThrough, ackedBefore + (uint)ended);

        long now = _clock.UptimeMs;
        if (ok)
        {
            _attempt = 0;
            _cleanThrough = _queue.NextSeq - 1;
            _sentThrough = Math.Max(_sentThrough, _queue.AckedThrough);
            if (_dutyCycleMs > 0)
            {
                _nextWakeMs = now + _dutyCycleMs;
                State = ForwarderState.Offline;
                return _dutyCycleMs;
            }

            State = ForwarderState.Idle;
            return 0;
        }

        Failures++;
        _attempt = Math.Min(_attempt + 1, 30);
        long cap = Math.Min(BackoffMaxMs, BackoffBaseMs << Math.Min(_attempt, 20));
        _nextAttemptMs = now + 1 + _random.Next(cap);
        State = ForwarderState.Backoff;
        return _nextAttemptMs - now;
    }
}
