using MimeKit;
using MimeKit.IO;

namespace EdgeMail.Gateway.Composition;

/// <summary>
/// A message body whose bytes are final — CRLF line endings, already in their transfer encoding — written as they are.
/// A <see cref="MimePart"/> would put them through a new-line filter (and its buffers) on every write, to the same
/// bytes. Its header fields (a Content-Type with a boundary, or none when the message carries them) are written by the
/// message it is the body of.
/// </summary>
internal sealed class FinalBody : MimeEntity
{
    private readonly byte[] _bytes;
    private readonly int _start;

    /// <summary>Creates the body.</summary>
    /// <param name="contentType">Its Content-Type field, or null for none.</param>
    /// <param name="bytes">Holds the body, read in place: it must not change.</param>
    /// <param name="start">Where the body starts in <paramref name="bytes"/>.</param>
    /// <param name="length">Its length.</param>
    public FinalBody(ContentType? contentType, byte[] bytes, int start, int length)
        : base(contentType ?? new ContentType("text", "plain"))
    {
        if (contentType is null)
        {
            Headers.Clear();
        }

        _bytes = bytes;
        _start = start;
        Length = length;
    }

    /// <summary>The body's length in bytes.</summary>
    public int Length { get; }

    public override void Prepare(EncodingConstraint constraint, int maxLineLength = 78)
    {
        // Final bytes: nothing to prepare.
    }

    public override void WriteTo(FormatOptions options, Stream stream, bool contentOnly, CancellationToken cancellationToken = default)
    {
        base.WriteTo(options, stream, contentOnly, cancellationToken);
        if (stream is ICancellableStream cancellable)
        {
            cancellable.Write(_bytes, _start, Length, cancellationToken);
        }
        else
        {
            cancellationToken.ThrowIfCancellationRequested();
            stream.Write(_bytes, _start, Length);
        }
    }

    public override async Task WriteToAsync(FormatOptions options, Stream stream, bool contentOnly, CancellationToken cancellationToken = default)
    {
        await base.WriteToAsync(options, stream, contentOnly, cancellationToken).ConfigureAwait(false);
        await stream.WriteAsync(_bytes.AsMemory(_start, Length), cancellationToken).ConfigureAwait(false);
    }
}
