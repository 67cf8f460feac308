namespace EdgeMail.Gateway.Spool;

/// <summary>The spool could not do what was asked; the message says why and what to check.</summary>
public class SpoolException : Exception
{
    /// <summary>Creates the exception.</summary>
    public SpoolException()
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">What went wrong and what to do.</param>
    public SpoolException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">What went wrong and what to do.</param>
    /// <param name="inner">The cause.</param>
    public SpoolException(string message, Exception inner)
        : base(message, inner)
    {
    }
}

/// <summary>
/// A write would break a uniqueness the gateway relies on (two mails with one Message-ID). It is a bug, never
/// routine: the item concerned is parked with this message, nothing is silently dropped.
/// </summary>
public sealed class SpoolConflictException : SpoolException
{
    /// <summary>Creates the exception.</summary>
    public SpoolConflictException()
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">What conflicted.</param>
    public SpoolConflictException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">What conflicted.</param>
    /// <param name="inner">The cause.</param>
    public SpoolConflictException(string message, Exception inner)
        : base(message, inner)
    {
    }
}

/// <summary>
/// The database refused what one item writes, for its data (a constraint, a value too big or of the wrong type): the same
/// write fails the same way however often it is tried, while everything else is stored. A caller that would otherwise
/// write it again until the spool takes it parks the item instead.
/// </summary>
public sealed class SpoolDataException : SpoolException
{
    /// <summary>Creates the exception.</summary>
    public SpoolDataException()
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">What the database refused.</param>
    public SpoolDataException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">What the database refused.</param>
    /// <param name="inner">The cause.</param>
    public SpoolDataException(string message, Exception inner)
        : base(message, inner)
    {
    }
}

/// <summary>
/// Free disk space is below the configured floor (<c>Spool:MinFreeMegabytes</c>): new work is refused with
/// back-pressure (no PUBACK, SMTP <c>452 4.3.1</c>) until space is freed; nothing already accepted is touched.
/// </summary>
public sealed class SpoolFullException : SpoolException
{
    /// <summary>Creates the exception.</summary>
    public SpoolFullException()
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">How much is free and what the floor is.</param>
    public SpoolFullException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">How much is free and what the floor is.</param>
    /// <param name="inner">The cause.</param>
    public SpoolFullException(string message, Exception inner)
        : base(message, inner)
    {
    }
}

/// <summary>The kinds of item that can be parked, released and cancelled.</summary>
public static class ParkedKinds
{
    /// <summary>An alert (routing, composing or digesting it failed).</summary>
    public const string Alert = "alert";

    /// <summary>A queued mail (handling its delivery failed).</summary>
    public const string Message = "message";
}
