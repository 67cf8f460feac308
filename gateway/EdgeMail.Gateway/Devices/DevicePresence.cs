using System.Collections.Concurrent;

namespace EdgeMail.Gateway.Devices;

/// <summary>
/// Which devices are connected now and when each was last heard from (connect, alert, heartbeat, over any transport),
/// in memory. The console shows it; the silence watch turns a long quiet into an alert. After a restart the spool's
/// last alert and heartbeat times seed it (<see cref="Seed"/>).
/// <para>
/// Each time is kept twice: the wall time, to show, and a monotonic timestamp (<see cref="TimeProvider.GetTimestamp"/>),
/// to measure how long ago it was, which a step of the wall clock (NTP, an operator setting the date) does not move. A
/// seeded time has only the spool's wall time; it is turned into a timestamp once, when it is seeded.
/// </para>
/// </summary>
public sealed class DevicePresence
{
    private readonly ConcurrentDictionary<string, Moment> _lastSeen = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int> _connections = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, (long? Last, TimeSpan? Interval)> _heartbeats = new(StringComparer.Ordinal); // Last: a timestamp
    private readonly TimeProvider _clock;

    /// <summary>Creates the tracker.</summary>
    /// <param name="clock">Clock.</param>
    public DevicePresence(TimeProvider clock) => _clock = clock;

    /// <summary>Raised when a device is heard from (on the caller's thread; keep it short).</summary>
    public event Action<string>? Heard;

    /// <summary>Devices with an open MQTT connection to the embedded broker.</summary>
    public IReadOnlyCollection<string> Connected => _connections.Where(c => c.Value > 0).Select(c => c.Key).ToList();

    /// <summary>Whether the device has an open connection now.</summary>
    /// <param name="device">Device id.</param>
    /// <returns>True when connected.</returns>
    public bool IsConnected(string device) => _connections.TryGetValue(device, out int n) && n > 0;

    /// <summary>When the device was last heard from, if ever (since start, or as seeded).</summary>
    /// <param name="device">Device id.</param>
    /// <returns>The time, or null.</returns>
    public DateTimeOffset? LastSeen(string device) => _lastSeen.TryGetValue(device, out var at) ? at.Wall : null;

    /// <summary>When the device was last heard from, if ever: the wall time, and the monotonic timestamp to measure from.</summary>
    /// <param name="device">Device id.</param>
    /// <returns>The time, or null.</returns>
    public Moment? LastHeard(string device) => _lastSeen.TryGetValue(device, out var at) ? at : null;

    /// <summary>Now, as wall time and monotonic timestamp.</summary>
    /// <returns>The moment.</returns>
    public Moment Now() => new(_clock.GetUtcNow(), _clock.GetTimestamp());

    /// <summary>
    /// A past wall time (from the spool) as a monotonic timestamp: as long before now as the wall clock says it is. In
    /// the future (the wall clock was stepped back since) it counts as now.
    /// </summary>
    /// <param name="at">The wall time.</param>
    /// <returns>The moment.</returns>
    public Moment Past(DateTimeOffset at)
    {
        var now = Now();
        var ago = now.Wall - at;
        long ticks = ago > TimeSpan.Zero ? (long)(ago.TotalSeconds * _clock.TimestampFrequency) : 0;
        return new Moment(at, now.Stamp - ticks);
    }

    /// <summary>The device sent something (an alert or a heartbeat). A connection alone is not a sign of life: a hung sensor can keep its link up.</summary>
    /// <param name="device">Device id.</param>
    public void Seen(string device)
    {
        _lastSeen[device] = Now();
        Heard?.Invoke(device);
    }

    /// <summary>The device sent a heartbeat: counts as contact, and its spacing is its heartbeat interval.</summary>
    /// <param name="device">Device id.</param>
    public void HeartbeatSeen(string device)
    {
        long now = _clock.GetTimestamp();
        // A seeded interval has no previous heartbeat time: the first heartbeat after a restart keeps it.
        _heartbeats.AddOrUpdate(device, (now, null), (_, known) =>
            (now, known.Last is long last && _clock.GetElapsedTime(last, now) is { } gap && gap > TimeSpan.Zero ? gap : known.Interval));
        Seen(device);
    }

    /// <summary>The device's heartbeat interval as last observed, if two heartbeats were seen.</summary>
    /// <param name="device">Device id.</param>
    /// <returns>The interval, or null.</returns>
    public TimeSpan? HeartbeatInterval(string device) => _heartbeats.TryGetValue(device, out var h) ? h.Interval : null;

    /// <summary>Sets a heartbeat interval from the spool's history, unless one was observed since start.</summary>
    /// <param name="device">Device id.</param>
    /// <param name="interval">The interval.</param>
    public void SeedHeartbeatInterval(string device, TimeSpan interval) =>
        _heartbeats.AddOrUpdate(device, (null, interval), (_, known) => known.Interval is null ? (known.Last, interval) : known);

    /// <summary>A connection of the device opened.</summary>
    /// <param name="device">Device id.</param>
    public void ConnectionOpened(string device) => _connections.AddOrUpdate(device, 1, (_, n) => n + 1);

    /// <summary>A connection of the device closed.</summary>
    /// <param name="device">Device id.</param>
    public void ConnectionClosed(string device) => _connections.AddOrUpdate(device, 0, (_, n) => Math.Max(0, n - 1));

    /// <summary>Sets a last-seen time from the spool, unless a later one is known.</summary>
    /// <param name="device">Device id.</param>
    /// <param name="at">When it was last heard from.</param>
    public void Seed(string device, DateTimeOffset at) => _lastSeen.AddOrUpdate(device, _ => Past(at), (_, known) => known.Wall > at ? known : Past(at));
}

/// <summary>A moment: the wall time it was, and the monotonic timestamp (<see cref="TimeProvider.GetTimestamp"/>) to measure from.</summary>
/// <param name="Wall">Wall time, to show and to name things by.</param>
/// <param name="Stamp">Monotonic timestamp, to measure with.</param>
public readonly record struct Moment(DateTimeOffset Wall, long Stamp);
