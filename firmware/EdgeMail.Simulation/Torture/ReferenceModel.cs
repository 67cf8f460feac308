using EdgeMail.Firmware.Alerts;

namespace EdgeMail.Simulation.Torture;

/// <summary>A record the store wrote, or may have written (its append was cut).</summary>
internal sealed class ModelRecord
{
    /// <summary>The raise that wrote it (its alert carries the value <c>n</c> = this).</summary>
    public uint Token;

    /// <summary>The sequence number its append returned; 0 while unknown (an append that did not return).</summary>
    public uint OriginalSeq;

    /// <summary>The id (sequence number) of the alert it belongs to; 0 while unknown (a new alert whose append did not return).</summary>
    public uint AlertId;

    /// <summary>The count it carries.</summary>
    public uint Count;

    public int Code;

    public Severity Severity;

    /// <summary>Whether its append returned: then it must reach the gateway, or be counted as dropped.</summary>
    public bool Promised;

    /// <summary>It was found dropped (missing and counted by a marker): it must never come back.</summary>
    public bool Dropped;

    public ModelRecord Clone() => (ModelRecord)MemberwiseClone();
}

/// <summary>An alert: one or more records under one id, the last one with the latest count.</summary>
internal sealed class ModelAlert
{
    public uint Id;
    public int Code;
    public Severity Severity;

    /// <summary>Boot it was raised in; repeats coalesce only in that boot.</summary>
    public uint Boot;

    /// <summary>Every raise merged into it, including repeats not yet written.</summary>
    public uint Count;

    /// <summary>Token of its newest promised record (0 when none was promised).</summary>
    public uint LatestToken;

    /// <summary>
    /// Token of its newest record known to exist: the newest promised one, or a newer one whose append was cut but
    /// which a mount found on flash (the store then lets it stand in for the older ones).
    /// </summary>
    public uint NewestToken;

    public long LastWriteUptime;

    /// <summary>Handed to the uplink at least once this boot: repeats then start a new alert.</summary>
    public bool HandedOut;

    /// <summary>The gateway acknowledged it.</summary>
    public bool Owned;

    /// <summary>An acknowledgement that covered it was cut: the gateway owns it, the flash may not know.</summary>
    public bool MaybeOwned;

    /// <summary>
    /// Handed out in a boot where the store tracked more coalesced alerts than its table holds: each of its records
    /// may be handed out, in any order, under its id (docs/flash-queue.md, allowed duplicates).
    /// </summary>
    public bool ChainForgotten;

    /// <summary>Original sequence number of the record the gateway got first.</summary>
    public uint OwnedRecordSeq;

    /// <summary>The queue's next sequence number when the gateway got it: a copy made later may come again.</summary>
    public uint OwnedNextSeq;

    public ModelAlert Clone() => (ModelAlert)MemberwiseClone();
}

/// <summary>An alert or marker handed to the uplink in the current pass and not yet acknowledged.</summary>
internal readonly record struct Delivery(uint AlertId, uint Token, uint Seq, uint NextSeqThen, uint RecordSeq, bool IsMarker, uint MarkerFirst, uint MarkerLast, uint MarkerCount);

/// <summary>
/// What must be on the device: every alert raised (with its records and latest count), what the gateway owns,
/// which drops the gateway was told about. The campaign compares the device with it after every operation and
/// every mount. Cloned for every power cut it explores.
/// </summary>
internal sealed class ReferenceModel
{
    public Dictionary<uint, ModelRecord> Records { get; private set; } = [];

    public Dictionary<uint, ModelAlert> Alerts { get; private set; } = [];

    /// <summary>Per code, the alert this boot's coalescing slot holds (0: none).</summary>
    public uint[] CurrentOfCode { get; private set; } = new uint[Workload.Codes.Length];

    /// <summary>Drop markers the gateway acknowledged: the entries in their ranges were reported.</summary>
    public List<(uint Count, uint First, uint Last)> OwnedMarkers { get; private set; } = [];

    /// <summary>The current pass: handed out, not yet acknowledged.</summary>
    public List<Delivery> Pass { get; private set; } = [];

    public uint Boot { get; set; }

    public uint NextToken { get; set; } = 1;

    public uint MaxSeqSeen { get; set; }

    /// <summary>Alerts whose newest record was found missing and counted by a marker, so far.</summary>
    public long DroppedFound { get; set; }

    /// <summary>Drops counted by markers the gateway acknowledged (or may have, when the acknowledgement was cut).</summary>
    public long ReportedCount { get; set; }

    public uint Epoch { get; set; }

    public bool Formatted { get; set; }

