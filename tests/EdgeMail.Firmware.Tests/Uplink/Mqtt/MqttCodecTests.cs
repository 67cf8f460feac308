using EdgeMail.Firmware.Uplink.Mqtt;
using FsCheck;
using FsCheck.Xunit;
using Xunit;

namespace EdgeMail.Firmware.Tests.Uplink.Mqtt;

/// <summary>Byte-for-byte checks against packets worked out by hand from the MQTT 3.1.1 specification.</summary>
public class MqttCodecTests
{
    private static byte[] Bytes(string hex) => Convert.FromHexString(hex.Replace(" ", string.Empty, StringComparison.Ordinal));

    private static byte[] Encode(Func<byte[], int> encode)
    {
        var buffer = new byte[512];
        int n = encode(buffer);
        return buffer[..n];
    }

    [Fact]
    public void EncodeConnect_WithUserPasswordAndPersistentSession_MatchesSpecLayout()
    {
        // 3.1.2: "MQTT", level 4, flags user(0x80)|password(0x40), clean session 0, keep-alive 60 s; 3.1.3: payload order.
        byte[] actual = Encode(b => MqttCodec.EncodeConnect(b, 0, "dev-1", "dev-1", "s3cret", cleanSession: false, keepAliveSeconds: 60));
        Assert.Equal(
            Bytes("10 20 0004 4D515454 04 C0 003C 0005 6465762D31 0005 6465762D31 0006 733363726574"),
            actual);
    }

    [Fact]
    public void EncodeConnect_CleanSessionWithoutCredentials_SetsOnlyCleanSessionFlag()
    {
        byte[] actual = Encode(b => MqttCodec.EncodeConnect(b, 0, "x", null, null, cleanSession: true, keepAliveSeconds: 0));
        Assert.Equal(Bytes("10 0D 0004 4D515454 04 02 0000 0001 78"), actual);
    }

