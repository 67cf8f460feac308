namespace EdgeMail.Firmware.Uplink.Smtp;

/// <summary>Settings of an <see cref="SmtpUplink"/>.</summary>
public sealed class SmtpUplinkOptions
{
    /// <summary>The device id (the AUTH user name unless <see cref="UserName"/> is set): 1 to 64 of <c>[A-Za-z0-9_.-]</c>, as the gateway requires; it is written into the Subject and Message-ID of every message.</summary>
    public string DeviceId { get; set; } = string.Empty;

    /// <summary>AUTH user name; null uses <see cref="DeviceId"/>.</summary>
    public string? UserName { get; set; }

    /// <summary>AUTH password (the device secret); null skips AUTH (a LAN source the gateway allow-lists).</summary>
    public string? Password { get; set; }

    /// <summary>Gateway SMTP host.</summary>
    public string Host { get; set; } = "127.0.0.1";

    /// <summary>Gateway SMTP port. Default 587 (submission).</summary>
    public int Port { get; set; } = 587;

    /// <summary>Envelope sender and From: its local part names the device (e.g. <c>freezer-2@devices.example</c>).</summary>
    public string From { get; set; } = string.Empty;

    /// <summary>Recipient: one of the gateway's users, groups or aliases (the gateway is never an open relay).</summary>
    public string To { get; set; } = string.Empty;

    /// <summary>Name given in EHLO. Default <c>edgemail-device</c>.</summary>
    public string ClientName { get; set; } = "edgemail-device";

    /// <summary>How long each reply may take. Default 30 000 ms.</summary>
    public int TimeoutMs { get; set; } = 30_000;

    /// <summary>Send buffer in bytes. Default 512.</summary>
    public int SendBufferSize { get; set; } = 512;
}
