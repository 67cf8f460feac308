using MQTTnet.Exceptions;
using MQTTnet.Protocol;

namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// Why a device's packet is refused as it is framed (<see cref="DeviceChannel"/>): MQTT 3.1.1 and 5 call it malformed or a
/// protocol error, and ask the receiver to close the connection. MQTTnet checks none of the fixed header's flags: it stored
/// a QoS 0 alert with DUP set, answered a SUBSCRIBE or PUBREL with wrong flags, and ran the publish check on QoS 3. So the
/// first byte is checked here, before the packet is decoded: nothing in a refused packet is handled, stored or acknowledged.
/// </summary>
internal sealed class PacketViolation
{
    private const string Malformed = "a malformed packet";
    private const string FlagRule = "(MQTT 3.1.1 section 2.2.2, MQTT 5 section 2.1.3: " + Malformed + ")";

    private static readonly string[] Names =
        ["reserved type 0", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH"];

    private static readonly PacketViolation Qos3 = new("a PUBLISH with QoS 3, which no MQTT version has (MQTT 3.1.1 and 5, section 3.3.1.2: " + Malformed + ")", MqttDisconnectReasonCode.MalformedPacket);
    private static readonly PacketViolation Qos0Dup = new("a QoS 0 PUBLISH with the DUP flag set (MQTT 3.1.1 and 5, section 3.3.1.1: " + Malformed + ")", MqttDisconnectReasonCode.MalformedPacket);
    private static readonly PacketViolation SecondConnect = new("a second CONNECT on a connection already connected (MQTT 3.1.1 and 5, section 3.1: a protocol error)", MqttDisconnectReasonCode.ProtocolError);

    // By packet type: the refusal of a type no client may send, or else of the type with flags other than it must have.
    private static readonly PacketViolation[] ByType = [.. Enumerable.Range(0, 16).Select(type => type switch
    {
        0 => new PacketViolation("a packet of the reserved type 0 (MQTT 3.1.1 and 5, section 2.1.2: " + Malformed + ")", MqttDisconnectReasonCode.MalformedPacket),
        2 or 9 or 11 or 13 => new PacketViolation($"a {Names[type]}, which only a server sends (a protocol error)", MqttDisconnectReasonCode.ProtocolError),
        15 => new PacketViolation("an AUTH packet: MQTT 5 re-authentication, which the gateway does not offer (in MQTT 3.1.1 a reserved type)", MqttDisconnectReasonCode.ProtocolError),
        _ => new PacketViolation($"{Article(Names[type])} {Names[type]} whose fixed-header flags are not {(Flags(type) == 2 ? "0010" : "0000")} {FlagRule}", MqttDisconnectReasonCode.MalformedPacket),
    })];

    private PacketViolation(string reason, MqttDisconnectReasonCode code)
    {
        Reason = reason;
        Code = code;
    }

    /// <summary>What was wrong, for the log and an MQTT 5 client's DISCONNECT.</summary>
    public string Reason { get; }

    /// <summary>What an MQTT 5 client is told in DISCONNECT.</summary>
    public MqttDisconnectReasonCode Code { get; }

    /// <summary>Checks a client's fixed header, its first byte; runs for every packet: a switch, no allocation.</summary>
    /// <param name="header">The first byte: packet type and flags.</param>
    /// <param name="connected">Whether the connection's CONNECT was taken already.</param>
    /// <returns>Null when MQTT allows it from a client; else why not.</returns>
    public static PacketViolation? Of(byte header, bool connected)
    {
        int type = header >> 4;
        int flags = header & 0x0F;
        switch (type)
        {
            case 3:
                return (flags & 0x06) == 0x06 ? Qos3 : (flags & 0x0E) == 0x08 ? Qos0Dup : null;
            case 0 or 2 or 9 or 11 or 13 or 15:
                return ByType[type];
            case 1 when connected:
                return SecondConnect;
            default:
                return flags == Flags(type) ? null : ByType[type];
        }
    }

    /// <summary>A packet whose header was right and whose body MQTTnet could not decode.</summary>
    /// <param name="header">Its first byte.</param>
    /// <param name="error">MQTTnet's message.</param>
    /// <returns>The refusal.</returns>
    public static PacketViolation Undecodable(byte header, string error) =>
        new($"a malformed {Names[header >> 4]} ({Composition.MailComposer.Clean(error, 200)})", MqttDisconnectReasonCode.MalformedPacket);

    // PUBREL, SUBSCRIBE and UNSUBSCRIBE have 0010, every other packet a client sends but PUBLISH 0000 (3.1.1 table 2.2, 5 table 2-3).
    private static int Flags(int type) => type is 6 or 8 or 10 ? 2 : 0;

    private static string Article(string name) => name[0] is 'A' or 'U' ? "an" : "a";
}

/// <summary>A device's packet refused as it was framed; the connection ends (MQTTnet's receive loop ends on it).</summary>
/// <param name="violation">Why.</param>
internal sealed class MalformedPacketException(PacketViolation violation) : MqttProtocolViolationException("Received " + violation.Reason + ".")
{
    /// <summary>Why.</summary>
    public PacketViolation Violation { get; } = violation;
}
