using System;

namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// The next alert to send, held as its stored record (at most <see cref="AlertRecord.MaxSize"/> bytes) rather than as
/// JSON (up to <see cref="AlertJsonWriter.MaxLength"/>): <see cref="AlertStore.TryNext(OutgoingAlert)"/> loads it and
/// measures its JSON; <see cref="WriteTo(IByteSink)"/> streams the JSON, as often as needed, byte for byte the same
/// until <see cref="Stamp"/> fixes its times at a later "now" (an uplink stamps it right before it goes on the wire,
/// so <c>age_ms</c> is its age when published, not when it was loaded). Owned by one sending thread; the store's lock
/// is not held while it is written, so raising alerts never waits for the network.
/// </summary>
public sealed class OutgoingAlert : IByteSource
{
    // An update's payload on flash starts with the 4-byte id of the alert it replaces.
    private readonly byte[] _buffer = new byte[4 + AlertRecord.MaxSize];
    private readonly AlertJsonWriter _writer;
    private int _start;
    private int _recordLength;
    private uint _epoch;
    private uint _idSeq;
    private uint _boot;
    private IClock? _clock;
    private WallClock? _wall;
    private long _uptimeMs;
    private long _unixMs;

    /// <summary>Creates an empty one; <see cref="AlertStore.TryNext(OutgoingAlert)"/> fills it.</summary>
    public OutgoingAlert()
        : this(new JsonOutput())
    {
    }

    /// <summary>One whose JSON writer shares its cursor (and 32-byte chunk) with other writers of the same thread.</summary>
    internal OutgoingAlert(JsonOutput output) => _writer = new AlertJsonWriter(output);

    /// <summary>The longest alert id: 8 hex digits of the epoch, '-', and a sequence number of up to 10 digits.</summary>
    public const int MaxIdLength = 19;

    /// <summary>True between a successful <see cref="AlertStore.TryNext(OutgoingAlert)"/> and the next call that finds nothing.</summary>
    public bool IsLoaded { get; private set; }

    /// <summary>The queue sequence number to acknowledge once the gateway owns the alert (its tag in the MQTT window).</summary>
    public uint Seq { get; private set; }

    /// <summary>The sequence number in the alert's id (the one it was first queued under; <see cref="Seq"/> may differ).</summary>
    public uint IdSeq => _idSeq;

    /// <summary>The alert's JSON length in bytes, measured when it was loaded or last <see cref="Stamp">stamped</see>.</summary>
    public int Length { get; private set; }

    /// <summary>Where the store reads the record to.</summary>
    internal byte[] Buffer => _buffer;

    /// <summary>Streams the alert's JSON (Contract 1) into <paramref name="sink"/>.</summary>
    /// <param name="sink">The destination, e.g. the MQTT client's PUBLISH payload.</param>
    /// <exception cref="InvalidOperationException">Nothing is loaded.</exception>
    public void WriteTo(IByteSink sink)
    {
        EnsureLoaded();
        _writer.Write(_buffer, _start, _recordLength, _epoch, _idSeq, _boot, _uptimeMs, _unixMs, sink);
    }

    /// <summary>Writes the alert's JSON into one buffer.</summary>
    /// <param name="destination">The buffer; needs <see cref="Length"/> bytes from <paramref name="offset"/>.</param>
    /// <param name="offset">Where the JSON starts.</param>
    /// <returns><see cref="Length"/>.</returns>
    /// <exception cref="InvalidOperationException">Nothing is loaded.</exception>
    public int WriteTo(byte[] destination, int offset)
    {
        EnsureLoaded();
        return _writer.Write(_buffer, _start, _recordLength, _epoch, _idSeq, _boot, _uptimeMs, _unixMs, destination, offset);
    }

    /// <summary>Writes the alert's id, the value of the JSON's <c>"id"</c> (e.g. <c>7f3a9c21-42</c>), without the JSON.</summary>
    /// <param name="destination">The buffer; <see cref="MaxIdLength"/> bytes from <paramref name="offset"/> always suffice.</param>
    /// <param name="offset">Where the id starts.</param>
    /// <returns>The id's length in bytes.</returns>
    /// <exception cref="InvalidOperationException">Nothing is loaded.</exception>
    public int WriteId(byte[] destination, int offset)
    {
        EnsureLoaded();
        if (destination == null)
        {
            throw new ArgumentNullException(nameof(destination));
        }

        int digits = 1;
        for (uint rest = _idSeq; rest >= 10; rest /= 10)
        {
            digits++;
        }

        if (offset < 0 || offset + 9 + digits > destination.Length)
        {
            throw new ArgumentException("The id needs " + (9 + digits).ToString() + " bytes from the offset.", nameof(destination));
        }

        // As the JSON writes it: the epoch as 8 lower-case hex digits, '-', the sequence number in decimal.
        for (int i = 0; i < 8; i++)
        {
            int nibble = (int)((_epoch >> (28 - (4 * i))) & 0xF);
            destination[offset + i] = (byte)(nibble < 10 ? '0' + nibble : 'a' + nibble - 10);
        }

        destination[offset + 8] = (byte)'-';
        uint value = _idSeq;
        for (int i = 8 + digits; i > 8; i--)
        {
            destination[offset + i] = (byte)('0' + (value % 10));
            value /= 10;
        }

        return 9 + digits;
    }

    /// <summary>
    /// Fixes the times in the JSON (<c>age_ms</c>, or <c>raised</c> derived from the uptime) at now and measures it
    /// again. An alert may wait long after it was loaded — for a slot in the MQTT window (up to the ack timeout), or for
    /// the replies to MAIL, RCPT and DATA — and its age must be the one it has when it leaves; call this right before
    /// <see cref="WriteTo(IByteSink)"/>, and read <see cref="Length"/> after it.
    /// </summary>
    /// <exception cref="InvalidOperationException">Nothing is loaded.</exception>
    public void Stamp()
    {
        EnsureLoaded();
        _uptimeMs = _clock!.UptimeMs;
        _unixMs = _wall!.UnixMs;
        Length = _writer.Measure(_buffer, _start, _recordLength, _epoch, _idSeq, _boot, _uptimeMs, _unixMs);
    }

    internal void Load(int start, int recordLength, uint epoch, uint idSeq, uint seq, uint boot, IClock clock, WallClock wall)
    {
        _start = start;
        _recordLength = recordLength;
        _epoch = epoch;
        _idSeq = idSeq;
        _boot = boot;
        _clock = clock;
        _wall = wall;
        Seq = seq;
        IsLoaded = true;
        Stamp();
    }

    internal void Clear()
    {
        IsLoaded = false;
        Seq = 0;
        Length = 0;
    }

    private void EnsureLoaded()
    {
        if (!IsLoaded)
        {
            throw new InvalidOperationException("No alert is loaded; call AlertStore.TryNext(OutgoingAlert) first.");
        }
    }
}
