using System;

namespace EdgeMail.Firmware.Uplink.Mqtt;

/// <summary>
/// MQTT 3.1.1 packets to and from bytes: pure, no I/O, no allocation on success. Encoders write into the
/// caller's buffer and return the number of bytes written; they throw <see cref="ArgumentException"/> when an
/// argument breaks the protocol's limits or the buffer is too small (a caller error, not a link event).
/// <see cref="Decode"/> never throws for bad input: it answers <see cref="MqttDecodeStatus.Malformed"/> with a reason.
/// </summary>
public static class MqttCodec
{
    /// <summary>The protocol level of MQTT 3.1.1.</summary>
    public const int ProtocolLevel = 4;

    /// <summary>The largest remaining length four varint bytes can carry.</summary>
    public const int MaxRemainingLength = 268_435_455;

    /// <summary>The largest size of an MQTT string (a two-byte length prefix).</summary>
    public const int MaxStringLength = 65_535;

    /// <summary>Bytes the remaining-length varint takes for <paramref name="remainingLength"/>.</summary>
    /// <param name="remainingLength">0..<see cref="MaxRemainingLength"/>.</param>
    /// <returns>1 to 4.</returns>
    public static int RemainingLengthSize(int remainingLength)
    {
        if (remainingLength < 0 || remainingLength > MaxRemainingLength)
        {
            throw new ArgumentOutOfRangeException(nameof(remainingLength), "MQTT remaining length must be 0.." + MaxRemainingLength.ToString() + ", was " + remainingLength.ToString() + ".");
        }

        return remainingLength < 128 ? 1 : remainingLength < 16_384 ? 2 : remainingLength < 2_097_152 ? 3 : 4;
    }

    /// <summary>Writes the remaining-length varint (MQTT 3.1.1 section 2.2.3).</summary>
    /// <param name="buffer">Destination.</param>
    /// <param name="offset">Where to write.</param>
    /// <param name="remainingLength">0..<see cref="MaxRemainingLength"/>.</param>
    /// <returns>Bytes written (1 to 4).</returns>
    public static int WriteRemainingLength(byte[] buffer, int offset, int remainingLength)
    {
        int size = RemainingLengthSize(remainingLength);
        EnsureRoom(buffer, offset, size, "remaining length");
        int value = remainingLength;
        for (int i = 0; i < size; i++)
        {
            int digit = value & 0x7F;
            value >>= 7;
            buffer[offset + i] = (byte)(value > 0 ? digit | 0x80 : digit);
        }

        return size;
    }

