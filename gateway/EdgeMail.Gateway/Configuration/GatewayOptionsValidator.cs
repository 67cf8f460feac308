using System.Net;
using System.Text.RegularExpressions;
using EdgeMail.Gateway.Ingest;
using Microsoft.Extensions.Options;
using MimeKit;

namespace EdgeMail.Gateway.Configuration;

/// <summary>
/// Checks the whole configuration at start. Every message names the key (as it is spelled in the JSON
/// file or as <c>--Key:Sub=value</c>) and says how to fix it.
/// </summary>
public sealed partial class GatewayOptionsValidator : IValidateOptions<GatewayOptions>
{
    /// <summary>Relay modes the gateway knows.</summary>
    public static readonly IReadOnlyList<string> RelayModes = ["Mailbox", "Smarthost", "DirectMx"];

    /// <summary>Smarthost security settings the gateway knows.</summary>
    public static readonly IReadOnlyList<string> SecurityModes = ["StartTls", "Tls", "StartTlsWhenAvailable", "None"];

    /// <summary>The most deliveries <c>Relay:Concurrency</c> may run at once (why: at its check).</summary>
    public const int MaxConcurrency = 100;

    /// <summary>The shortest <c>Relay:MaxAge</c>, whatever the backoff.</summary>
    private static readonly TimeSpan MinMaxAge = TimeSpan.FromMinutes(10);

    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, GatewayOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var errors = Check(options);
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    // The path itself or the nearest of its parents that exists, when that is a file.
    private static string? FileInTheWay(string directory)
    {
        for (string? path = Path.GetFullPath(directory); path is not null; path = Path.GetDirectoryName(path))
        {
            if (File.Exists(path))
            {
                return path;
            }

            if (Directory.Exists(path))
            {
                return null;
            }
        }

        return null;
    }