    [Fact]
    public void EncodeConnect_PasswordWithoutUserName_IsRejected()
    {
        var ex = Assert.Throws<ArgumentException>(() => MqttCodec.EncodeConnect(new byte[64], 0, "x", null, "pw", false, 60));
        Assert.Contains("user name", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void EncodeConnect_EmptyClientIdWithPersistentSession_IsRejected() =>
        Assert.Throws<ArgumentException>(() => MqttCodec.EncodeConnect(new byte[64], 0, string.Empty, null, null, false, 60));

    [Fact]
    public void EncodePublish_Qos1WithDup_SetsFlagsTopicPacketIdAndPayload()
    {
        // 3.3.1: 0x30 | DUP 0x08 | QoS1 0x02 = 0x3A; remaining = 2+3 topic + 2 id + 2 payload = 9.
        byte[] payload = "hi"u8.ToArray();
        byte[] actual = Encode(b => MqttCodec.EncodePublish(b, 0, "a/b", 1, dup: true, retain: false, packetId: 10, payload, 0, 2));
        Assert.Equal(Bytes("3A 09 0003 612F62 000A 6869"), actual);
    }

    [Fact]
    public void EncodePublish_Qos1RetainNoDup_Sets0x33()
    {
        byte[] actual = Encode(b => MqttCodec.EncodePublish(b, 0, "a/b", 1, dup: false, retain: true, packetId: 0xABCD, [], 0, 0));
        Assert.Equal(Bytes("33 07 0003 612F62 ABCD"), actual);
    }

    [Fact]
    public void EncodePublish_Qos0_HasNoPacketId()
    {
        byte[] actual = Encode(b => MqttCodec.EncodePublish(b, 0, "a/b", 0, dup: false, retain: false, packetId: 0, "hi"u8.ToArray(), 0, 2));
        Assert.Equal(Bytes("30 07 0003 612F62 6869"), actual);
    }

    [Fact]
    public void EncodePublish_NonAsciiTopic_IsUtf8Encoded()
    {
        // U+00B0 -> C2 B0, U+20AC -> E2 82 AC, U+1F600 (surrogate pair) -> F0 9F 98 80.
        byte[] actual = Encode(b => MqttCodec.EncodePublish(b, 0, "°€😀", 0, false, false, 0, [], 0, 0));
        Assert.Equal(Bytes("30 0B 0009 C2B0 E282AC F09F9880"), actual);
    }

    [Theory]
    [InlineData(0xD800, "b")]
    [InlineData(0xDBFF, "")]
    [InlineData(0xDC00, "b")]
    [InlineData(0x0000, "b")]
    public void EncodePublish_TopicWithUnpairedSurrogateOrNul_IsRejected(int bad, string after)
    {
        // Built in code: attribute strings cannot carry a lone surrogate.
        string topic = "a" + (char)bad + after;
        var ex = Assert.Throws<ArgumentException>(() => MqttCodec.EncodePublish(new byte[64], 0, topic, 0, false, false, 0, [], 0, 0));
        Assert.Contains("unpaired surrogate", ex.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("a/+")]
    [InlineData("#")]
    [InlineData("")]
    public void EncodePublish_WildcardOrEmptyTopic_IsRejected(string topic) =>
        Assert.Throws<ArgumentException>(() => MqttCodec.EncodePublish(new byte[64], 0, topic, 1, false, false, 1, [], 0, 0));

    [Fact]
    public void EncodePublish_DupWithQos0_IsRejected() =>
        Assert.Throws<ArgumentException>(() => MqttCodec.EncodePublish(new byte[64], 0, "t", 0, true, false, 0, [], 0, 0));

    [Fact]
    public void EncodePublish_BufferTooSmall_SaysHowManyBytesWereNeeded()
    {
        var ex = Assert.Throws<ArgumentException>(() => MqttCodec.EncodePublish(new byte[8], 0, "a/b", 1, false, false, 1, new byte[10], 0, 10));
        Assert.Contains("needs", ex.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0, "00")]
    [InlineData(127, "7F")]
    [InlineData(128, "8001")]
    [InlineData(16_383, "FF7F")]
    [InlineData(16_384, "808001")]
    [InlineData(2_097_151, "FFFF7F")]
    [InlineData(2_097_152, "80808001")]
    [InlineData(268_435_455, "FFFFFF7F")]
    public void WriteRemainingLength_AtVarintBoundaries_MatchesSpecTable(int value, string hex)
    {
        // The table of MQTT 3.1.1 section 2.2.3.
        byte[] actual = Encode(b => MqttCodec.WriteRemainingLength(b, 0, value));
        Assert.Equal(Bytes(hex), actual);
        Assert.Equal(actual.Length, MqttCodec.RemainingLengthSize(value));
    }

    [Fact]
    public void WriteRemainingLength_AboveMaximum_IsRejected() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => MqttCodec.WriteRemainingLength(new byte[8], 0, 268_435_456));

    [Theory]
    [InlineData(127, "307F")]
    [InlineData(128, "308001")]
    [InlineData(16_383, "30FF7F")]
    [InlineData(16_384, "30808001")]
    public void EncodePublish_RemainingLengthAtBoundary_EncodesHeaderAndDecodesBack(int remaining, string header)
    {
        // Topic "t" takes 3 bytes of the remaining length (QoS 0: no packet id); the payload fills the rest.
        var payload = new byte[remaining - 3];
        new Random(remaining).NextBytes(payload);
        var buffer = new byte[remaining + 8];
        int n = MqttCodec.EncodePublish(buffer, 0, "t", 0, false, false, 0, payload, 0, payload.Length);
        byte[] expectedHeader = Bytes(header);
        Assert.Equal(expectedHeader.Length + remaining, n);
        Assert.Equal(expectedHeader, buffer[..expectedHeader.Length]);

        var packet = new MqttPacket();
        Assert.Equal(MqttDecodeStatus.Complete, MqttCodec.Decode(buffer, 0, n, packet));
        Assert.Equal(n, packet.Length);
        Assert.True(packet.TopicEquals("t"));
        Assert.Equal(payload, buffer[packet.PayloadOffset..(packet.PayloadOffset + packet.PayloadLength)]);
    }

    [Fact]
    public void EncodePubAck_WritesTypeLengthAndPacketId() =>
        Assert.Equal(Bytes("40 02 002A"), Encode(b => MqttCodec.EncodePubAck(b, 0, 42)));

    [Fact]
    public void EncodeSubscribe_OneFilterQos1_HasReservedFlags0x82()
    {
        // 3.8.1: fixed header 0x82; payload = filter + requested QoS byte.
        Assert.Equal(Bytes("82 08 0001 0003 722F23 01"), Encode(b => MqttCodec.EncodeSubscribe(b, 0, 1, "r/#", 1)));
    }

    [Fact]
    public void EncodePingReq_IsC000() => Assert.Equal(Bytes("C0 00"), Encode(b => MqttCodec.EncodePingReq(b, 0)));

    [Fact]
    public void EncodeDisconnect_IsE000() => Assert.Equal(Bytes("E0 00"), Encode(b => MqttCodec.EncodeDisconnect(b, 0)));

    [Fact]
    public void Encode_AtOffset_WritesOnlyFromThere()
    {
        var buffer = new byte[8];
        Assert.Equal(4, MqttCodec.EncodePubAck(buffer, 3, 258));
        Assert.Equal(Bytes("000000 40020102 00"), buffer);
    }

    [Theory]
    [InlineData("20 02 01 00", true, 0)]
    [InlineData("20 02 00 00", false, 0)]
    [InlineData("20 02 00 04", false, 4)]
    [InlineData("20 02 00 05", false, 5)]
    public void Decode_ConnAck_ReadsSessionPresentAndReturnCode(string hex, bool sessionPresent, int returnCode)
    {
        var packet = new MqttPacket();
        byte[] bytes = Bytes(hex);
        Assert.Equal(MqttDecodeStatus.Complete, MqttCodec.Decode(bytes, 0, bytes.Length, packet));
        Assert.Equal(MqttPacketType.ConnAck, packet.Type);
        Assert.Equal(sessionPresent, packet.SessionPresent);
        Assert.Equal(returnCode, packet.ReturnCode);
        Assert.Equal(4, packet.Length);
    }

    [Fact]
    public void Decode_PubAck_ReadsPacketId()
    {
        var packet = new MqttPacket();
        byte[] bytes = Bytes("40 02 012C");
        Assert.Equal(MqttDecodeStatus.Complete, MqttCodec.Decode(bytes, 0, bytes.Length, packet));
        Assert.Equal(MqttPacketType.PubAck, packet.Type);
        Assert.Equal(300, packet.PacketId);
    }

    [Theory]
    [InlineData("90 03 0007 01", 1)]
    [InlineData("90 03 0007 00", 0)]
    [InlineData("90 03 0007 80", 0x80)]
    public void Decode_SubAck_ReadsPacketIdAndReturnCode(string hex, int code)
    {
        var packet = new MqttPacket();
        byte[] bytes = Bytes(hex);
        Assert.Equal(MqttDecodeStatus.Complete, MqttCodec.Decode(bytes, 0, bytes.Length, packet));
        Assert.Equal(MqttPacketType.SubAck, packet.Type);
        Assert.Equal(7, packet.PacketId);
        Assert.Equal(code, packet.ReturnCode);
    }

    [Fact]
    public void Decode_PingResp_IsComplete()
    {
        var packet = new MqttPacket();
        Assert.Equal(MqttDecodeStatus.Complete, MqttCodec.Decode(Bytes("D0 00"), 0, 2, packet));
        Assert.Equal(MqttPacketType.PingResp, packet.Type);
    }

    [Fact]
    public void Decode_IncomingQos1PublishWithDupAndRetain_ExposesTopicIdAndPayloadWithoutCopying()
    {
        // A receipt: 0x30 | DUP | QoS1 | RETAIN = 0x3B; topic "r/1" (5), id 7 (2), payload "{}" (2) = 9.
        byte[] bytes = Bytes("AA 3B 09 0003 722F31 0007 7B7D 40");
        var packet = new MqttPacket();
        Assert.Equal(MqttDecodeStatus.Complete, MqttCodec.Decode(bytes, 1, bytes.Length - 1, packet));
        Assert.Equal(MqttPacketType.Publish, packet.Type);
        Assert.Equal(1, packet.Qos);
        Assert.True(packet.Dup);
        Assert.True(packet.Retain);
        Assert.Equal(7, packet.PacketId);
        Assert.Same(bytes, packet.Buffer);
        Assert.True(packet.TopicEquals("r/1"));
        Assert.False(packet.TopicEquals("r/2"));
        Assert.False(packet.TopicEquals("r/10"));
        Assert.Equal("r/1", packet.GetTopic());
        Assert.Equal(10, packet.PayloadOffset);
        Assert.Equal(2, packet.PayloadLength);
        Assert.Equal(11, packet.Length);
    }

    [Fact]
    public void Decode_TopicWithMultiByteCharacters_ComparesAndDecodes()
    {
        byte[] bytes = Bytes("30 0B 0009 C2B0 E282AC F09F9880");
        var packet = new MqttPacket();
        Assert.Equal(MqttDecodeStatus.Complete, MqttCodec.Decode(bytes, 0, bytes.Length, packet));
        Assert.True(packet.TopicEquals("°€😀"));
        Assert.Equal("°€😀", packet.GetTopic());
    }

    [Fact]
    public void Decode_TwoPacketsBackToBack_ReportsLengthOfFirst()
    {
        byte[] bytes = Bytes("40 02 0001 D0 00");
        var packet = new MqttPacket();
        Assert.Equal(MqttDecodeStatus.Complete, MqttCodec.Decode(bytes, 0, bytes.Length, packet));
        Assert.Equal(4, packet.Length);
        Assert.Equal(MqttDecodeStatus.Complete, MqttCodec.Decode(bytes, 4, bytes.Length - 4, packet));
        Assert.Equal(MqttPacketType.PingResp, packet.Type);
    }

    [Theory]
    [InlineData("20 02 01 00")]
    [InlineData("3B 09 0003 722F31 0007 7B7D")]
    [InlineData("90 03 0007 01")]
    [InlineData("30 8001 0001 74")]
    public void Decode_EveryTruncation_AsksForMoreData(string hex)
    {
        byte[] bytes = Bytes(hex);
        var packet = new MqttPacket();
        for (int n = 0; n < bytes.Length; n++)
        {
            Assert.Equal(MqttDecodeStatus.NeedMoreData, MqttCodec.Decode(bytes, 0, n, packet));
        }
    }

    [Fact]
    public void Decode_TruncatedAfterFixedHeader_ReportsTheFullPacketSize()
    {
        byte[] bytes = Bytes("30 8001 0001");
        var packet = new MqttPacket();
        Assert.Equal(MqttDecodeStatus.NeedMoreData, MqttCodec.Decode(bytes, 0, bytes.Length, packet));
        Assert.Equal(3 + 128, packet.Length);
    }

    [Theory]
    [InlineData("30 FFFFFFFF 7F", "more than 4 bytes")]
    [InlineData("20 03 00 00 00", "CONNACK")]
    [InlineData("21 02 00 00", "CONNACK")]
    [InlineData("20 02 02 00", "reserved bits")]
    [InlineData("40 03 0001 00", "PUBACK")]
    [InlineData("40 02 0000", "packet id 0")]
    [InlineData("90 02 0001", "SUBACK")]
    [InlineData("90 03 0001 03", "SUBACK return code")]
    [InlineData("D0 01 00", "PINGRESP")]
    [InlineData("32 03 0005 61", "too short")]
    [InlineData("32 06 0005 6162 0001", "does not fit")]
    [InlineData("30 02 0000", "does not fit")]
    [InlineData("36 06 0001 61 0001 00", "QoS 3")]
    [InlineData("34 06 0001 61 0001 00", "QoS 2")]
    [InlineData("32 05 0001 61 0000", "packet id 0")]
    [InlineData("10 00", "unexpected packet type 1")]
    [InlineData("50 02 0001", "unexpected packet type 5")]
    [InlineData("00 00", "unexpected packet type 0")]
    public void Decode_MalformedPacket_SaysWhatIsWrong(string hex, string expected)
    {
        byte[] bytes = Bytes(hex);
        var packet = new MqttPacket();
        Assert.Equal(MqttDecodeStatus.Malformed, MqttCodec.Decode(bytes, 0, bytes.Length, packet));
        Assert.Contains(expected, packet.Error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(-1, 2)]
    [InlineData(0, 9)]
    [InlineData(3, 2)]
    [InlineData(0, -1)]
    public void Decode_RangeOutsideBuffer_IsMalformedNotAnException(int offset, int count)
    {
        var packet = new MqttPacket();
        Assert.Equal(MqttDecodeStatus.Malformed, MqttCodec.Decode(new byte[4], offset, count, packet));
        Assert.Contains("outside", packet.Error, StringComparison.Ordinal);
    }

    [Fact]
    public void EncodeAndDecode_HotPath_AllocateNothing()
    {
        var buffer = new byte[512];
        byte[] payload = new byte[200];
        var packet = new MqttPacket();
        const string Topic = "edgemail/v1/dev-1/alert";
        MqttCodec.EncodePublish(buffer, 0, Topic, 1, false, false, 1, payload, 0, payload.Length); // warm up

        ZeroAllocation.AssertNone(ZeroAllocation.Measure(5, 100, i =>
        {
            int n = MqttCodec.EncodePublish(buffer, 0, Topic, 1, true, false, i + 1, payload, 0, payload.Length);
            MqttCodec.Decode(buffer, 0, n, packet);
            packet.TopicEquals(Topic);
            n = MqttCodec.EncodePubAck(buffer, 0, i + 1);
            MqttCodec.Decode(buffer, 0, n, packet);
            MqttCodec.EncodePingReq(buffer, 0);
        }));
    }

    [Property(MaxTest = 2000)]
    public bool Decode_AnyBytes_NeverThrowsAndStaysInsideTheInput(byte[] data, PositiveInt cut)
    {
        var packet = new MqttPacket();
        int count = data.Length == 0 ? 0 : cut.Get % (data.Length + 1);
        MqttDecodeStatus status = MqttCodec.Decode(data, 0, count, packet);
        return status switch
        {
            MqttDecodeStatus.Complete => packet.Length <= count && packet.PayloadOffset + packet.PayloadLength <= count,
            MqttDecodeStatus.Malformed => packet.Error is { Length: > 0 },
            _ => true,
        };
    }

    [Property(MaxTest = 500)]
    public bool EncodePublish_ThenDecode_RoundTrips(NonEmptyString topicSeed, byte[] payload, bool qos1, bool dup, bool retain, ushort id)
    {
        string topic = new string(topicSeed.Get.Where(c => c is not ('+' or '#' or '\0') && !char.IsSurrogate(c)).ToArray());
        if (topic.Length == 0)
        {
            topic = "t";
        }

        int packetId = id == 0 ? 1 : id;
        var buffer = new byte[payload.Length + 1024];
        int n = MqttCodec.EncodePublish(buffer, 0, topic, qos1 ? 1 : 0, qos1 && dup, retain, packetId, payload, 0, payload.Length);
        var packet = new MqttPacket();
        return MqttCodec.Decode(buffer, 0, n, packet) == MqttDecodeStatus.Complete
            && packet.Length == n
            && packet.TopicEquals(topic)
            && packet.GetTopic() == topic
            && packet.Qos == (qos1 ? 1 : 0)
            && packet.Dup == (qos1 && dup)
            && packet.Retain == retain
            && packet.PacketId == (qos1 ? packetId : 0)
            && buffer.AsSpan(packet.PayloadOffset, packet.PayloadLength).SequenceEqual(payload);
    }
}