    /// <summary>Encodes CONNECT (protocol name "MQTT", level 4, no will).</summary>
    /// <param name="buffer">Destination.</param>
    /// <param name="offset">Where to write.</param>
    /// <param name="clientId">Client identifier; may be empty only with <paramref name="cleanSession"/>.</param>
    /// <param name="userName">User name, or null for none.</param>
    /// <param name="password">Password, or null for none (needs a user name, section 3.1.2.9).</param>
    /// <param name="cleanSession">The Clean Session flag; false keeps the session (and its in-flight messages) on the broker.</param>
    /// <param name="keepAliveSeconds">Keep-alive interval, 0..65535 (0 turns keep-alive off).</param>
    /// <returns>Bytes written.</returns>
    public static int EncodeConnect(byte[] buffer, int offset, string clientId, string? userName, string? password, bool cleanSession, int keepAliveSeconds)
    {
        if (keepAliveSeconds < 0 || keepAliveSeconds > 65_535)
        {
            throw new ArgumentOutOfRangeException(nameof(keepAliveSeconds), "keep-alive must be 0..65535 s, was " + keepAliveSeconds.ToString() + ".");
        }

        if (password != null && userName == null)
        {
            throw new ArgumentException("MQTT 3.1.1 allows a password only together with a user name.", nameof(password));
        }

        int clientIdBytes = StringSize(clientId, "client id");
        if (clientIdBytes == 0 && !cleanSession)
        {
            throw new ArgumentException("An empty client id needs a clean session (MQTT 3.1.1 section 3.1.3.1).", nameof(clientId));
        }

        int remaining = 10 + 2 + clientIdBytes;
        int userBytes = 0;
        int passwordBytes = 0;
        int flags = cleanSession ? 0x02 : 0x00;
        if (userName != null)
        {
            userBytes = StringSize(userName, "user name");
            remaining += 2 + userBytes;
            flags |= 0x80;
        }

        if (password != null)
        {
            passwordBytes = StringSize(password, "password");
            remaining += 2 + passwordBytes;
            flags |= 0x40;
        }

        int total = 1 + RemainingLengthSize(remaining) + remaining;
        EnsureRoom(buffer, offset, total, "CONNECT");
        int pos = offset;
        buffer[pos++] = 0x10;
        pos += WriteRemainingLength(buffer, pos, remaining);
        buffer[pos++] = 0;
        buffer[pos++] = 4;
        buffer[pos++] = (byte)'M';
        buffer[pos++] = (byte)'Q';
        buffer[pos++] = (byte)'T';
        buffer[pos++] = (byte)'T';
        buffer[pos++] = ProtocolLevel;
        buffer[pos++] = (byte)flags;
        pos = WriteUInt16(buffer, pos, keepAliveSeconds);
        pos = WriteString(buffer, pos, clientId, clientIdBytes);
        if (userName != null)
        {
            pos = WriteString(buffer, pos, userName, userBytes);
        }

        if (password != null)
        {
            pos = WriteString(buffer, pos, password, passwordBytes);
        }

        return pos - offset;
    }

    /// <summary>Encodes a whole PUBLISH: header, topic, packet id and payload.</summary>
    /// <param name="buffer">Destination.</param>
    /// <param name="offset">Where to write.</param>
    /// <param name="topic">Topic name (no wildcards).</param>
    /// <param name="qos">0 or 1.</param>
    /// <param name="dup">The DUP flag (only with QoS 1).</param>
    /// <param name="retain">The RETAIN flag.</param>
    /// <param name="packetId">1..65535 for QoS 1; ignored for QoS 0.</param>
    /// <param name="payload">Payload bytes.</param>
    /// <param name="payloadOffset">Index of the first payload byte.</param>
    /// <param name="payloadCount">Payload length.</param>
    /// <returns>Bytes written.</returns>
    public static int EncodePublish(byte[] buffer, int offset, string topic, int qos, bool dup, bool retain, int packetId, byte[] payload, int payloadOffset, int payloadCount)
    {
        CheckRange(payload, payloadOffset, payloadCount, nameof(payload));
        int header = EncodePublishHeader(buffer, offset, topic, qos, dup, retain, packetId, payloadCount);
        EnsureRoom(buffer, offset + header, payloadCount, "PUBLISH payload");
        Array.Copy(payload, payloadOffset, buffer, offset + header, payloadCount);
        return header + payloadCount;
    }

    /// <summary>
    /// Encodes a PUBLISH up to (not including) the payload, with a remaining length that counts
    /// <paramref name="payloadCount"/> payload bytes; the caller sends the payload right after. This lets a large
    /// payload go straight from its own buffer to the transport.
    /// </summary>
    /// <param name="buffer">Destination.</param>
    /// <param name="offset">Where to write.</param>
    /// <param name="topic">Topic name (no wildcards).</param>
    /// <param name="qos">0 or 1.</param>
    /// <param name="dup">The DUP flag (only with QoS 1).</param>
    /// <param name="retain">The RETAIN flag.</param>
    /// <param name="packetId">1..65535 for QoS 1; ignored for QoS 0.</param>
    /// <param name="payloadCount">Payload length that will follow.</param>
    /// <returns>Bytes written (the header only).</returns>
    public static int EncodePublishHeader(byte[] buffer, int offset, string topic, int qos, bool dup, bool retain, int packetId, int payloadCount)
    {
        if (qos != 0 && qos != 1)
        {
            throw new ArgumentOutOfRangeException(nameof(qos), "only QoS 0 and 1 are supported, was " + qos.ToString() + ".");
        }

        if (dup && qos == 0)
        {
            throw new ArgumentException("DUP must be 0 for a QoS 0 PUBLISH (MQTT 3.1.1 section 3.3.1.1).", nameof(dup));
        }

        if (qos > 0)
        {
            CheckPacketId(packetId);
        }

        if (payloadCount < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(payloadCount), "payload length must not be negative.");
        }

