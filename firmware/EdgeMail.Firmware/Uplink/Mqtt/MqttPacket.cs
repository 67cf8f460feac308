namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>
/// A decoded packet as a view into the receive buffer: <see cref="MqttCodec.Decode"/> fills one reused instance,
/// so decoding allocates nothing. Topic and payload are ranges of <see cref="Buffer"/>; they are valid only until
/// the next decode into the same buffer (for a handler: until it returns).
/// </summary>
public sealed class MqttPacket
{
    /// <summary>The packet type.</summary>
    public MqttPacketType Type { get; internal set; }

    /// <summary>The low nibble of the fixed header's first byte.</summary>
    public int Flags { get; internal set; }

    /// <summary>Total bytes of the packet (fixed header included); after <see cref="MqttDecodeStatus.NeedMoreData"/>
    /// the size the packet will have once complete, or 0 while the fixed header itself is incomplete.</summary>
    public int Length { get; internal set; }

    /// <summary>Packet identifier (PUBACK, SUBACK, and PUBLISH with QoS 1); 0 when the packet has none.</summary>
    public int PacketId { get; internal set; }

    /// <summary>CONNACK: the session-present flag.</summary>
    public bool SessionPresent { get; internal set; }

    /// <summary>CONNACK: the return code; SUBACK: the first return code (granted QoS, or 0x80 for failure).</summary>
    public int ReturnCode { get; internal set; }

    /// <summary>PUBLISH: quality of service, 0 or 1 (QoS 2 is rejected as unsupported).</summary>
    public int Qos { get; internal set; }

    /// <summary>PUBLISH: the DUP flag.</summary>
    public bool Dup { get; internal set; }

    /// <summary>PUBLISH: the RETAIN flag.</summary>
    public bool Retain { get; internal set; }

    /// <summary>The buffer the ranges below refer to.</summary>
    public byte[]? Buffer { get; internal set; }

    /// <summary>PUBLISH: index of the topic's first UTF-8 byte in <see cref="Buffer"/>.</summary>
    public int TopicOffset { get; internal set; }

    /// <summary>PUBLISH: the topic's length in bytes.</summary>
    public int TopicLength { get; internal set; }

    /// <summary>PUBLISH: index of the payload's first byte in <see cref="Buffer"/>.</summary>
    public int PayloadOffset { get; internal set; }

    /// <summary>PUBLISH: the payload's length in bytes.</summary>
    public int PayloadLength { get; internal set; }

    /// <summary>
    /// PUBLISH: true when only the head of the packet is here (<see cref="MqttCodec.DecodePublishHead"/>): the payload
    /// range holds its first bytes, <see cref="Length"/> is still the whole packet's size.
    /// </summary>
    public bool Truncated { get; internal set; }

    /// <summary>After <see cref="MqttDecodeStatus.Malformed"/>: what was wrong; otherwise null.</summary>
    public string? Error { get; internal set; }

    /// <summary>Compares the PUBLISH topic with <paramref name="topic"/> without allocating.</summary>
    /// <param name="topic">The topic name to compare with.</param>
    /// <returns>True when they are the same.</returns>
    public bool TopicEquals(string topic) =>
        Buffer != null && MqttUtf8.Equals(Buffer, TopicOffset, TopicLength, topic);

    /// <summary>The PUBLISH topic as a new string (allocates).</summary>
    /// <returns>The topic.</returns>
    public string GetTopic() => Buffer == null ? string.Empty : MqttUtf8.Decode(Buffer, TopicOffset, TopicLength);

    internal void Reset()
    {
        Type = MqttPacketType.None;
        Flags = 0;
        Length = 0;
        PacketId = 0;
        SessionPresent = false;
        ReturnCode = 0;
        Qos = 0;
        Dup = false;
        Retain = false;
        Truncated = false;
        Buffer = null;
        TopicOffset = 0;
        TopicLength = 0;
        PayloadOffset = 0;
        PayloadLength = 0;
        Error = null;
    }
}
