using System;

namespace EdgeMail.Firmware.Storage;

/// <summary>What the queue does when an append finds no free sector.</summary>
public enum FullPolicy
{
    /// <summary>
    /// Reclaim the oldest sector, dropping the entries of the lowest priority still queued and moving the
    /// others forward; critical entries go last. A marker tells the reader how many were dropped.
    /// </summary>
    DropLowestPriority = 0,

    /// <summary>Reclaim the oldest sector whatever it holds; a marker tells the reader how many were dropped.</summary>
    DropOldest = 1,

    /// <summary>Refuse the append with <see cref="QueueFullException"/>; nothing queued is lost.</summary>
    Reject = 2,
}

/// <summary>The kind of an entry the reader returns.</summary>
public enum EntryType
{
    /// <summary>An entry the application appended.</summary>
    Item = 1,

    /// <summary>A marker: entries were dropped by the full policy (see <see cref="QueueEntry.DroppedCount"/>).</summary>
    Dropped = 3,
}

/// <summary>One entry handed out by <see cref="FlashQueue.TryRead"/>; reused by the caller, so reading allocates nothing.</summary>
public sealed class QueueEntry
{
    /// <summary>Item or dropped-marker.</summary>
    public EntryType Type { get; internal set; }

    /// <summary>Position of this entry in the queue; acknowledge up to it with <see cref="FlashQueue.Acknowledge"/>.</summary>
    public uint Seq { get; internal set; }

    /// <summary>
    /// The sequence number the entry got when it was first appended. Equal to <see cref="Seq"/> unless the
    /// full policy moved the entry forward; identifiers derived from it never change.
    /// </summary>
    public uint OriginalSeq { get; internal set; }

    /// <summary>Application-defined kind byte given to <see cref="FlashQueue.Append"/>.</summary>
    public byte Kind { get; internal set; }

    /// <summary>Priority given to <see cref="FlashQueue.Append"/> (0 lowest, 3 highest).</summary>
    public byte Priority { get; internal set; }

    /// <summary>Payload bytes copied into the caller's buffer.</summary>
    public int Length { get; internal set; }

    /// <summary>For <see cref="EntryType.Dropped"/>: how many entries were dropped.</summary>
    public uint DroppedCount { get; internal set; }

    /// <summary>For <see cref="EntryType.Dropped"/>: the lowest original sequence number dropped.</summary>
    public uint DroppedFirstSeq { get; internal set; }

    /// <summary>For <see cref="EntryType.Dropped"/>: the highest original sequence number dropped.</summary>
    public uint DroppedLastSeq { get; internal set; }
}

/// <summary>The queue has no room and its policy is <see cref="FullPolicy.Reject"/>.</summary>
public sealed class QueueFullException : Exception
{
    /// <summary>Creates the exception.</summary>
    public QueueFullException()
        : base("Alert queue is full")
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What happened.</param>
    public QueueFullException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and a cause.</summary>
    /// <param name="message">What happened.</param>
    /// <param name="innerException">The cause.</param>
    public QueueFullException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>Little-endian field access on byte arrays, without allocation.</summary>
internal static class Le
{
    public static void PutU16(byte[] b, int o, int v)
    {
        b[o] = (byte)v;
        b[o + 1] = (byte)(v >> 8);
    }

    public static void PutU32(byte[] b, int o, uint v)
    {
        b[o] = (byte)v;
        b[o + 1] = (byte)(v >> 8);
        b[o + 2] = (byte)(v >> 16);
        b[o + 3] = (byte)(v >> 24);
    }

    public static int U16(byte[] b, int o) => b[o] | (b[o + 1] << 8);

    public static uint U32(byte[] b, int o) => (uint)(b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24));
}
