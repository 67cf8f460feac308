namespace EdgeMail.Simulation.Flash;

/// <summary>
/// Thrown by <see cref="NorFlashSimulator"/> when a scheduled power cut strikes: the operation in
/// progress may have changed some bits, and the device is off until <see cref="NorFlashSimulator.PowerOn"/>.
/// Firmware code must never catch it; it stands for the CPU stopping.
/// </summary>
public sealed class PowerLossException : Exception
{
    /// <summary>Creates the exception.</summary>
    public PowerLossException()
        : base("Power lost")
    {
    }

    /// <summary>Creates the exception with a description of where the cut struck.</summary>
    /// <param name="message">Where power was lost.</param>
    public PowerLossException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a cause.</summary>
    /// <param name="message">Where power was lost.</param>
    /// <param name="innerException">The cause.</param>
    public PowerLossException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>A write that the flash part forbids: misaligned, or programming a unit twice between erases in strict mode.</summary>
public sealed class FlashViolationException : Exception
{
    /// <summary>Creates the exception.</summary>
    public FlashViolationException()
        : base("Flash rule violated")
    {
    }

    /// <summary>Creates the exception with a description of the violation.</summary>
    /// <param name="message">What was wrong.</param>
    public FlashViolationException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a cause.</summary>
    /// <param name="message">What was wrong.</param>
    /// <param name="innerException">The cause.</param>
    public FlashViolationException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
