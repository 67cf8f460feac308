namespace EdgeMail.Firmware;

/// <summary>
/// The device's monotonic time source: milliseconds since boot. Firmware code never reads the wall clock
/// directly; it takes an <see cref="IClock"/> so tests and the emulator control time.
/// </summary>
public interface IClock
{
    /// <summary>Milliseconds since the device booted; never goes backwards.</summary>
    long UptimeMs { get; }
}