    /// <summary>Lists every problem in the options.</summary>
    /// <param name="o">The options.</param>
    /// <returns>One message per problem; empty when valid.</returns>
    public static List<string> Check(GatewayOptions o)
    {
        ArgumentNullException.ThrowIfNull(o);
        var errors = new List<string>();
        void Add(string key, string problem, string fix) => errors.Add($"{key}: {problem}. Fix: {fix}.");

        if (string.IsNullOrWhiteSpace(o.DataDirectory))
        {
            Add("DataDirectory", "is empty", "give a writable directory, e.g. \"/var/lib/edgemail\"");
        }
        else if (o.DataDirectory.Contains('\0', StringComparison.Ordinal))
        {
            Add("DataDirectory", "contains a NUL character", "give a directory, e.g. \"/var/lib/edgemail\"");
        }
        else if (FileInTheWay(o.DataDirectory) is { } file)
        {
            // Otherwise the start failed later, on the first folder made inside it ("Could not find a part of the path").
            Add("DataDirectory", file == Path.GetFullPath(o.DataDirectory) ? $"'{file}' is a file, not a directory" : $"'{o.DataDirectory}' lies below '{file}', which is a file",
                "give a directory (it is made if it does not exist), e.g. \"/var/lib/edgemail\"");
        }

        if (!IPAddress.TryParse(o.Mqtt.BindAddress, out _))
        {
            Add("Mqtt:BindAddress", $"'{o.Mqtt.BindAddress}' is not an IP address", "use e.g. 127.0.0.1 (loopback) or 0.0.0.0 (all interfaces)");
        }

        if (o.Mqtt.Port is < 0 or > 65535)
        {
            Add("Mqtt:Port", $"{o.Mqtt.Port} is not a TCP port", "use 1883, or 0 to let the OS choose");
        }

        if (o.Mqtt.ConnectTimeout < TimeSpan.FromSeconds(1) || o.Mqtt.ConnectTimeout > TimeSpan.FromMinutes(10))
        {
            Add("Mqtt:ConnectTimeout", $"{o.Mqtt.ConnectTimeout} is outside 1 second to 10 minutes",
                "use e.g. 00:00:20: long enough for a device's TLS handshake over its slowest link, short enough that unknown clients cannot hold connections");
        }

        ValidateMqttMode(o.Mqtt, Add);

        if (!MailboxAddress.TryParse(o.Sender.Address, out var from) || from.Address.IndexOf('@', StringComparison.Ordinal) < 1)
        {
            Add("Sender:Address", $"'{o.Sender.Address}' is not a mail address", "use an address in a domain you send from, e.g. edgemail@example.com");
        }

        if (!HostnameRegex().IsMatch(o.Sender.Hostname))
        {
            Add("Sender:Hostname", $"'{o.Sender.Hostname}' is not a host name", "use the gateway's DNS name, e.g. gw1.example.com");
        }

        // A name is a phrase in From and To: a line break or other control character in it cannot be written as mail is.
        void CheckName(string key, string? name)
        {
            if (name is not null && name.Any(char.IsControl))
            {
                Add(key, "contains a line break or another control character", "write the name on one line, without tabs");
            }
        }

        CheckName("Sender:DisplayName", o.Sender.DisplayName);

        foreach (var (id, user) in o.Users)
        {
            if (AddressProblem(user.Email) is { } problem)
            {
                Add($"Users:{id}:Email", $"'{user.Email}' {problem}", "give the person's address, e.g. alice@example.com");
            }

            CheckName($"Users:{id}:Name", user.Name);
        }

        foreach (var (id, members) in o.Groups)
        {
            if (o.Users.ContainsKey(id))
            {
                Add($"Groups:{id}", "has the same id as a user", "rename the group or the user");
            }

            for (int i = 0; i < members.Count; i++)
            {
                if (!o.Users.ContainsKey(members[i]))
                {
                    Add($"Groups:{id}:{i}", $"'{members[i]}' is not a user", "add it under Users or remove it from the group");
                }
            }
        }

        foreach (var (id, device) in o.Devices)
        {
            if (!DeviceIdRegex().IsMatch(id))
            {
                Add($"Devices:{id}", "the device id must match [A-Za-z0-9_.-]{1,64} and not be '.' or '..' (it is the MQTT client id, a topic level and part of the console's URLs)", "rename the device");
            }

            // With an external broker the broker authenticates devices; a secret given here is still checked for form.
            bool secretNeeded = !o.Mqtt.IsExternal() || device.Secret.Length > 0;
            if (secretNeeded && !SecretHash.IsWellFormed(device.Secret, out string problem))
            {
                Add($"Devices:{id}:Secret", "is not a stored secret hash", problem);
            }

            foreach (var (key, value) in new[] { ("Name", device.Name), ("Site", device.Site) })
            {
                if (Devices.DeviceText.Problem(value) is { } text)
                {
                    Add($"Devices:{id}:{key}", text.Problem, text.Fix);
                }
            }

            for (int i = 0; i < device.Owners.Count; i++)
            {
                if (!o.Users.ContainsKey(device.Owners[i]) && !o.Groups.ContainsKey(device.Owners[i]))
                {
                    Add($"Devices:{id}:Owners:{i}", $"'{device.Owners[i]}' is neither a user nor a group", "add it under Users or Groups");
                }
            }
        }

        for (int r = 0; r < o.Routes.Count; r++)
        {
            var route = o.Routes[r];
            if (!Severities.TryParse(route.MinSeverity, out _))
            {
                Add($"Routes:{r}:MinSeverity", $"'{route.MinSeverity}' is not a severity", "use info, warning or critical");
            }

            if (route.To.Count == 0)
            {
                Add($"Routes:{r}:To", "is empty", "list user ids, group ids, \"owners\" or addresses");
            }

            for (int i = 0; i < route.To.Count; i++)
            {
                string to = route.To[i];
                if (!o.Users.ContainsKey(to) && !o.Groups.ContainsKey(to) && to != "owners" && AddressProblem(to) is { } problem)
                {
                    Add($"Routes:{r}:To:{i}", problem != NotAnAddress
                        ? $"'{to}' {problem}"
                        : $"'{to}' is not a user, a group, \"owners\" or a mail address", "add it under Users or Groups, or fix the spelling");
                }
            }

            if (string.IsNullOrWhiteSpace(route.Template))
            {
                Add($"Routes:{r}:Template", "is empty", "use \"default\" or the name of a template in TemplateDirectory");
            }
        }

        if (o.TemplateDirectory.Length > 0 && !Directory.Exists(o.TemplateDirectory))
        {
            Add("TemplateDirectory", $"'{o.TemplateDirectory}' does not exist", "create it or leave the key empty for the built-in templates");
        }

        ValidateRelay(o.Relay, Add);
        ValidateDkim(o.Dkim, Add);

        if (o.Spool.MaxBatch < 1)
        {
            Add("Spool:MaxBatch", $"{o.Spool.MaxBatch} is below 1", "use e.g. 512");
        }

        if (o.Spool.BurstAbove < 0)
        {
            Add("Spool:BurstAbove", $"{o.Spool.BurstAbove} is negative", "use alerts per second, e.g. 1000, or 0 to turn burst priority off");
        }

        if (o.Spool.BurstPriority < TimeSpan.Zero || o.Spool.BurstPriority > TimeSpan.FromMinutes(1))
        {
            Add("Spool:BurstPriority", $"{o.Spool.BurstPriority} is outside 0..1 min", "use e.g. 00:00:05, or 00:00:00 to turn burst priority off");
        }

        if (o.Storm.Window < TimeSpan.Zero)
        {
            Add("Storm:Window", "is negative", "use e.g. 00:10:00, or 00:00:00 to disable storm control");
        }

        if (o.Storm.DigestMaxRepeats is < 2 or > 1000)
        {
            Add("Storm:DigestMaxRepeats", $"{o.Storm.DigestMaxRepeats} is outside 2..1000", "use e.g. 100; the rest of a storm is counted, not listed");
        }

        if (o.Spool.Retention < TimeSpan.FromHours(1))
        {
            Add("Spool:Retention", $"{o.Spool.Retention} is shorter than an hour", "use e.g. 30.00:00:00 (30 days); finished mail and alerts are removed after it");
        }

        if (o.Receipts.MaxPerDevice is < 1 or > 100_000)
        {
            Add("Receipts:MaxPerDevice", $"{o.Receipts.MaxPerDevice} is outside 1 to 100000", "use e.g. 100; a device's oldest kept receipts are dropped past it");
        }

        if (o.Receipts.MaxAge < TimeSpan.FromMinutes(10))
        {
            Add("Receipts:MaxAge", $"{o.Receipts.MaxAge} is shorter than ten minutes", "use e.g. 7.00:00:00; a receipt the device has not taken by then is dropped");
        }

        if (o.Spool.HousekeepingInterval < TimeSpan.FromMinutes(1))
        {
            Add("Spool:HousekeepingInterval", $"{o.Spool.HousekeepingInterval} is shorter than a minute", "use e.g. 01:00:00");
        }

        if (o.Spool.MinFreeMegabytes < 0)
        {
            Add("Spool:MinFreeMegabytes", "is negative", "use e.g. 64, or 0 to turn the disk guard off");
        }

        if (o.Spool.WalLimitMegabytes < 1)
        {
            Add("Spool:WalLimitMegabytes", $"{o.Spool.WalLimitMegabytes} is less than 1", "use e.g. 64; a smaller log is started anew more often, each time with a checkpoint and its fsync");
        }

        ValidateSpoolProvider(o, Add);

        if (o.Sender.OperatorNoticeInterval < TimeSpan.Zero)
        {
            Add("Sender:OperatorNoticeInterval", "is negative", "use e.g. 00:15:00");
        }

        if (o.Sender.Operator.Length > 0 && !o.Users.ContainsKey(o.Sender.Operator) && AddressProblem(o.Sender.Operator) is { } operatorProblem)
        {
            Add("Sender:Operator", operatorProblem != NotAnAddress
                ? $"'{o.Sender.Operator}' {operatorProblem}"
                : $"'{o.Sender.Operator}' is neither a user nor a mail address", "name a user id or give an address");
        }

        return errors;
    }

