using System.Collections.Concurrent;

namespace EdgeMail.Gateway.Devices;

/// <summary>
/// Which devices are connected now and when each was last heard from (connect, alert, heartbeat, over any transport),
/// in memory. The console shows it; the silence watch turns a long quiet into an alert. After a restart the spool's
/// last alert and heartbeat times seed it (<see cref="Seed"/>).
/// </summary>
public sealed class DevicePresence
{
    private readonly ConcurrentDictionary<string, DateTimeOffset> _lastSeen = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int> _connections = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, (DateTimeOffset Last, TimeSpan? Interval)> _heartbeats = new(StringComparer.Ordinal);
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
    public DateTimeOffset? LastSeen(string device) => _lastSeen.TryGetValue(device, out var at) ? at : null;

    /// <summary>The device sent something (an alert or a heartbeat). A connection alone is not a sign of life: a hung sensor can keep its link up.</summary>
    /// <param name="device">Device id.</param>
    public void Seen(string device)
    {
        _lastSeen[device] = _clock.GetUtcNow();
        Heard?.Invoke(device);
    }

    /// <summary>The device sent a heartbeat: counts as contact, and its spacing is its heartbeat interval.</summary>
    /// <param name="device">Device id.</param>
    public void HeartbeatSeen(string device)
    {
        var now = _clock.GetUtcNow();
        // A seeded interval has no previous heartbeat time (MinValue): the first heartbeat after a restart keeps it.
        _heartbeats.AddOrUpdate(device, (now, null), (_, known) =>
            (now, known.Last != DateTimeOffset.MinValue && now - known.Last is { } gap && gap > TimeSpan.Zero ? gap : known.Interval));
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
        _heartbeats.AddOrUpdate(device, (DateTimeOffset.MinValue, interval), (_, known) => known.Interval is null ? (known.Last, interval) : known);

    /// <summary>A connection of the device opened.</summary>
    /// <param name="device">Device id.</param>
    public void ConnectionOpened(string device) => _connections.AddOrUpdate(device, 1, (_, n) => n + 1);

    /// <summary>A connection of the device closed.</summary>
    /// <param name="device">Device id.</param>
    public void ConnectionClosed(string device) => _connections.AddOrUpdate(device, 0, (_, n) => Math.Max(0, n - 1));

    /// <summary>Sets a last-seen time from the spool, unless a later one is known.</summary>
    /// <param name="device">Device id.</param>
    /// <param name="at">When it was last heard from.</param>
    public void Seed(string device, DateTimeOffset at) => _lastSeen.AddOrUpdate(device, at, (_, known) => known > at ? known : at);
}