    public ReferenceModel Clone()
    {
        var c = (ReferenceModel)MemberwiseClone();
        c.Records = new Dictionary<uint, ModelRecord>(Records.Count);
        foreach (var (k, v) in Records)
        {
            c.Records[k] = v.Clone();
        }

        c.Alerts = new Dictionary<uint, ModelAlert>(Alerts.Count);
        foreach (var (k, v) in Alerts)
        {
            c.Alerts[k] = v.Clone();
        }

        c.CurrentOfCode = (uint[])CurrentOfCode.Clone();
        c.OwnedMarkers = [.. OwnedMarkers];
        c.Pass = [.. Pass];
        return c;
    }

    /// <summary>Whether a raise of <paramref name="code"/> now merges into an alert, and which.</summary>
    public ModelAlert? CoalescesInto(int code)
    {
        uint id = CurrentOfCode[code];
        return id != 0 && Alerts.TryGetValue(id, out var a) && !a.HandedOut && a.Boot == Boot ? a : null;
    }

    /// <summary>A raise merged into <paramref name="alert"/>: whether the store writes an update now.</summary>
    public static bool WritesUpdate(ModelAlert alert, long uptime)
    {
        uint count = alert.Count + 1;
        return (count & (count - 1)) == 0 || uptime - alert.LastWriteUptime >= 60_000;
    }

    public void NewAlert(uint token, uint seq, int code, long uptime)
    {
        var (_, severity) = Workload.Codes[code];
        Records[token] = new ModelRecord { Token = token, OriginalSeq = seq, AlertId = seq, Count = 1, Code = code, Severity = severity, Promised = true };
        Alerts[seq] = new ModelAlert { Id = seq, Code = code, Severity = severity, Boot = Boot, Count = 1, LatestToken = token, NewestToken = token, LastWriteUptime = uptime };
        CurrentOfCode[code] = seq;
    }

    public void Repeat(ModelAlert alert, uint token, uint seq, long uptime, bool droppedOnArrival)
    {
        alert.Count++;
        if (seq != 0)
        {
            Records[token] = new ModelRecord { Token = token, OriginalSeq = seq, AlertId = alert.Id, Count = alert.Count, Code = alert.Code, Severity = alert.Severity, Promised = true, Dropped = droppedOnArrival };
            if (droppedOnArrival)
            {
                return; // the full policy dropped the update itself: the alert's older record still stands for it
            }

            alert.LatestToken = token;
            alert.NewestToken = token;
            alert.LastWriteUptime = uptime;
        }
    }

    /// <summary>A raise was cut: its record may or may not be on flash.</summary>
    public void MaybeRaised(uint token, int code, long uptime)
    {
        var (_, severity) = Workload.Codes[code];
        ModelAlert? into = CoalescesInto(code);
        if (into is null)
        {
            Records[token] = new ModelRecord { Token = token, Count = 1, Code = code, Severity = severity };
        }
        else if (WritesUpdate(into, uptime))
        {
            Records[token] = new ModelRecord { Token = token, AlertId = into.Id, Count = into.Count + 1, Code = code, Severity = severity };
        }
    }

    /// <summary>
    /// The gateway acknowledged the pass so far. When the cut struck the acknowledgement, or the store kept part of
    /// it back (<paramref name="durableThrough"/> below the acknowledged entry: an update that may be weak stands in
    /// for older records), what it covered may come back.
    /// </summary>
    public void Acknowledged(bool cut, uint durableThrough = uint.MaxValue)
    {
        foreach (var d in Pass)
        {
            if (d.IsMarker)
            {
                // Cut or not, the gateway may have the marker: the drops it counts were reported.
                OwnedMarkers.Add((d.MarkerCount, d.MarkerFirst, d.MarkerLast));
                ReportedCount += d.MarkerCount;
                continue;
            }

            if (!Alerts.TryGetValue(d.AlertId, out var a) || a.Owned)
            {
                continue;
            }

            if (cut)
            {
                a.MaybeOwned = true;
                continue;
            }

            a.MaybeOwned |= d.Seq > durableThrough;
            a.Owned = true;
            a.OwnedRecordSeq = d.RecordSeq;
            a.OwnedNextSeq = d.NextSeqThen;
        }

        if (!cut)
        {
            Pass.Clear();
        }
    }

    /// <summary>Power came back or the device rebooted: RAM state is gone.</summary>
    public void Rebooted()
    {
        Boot++;
        Array.Clear(CurrentOfCode);
        Pass.Clear();
        foreach (var a in Alerts.Values)
        {
            a.HandedOut = false;
        }
    }

    /// <summary>Whether a drop marker the gateway acknowledged covers the original sequence number <paramref name="seq"/>.</summary>
    public bool ReportedDropped(uint seq) => OwnedMarkers.Exists(m => seq >= m.First && seq <= m.Last);
}