    private static void ValidateEmbeddedListeners(MqttIngestOptions mqtt, Action<string, string, string> add)
    {
        if (!mqtt.PlainEnabled && !mqtt.TlsEnabled)
        {
            add("Mqtt:PlainEnabled", "is false and so is Mqtt:TlsEnabled (or MqttGuard:TlsEnabled): the embedded broker would listen on nothing and no device could connect",
                "set Mqtt:TlsEnabled to true (MQTT over TLS on Mqtt:TlsPort, 8883), or Mqtt:PlainEnabled to true (plain MQTT on Mqtt:Port, 1883, for a trusted device network only)");
        }

        if (!mqtt.TlsEnabled)
        {
            return;
        }

        if (mqtt.TlsPort is < 0 or > 65535)
        {
            add("Mqtt:TlsPort", $"{mqtt.TlsPort} is not a TCP port", "use 8883, or 0 to let the OS choose");
        }
        else if (mqtt.PlainEnabled && mqtt.TlsPort != 0 && mqtt.TlsPort == mqtt.Port)
        {
            add("Mqtt:TlsPort", $"{mqtt.TlsPort} is also Mqtt:Port, the plain listener's port", "use 8883 for TLS and 1883 for plain MQTT, or set Mqtt:PlainEnabled to false");
        }

        // Empty here after binding only when Smtp:CertificatePath is empty too (MqttListenerDefaults): then it is generated.
        if (mqtt.CertificatePath.Length > 0 && Security.TlsCertificates.Problem(mqtt.CertificatePath, mqtt.CertificatePassword) is { } problem)
        {
            add("Mqtt:CertificatePath", $"the TLS certificate '{mqtt.CertificatePath}' {problem}",
                Security.TlsCertificates.Fix("Mqtt:CertificatePassword") + " (an empty Mqtt:CertificatePath takes Smtp:CertificatePath's)");
        }
    }