        int topicBytes = StringSize(topic, "topic");
        if (topicBytes == 0)
        {
            throw new ArgumentException("A PUBLISH topic must not be empty (MQTT 3.1.1 section 4.7.3).", nameof(topic));
        }

        for (int i = 0; i < topic.Length; i++)
        {
            if (topic[i] == '+' || topic[i] == '#')
            {
                throw new ArgumentException("A PUBLISH topic must not contain the wildcards + or # (\"" + topic + "\").", nameof(topic));
            }
        }

        long remainingLong = 2L + topicBytes + (qos > 0 ? 2 : 0) + payloadCount;
        if (remainingLong > MaxRemainingLength)
        {
            throw new ArgumentException("PUBLISH of " + remainingLong.ToString() + " bytes exceeds the MQTT maximum of " + MaxRemainingLength.ToString() + ".", nameof(payloadCount));
        }

        int remaining = (int)remainingLong;
        int headerSize = 1 + RemainingLengthSize(remaining) + remaining - payloadCount;
        EnsureRoom(buffer, offset, headerSize, "PUBLISH header");
        int pos = offset;
        buffer[pos++] = (byte)(0x30 | (dup ? 0x08 : 0) | (qos << 1) | (retain ? 0x01 : 0));
        pos += WriteRemainingLength(buffer, pos, remaining);
        pos = WriteString(buffer, pos, topic, topicBytes);
        if (qos > 0)
        {
            pos = WriteUInt16(buffer, pos, packetId);
        }

