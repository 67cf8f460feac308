namespace EdgeMail.Firmware.Uplink;

/// <summary>Where a <see cref="Forwarder"/> is in its cycle.</summary>
public enum ForwarderState
{
    /// <summary>Not connected and not trying: waiting for the next scheduled wake (duty-cycled mode) or not started.</summary>
    Offline = 0,

    /// <summary>Opening the link (TCP, CONNECT, SUBSCRIBE); lasts for one <see cref="Forwarder.Step"/>.</summary>
    Connecting = 1,

    /// <summary>Connected, with alerts handed out and not yet acknowledged, or more to send.</summary>
    Sending = 2,

    /// <summary>Connected and drained: nothing queued, nothing in flight.</summary>
    Idle = 3,

    /// <summary>The last attempt or the link failed; waiting a jittered, growing delay before the next attempt.</summary>
    Backoff = 4,
}