    private static void ValidateMqttMode(MqttIngestOptions mqtt, Action<string, string, string> add)
    {
        if (!MqttModes.All.Contains(mqtt.Mode, StringComparer.OrdinalIgnoreCase))
        {
            add("Mqtt:Mode", $"'{mqtt.Mode}' is not an MQTT mode", "use embedded (the gateway's own broker) or external (a client of the site's broker, configured under Mqtt:External)");
            return;
        }

        if (!mqtt.IsExternal())
        {
            ValidateEmbeddedListeners(mqtt, add);
            if (mqtt.External.SharedGroup.Length > 0)
            {
                // MQTTnet's embedded broker has no shared subscriptions: several instances need the site's broker.
                add("Mqtt:External:SharedGroup", "is set but Mqtt:Mode is embedded", "set Mqtt:Mode to external and point Mqtt:External at a broker with shared subscriptions (mosquitto, EMQX, HiveMQ)");
            }

            return;
        }

        var x = mqtt.External;
        if (string.IsNullOrWhiteSpace(x.Host))
        {
            add("Mqtt:External:Host", "is empty but Mqtt:Mode is external", "give the broker's host name or address, e.g. mqtt.example.com");
        }
        else if (Uri.CheckHostName(x.Host) == UriHostNameType.Unknown)
        {
            add("Mqtt:External:Host", $"'{x.Host}' is not a host name or address", "give the broker's host name or address without scheme or port, e.g. mqtt.example.com");
        }

        if (x.Port is < 1 or > 65535)
        {
            add("Mqtt:External:Port", $"{x.Port} is not a TCP port", x.Tls ? "use 8883 (MQTT over TLS)" : "use 1883 (MQTT), or 8883 with Mqtt:External:Tls = true");
        }

        if (string.IsNullOrWhiteSpace(x.ClientId))
        {
            add("Mqtt:External:ClientId", "is empty", "give a stable id that names the gateway's persistent session, e.g. edgemail-gateway");
        }
        else if (x.ClientId.Length > 128 || x.ClientId.AsSpan().IndexOfAny("+#/") >= 0)
        {
            add("Mqtt:External:ClientId", $"'{x.ClientId}' is not a usable client id", "use at most 128 characters without '+', '#' or '/', e.g. edgemail-gateway");
        }

        if (x.SharedGroup.Length > 0 && (x.SharedGroup.Length > 64 || x.SharedGroup.AsSpan().IndexOfAny("+#/") >= 0 || x.SharedGroup.Any(char.IsWhiteSpace)))
        {
            add("Mqtt:External:SharedGroup", $"'{x.SharedGroup}' is not a usable share name", "use at most 64 characters without '+', '#', '/' or spaces, e.g. edgemail");
        }

        if (x.SharedGroup.Length > 0 && (x.LeaveQuietPeriod <= TimeSpan.Zero || x.LeaveQuietPeriod > TimeSpan.FromMinutes(1)))
        {
            add("Mqtt:External:LeaveQuietPeriod", $"{x.LeaveQuietPeriod} is out of range", "use a period above zero and at most a minute, e.g. 00:00:00.500");
        }

        if (x.Password.Length > 0 && x.Username.Length == 0)
        {
            add("Mqtt:External:Username", "is empty but Mqtt:External:Password is set", "give the gateway's user name at the broker");
        }

        if (!ExternalBrokerConnection.ProtocolVersions.Contains(x.ProtocolVersion))
        {
            add("Mqtt:External:ProtocolVersion", $"'{x.ProtocolVersion}' is not supported", "use 5 (default) or 3.1.1");
        }

        if (x.SessionExpiry < TimeSpan.FromMinutes(1))
        {
            add("Mqtt:External:SessionExpiry", $"{x.SessionExpiry} is too short for a persistent session (alerts published while the gateway is away would be lost)", "use e.g. 7.00:00:00 (seven days)");
        }
        else if (x.SessionExpiry.TotalSeconds >= uint.MaxValue)
        {
            add("Mqtt:External:SessionExpiry", $"{x.SessionExpiry} exceeds what MQTT can express", "use at most 49710.00:00:00");
        }

        if (x.KeepAlive < TimeSpan.FromSeconds(1) || x.KeepAlive.TotalSeconds > ushort.MaxValue)
        {
            add("Mqtt:External:KeepAlive", $"{x.KeepAlive} is outside 00:00:01 to 18:12:15", "use e.g. 00:00:30");
        }

        if (x.ConnectTimeout <= TimeSpan.Zero)
        {
            add("Mqtt:External:ConnectTimeout", "must be positive", "use e.g. 00:00:10");
        }

        if (x.ReconnectDelay <= TimeSpan.Zero)
        {
            add("Mqtt:External:ReconnectDelay", "must be positive", "use e.g. 00:00:01");
        }

        if (x.MaxReconnectDelay < x.ReconnectDelay)
        {
            add("Mqtt:External:MaxReconnectDelay", $"{x.MaxReconnectDelay} is shorter than Mqtt:External:ReconnectDelay ({x.ReconnectDelay})", "use e.g. 00:01:00");
        }

        if (x.MaxInFlight is < 1 or > ushort.MaxValue)
        {
            add("Mqtt:External:MaxInFlight", $"{x.MaxInFlight} is outside 1 to 65535", "use e.g. 256");
        }

        ValidateExternalTls(x, add);
    }