        return pos - offset;
    }

    /// <summary>Encodes PUBACK for a received QoS 1 PUBLISH.</summary>
    /// <param name="buffer">Destination.</param>
    /// <param name="offset">Where to write.</param>
    /// <param name="packetId">The PUBLISH's packet id.</param>
    /// <returns>4.</returns>
    public static int EncodePubAck(byte[] buffer, int offset, int packetId)
    {
        CheckPacketId(packetId);
        EnsureRoom(buffer, offset, 4, "PUBACK");
        buffer[offset] = 0x40;
        buffer[offset + 1] = 2;
        WriteUInt16(buffer, offset + 2, packetId);
        return 4;
    }

    /// <summary>Encodes SUBSCRIBE with one topic filter.</summary>
    /// <param name="buffer">Destination.</param>
    /// <param name="offset">Where to write.</param>
    /// <param name="packetId">1..65535.</param>
    /// <param name="topicFilter">Topic filter (wildcards allowed).</param>
    /// <param name="requestedQos">0 or 1.</param>
    /// <returns>Bytes written.</returns>
    public static int EncodeSubscribe(byte[] buffer, int offset, int packetId, string topicFilter, int requestedQos)
    {
        CheckPacketId(packetId);
        if (requestedQos != 0 && requestedQos != 1)
        {
            throw new ArgumentOutOfRangeException(nameof(requestedQos), "only QoS 0 and 1 are supported, was " + requestedQos.ToString() + ".");
        }

        int filterBytes = StringSize(topicFilter, "topic filter");
        if (filterBytes == 0)
        {
            throw new ArgumentException("A topic filter must not be empty (MQTT 3.1.1 section 4.7.3).", nameof(topicFilter));
        }

        int remaining = 2 + 2 + filterBytes + 1;
        int total = 1 + RemainingLengthSize(remaining) + remaining;
        EnsureRoom(buffer, offset, total, "SUBSCRIBE");
        int pos = offset;
        buffer[pos++] = 0x82;
        pos += WriteRemainingLength(buffer, pos, remaining);
        pos = WriteUInt16(buffer, pos, packetId);
        pos = WriteString(buffer, pos, topicFilter, filterBytes);
        buffer[pos++] = (byte)requestedQos;
        return pos - offset;
    }

    /// <summary>Encodes PINGREQ.</summary>
    /// <param name="buffer">Destination.</param>
    /// <param name="offset">Where to write.</param>
    /// <returns>2.</returns>
    public static int EncodePingReq(byte[] buffer, int offset)
    {
        EnsureRoom(buffer, offset, 2, "PINGREQ");
        buffer[offset] = 0xC0;
        buffer[offset + 1] = 0;
        return 2;
    }

    /// <summary>Encodes DISCONNECT.</summary>
    /// <param name="buffer">Destination.</param>
    /// <param name="offset">Where to write.</param>
    /// <returns>2.</returns>
    public static int EncodeDisconnect(byte[] buffer, int offset)
    {
        EnsureRoom(buffer, offset, 2, "DISCONNECT");
        buffer[offset] = 0xE0;
        buffer[offset + 1] = 0;
        return 2;
    }

    /// <summary>
    /// Decodes one packet a client receives (CONNACK, PUBLISH with QoS 0 or 1, PUBACK, SUBACK, PINGRESP) from the
    /// start of <paramref name="buffer"/>[<paramref name="offset"/>..+<paramref name="count"/>]. Allocates nothing and
    /// never throws for bad bytes.
    /// </summary>
    /// <param name="buffer">Received bytes.</param>
    /// <param name="offset">Index of the packet's first byte.</param>
    /// <param name="count">Bytes available from <paramref name="offset"/>.</param>
    /// <param name="packet">Filled with the result (reset first).</param>
    /// <returns>Complete, NeedMoreData, or Malformed (with <see cref="MqttPacket.Error"/>).</returns>
    public static MqttDecodeStatus Decode(byte[] buffer, int offset, int count, MqttPacket packet)
    {
        packet.Reset();
        if (count < 0 || offset < 0 || offset > buffer.Length - count)
        {
            return Malformed(packet, "the byte range to decode lies outside the buffer");
        }

        if (count < 2)
        {
            return MqttDecodeStatus.NeedMoreData;
        }

        int first = buffer[offset];
        int remaining = 0;
        int multiplier = 1;
        int pos = offset + 1;
        int end = offset + count;
        for (int i = 0; ; i++)
        {
            if (i == 4)
            {
                return Malformed(packet, "remaining length has more than 4 bytes");
            }

            if (pos >= end)
            {
                return MqttDecodeStatus.NeedMoreData;
            }

            int b = buffer[pos++];
            remaining += (b & 0x7F) * multiplier;
            multiplier <<= 7;
            if ((b & 0x80) == 0)
            {
                break;
            }
        }

        int headerSize = pos - offset;
        packet.Type = (MqttPacketType)(first >> 4);
        packet.Flags = first & 0x0F;
        packet.Length = headerSize + remaining;
        if (end - pos < remaining)
        {
            return MqttDecodeStatus.NeedMoreData;
        }

        packet.Buffer = buffer;
        switch (packet.Type)
        {
            case MqttPacketType.ConnAck:
                if (first != 0x20 || remaining != 2)
                {
                    return Malformed(packet, "CONNACK must be 20 02, got " + Hex(first) + " with remaining length " + remaining.ToString());
                }

                if ((buffer[pos] & 0xFE) != 0)
                {
                    return Malformed(packet, "CONNACK acknowledge flags has reserved bits set: " + Hex(buffer[pos]));
                }

                packet.SessionPresent = (buffer[pos] & 0x01) != 0;
                packet.ReturnCode = buffer[pos + 1];
                return MqttDecodeStatus.Complete;

            case MqttPacketType.PubAck:
                if (first != 0x40 || remaining != 2)
                {
                    return Malformed(packet, "PUBACK must be 40 02, got " + Hex(first) + " with remaining length " + remaining.ToString());
                }

                packet.PacketId = ReadUInt16(buffer, pos);
                return packet.PacketId == 0 ? Malformed(packet, "PUBACK has packet id 0") : MqttDecodeStatus.Complete;

            case MqttPacketType.SubAck:
                if (first != 0x90 || remaining < 3)
                {
                    return Malformed(packet, "SUBACK must be 90 with remaining length 3 or more, got " + Hex(first) + " with " + remaining.ToString());
                }

                packet.PacketId = ReadUInt16(buffer, pos);
                packet.ReturnCode = buffer[pos + 2];
                if (packet.ReturnCode > 2 && packet.ReturnCode != 0x80)
                {
                    return Malformed(packet, "SUBACK return code must be 0, 1, 2 or 0x80, got " + Hex(packet.ReturnCode));
                }

                return MqttDecodeStatus.Complete;

            case MqttPacketType.PingResp:
                return first == 0xD0 && remaining == 0
                    ? MqttDecodeStatus.Complete
                    : Malformed(packet, "PINGRESP must be D0 00, got " + Hex(first) + " with remaining length " + remaining.ToString());

            case MqttPacketType.Publish:
                return DecodePublish(buffer, pos, remaining, packet);

            default:
                return Malformed(packet, "unexpected packet type " + ((int)packet.Type).ToString() + " (first byte " + Hex(first) + "); this client accepts CONNACK, PUBLISH, PUBACK, SUBACK and PINGRESP");
        }
    }

    /// <summary>
    /// Decodes the head of a PUBLISH too large to be received whole: fixed header, topic and packet id, and as much of
    /// the payload as <paramref name="count"/> holds (<see cref="MqttPacket.Truncated"/> set, <see cref="MqttPacket.Length"/>
    /// the whole packet's size, so the receiver knows how many bytes to skip). A PUBLISH that is here whole, and any
    /// other packet, decode as with <see cref="Decode"/>. Allocates nothing and never throws for bad bytes.
    /// </summary>
    /// <param name="buffer">Received bytes.</param>
    /// <param name="offset">Index of the packet's first byte.</param>
    /// <param name="count">Bytes available from <paramref name="offset"/>.</param>
    /// <param name="packet">Filled with the result (reset first).</param>
    /// <returns>Complete (possibly truncated), NeedMoreData (the head is not here yet), or Malformed.</returns>
    public static MqttDecodeStatus DecodePublishHead(byte[] buffer, int offset, int count, MqttPacket packet)
    {
        MqttDecodeStatus status = Decode(buffer, offset, count, packet);
        if (status != MqttDecodeStatus.NeedMoreData || packet.Type != MqttPacketType.Publish || packet.Length == 0)
        {
            return status;
        }

        // The remaining length is complete (Length is set): find where the variable header starts.
        int pos = offset + 1;
        while ((buffer[pos] & 0x80) != 0)
        {
            pos++;
        }

        pos++;
        int remaining = packet.Length - (pos - offset);
        int available = offset + count - pos;
        int idBytes = ((packet.Flags >> 1) & 0x03) > 0 ? 2 : 0;
        if (available < 2 || available < 2 + ReadUInt16(buffer, pos) + idBytes)
        {
            return MqttDecodeStatus.NeedMoreData;
        }

        int length = packet.Length;
        status = DecodePublish(buffer, pos, available, packet);
        if (status == MqttDecodeStatus.Complete)
        {
            if (2 + packet.TopicLength + idBytes > remaining)
            {
                return Malformed(packet, "PUBLISH topic length " + packet.TopicLength.ToString() + " does not fit remaining length " + remaining.ToString());
            }

            packet.Buffer = buffer;
            packet.Length = length;
            packet.Truncated = true;
        }

        return status;
    }

    private static MqttDecodeStatus DecodePublish(byte[] buffer, int pos, int remaining, MqttPacket packet)
    {
        int flags = packet.Flags;
        packet.Qos = (flags >> 1) & 0x03;
        packet.Dup = (flags & 0x08) != 0;
        packet.Retain = (flags & 0x01) != 0;
        if (packet.Qos > 1)
        {
            return Malformed(packet, packet.Qos == 3 ? "PUBLISH with QoS 3 is invalid" : "PUBLISH with QoS 2 is not supported by this client (it subscribes with QoS 1 at most)");
        }

        int idBytes = packet.Qos > 0 ? 2 : 0;
        if (remaining < 2 + idBytes)
        {
            return Malformed(packet, "PUBLISH remaining length " + remaining.ToString() + " is too short for a topic length" + (idBytes > 0 ? " and packet id" : string.Empty));
        }

        int topicLength = ReadUInt16(buffer, pos);
        if (topicLength == 0 || 2 + topicLength + idBytes > remaining)
        {
            return Malformed(packet, "PUBLISH topic length " + topicLength.ToString() + " does not fit remaining length " + remaining.ToString());
        }

        packet.TopicOffset = pos + 2;
        packet.TopicLength = topicLength;
        int after = pos + 2 + topicLength;
        if (idBytes > 0)
        {
            packet.PacketId = ReadUInt16(buffer, after);
            if (packet.PacketId == 0)
            {
                return Malformed(packet, "PUBLISH with QoS 1 has packet id 0");
            }

            after += 2;
        }

        packet.PayloadOffset = after;
        packet.PayloadLength = pos + remaining - after;
        return MqttDecodeStatus.Complete;
    }

    private static MqttDecodeStatus Malformed(MqttPacket packet, string error)
    {
        packet.Error = error;
        return MqttDecodeStatus.Malformed;
    }

    private static int StringSize(string value, string what)
    {
        if (value == null)
        {
            throw new ArgumentNullException(what);
        }

        int bytes = MqttUtf8.GetByteCount(value);
        if (bytes < 0)
        {
            throw new ArgumentException("The " + what + " contains U+0000 or an unpaired surrogate, which MQTT strings must not.", what);
        }

        if (bytes > MaxStringLength)
        {
            throw new ArgumentException("The " + what + " is " + bytes.ToString() + " UTF-8 bytes; MQTT strings hold at most 65535.", what);
        }

        return bytes;
    }

    private static int WriteString(byte[] buffer, int pos, string value, int byteCount)
    {
        pos = WriteUInt16(buffer, pos, byteCount);
        return MqttUtf8.Write(value, buffer, pos);
    }

    private static int WriteUInt16(byte[] buffer, int pos, int value)
    {
        buffer[pos] = (byte)(value >> 8);
        buffer[pos + 1] = (byte)value;
        return pos + 2;
    }

    private static int ReadUInt16(byte[] buffer, int pos) => (buffer[pos] << 8) | buffer[pos + 1];

    private static void CheckPacketId(int packetId)
    {
        if (packetId < 1 || packetId > 65_535)
        {
            throw new ArgumentOutOfRangeException(nameof(packetId), "packet id must be 1..65535, was " + packetId.ToString() + ".");
        }
    }

    private static void CheckRange(byte[] data, int offset, int count, string name)
    {
        if (data == null)
        {
            throw new ArgumentNullException(name);
        }

        if (offset < 0 || count < 0 || offset > data.Length - count)
        {
            throw new ArgumentOutOfRangeException(name, "range " + offset.ToString() + "+" + count.ToString() + " lies outside an array of " + data.Length.ToString() + " bytes.");
        }
    }

    private static void EnsureRoom(byte[] buffer, int offset, int needed, string what)
    {
        if (buffer == null)
        {
            throw new ArgumentNullException(nameof(buffer));
        }

        if (offset < 0 || offset > buffer.Length || buffer.Length - offset < needed)
        {
            throw new ArgumentException(what + " needs " + needed.ToString() + " bytes but the buffer has " + (buffer.Length - offset).ToString() + " from offset " + offset.ToString() + ".", nameof(buffer));
        }
    }

    private static string Hex(int value)
    {
        const string Digits = "0123456789ABCDEF";
        return "0x" + Digits[(value >> 4) & 0xF].ToString() + Digits[value & 0xF].ToString();
    }
}
