using System.Text.Json;
using EdgeMail.Emulator.Fleet;
using EdgeMail.Firmware.Alerts;

namespace EdgeMail.Emulator.Chaos;

/// <summary>One alert as its device's application raised it (after coalescing), and what the device saw happen to it.</summary>
internal sealed class AlertTruth(string device, string alertId, uint idSeq, long raisedMs, string code, Severity severity)
{
    public string Device { get; } = device;

    public string AlertId { get; } = alertId;

    public uint IdSeq { get; } = idSeq;

    public long RaisedMs { get; } = raisedMs;

    public string Code { get; } = code;

    public Severity Severity { get; } = severity;

    /// <summary>Raises it carries (repeats merged on the device while it was queued).</summary>
    public int Raises { get; set; } = 1;

    /// <summary>The last record that holds it (an update record when a repeat was merged).</summary>
    public uint LastSeq { get; set; }

    /// <summary>When the gateway acknowledged it (simulated ms); null while it is still on flash.</summary>
    public long? AckedMs { get; set; }
}

/// <summary>Ground truth about one device, kept outside the system under test.</summary>
internal sealed class DeviceTruth(string id, string protocol, string[] recipients)
{
    public string Id { get; } = id;

    public string Protocol { get; } = protocol;

    /// <summary>The addresses its alerts are routed to (the gateway's configuration, written by the chaos run).</summary>
    public string[] Recipients { get; } = recipients;

    public Dictionary<string, AlertTruth> Alerts { get; } = new(StringComparer.Ordinal);

    /// <summary>Receipts by alert id: every state the device was told, in order.</summary>
    public Dictionary<string, List<string>> Receipts { get; } = new(StringComparer.Ordinal);

    /// <summary>Intervals (simulated ms) the device could not send: off after a power cut, or its link down.</summary>
    public List<(long From, long To)> Down { get; } = [];

    public long? LinkDownSince { get; set; }

    public long RaisesCutShort { get; set; }

    public bool Drained { get; set; }

    public uint DepthAtEnd { get; set; }
}

/// <summary>
/// The <see cref="IDeviceObserver"/> of a chaos run: records every alert each device's application raised (after
/// coalescing, as the device's store merged it), its acknowledgement, receipts, power cuts and link changes; device
/// faults also go to the <see cref="Timeline"/>.
/// </summary>
internal sealed class ChaosLedger(Timeline timeline) : IDeviceObserver
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, DeviceTruth> _devices = new(StringComparer.Ordinal);
    private readonly List<(long At, int Delta)> _raisedAt = [];
    private readonly List<long> _ackedAt = [];

    public IReadOnlyDictionary<string, DeviceTruth> Devices => _devices;

    public void Add(DeviceTruth device) => _devices.Add(device.Id, device);

    /// <summary>
    /// Every alert raised so far: device, alert id, whether a recipient of it is refused for good, and whether its device
    /// (over MQTT) still waits for the <c>failed</c> receipt that refusal owes it.
    /// </summary>
    public List<(string Device, string AlertId, bool Refused, bool AwaitsFailedReceipt)> AlertKeys()
    {
        lock (_lock)
        {
            return [.. _devices.Values.SelectMany(d => d.Alerts.Keys.Select(a =>
            {
                bool refused = d.Recipients.Length > 1;
                bool awaits = refused && d.Protocol == "mqtt" && !(d.Receipts.TryGetValue(a, out List<string>? states) && states.Contains("failed"));
                return (d.Id, a, refused, awaits);
            }))];
        }
    }

    /// <summary>Simulated times of new alerts (+1) and acknowledgements, for the chart.</summary>
    public (long[] Raised, long[] Acked) Series()
    {
        lock (_lock)
        {
            return ([.. _raisedAt.Select(r => r.At)], [.. _ackedAt]);
        }
    }

    public void Raised(VirtualDevice device, uint idSeq, uint seq, long at, string code, Severity severity)
    {
        DeviceTruth d = _devices[device.Id];
        string id = device.AlertId(idSeq);
        lock (_lock)
        {
            if (d.Alerts.TryGetValue(id, out AlertTruth? a))
            {
                a.Raises++;
                a.LastSeq = seq != 0 ? seq : a.LastSeq;
            }
            else
            {
                d.Alerts[id] = new AlertTruth(device.Id, id, idSeq, at, code, severity) { LastSeq = seq };
                _raisedAt.Add((at, 1));
            }
        }
    }

    public void Acknowledged(VirtualDevice device, uint idSeq, uint seq, long at)
    {
        DeviceTruth d = _devices[device.Id];
        lock (_lock)
        {
            if (d.Alerts.TryGetValue(device.AlertId(idSeq), out AlertTruth? a) && a.AckedMs is null)
            {
                a.AckedMs = at;
                _ackedAt.Add(at);
            }
        }
    }

    public void Receipt(VirtualDevice device, string json)
    {
        string? id = null, state = null;
        try
        {
            using var doc = JsonDocument.Parse(json);
            id = doc.RootElement.TryGetProperty("id", out JsonElement i) ? i.GetString() : null;
            state = doc.RootElement.TryGetProperty("state", out JsonElement s) ? s.GetString() : null;
        }
        catch (JsonException)
        {
            state = "unreadable";
        }

        DeviceTruth d = _devices[device.Id];
        lock (_lock)
        {
            string key = id ?? "?";
            if (!d.Receipts.TryGetValue(key, out List<string>? list))
            {
                d.Receipts[key] = list = [];
            }

            list.Add(state ?? "?");
        }
    }

    public void PowerCut(VirtualDevice device, long at, bool torn, long offMs)
    {
        lock (_lock)
        {
            _devices[device.Id].Down.Add((at, at + offMs));
        }

        timeline.Add(FaultKind.PowerCut, at, offMs, device.Id, torn ? "struck inside a flash program/erase" : "between flash operations");
    }

    public void CutArmed(VirtualDevice device, long at) =>
        timeline.Add(FaultKind.PowerCutMidWrite, at, 0, device.Id, "armed to strike inside one of the next three flash programs/erases");

    public void LinkChanged(VirtualDevice device, long at, bool up)
    {
        DeviceTruth d = _devices[device.Id];
        lock (_lock)
        {
            if (!up)
            {
                d.LinkDownSince = at;
            }
            else if (d.LinkDownSince is long since)
            {
                d.Down.Add((since, at));
                d.LinkDownSince = null;
            }
        }

        if (!up)
        {
            timeline.Add(FaultKind.LinkFlap, at, 0, device.Id, "radio link down");
        }
    }
}