    private static void ValidateExternalTls(ExternalBrokerOptions x, Action<string, string, string> add)
    {
        bool anyTlsFile = x.CaFile.Length > 0 || x.ClientCertificateFile.Length > 0 || x.ClientKeyFile.Length > 0 || x.TlsServerName.Length > 0;
        if (!x.Tls)
        {
            if (anyTlsFile)
            {
                add("Mqtt:External:Tls", "is false but TLS settings (CaFile, TlsServerName or a client certificate) are given", "set Mqtt:External:Tls to true, or remove the TLS settings");
            }

            return;
        }

        if (x.CaFile.Length > 0)
        {
            if (!File.Exists(x.CaFile))
            {
                add("Mqtt:External:CaFile", $"'{x.CaFile}' does not exist", "give the PEM file of the CA that signed the broker's certificate, or leave it empty to trust the system's CAs");
            }
            else
            {
                try
                {
                    var trust = new System.Security.Cryptography.X509Certificates.X509Certificate2Collection();
                    trust.ImportFromPemFile(x.CaFile);
                    if (trust.Count == 0)
                    {
                        add("Mqtt:External:CaFile", $"'{x.CaFile}' holds no certificate", "give a PEM file with at least one BEGIN CERTIFICATE block");
                    }
                }
                catch (System.Security.Cryptography.CryptographicException ex)
                {
                    add("Mqtt:External:CaFile", $"'{x.CaFile}' is not a PEM certificate file ({ex.Message})", "give a PEM file with BEGIN CERTIFICATE blocks (convert DER with: openssl x509 -inform der -in ca.der -out ca.pem)");
                }
            }
        }

        if ((x.ClientCertificateFile.Length > 0) != (x.ClientKeyFile.Length > 0))
        {
            add(x.ClientCertificateFile.Length > 0 ? "Mqtt:External:ClientKeyFile" : "Mqtt:External:ClientCertificateFile",
                "is empty but the other half of the client certificate is set", "give both the PEM certificate and its PEM private key, or neither");
        }
        else if (x.ClientCertificateFile.Length > 0)
        {
            try
            {
                using var cert = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPemFile(x.ClientCertificateFile, x.ClientKeyFile);
            }
            catch (Exception ex) when (ex is System.Security.Cryptography.CryptographicException or IOException or UnauthorizedAccessException or ArgumentException)
            {
                add("Mqtt:External:ClientCertificateFile", $"'{x.ClientCertificateFile}' with key '{x.ClientKeyFile}' cannot be loaded ({ex.Message})", "give a PEM certificate and its matching PEM private key, readable by the gateway");
            }
        }
    }

