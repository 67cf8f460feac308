using System.Text.Json;
using System.Text.Json.Serialization;

namespace EdgeMail.Emulator.Fleet;

/// <summary>What a <c>run</c> emulates: the fleet, its alerts, links and power, and where it sends. A JSON scenario
/// file has these properties (camelCase); command-line flags override it.</summary>
internal sealed class Scenario
{
    public int Devices { get; set; } = 10;

    public string Board { get; set; } = "esp32-wroom-32";

    /// <summary>Device ids: <c>{n}</c> is the 1-based device number.</summary>
    public string IdPattern { get; set; } = "dev-{n}";

    /// <summary>Explicit device ids (e.g. the gateway's demo devices); when set, <see cref="Devices"/> is their number.</summary>
    public string[]? Ids { get; set; }

    /// <summary>Device secrets: <c>{id}</c> and <c>{n}</c> are replaced. Ignored for ids in <see cref="SecretsFile"/>.</summary>
    public string SecretPattern { get; set; } = "secret-{id}";

    /// <summary>Lines of <c>id secret</c> (the gateway's demo-secrets.txt format); overrides the pattern for those ids.</summary>
    public string? SecretsFile { get; set; }

    public string Host { get; set; } = "127.0.0.1";

    /// <summary>The gateway's port; null: 1883 for MQTT (8883 with TLS), 2525 for SMTP (465 with TLS).</summary>
    public int? Port { get; set; }

    /// <summary>Start a broker (MQTT) or an SMTP receiver in this process, on a free port, that accepts the fleet's credentials.</summary>
    public bool EmbeddedBroker { get; set; }

    public int Seed { get; set; } = 1;

    /// <summary>Simulated seconds of alerts, link changes and power cuts.</summary>
    public double DurationSeconds { get; set; } = 60;

    /// <summary>Simulated seconds afterwards with links up and no cuts, for queues to drain.</summary>
    public double DrainSeconds { get; set; } = 30;

    /// <summary>Simulated milliseconds per real millisecond.</summary>
    public double Speed { get; set; } = 1;

    /// <summary>Folder of flash image files (one per device) and boot counters: running again is a reboot.</summary>
    public string StateDirectory { get; set; } = "emulator-state";

    public AlertModel Alerts { get; set; } = new();

    public LinkModel Link { get; set; } = new();

    public PowerModel Power { get; set; } = new();

    public UplinkModel Uplink { get; set; } = new();

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        PropertyNameCaseInsensitive = true,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        WriteIndented = true,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.CamelCase) },
    };

    public static Scenario Load(string path)
    {
        try
        {
            return JsonSerializer.Deserialize<Scenario>(File.ReadAllText(path), Json)
                ?? throw new InvalidDataException($"Scenario file {path} is empty (expected a JSON object).");
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"Scenario file {path} is not valid: {ex.Message}", ex);
        }
    }

    /// <summary>Checks the values; the message names the setting and the fix.</summary>
    public void Validate()
    {
        static void Require(bool ok, string message)
        {
            if (!ok)
            {
                throw new ArgumentException(message);
            }
        }

        if (Ids is { Length: > 0 })
        {
            Require(Ids.Distinct(StringComparer.Ordinal).Count() == Ids.Length, "ids must be distinct.");
            Devices = Ids.Length;
        }

        Require(Devices >= 1, $"devices must be at least 1 (was {Devices}).");
        Require(Ids is { Length: > 0 } || IdPattern.Contains("{n}", StringComparison.Ordinal) || Devices == 1, "idPattern must contain {n} when there is more than one device.");
        Require(DurationSeconds >= 0 && DrainSeconds >= 0, "durationSeconds and drainSeconds must not be negative.");
        Require(Speed > 0, $"speed must be above 0 (was {Speed}).");
        Require(Alerts.RatePerSecond >= 0, "alerts.ratePerSecond must not be negative.");
        Require(Alerts.Codes.Length > 0, "alerts.codes needs at least one code.");
        Require(Alerts.SeverityMix.Length == 3 && Alerts.SeverityMix.All(w => w >= 0) && Alerts.SeverityMix.Sum() > 0,
            "alerts.severityMix must be three non-negative weights (info, warning, critical), e.g. [70,25,5].");
        Require(Link.Mode != LinkMode.Flaps || (Link.MeanUpSeconds > 0 && Link.MeanDownSeconds > 0), "link.meanUpSeconds and link.meanDownSeconds must be above 0 for flaps.");
        Require(Power.MidWriteFraction is >= 0 and <= 1, "power.midWriteFraction must be between 0 and 1.");
        Require(Uplink.MaxInFlight is >= 1 and <= 64, "uplink.maxInFlight must be 1..64.");
        Require(Port is null or (>= 1 and <= 65535), $"port must be 1..65535 (was {Port}).");
        Require(!(Uplink.TlsPin is not null && Uplink.TlsInsecure), "uplink.tlsPin and uplink.tlsInsecure exclude each other: pin the gateway's certificate, or (tests only) accept any.");
        Require(Uplink.TlsPin is null || (Uplink.TlsPin.Length is 40 or 64 && Uplink.TlsPin.All(char.IsAsciiHexDigit)),
            $"uplink.tlsPin must be the certificate's SHA-1 (40 hex digits) or SHA-256 (64 hex digits) thumbprint (was '{Uplink.TlsPin}').");
        if (Uplink.Protocol == UplinkProtocol.Smtp)
        {
            SmtpModel m = Uplink.Smtp;
            Require(m.From.Contains('@', StringComparison.Ordinal) && !m.From.Any(char.IsWhiteSpace),
                $"uplink.smtp.from must be an address pattern such as {{id}}@devices.edgemail (was '{m.From}').");
            Require(m.To.Contains('@', StringComparison.Ordinal) && !m.To.Any(char.IsWhiteSpace) && !m.To.Contains('{', StringComparison.Ordinal),
                $"uplink.smtp.to must be one address the gateway accepts: its sender address, a user, group or alias (was '{m.To}').");
            Require(m.TimeoutSeconds > 0, "uplink.smtp.timeoutSeconds must be above 0.");
        }
    }

    /// <summary>The port the devices connect to when none is set.</summary>
    public int EffectivePort => Port ?? (Uplink.Protocol, Uplink.Tls) switch
    {
        (UplinkProtocol.Smtp, false) => 2525,
        (UplinkProtocol.Smtp, true) => 465,
        (_, true) => 8883,
        _ => 1883,
    };

    /// <summary>Whether SMTP devices authenticate: as set, or else only over TLS or to the embedded receiver (the gateway's
    /// plain-text listener never offers AUTH: it takes allow-listed LAN sources only).</summary>
    public bool SmtpAuthenticates => Uplink.Smtp.Auth ?? (Uplink.Tls || EmbeddedBroker);

    public string DeviceId(int n) => Ids is { Length: > 0 } ? Ids[n - 1] : IdPattern.Replace("{n}", n.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);
}

