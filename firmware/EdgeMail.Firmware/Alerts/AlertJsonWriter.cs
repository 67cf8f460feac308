using System;

namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// Writes the Contract 1 alert JSON for one stored <see cref="AlertRecord"/> into a caller's buffer, allocating
/// nothing. Keys in order: <c>v, id, seq, state, sev, code, text, values</c> (when any), then the time —
/// <c>raised</c> when known, else <c>age_ms</c> — then <c>boot, count</c>, and <c>first</c>/<c>last</c> when count &gt; 1.
/// Create one per sending thread and reuse it.
/// </summary>
public sealed class AlertJsonWriter
{
    /// <summary>The Contract 1 payload limit. Every record <see cref="AlertRecord.Encode"/> accepts fits in it.</summary>
    public const int MaxLength = AlertRecord.MaxJsonLength;

    private readonly AlertRecordView _view = new AlertRecordView();
    private readonly JsonOutput _out;

    /// <summary>Creates a writer.</summary>
    public AlertJsonWriter()
        : this(new JsonOutput())
    {
    }

    /// <summary>A writer over a cursor shared with other writers of the same thread (e.g. the forwarder's alert and status).</summary>
    internal AlertJsonWriter(JsonOutput output) => _out = output;

    /// <summary>
    /// Writes one alert. Time rules: a raise time the device knew is written as <c>"raised"</c>. Otherwise, if the
    /// alert was raised in the current boot, its age follows from the uptimes: with a wall clock now,
    /// <c>"raised"</c> is that clock minus the age; without, <c>"age_ms"</c> is the age. Raised in an earlier boot
    /// with no clock then: <c>"age_ms":null</c> (the gateway says the time is unknown). <c>first</c>/<c>last</c>
    /// follow the same rules and are left out when they cannot be known.
    /// </summary>
    /// <param name="record">The buffer holding the stored record (the flash payload).</param>
    /// <param name="recordOffset">Where the record starts.</param>
    /// <param name="recordLength">The payload length.</param>
    /// <param name="epoch">The flash epoch; the id is <c>{epoch as 8 lower-case hex digits}-{seq}</c>.</param>
    /// <param name="seq">The record's sequence number from the storage layer.</param>
    /// <param name="currentBoot">The boot number now.</param>
    /// <param name="currentUptimeMs">Milliseconds since this boot began, now.</param>
    /// <param name="currentUnixMs">The wall clock now in Unix ms, or <see cref="AlertRecord.UnknownTime"/>.</param>
    /// <param name="destination">The buffer for the JSON (UTF-8); <see cref="MaxLength"/> bytes always suffice.</param>
    /// <param name="offset">Where the JSON starts.</param>
    /// <returns>The JSON length in bytes.</returns>
    /// <exception cref="ArgumentException">The record is not a valid version-1 alert record (check first with
    /// <see cref="AlertRecordView.Attach"/> to skip such records without an exception), or the destination is too small.</exception>
    public int Write(byte[] record, int recordOffset, int recordLength, uint epoch, ulong seq,
        uint currentBoot, long currentUptimeMs, long currentUnixMs, byte[] destination, int offset)
    {
        Attach(record, recordOffset, recordLength);
        _out.Begin(destination, offset);
        return WriteBody(epoch, seq, currentBoot, currentUptimeMs, currentUnixMs);
    }

    /// <summary>
    /// The length <see cref="Write(byte[], int, int, uint, ulong, uint, long, long, IByteSink)"/> will write for the
    /// same arguments, without writing anything: the PUBLISH header carries it before the payload is streamed.
    /// </summary>
    /// <param name="record">The buffer holding the stored record.</param>
    /// <param name="recordOffset">Where the record starts.</param>
    /// <param name="recordLength">The payload length.</param>
    /// <param name="epoch">The flash epoch.</param>
    /// <param name="seq">The record's sequence number.</param>
    /// <param name="currentBoot">The boot number now.</param>
    /// <param name="currentUptimeMs">Uptime now (pass the same value to the write).</param>
    /// <param name="currentUnixMs">Wall clock now or <see cref="AlertRecord.UnknownTime"/> (pass the same value to the write).</param>
    /// <returns>The JSON length in bytes (at most <see cref="MaxLength"/>).</returns>
    /// <exception cref="ArgumentException">The record is not a valid version-1 alert record.</exception>
    public int Measure(byte[] record, int recordOffset, int recordLength, uint epoch, ulong seq,
        uint currentBoot, long currentUptimeMs, long currentUnixMs)
    {
        Attach(record, recordOffset, recordLength);
        _out.BeginMeasure();
        return WriteBody(epoch, seq, currentBoot, currentUptimeMs, currentUnixMs);
    }

