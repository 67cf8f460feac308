namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// The facts of the status heartbeat (Contract 1, topic <c>edgemail/v1/{deviceId}/status</c>), filled by the device
/// and written by <see cref="StatusJsonWriter"/>. Reuse one instance; a field set to <see cref="Unknown"/> is written
/// as <c>null</c>.
/// </summary>
public sealed class DeviceStatus
{
    /// <summary>The value meaning "not known / not measured" for the optional numbers.</summary>
    public const long Unknown = long.MinValue;

    private string _firmwareVersion = string.Empty;

    /// <summary>The firmware version, e.g. <c>1.4.2</c>; null reads as empty.</summary>
    public string FirmwareVersion
    {
        get => _firmwareVersion;
        set => _firmwareVersion = value ?? string.Empty;
    }

    /// <summary>The boot counter.</summary>
    public uint Boot { get; set; }

    /// <summary>Milliseconds since this boot began.</summary>
    public long UptimeMs { get; set; }

    /// <summary>Alerts in the queue not yet acknowledged by the gateway.</summary>
    public long QueueDepth { get; set; }

    /// <summary>Age in ms of the oldest queued alert, or <see cref="Unknown"/> (written as null) when the queue is empty or the age is unknown.</summary>
    public long OldestQueuedAgeMs { get; set; } = Unknown;

    /// <summary>Alerts dropped because the queue was full, since the queue was formatted.</summary>
    public long Dropped { get; set; }

    /// <summary>Flash wear in hundredths of a percent of the rated erase endurance used by the most-erased sector (123 = 1.23 %), or <see cref="Unknown"/>.</summary>
    public long FlashWearHundredthsPercent { get; set; } = Unknown;

    /// <summary>Battery charge in percent (0..100), or <see cref="Unknown"/> (e.g. mains powered).</summary>
    public long BatteryPercent { get; set; } = Unknown;

    /// <summary>Battery voltage in millivolts, or <see cref="Unknown"/>.</summary>
    public long BatteryMillivolts { get; set; } = Unknown;

    /// <summary>Link quality as received signal strength in dBm (e.g. −67), or <see cref="Unknown"/> (wired links).</summary>
    public long RssiDbm { get; set; } = Unknown;

    /// <summary>Copies every field from <paramref name="source"/> (a snapshot, e.g. to measure and then write the same JSON).</summary>
    /// <param name="source">The status to copy.</param>
    public void CopyFrom(DeviceStatus source)
    {
        if (source == null)
        {
            throw new System.ArgumentNullException(nameof(source));
        }

        _firmwareVersion = source._firmwareVersion;
        Boot = source.Boot;
        UptimeMs = source.UptimeMs;
        QueueDepth = source.QueueDepth;
        OldestQueuedAgeMs = source.OldestQueuedAgeMs;
        Dropped = source.Dropped;
        FlashWearHundredthsPercent = source.FlashWearHundredthsPercent;
        BatteryPercent = source.BatteryPercent;
        BatteryMillivolts = source.BatteryMillivolts;
        RssiDbm = source.RssiDbm;
    }
}
