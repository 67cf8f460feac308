using EdgeMail.Gateway.Ingest;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Ingest;

/// <summary>Every first byte a client may send, as MQTT 3.1.1 (table 2.2) and 5 (table 2-3) list them, and nothing else.</summary>
public sealed class PacketViolationTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Of_EveryFirstByte_AllowsExactlyWhatAClientMaySend(bool connected)
    {
        var allowed = new SortedSet<int> { 0x40, 0x50, 0x62, 0x70, 0x82, 0xA2, 0xC0, 0xE0 };
        for (int publish = 0x30; publish <= 0x3F; publish++)
        {
            int qos = (publish >> 1) & 3;
            bool dup = (publish & 0x08) != 0;
            if (qos != 3 && !(qos == 0 && dup))
            {
                allowed.Add(publish);
            }
        }

        if (!connected)
        {
            allowed.Add(0x10);
        }

        var taken = new SortedSet<int>(Enumerable.Range(0, 256).Where(b => PacketViolation.Of((byte)b, connected) is null));

        Assert.Equal(allowed, taken);
    }

    [Theory]
    [InlineData(0x38, MqttDisconnectReasonCode.MalformedPacket, "a QoS 0 PUBLISH with the DUP flag set")]
    [InlineData(0x36, MqttDisconnectReasonCode.MalformedPacket, "a PUBLISH with QoS 3")]
    [InlineData(0x80, MqttDisconnectReasonCode.MalformedPacket, "a SUBSCRIBE whose fixed-header flags are not 0010")]
    [InlineData(0xA0, MqttDisconnectReasonCode.MalformedPacket, "an UNSUBSCRIBE whose fixed-header flags are not 0010")]
    [InlineData(0x41, MqttDisconnectReasonCode.MalformedPacket, "a PUBACK whose fixed-header flags are not 0000")]
    [InlineData(0x10, MqttDisconnectReasonCode.ProtocolError, "a second CONNECT")]
    [InlineData(0x20, MqttDisconnectReasonCode.ProtocolError, "a CONNACK, which only a server sends")]
    [InlineData(0xF0, MqttDisconnectReasonCode.ProtocolError, "an AUTH packet")]
    [InlineData(0x00, MqttDisconnectReasonCode.MalformedPacket, "a packet of the reserved type 0")]
    public void Of_ARefusedFirstByte_SaysWhyAndWhatAnMqtt5ClientIsTold(byte header, MqttDisconnectReasonCode code, string reason)
    {
        var violation = PacketViolation.Of(header, connected: true);

        Assert.NotNull(violation);
        Assert.Equal(code, violation.Code);
        Assert.StartsWith(reason, violation.Reason, StringComparison.Ordinal);
    }
}