    /// <summary>
    /// Writes the same JSON as <see cref="Write(byte[], int, int, uint, ulong, uint, long, long, byte[], int)"/>, streamed
    /// into <paramref name="sink"/> in chunks of at most 32 bytes, with no buffer for the whole of it.
    /// </summary>
    /// <param name="record">The buffer holding the stored record.</param>
    /// <param name="recordOffset">Where the record starts.</param>
    /// <param name="recordLength">The payload length.</param>
    /// <param name="epoch">The flash epoch.</param>
    /// <param name="seq">The record's sequence number.</param>
    /// <param name="currentBoot">The boot number now.</param>
    /// <param name="currentUptimeMs">Uptime now.</param>
    /// <param name="currentUnixMs">Wall clock now or <see cref="AlertRecord.UnknownTime"/>.</param>
    /// <param name="sink">Where the bytes go.</param>
    /// <returns>The JSON length in bytes.</returns>
    /// <exception cref="ArgumentException">The record is not a valid version-1 alert record.</exception>
    public int Write(byte[] record, int recordOffset, int recordLength, uint epoch, ulong seq,
        uint currentBoot, long currentUptimeMs, long currentUnixMs, IByteSink sink)
    {
        Attach(record, recordOffset, recordLength);
        _out.BeginStream(sink);
        return WriteBody(epoch, seq, currentBoot, currentUptimeMs, currentUnixMs);
    }

    private void Attach(byte[] record, int recordOffset, int recordLength)
    {
        AlertError error = _view.Attach(record, recordOffset, recordLength);
        if (error != AlertError.None)
        {
            throw new ArgumentException(AlertErrors.Describe(error), nameof(record));
        }
    }

    private int WriteBody(uint epoch, ulong seq, uint currentBoot, long currentUptimeMs, long currentUnixMs)
    {
        AlertRecordView r = _view;
        JsonOutput o = _out;
        o.Raw("{\"v\":1,\"id\":\"");
        o.Hex8(epoch);
        o.Raw("-");
        o.UInt(seq);
        o.Raw("\",\"seq\":");
        o.UInt(seq);
        o.Raw(r.State == AlertState.Cleared ? ",\"state\":\"cleared\"" : ",\"state\":\"raised\"");
        o.Raw(r.Severity == Severity.Critical ? ",\"sev\":\"critical\"" : r.Severity == Severity.Warning ? ",\"sev\":\"warning\"" : ",\"sev\":\"info\"");
        o.Raw(",\"code\":");
        o.String(r.Buffer, r.CodeOffset, r.CodeLength);
        o.Raw(",\"text\":");
        o.String(r.Buffer, r.TextOffset, r.TextLength);
        int values = r.ValueCount;
        if (values > 0)
        {
            o.Raw(",\"values\":{");
            for (int i = 0; i < values; i++)
            {
                if (i > 0)
                {
                    o.Raw(",");
                }

                o.String(r.Buffer, r.GetValueNameOffset(i), r.GetValueNameLength(i));
                o.Raw(":");
                o.Fixed(r.GetValueMantissa(i), r.GetValueScale(i));
            }

            o.Raw("}");
        }

        bool sameBoot = r.Boot == currentBoot;
        long raised = ToUnix(r.RaisedUnixMs, true, r.RaisedUptimeMs, sameBoot, currentUptimeMs, currentUnixMs);
        if (raised != AlertRecord.UnknownTime)
        {
            o.Raw(",\"raised\":");
            o.IsoTime(raised);
        }
        else if (sameBoot && currentUptimeMs >= r.RaisedUptimeMs)
        {
            o.Raw(",\"age_ms\":");
            o.Int(currentUptimeMs - r.RaisedUptimeMs);
        }
        else
        {
            o.Raw(",\"age_ms\":null");
        }

        o.Raw(",\"boot\":");
        o.UInt(r.Boot);
        o.Raw(",\"count\":");
        o.UInt(r.Count);
        if (r.Count > 1)
        {
            long first = ToUnix(r.FirstIsUptime ? AlertRecord.UnknownTime : r.First, r.FirstIsUptime, r.First, sameBoot, currentUptimeMs, currentUnixMs);
            if (first != AlertRecord.UnknownTime)
            {
                o.Raw(",\"first\":");
                o.IsoTime(first);
            }

            long last = ToUnix(r.LastIsUptime ? AlertRecord.UnknownTime : r.Last, r.LastIsUptime, r.Last, sameBoot, currentUptimeMs, currentUnixMs);
            if (last != AlertRecord.UnknownTime)
            {
                o.Raw(",\"last\":");
                o.IsoTime(last);
            }
        }

        o.Raw("}");
        o.End();
        return o.Length;
    }

    /// <summary>A Unix time for an event: known directly, or derived from its uptime in this boot and the clock now.</summary>
    private static long ToUnix(long unixMs, bool hasUptime, long uptimeMs, bool sameBoot, long currentUptimeMs, long currentUnixMs)
    {
        if (unixMs != AlertRecord.UnknownTime)
        {
            return unixMs;
        }

        if (!hasUptime || !sameBoot || currentUnixMs == AlertRecord.UnknownTime || uptimeMs == AlertRecord.UnknownTime
            || currentUptimeMs < uptimeMs)
        {
            return AlertRecord.UnknownTime;
        }

        long derived = currentUnixMs - (currentUptimeMs - uptimeMs);
        return derived >= 0 && derived <= AlertRecord.MaxUnixMs ? derived : AlertRecord.UnknownTime;
    }
}