    private static void ValidateDkim(Composition.DkimOptions dkim, Action<string, string, string> add)
    {
        if (!dkim.Enabled)
        {
            return;
        }

        if (!File.Exists(dkim.KeyFile))
        {
            add("Dkim:KeyFile", $"'{dkim.KeyFile}' does not exist", "give the PEM file with the RSA private key (openssl genrsa -out dkim.pem 2048), or leave it empty to send unsigned mail");
        }
        else if (!Composition.DkimSigning.CanLoad(dkim.KeyFile, out string problem))
        {
            add("Dkim:KeyFile", $"'{dkim.KeyFile}' is not a usable private key ({problem})", "give a PEM RSA private key (BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)");
        }

        if (dkim.Domain.Length == 0)
        {
            add("Dkim:Domain", "is empty but Dkim:KeyFile is set", "give the signing domain, normally the domain of Sender:Address");
        }

        if (dkim.Selector.Length == 0)
        {
            add("Dkim:Selector", "is empty but Dkim:KeyFile is set", "give the selector whose TXT record SELECTOR._domainkey.DOMAIN holds the public key");
        }
    }

    private static void ValidateRelay(RelayOptions relay, Action<string, string, string> add)
    {
        if (!RelayModes.Contains(relay.Mode, StringComparer.OrdinalIgnoreCase))
        {
            add("Relay:Mode", $"'{relay.Mode}' is not a relay mode", "use Mailbox, Smarthost or DirectMx");
        }

        if (string.Equals(relay.Mode, "Smarthost", StringComparison.OrdinalIgnoreCase) && string.IsNullOrWhiteSpace(relay.Host))
        {
            add("Relay:Host", "is empty but Relay:Mode is Smarthost", "give the smarthost's name, e.g. smtp.example.com");
        }

        if (relay.Port is < 1 or > 65535)
        {
            add("Relay:Port", $"{relay.Port} is not a TCP port", "use 587 (STARTTLS), 465 (TLS) or 25");
        }

        if (relay.MxPort is < 1 or > 65535)
        {
            add("Relay:MxPort", $"{relay.MxPort} is not a TCP port", "use 25, the port other domains' mail exchangers listen on");
        }

        if (!SecurityModes.Contains(relay.Security, StringComparer.OrdinalIgnoreCase))
        {
            add("Relay:Security", $"'{relay.Security}' is unknown", "use StartTls, Tls, StartTlsWhenAvailable or None");
        }
        else if (Relay.SignInSecurity.StartProblem(relay) is { } clearText)
        {
            add("Relay:Security", clearText.Problem, clearText.Fix);
        }

        // Each unit of Relay:Concurrency is a delivery under way: an SMTP connection kept open (a socket, TLS state); on
        // SQLite four due messages per unit read at once with their bodies (a device's own mail up to Smtp:MaxMessageBytes,
        // 10 MiB by default); on PostgreSQL a pooled connection while the attempt renews its claim, out of Npgsql's
        // default pool of 100 that ingest and the console share. 100 is also Postfix's default_process_limit, the most deliveries a stock
        // MTA runs at once to all destinations together (to one, default_destination_concurrency_limit, 20): an alert
        // gateway never needs more, and past it a typo (1000 for 100) only exhausts the pool and memory.
        if (relay.Concurrency is < 1 or > MaxConcurrency)
        {
            add("Relay:Concurrency", relay.Concurrency < 1 ? $"{relay.Concurrency} is below 1" : $"{relay.Concurrency} is above {MaxConcurrency}",
                $"use e.g. 4 (the default; a smarthost seldom takes more than 20 connections from one client), at most {MaxConcurrency}");
        }

        if (relay.DomainConcurrency is { } perDomain && (perDomain < 1 || perDomain > relay.Concurrency))
        {
            add("Relay:DomainConcurrency", perDomain < 1 ? $"{perDomain} is below 1" : $"{perDomain} is above Relay:Concurrency ({relay.Concurrency})",
                $"use e.g. {RelayOptions.DefaultDomainConcurrency(relay.Concurrency)} (the default, one less than Relay:Concurrency), between 1 and Relay:Concurrency; below it a domain whose exchangers answer slowly leaves delivery slots to the others");
        }

        if (relay.MailboxMaxMegabytes < 0)
        {
            add("Relay:MailboxMaxMegabytes", "is negative", "use e.g. 1024, or 0 for no size limit");
        }

        if (relay.AuthMechanism.Length > 0 && !relay.AuthMechanism.Equals("PLAIN", StringComparison.OrdinalIgnoreCase)
            && !relay.AuthMechanism.Equals("LOGIN", StringComparison.OrdinalIgnoreCase))
        {
            add("Relay:AuthMechanism", $"'{relay.AuthMechanism}' is not supported", "use PLAIN or LOGIN, or leave it empty for the strongest the server offers");
        }

        // MailKit takes it in milliseconds as an int, HttpClient refuses zero, and a stop waits twice it for deliveries
        // under way: zero or less failed every delivery (the mail bounced at MaxAge), and past ~25 days it overflowed.
        if (relay.Timeout < TimeSpan.FromSeconds(1) || relay.Timeout > TimeSpan.FromHours(1))
        {
            add("Relay:Timeout", $"{relay.Timeout} is outside 1 second to 1 hour",
                "use e.g. 00:00:30; it bounds each command to the relay and each token request, and a stop waits up to twice it for deliveries under way");
        }

        // Relay:Timeout bounds each read, write and connect, not the attempt: an exchanger that sends a byte now and then
        // held one for ever, and an attempt to many domains and exchangers could take hours. Longer than Timeout, or one
        // slow command would end the attempt before its own timeout could; a day at most (Postfix ends a delivery agent
        // after daemon_timeout, 5 hours).
        if (relay.AttemptTimeout is { } attempt && (attempt <= relay.Timeout || attempt > TimeSpan.FromDays(1)))
        {
            add("Relay:AttemptTimeout", attempt <= relay.Timeout
                    ? $"{attempt:c} is not longer than Relay:Timeout ({relay.Timeout:c}), so an attempt would end before one slow command's own timeout"
                    : $"{attempt:c} is longer than a day",
                "use e.g. 00:10:00 (or leave it unset): it bounds a whole delivery attempt, DNS lookups, connections and transactions, and must be longer than Relay:Timeout");
        }

        for (int i = 0; i < relay.Backoff.Count; i++)
        {
            if (relay.Backoff[i] <= TimeSpan.Zero)
            {
                // Zero made a deferred mail due again the moment it was deferred: a relay that was down was asked again
                // in a loop, as fast as the delivery workers could connect.
                add($"Relay:Backoff:{i}", relay.Backoff[i] < TimeSpan.Zero ? "is negative" : "is zero, so a deferred mail would be tried again at once, over and over",
                    "use e.g. 00:05:00");
            }
            else if (i > 0 && relay.Backoff[i - 1] > TimeSpan.Zero && relay.Backoff[i] < relay.Backoff[i - 1])
            {
                // The last step repeats: 01:00:00 then 00:01:00 asked a relay that was down once a minute for ever.
                add($"Relay:Backoff:{i}", $"{relay.Backoff[i]:c} is shorter than the step before it (Relay:Backoff:{i - 1}, {relay.Backoff[i - 1]:c}); the last step repeats, "
                    + "so a mail deferred that far would be tried ever more often", "list the steps from shortest to longest, e.g. 00:01:00, 00:05:00, 00:15:00, 00:30:00, 01:06:00");
            }
        }

        // A deferred mail's next attempt is held to its expiry: with a MaxAge of a second it was given up at its first
        // deferral, and with one shorter than a relay's restart, by a blip nobody would call an outage.
        var firstStep = relay.EffectiveBackoff()[0];
        var shortestAge = firstStep > MinMaxAge ? firstStep : MinMaxAge;
        if (relay.MaxAge < shortestAge)
        {
            add("Relay:MaxAge", relay.MaxAge < MinMaxAge
                    ? $"{relay.MaxAge:c} is shorter than ten minutes, so a relay that restarts or a network that drops for a few minutes would bounce mail"
                    : $"{relay.MaxAge:c} is shorter than the first Relay:Backoff step ({firstStep:c}), so a deferred mail would be given up before its first retry was due",
                "use e.g. 5.00:00:00 (five days, as RFC 5321 asks), and at least 00:10:00 and the first Relay:Backoff step");
        }

        if (relay.DnsServer.Length > 0 && !IPEndPoint.TryParse(relay.DnsServer, out _))
        {
            add("Relay:DnsServer", $"'{relay.DnsServer}' is not host:port", "use e.g. 127.0.0.1:53, or leave empty for the system resolver");
        }

        RelayAuthValidator.Validate(relay, add);
    }

