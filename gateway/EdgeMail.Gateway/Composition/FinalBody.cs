using MimeKit;
using MimeKit.IO;

namespace EdgeMail.Gateway.Composition;

/// <summary>
/// A message body whose bytes are final — CRLF line endings, already in their transfer encoding — written as they are.
/// A <see cref="MimePart"/> would put them through a new-line filter (and its buffers) on every write, to the same
/// bytes. It has no header fields of its own: the message it is the body of carries them all.
/// </summary>
internal sealed class FinalBody : MimeEntity
{
    private readonly byte[] _bytes;
    private readonly int _start;

    /// <summary>Creates the body.</summary>
    /// <param name="bytes">Holds the body, read in place: it must not change.</param>
    /// <param name="start">Where the body starts in <paramref name="bytes"/>.</param>
    /// <param name="length">Its length.</param>
    public FinalBody(byte[] bytes, int start, int length)
        : base(new ContentType("text", "plain"))
    {
        Headers.Clear();
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
