namespace EdgeMail.Gateway.Ingest;

/// <summary>Alert severity, ordered so that a higher value is more severe.</summary>
public enum Severity
{
    /// <summary>For information.</summary>
    Info = 0,

    /// <summary>Needs attention.</summary>
    Warning = 1,

    /// <summary>Needs action now.</summary>
    Critical = 2,
}

/// <summary>Whether the condition started or ended.</summary>
public enum AlertState
{
    /// <summary>The condition started.</summary>
    Raised,

    /// <summary>The condition ended.</summary>
    Cleared,
}

/// <summary>An alert as a device sent it (Contract 1, version 1), after validation.</summary>
/// <param name="Id">Unique for the device forever.</param>
/// <param name="Seq">Device sequence number.</param>
/// <param name="State">Raised or cleared.</param>
/// <param name="Severity">Severity.</param>
/// <param name="Code">Machine code, <c>[A-Z0-9_.-]{1,64}</c>.</param>
/// <param name="Text">Human text, at most 1 KiB.</param>
/// <param name="Values">Named numeric values, in the order sent.</param>
/// <param name="Raised">When raised, if the device knew the time.</param>
/// <param name="AgeMs">Milliseconds since raised when sent, if the device had no clock.</param>
/// <param name="Boot">Boot counter.</param>
/// <param name="Count">Repeats coalesced on the device.</param>
/// <param name="First">First repeat, if coalesced.</param>
/// <param name="Last">Last repeat, if coalesced.</param>
public sealed record Alert(
    string Id,
    long Seq,
    AlertState State,
    Severity Severity,
    string Code,
    string Text,
    IReadOnlyList<KeyValuePair<string, double>> Values,
    DateTimeOffset? Raised,
    long? AgeMs,
    long Boot,
    long Count,
    DateTimeOffset? First,
    DateTimeOffset? Last)
{
    /// <summary>When the alert was raised: as sent, or derived from <see cref="AgeMs"/> and the time it was received.</summary>
    /// <param name="receivedAt">When the gateway received it.</param>
    /// <returns>The raise time, or null when unknown (also when an age would reach before year 1, which the parser
    /// never lets through but a hand-made alert might).</returns>
    public DateTimeOffset? RaisedAt(DateTimeOffset receivedAt)
    {
        if (Raised is not null || AgeMs is not long age)
        {
            return Raised;
        }

        long reachMs = (receivedAt.UtcTicks - DateTimeOffset.MinValue.UtcTicks) / TimeSpan.TicksPerMillisecond;
        return age >= 0 && age <= reachMs ? receivedAt - TimeSpan.FromMilliseconds(age) : null;
    }
}
