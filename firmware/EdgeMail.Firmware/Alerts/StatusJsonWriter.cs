using System;

namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// Writes the status heartbeat JSON into a caller's buffer without allocating:
/// <c>{"v":1,"fw":"1.4.2","boot":17,"uptime_ms":N,"queue_depth":N,"oldest_age_ms":N|null,"dropped":N,
/// "flash_wear_pct":1.23|null,"battery_pct":N|null,"battery_mv":N|null,"rssi_dbm":N|null}</c>.
/// Create one per sending thread and reuse it.
/// </summary>
public sealed class StatusJsonWriter
{
    private readonly JsonOutput _out;

    /// <summary>Creates a writer.</summary>
    public StatusJsonWriter()
        : this(new JsonOutput())
    {
    }

    /// <summary>A writer over a cursor shared with other writers of the same thread.</summary>
    internal StatusJsonWriter(JsonOutput output) => _out = output;

    /// <summary>Writes the status JSON.</summary>
    /// <param name="status">The facts.</param>
    /// <param name="destination">The buffer for the JSON (UTF-8); 512 bytes suffice for a firmware version of up to 64 characters.</param>
    /// <param name="offset">Where the JSON starts.</param>
    /// <returns>The JSON length in bytes.</returns>
    /// <exception cref="ArgumentException">The destination is too small.</exception>
    public int Write(DeviceStatus status, byte[] destination, int offset)
    {
        if (status == null)
        {
            throw new ArgumentNullException(nameof(status));
        }

        _out.Begin(destination, offset);
        return WriteBody(status);
    }

    /// <summary>The length the status JSON has now, without writing it (for a PUBLISH header ahead of a streamed payload).</summary>
    /// <param name="status">The facts; the write must see the same values.</param>
    /// <returns>The JSON length in bytes.</returns>
    public int Measure(DeviceStatus status)
    {
        if (status == null)
        {
            throw new ArgumentNullException(nameof(status));
        }

        _out.BeginMeasure();
        return WriteBody(status);
    }

    /// <summary>Writes the status JSON streamed into <paramref name="sink"/>, in chunks of at most 32 bytes.</summary>
    /// <param name="status">The facts.</param>
    /// <param name="sink">Where the bytes go.</param>
    /// <returns>The JSON length in bytes.</returns>
    public int Write(DeviceStatus status, IByteSink sink)
    {
        if (status == null)
        {
            throw new ArgumentNullException(nameof(status));
        }

        _out.BeginStream(sink);
        return WriteBody(status);
    }

    private int WriteBody(DeviceStatus status)
    {
        JsonOutput o = _out;
        o.Raw("{\"v\":1,\"fw\":");
        o.String(status.FirmwareVersion);
        o.Raw(",\"boot\":");
        o.UInt(status.Boot);
        o.Raw(",\"uptime_ms\":");
        o.Int(status.UptimeMs);
        o.Raw(",\"queue_depth\":");
        o.Int(status.QueueDepth);
        o.Raw(",\"oldest_age_ms\":");
        Optional(status.OldestQueuedAgeMs, 0);
        o.Raw(",\"dropped\":");
        o.Int(status.Dropped);
        o.Raw(",\"flash_wear_pct\":");
        Optional(status.FlashWearHundredthsPercent, 2);
        o.Raw(",\"battery_pct\":");
        Optional(status.BatteryPercent, 0);
        o.Raw(",\"battery_mv\":");
        Optional(status.BatteryMillivolts, 0);
        o.Raw(",\"rssi_dbm\":");
        Optional(status.RssiDbm, 0);
        o.Raw("}");
        o.End();
        return o.Length;
    }

    private void Optional(long value, int scale)
    {
        if (value == DeviceStatus.Unknown)
        {
            _out.Raw("null");
        }
        else
        {
            _out.Fixed(value, scale);
        }
    }
}