internal sealed class AlertModel
{
    /// <summary>Mean alerts per second per device (Poisson arrivals).</summary>
    public double RatePerSecond { get; set; } = 0.1;

    /// <summary>Weights of info, warning and critical.</summary>
    public double[] SeverityMix { get; set; } = [70, 25, 5];

    public string[] Codes { get; set; } = ["TEMP_HIGH", "DOOR_OPEN", "POWER_FAIL", "BATTERY_LOW", "SENSOR_FAULT"];

    /// <summary>Mean seconds between storms per device (0: no storms). A storm repeats one code quickly.</summary>
    public double StormEverySeconds { get; set; }

    public int StormSize { get; set; } = 50;

    public double StormSpacingMs { get; set; } = 20;
}

internal enum LinkMode
{
    Up,
    Outages,
    Flaps,
}

internal sealed class LinkModel
{
    public LinkMode Mode { get; set; } = LinkMode.Up;

    /// <summary>For <see cref="LinkMode.Outages"/>: the whole fleet loses its link at these times.</summary>
    public Outage[] Outages { get; set; } = [];

    public double MeanUpSeconds { get; set; } = 60;

    public double MeanDownSeconds { get; set; } = 10;
}

internal sealed class Outage
{
    public double AtSeconds { get; set; }

    public double ForSeconds { get; set; }
}

internal sealed class PowerModel
{
    /// <summary>Mean seconds between power cuts per device (0: never).</summary>
    public double MeanSecondsBetweenCuts { get; set; }

    /// <summary>Share of cuts that strike inside a flash program or erase (torn write) rather than between operations.</summary>
    public double MidWriteFraction { get; set; } = 0.5;

    /// <summary>How long a device stays off after a cut.</summary>
    public double OffSeconds { get; set; } = 2;
}

/// <summary>How devices reach the gateway.</summary>
internal enum UplinkProtocol
{
    /// <summary>Contract 1: the firmware's MQTT client and <c>Forwarder</c>.</summary>
    Mqtt,

    /// <summary>Contract 2: the firmware's <c>SmtpUplink</c>, one message per alert, acknowledged on 250.</summary>
    Smtp,
}

internal sealed class UplinkModel
{
    /// <summary>MQTT (default) or SMTP.</summary>
    public UplinkProtocol Protocol { get; set; } = UplinkProtocol.Mqtt;

    /// <summary>TLS from the first byte (MQTT on 8883, SMTP implicit TLS on 465); STARTTLS is not supported.</summary>
    public bool Tls { get; set; }

    /// <summary>Trust exactly the certificate with this SHA-1 or SHA-256 thumbprint (hex), e.g. the gateway's self-signed one.</summary>
    public string? TlsPin { get; set; }

    /// <summary>Accept any server certificate (tests and labs only).</summary>
    public bool TlsInsecure { get; set; }

    public SmtpModel Smtp { get; set; } = new();

    public int MaxInFlight { get; set; } = 4;

    /// <summary>0: always connected; above 0: duty-cycled, connecting every this many seconds (or at once for critical).</summary>
    public double DutyCycleSeconds { get; set; }

    public double HeartbeatSeconds { get; set; } = 300;

    public int KeepAliveSeconds { get; set; } = 60;

    /// <summary>Devices with a real-time clock do not take time from receipts.</summary>
    public bool HasRtc { get; set; }
}

/// <summary>Settings of the SMTP uplink (<see cref="UplinkProtocol.Smtp"/>).</summary>
internal sealed class SmtpModel
{
    /// <summary>Envelope sender and From; <c>{id}</c> and <c>{n}</c> are replaced.</summary>
    public string From { get; set; } = "{id}@devices.edgemail";

    /// <summary>The recipient: the gateway's sender address (default: the gateway's default one), or one of its users, groups or aliases.</summary>
    public string To { get; set; } = "edgemail@gateway.localhost";

    /// <summary>AUTH PLAIN with device id and secret; null: only over TLS or to the embedded receiver.</summary>
    public bool? Auth { get; set; }

    /// <summary>How long each SMTP reply may take (device time).</summary>
    public double TimeoutSeconds { get; set; } = 30;
}
