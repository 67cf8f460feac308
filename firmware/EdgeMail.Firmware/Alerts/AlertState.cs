namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// Whether an alert reports a condition that began or one that ended. A <see cref="Cleared"/> alert with the same
/// code threads onto the mail of its <see cref="Raised"/> twin. Written as <c>"raised"</c> or <c>"cleared"</c>.
/// </summary>
public enum AlertState
{
    /// <summary>The condition began.</summary>
    Raised = 0,

    /// <summary>The condition ended.</summary>
    Cleared = 1,
}
