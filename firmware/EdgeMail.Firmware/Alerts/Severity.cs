namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// How bad an alert is. The numeric order is meaningful: a full queue drops the lowest severity first.
/// Stored as one byte in an <see cref="AlertRecord"/>; written as <c>"info"</c>, <c>"warning"</c> or <c>"critical"</c>.
/// </summary>
public enum Severity
{
    /// <summary>Something worth knowing; nobody needs to act now.</summary>
    Info = 0,

    /// <summary>Something needs attention soon.</summary>
    Warning = 1,

    /// <summary>Something needs attention now.</summary>
    Critical = 2,
}