    // Spool:Provider and what PostgreSQL needs (docs/scale-out.md).
    private static void ValidateSpoolProvider(GatewayOptions o, Action<string, string, string> add)
    {
        var spool = o.Spool;
        if (!SpoolProviders.All.Contains(spool.Provider, StringComparer.Ordinal))
        {
            add("Spool:Provider", $"'{spool.Provider}' is not a spool provider", "use Sqlite (one gateway) or Postgres (several instances share one database)");
            return;
        }

        if (spool.Provider != SpoolProviders.Postgres)
        {
            return;
        }

        if (string.IsNullOrWhiteSpace(spool.ConnectionString))
        {
            add("Spool:ConnectionString", "is empty but Spool:Provider is Postgres", "give an Npgsql connection string, e.g. Host=db1;Database=edgemail;Username=edgemail");
        }
        else
        {
            if (ConnectionStringError(spool.ConnectionString) is { } error)
            {
                add("Spool:ConnectionString", $"is not a valid connection string ({error})", "use key=value pairs, e.g. Host=db1;Database=edgemail;Username=edgemail");
            }
        }

        var shortest = o.Relay.Timeout * 2;
        if (spool.ClaimLease < TimeSpan.FromSeconds(1) || spool.ClaimLease < shortest)
        {
            add("Spool:ClaimLease", $"{spool.ClaimLease} is shorter than twice Relay:Timeout ({shortest})",
                "use e.g. 00:02:00; another instance takes work over only after the lease, and a delivery attempt renews its claim every third of it: a short lease leaves a renewal held up by a slow database little room");
        }

        if (spool.PollInterval < TimeSpan.FromMilliseconds(100) || spool.PollInterval > spool.ClaimLease)
        {
            add("Spool:PollInterval", $"{spool.PollInterval} is outside 0.1 s..Spool:ClaimLease", "use e.g. 00:00:05");
        }
    }

