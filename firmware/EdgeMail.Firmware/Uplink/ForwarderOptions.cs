namespace EdgeMail.Firmware.Uplink;

/// <summary>Settings of a <see cref="Forwarder"/>: who the device is, where the gateway is, and how it retries.</summary>
public sealed class ForwarderOptions
{
    /// <summary>The device id: MQTT client id and user name, and the middle of every topic.</summary>
    public string DeviceId { get; set; } = string.Empty;

    /// <summary>The device's secret (the MQTT password).</summary>
    public string? Secret { get; set; }

    /// <summary>Gateway or broker host.</summary>
    public string Host { get; set; } = "127.0.0.1";

    /// <summary>Gateway or broker MQTT port. Default 1883.</summary>
    public int Port { get; set; } = 1883;

    /// <summary>QoS 1 alerts in flight at once. Default 4.</summary>
    public int MaxInFlight { get; set; } = 4;

    /// <summary>MQTT keep-alive in seconds. Default 60.</summary>
    public int KeepAliveSeconds { get; set; } = 60;

    /// <summary>How long TCP connect plus CONNACK (and SUBACK) may take. Default 10 000 ms.</summary>
    public int ConnectTimeoutMs { get; set; } = 10_000;

    /// <summary>When above 0, an alert unacknowledged this long counts as a dead link (reconnect and resend). Default 60 000 ms.</summary>
    public int AckTimeoutMs { get; set; } = 60_000;

    /// <summary>First backoff ceiling after a failure; the ceiling doubles per failure. Default 1 000 ms.</summary>
    public long BackoffBaseMs { get; set; } = 1_000;

    /// <summary>Largest backoff ceiling. Default 300 000 ms (5 minutes).</summary>
    public long BackoffMaxMs { get; set; } = 300_000;

    /// <summary>Seed of the backoff jitter; give each device its own (e.g. from its id or a hardware random source).</summary>
    public uint JitterSeed { get; set; } = 1;

    /// <summary>Status heartbeat period while connected (one is always sent on connect); 0 sends only on connect. Default 300 000 ms.</summary>
    public long HeartbeatIntervalMs { get; set; } = 300_000;

    /// <summary>Whether the status heartbeat is QoS 1 (else QoS 0). Always retained. Default false.</summary>
    public bool HeartbeatQos1 { get; set; }

    /// <summary>True when the device has a real-time clock (or NTP): receipts then do not set the wall clock.</summary>
    public bool HasRtc { get; set; }

    /// <summary>
    /// 0 (default): always connected. Above 0: duty-cycled — connect every this many milliseconds (or at once for a
    /// critical alert), drain the queue, disconnect.
    /// </summary>
    public long DutyCycleIntervalMs { get; set; }

    /// <summary>Duty-cycled mode: how long to stay connected after the queue drained (e.g. for receipts). Default 0.</summary>
    public long DutyLingerMs { get; set; }

    /// <summary>Firmware version for the status heartbeat.</summary>
    public string FirmwareVersion { get; set; } = "0.0.0";

    /// <summary>MQTT send buffer in bytes (CONNECT, PUBLISH headers, small payloads). Default 256.</summary>
    public int SendBufferSize { get; set; } = 256;

    /// <summary>
    /// MQTT receive buffer in bytes. Default 256: CONNACK, SUBACK, PUBACK and PINGRESP take 2–5 bytes; a receipt
    /// larger than the buffer is handled by its head (its <c>id</c>, <c>state</c> and <c>at</c> come first, about
    /// 110 bytes with the topic plus the device id's length) and the rest (<c>detail</c>, up to 512 characters) is skipped.
    /// </summary>
    public int ReceiveBufferSize { get; set; } = 256;
}
