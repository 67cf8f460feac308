namespace EdgeMail.Firmware;

/// <summary>
/// A payload of known length that writes itself, in order and in pieces, into an <see cref="IByteSink"/>: it never
/// needs to be in one buffer. Writing it twice gives the same bytes.
/// </summary>
public interface IByteSource
{
    /// <summary>The payload length in bytes; exactly what <see cref="WriteTo"/> writes. Computed beforehand, not here.</summary>
    int Length { get; }

    /// <summary>Writes the whole payload into <paramref name="sink"/>.</summary>
    /// <param name="sink">The destination.</param>
    void WriteTo(IByteSink sink);
}