    // Apart, so that Npgsql is loaded only when a PostgreSQL spool is configured (the JIT loads what a method names).
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static string? ConnectionStringError(string connectionString)
    {
        try
        {
            _ = new Npgsql.NpgsqlConnectionStringBuilder(connectionString);
            return null;
        }
        catch (ArgumentException ex)
        {
            return ex.Message;
        }
    }

    private const string NotAnAddress = "is not a mail address";

    // Null for an address mail can be delivered to; else why not. Its domain must be one DNS can be asked about (direct
    // MX looks it up, and a smarthost's MTA will) or an address literal ([192.0.2.1], [IPv6:2001:db8::1]).
    private static string? AddressProblem(string value)
    {
        if (!MailboxAddress.TryParse(value, out var mailbox) || mailbox.Address.IndexOf('@', StringComparison.Ordinal) < 1 || !string.IsNullOrEmpty(mailbox.Name))
        {
            return NotAnAddress;
        }

        return Relay.DirectMxRelay.DomainProblem(mailbox.Domain) is { } problem ? "has a domain mail cannot be delivered to: " + problem : null;
    }

    // \z, not $: '$' also matches before a final line feed, which let "pump-7\n" through. '.' and '..' are refused
    // because no URL can name them (they are dot segments, dropped from paths), so the console could not address them.
    [GeneratedRegex("^(?!\\.{1,2}\\z)[A-Za-z0-9_.-]{1,64}\\z")]
    internal static partial Regex DeviceIdRegex();

    [GeneratedRegex("^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\\z")]
    private static partial Regex HostnameRegex();
}
