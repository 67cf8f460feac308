using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest.Smtp;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Security;
using EdgeMail.Gateway.Web;
using MailKit;
using MailKit.Net.Smtp;
using MailKit.Security;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using MimeKit.Utils;

namespace EdgeMail.Gateway.Cli;

/// <summary>How one doctor check came out.</summary>
public enum CheckStatus
{
    /// <summary>Fine.</summary>
    Ok,

    /// <summary>Works, but worth a look (does not fail the doctor).</summary>
    Warn,

    /// <summary>Broken: the doctor exits 1.</summary>
    Fail,

    /// <summary>Not applicable to this configuration.</summary>
    Skip,
}

/// <summary>One check's outcome.</summary>
/// <param name="Check">What was checked (ports, certificate, relay, dns, disk, clock).</param>
/// <param name="Status">How it came out.</param>
/// <param name="Detail">What was found.</param>
/// <param name="Fix">What to do, when not ok.</param>
public sealed record CheckResult(string Check, CheckStatus Status, string Detail, string? Fix = null);

/// <summary>
/// <c>edgemail doctor</c>: whether this machine can run the gateway as configured — listener ports free (or held by
/// the gateway itself), TLS certificates present and valid, the relay reachable with EHLO, STARTTLS and AUTH, DNS for
/// the sender domain and the relay or recipients' domains, free disk above the spool's floor, and a clock that is right.
/// Each check is printed as it finishes, with the fix when it fails.
/// </summary>
public static partial class DoctorCommand
{
    private static readonly TimeSpan SkewWarn = TimeSpan.FromMinutes(1);

    // Beyond this, TLS and token validation start to fail (JWT assertions, OAuth2 tokens) and mail carries a wrong Date.
    private static readonly TimeSpan SkewFail = TimeSpan.FromMinutes(5);

    /// <summary>Adds <c>doctor</c>.</summary>
    /// <param name="root">The root command.</param>
    /// <param name="options">The shared options.</param>
    /// <param name="io">Standard streams.</param>
    /// <returns>The command (subcommands such as <c>doctor relay</c> go under it).</returns>
    public static Command Add(Command root, CliOptions options, CliIO io)
    {
        ArgumentNullException.ThrowIfNull(root);
        ArgumentNullException.ThrowIfNull(options);
        var doctor = CliCommand.Checked("doctor", "Check that this machine can run the gateway as configured: ports, TLS certificates, relay, DNS, disk, clock",
            options, io, RunAsync, options.Json);
        doctor.Note("Checks: listener ports free (or held by the gateway); TLS certificates present, valid, not about to expire; the relay reachable with EHLO, "
            + "STARTTLS and AUTH; DNS: MX of the sender domain, the relay's address or the recipients' MX; free disk against Spool:MinFreeMegabytes; the clock "
            + "against the relay's SMTP greeting when it carries a date, else the system's time sync. Each failed check prints its fix.\n"
            + "Exit codes: 0 all good (warnings allowed); 1 a check failed; 2 the configuration is invalid.");
        root.Subcommands.Add(doctor);
        return doctor;
    }

    private static async Task<int> RunAsync(ConfigCheck check, CliContext c, CancellationToken ct)
    {
        var o = check.Options;
        var services = check.Host!.Services;
        var results = new List<CheckResult>();
        async Task Report(IEnumerable<CheckResult> found)
        {
            foreach (var r in found)
            {
                results.Add(r);
                if (!c.Json)
                {
                    await c.Io.Out.WriteLineAsync(Format(r)).ConfigureAwait(false);
                }
            }
        }

        await Report(Ports(o, services)).ConfigureAwait(false);
        await Report(Certificates(o, services)).ConfigureAwait(false);
        var (relay, remoteDate) = await RelayAsync(o, ct).ConfigureAwait(false);
        await Report(relay).ConfigureAwait(false);
        await Report(await DnsAsync(o, ct).ConfigureAwait(false)).ConfigureAwait(false);
        await Report([Disk(o)]).ConfigureAwait(false);
        await Report(await ClockAsync(remoteDate, ct).ConfigureAwait(false)).ConfigureAwait(false);

        int failed = results.Count(r => r.Status == CheckStatus.Fail);
        if (c.Json)
        {
            await c.Io.Out.WriteLineAsync(JsonSerializer.Serialize(new { ok = failed == 0, checks = results.Select(r => new { r.Check, Status = r.Status.ToString().ToLowerInvariant(), r.Detail, r.Fix }) },
                new JsonSerializerOptions(GatewayClient.Json) { WriteIndented = true })).ConfigureAwait(false);
        }
        else
        {
            int warned = results.Count(r => r.Status == CheckStatus.Warn);
            await c.Io.Out.WriteLineAsync(failed == 0
                ? $"All checks passed{(warned > 0 ? $" ({warned} warning(s))" : string.Empty)}."
                : $"{failed} check(s) failed.").ConfigureAwait(false);
        }

        return failed == 0 ? ExitCodes.Ok : ExitCodes.Failed;
    }

    /// <summary>One result as a line (and its fix on the next).</summary>
    /// <param name="r">The result.</param>
    /// <returns>The text.</returns>
    public static string Format(CheckResult r)
    {
        ArgumentNullException.ThrowIfNull(r);
        string status = r.Status switch { CheckStatus.Ok => "ok", CheckStatus.Warn => "WARN", CheckStatus.Fail => "FAIL", _ => "-" };
        string line = $"  {status,-5} {r.Check,-12} {r.Detail}";
        return r.Fix is null ? line : $"{line}\n        {"fix:",-12} {r.Fix}";
    }

    private static List<CheckResult> Ports(GatewayOptions o, IServiceProvider services)
    {
        var listeners = new List<(string What, string Address, int Port, string Key)>();
        if (!o.Mqtt.IsExternal())
        {
            if (o.Mqtt.PlainEnabled)
            {
                listeners.Add(("MQTT", o.Mqtt.BindAddress, o.Mqtt.Port, "Mqtt:Port"));
            }

            if (o.Mqtt.TlsEnabled)
            {
                listeners.Add(("MQTT over TLS", o.Mqtt.BindAddress, o.Mqtt.TlsPort, "Mqtt:TlsPort"));
            }
        }

        var smtp = services.GetRequiredService<IOptions<SmtpIngestOptions>>().Value;
        for (int i = 0; i < smtp.Endpoints.Count; i++)
        {
            listeners.Add(($"SMTP ({smtp.Endpoints[i].Tls})", smtp.Endpoints[i].BindAddress, smtp.Endpoints[i].Port, $"Smtp:Endpoints:{i}:Port"));
        }

        var console = services.GetRequiredService<IOptions<ConsoleOptions>>().Value;
        if (console.Enabled)
        {
            listeners.Add(("console", console.BindAddress, console.Port, "Console:Port"));
        }

        return listeners.Select(l => Port(l.What, l.Address, l.Port, l.Key)).ToList();
    }

    private static CheckResult Port(string what, string bindAddress, int port, string key)
    {
        string where = $"{what} {bindAddress}:{port}";
        if (port == 0)
        {
            return new CheckResult("port", CheckStatus.Skip, $"{what} on {bindAddress}: port 0, chosen at start");
        }

        if (!IPAddress.TryParse(bindAddress, out var address))
        {
            return new CheckResult("port", CheckStatus.Fail, $"{where}: '{bindAddress}' is not an IP address", "use 127.0.0.1, 0.0.0.0 or this machine's LAN address");
        }

        try
        {
            using var probe = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            // Connections in TIME_WAIT do not count as "in use"; a listener still does.
            probe.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            probe.Bind(new IPEndPoint(address, port));
            probe.Listen();
            string note = port < 1024 ? " (below 1024: the service needs CAP_NET_BIND_SERVICE, install.sh --privileged-ports)" : string.Empty;
            return new CheckResult("port", CheckStatus.Ok, $"{where} free{note}");
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.AddressAlreadyInUse)
        {
            var owner = PortOwner.Find(port);
            if (owner is { IsGateway: true })
            {
                return new CheckResult("port", CheckStatus.Ok, $"{where} in use by the gateway (pid {owner.Pid})");
            }

            return owner is null
                ? new CheckResult("port", CheckStatus.Fail, $"{where} in use by another program (not visible to this user)",
                    $"run as root to see which (or: ss -ltnp 'sport = :{port}'); stop it, or choose another {key}")
                : new CheckResult("port", CheckStatus.Fail, $"{where} in use by pid {owner.Pid}: {Shorten(owner.CommandLine, 80)}", $"stop that program, or choose another {key}");
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.AddressNotAvailable)
        {
            return new CheckResult("port", CheckStatus.Fail, $"{where}: {bindAddress} is not an address of this machine", $"set the bind address to one of this machine's (ip -brief address), or 0.0.0.0 for all");
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.AccessDenied)
        {
            return new CheckResult("port", CheckStatus.Fail, $"{where}: permission denied", $"ports below 1024 need CAP_NET_BIND_SERVICE (install.sh --privileged-ports), or choose {key} of 1024 or more");
        }
    }

    private static List<CheckResult> Certificates(GatewayOptions o, IServiceProvider services)
    {
        var smtp = services.GetRequiredService<IOptions<SmtpIngestOptions>>().Value;
        var console = services.GetRequiredService<IOptions<ConsoleOptions>>().Value;
        string generated = Path.Combine(o.DataPath(), TlsCertificates.GeneratedFileName);
        var uses = new List<(string Who, string Path, string Password, string Key)>();
        if (!o.Mqtt.IsExternal() && o.Mqtt.TlsEnabled)
        {
            uses.Add(("MQTT over TLS", o.Mqtt.CertificatePath, o.Mqtt.CertificatePassword, "Mqtt:CertificatePath"));
        }

        if (smtp.Endpoints.Any(e => !e.Tls.Equals("None", StringComparison.OrdinalIgnoreCase)))
        {
            uses.Add(("SMTP", smtp.CertificatePath, smtp.CertificatePassword, "Smtp:CertificatePath"));
        }

        if (console.Enabled && IPAddress.TryParse(console.BindAddress, out var bind) && !IPAddress.IsLoopback(bind))
        {
            (string path, string password) = console.CertificatePath.Length > 0 ? (console.CertificatePath, console.CertificatePassword) : (o.Mqtt.CertificatePath, o.Mqtt.CertificatePassword);
            uses.Add(("console", path, password, "Console:CertificatePath"));
        }

        if (uses.Count == 0)
        {
            return [new CheckResult("certificate", CheckStatus.Skip, "no listener uses TLS")];
        }

        var now = TimeProvider.System.GetUtcNow();
        return uses.GroupBy(u => u.Path).Select(g =>
        {
            var (_, path, password, key) = g.First();
            string who = string.Join(", ", g.Select(u => u.Who));
            bool isGenerated = path.Length == 0;
            string file = isGenerated ? generated : path;
            if (isGenerated && !File.Exists(file))
            {
                return new CheckResult("certificate", CheckStatus.Ok, $"{who}: the self-signed certificate is made at the first start ({file})");
            }

            try
            {
                using var cert = X509CertificateLoader.LoadPkcs12FromFile(file, isGenerated ? null : password);
                string about = $"{who}: {file}, {cert.Subject}, valid until {cert.NotAfter.ToUniversalTime():yyyy-MM-dd}, SHA-256 {Convert.ToHexString(cert.GetCertHash(HashAlgorithmName.SHA256))[..16]}…";
                // The same rule and words as the start's warning (TlsCertificates.WarnAboutDates).
                return !cert.HasPrivateKey ? new CheckResult("certificate", CheckStatus.Fail, about + ": no private key", $"export it as PKCS#12 with its key ({key})")
                    : TlsCertificates.DatesProblem(cert, now) is { } dates
                        ? new CheckResult("certificate", dates.Unusable ? CheckStatus.Fail : CheckStatus.Warn, about + ": " + dates.Problem, TlsCertificates.DatesFix(dates, isGenerated, key))
                    : new CheckResult("certificate", CheckStatus.Ok, about);
            }
            catch (Exception ex) when (ex is CryptographicException or IOException or UnauthorizedAccessException)
            {
                return new CheckResult("certificate", CheckStatus.Fail, $"{who}: {file} cannot be read: {ex.Message}",
                    ex is UnauthorizedAccessException ? "run as root or as the gateway's user" : $"give a PKCS#12 file with its key and the right password ({key}, and its Password key)");
            }
        }).ToList();
    }

    private static async Task<(List<CheckResult> Results, (DateTimeOffset Remote, DateTimeOffset Local, string Host)? Date)> RelayAsync(GatewayOptions o, CancellationToken ct)
    {
        var relay = o.Relay;
        if (relay.Mode.Equals("Mailbox", StringComparison.OrdinalIgnoreCase))
        {
            return ([new CheckResult("relay", CheckStatus.Skip, "Relay:Mode is Mailbox: mail stays on this machine")], null);
        }

        string host;
        int port;
        SecureSocketOptions security;
        if (relay.Mode.Equals("DirectMx", StringComparison.OrdinalIgnoreCase))
        {
            // The first exchanger of the first recipient domain: what matters is whether port 25 gets out at all.
            string? domain = RecipientDomains(o).FirstOrDefault();
            if (domain is null)
            {
                return ([new CheckResult("relay", CheckStatus.Skip, "DirectMx: no recipient address configured to try")], null);
            }

            var mx = new DirectMxRelay(relay, o.Sender.Hostname);
            await using (mx.ConfigureAwait(false))
            {
                var (hosts, error, _, _) = await mx.ExchangersAsync(domain, ct).ConfigureAwait(false);
                if (error is not null || await mx.AddressAsync(hosts[0], ct).ConfigureAwait(false) is not { } address)
                {
                    return ([new CheckResult("relay", CheckStatus.Fail, $"DirectMx: no exchanger for {domain} ({error ?? "no address"})", "see the dns check")], null);
                }

                (host, port, security) = (address, relay.MxPort, SecureSocketOptions.StartTlsWhenAvailable);
            }
        }
        else
        {
            (host, port, security) = (relay.Host, relay.Port, Secure(relay.Security));
        }

        var results = new List<CheckResult>();
        var greeting = new ServerText();
        using var client = new SmtpClient(greeting) { Timeout = (int)relay.Timeout.TotalMilliseconds, LocalDomain = o.Sender.Hostname };
        if (relay.AcceptAnyCertificate || security == SecureSocketOptions.StartTlsWhenAvailable)
        {
            // Relay:AcceptAnyCertificate (tests), or opportunistic TLS between MX hosts as the relay itself does it.
            client.ServerCertificateValidationCallback = (_, _, _, _) => true;
        }

        string where = $"{host}:{port}";
        try
        {
            var remote = await Relay.SignInSecurity.ConnectAsync(client, host, port, security, ct).ConfigureAwait(false);
            string tls = client.IsSecure ? $"TLS {client.SslProtocol}" : "no TLS";
            results.Add(new CheckResult("relay", CheckStatus.Ok, $"{where}: EHLO answered, {tls}; AUTH offered: {(client.AuthenticationMechanisms.Count > 0 ? string.Join(' ', client.AuthenticationMechanisms.Order()) : "none")}"));
            if (relay.Mode.Equals("Smarthost", StringComparison.OrdinalIgnoreCase) && relay.User.Length > 0 && RelayAuthModes.IsOAuth2(relay.Auth))
            {
                // A token needs the identity provider too: 'doctor relay' follows that path step by step.
                results.Add(new CheckResult("relay AUTH", CheckStatus.Skip, $"Relay:Auth is {relay.Auth}", $"run '{EdgemailCli.Name} doctor relay' to check the token and XOAUTH2"));
            }
            else if (relay.Mode.Equals("Smarthost", StringComparison.OrdinalIgnoreCase) && relay.User.Length > 0
                && Relay.SignInSecurity.Withheld(relay, host, port, remote, client.IsSecure) is { } withheld)
            {
                results.Add(new CheckResult("relay AUTH", CheckStatus.Fail, withheld));
            }
            else if (relay.Mode.Equals("Smarthost", StringComparison.OrdinalIgnoreCase) && relay.User.Length > 0)
            {
                if (relay.AuthMechanism.Length > 0)
                {
                    client.AuthenticationMechanisms.RemoveWhere(m => !m.Equals(relay.AuthMechanism, StringComparison.OrdinalIgnoreCase));
                }

                await Relay.PasswordSignIn.AuthenticateAsync(client, relay.User, relay.Password, ct).ConfigureAwait(false);
                results.Add(new CheckResult("relay AUTH", CheckStatus.Ok, $"{where}: authenticated as {relay.User}"));
            }

            await client.DisconnectAsync(true, ct).ConfigureAwait(false);
        }
        catch (SocketException ex)
        {
            results.Add(new CheckResult("relay", CheckStatus.Fail, $"{where}: cannot connect: {ex.Message}",
                port == 25 ? "many ISPs and clouds block outgoing port 25: use a smarthost (Relay:Mode Smarthost, port 587)" : "check Relay:Host and Relay:Port, and that a firewall lets the connection out"));
        }
        catch (SslHandshakeException ex)
        {
            results.Add(new CheckResult("relay", CheckStatus.Fail, $"{where}: TLS failed: {ex.Message}",
                "the server's certificate must be trusted here (ca-certificates) and name Relay:Host; Relay:Security must match the port (StartTls on 587, Tls on 465)"));
        }
        catch (NotSupportedException ex)
        {
            results.Add(new CheckResult("relay", CheckStatus.Fail, $"{where}: {ex.Message}",
                "Relay:Security StartTls needs a server that offers STARTTLS; for port 465 use Tls. Never send the password in clear"));
        }
        catch (AuthenticationException ex)
        {
            results.Add(new CheckResult("relay AUTH", CheckStatus.Fail, $"{where}: AUTH as {relay.User} refused: {ex.Message}",
                "check Relay:User and Relay:Password (providers with two-factor sign-in need an app password)"));
        }
        catch (Exception ex) when (ex is SmtpCommandException or SmtpProtocolException or IOException or TimeoutException or OperationCanceledException && !ct.IsCancellationRequested)
        {
            results.Add(new CheckResult("relay", CheckStatus.Fail, $"{where}: {ex.Message}",
                "the port does not speak SMTP as configured: check Relay:Port and Relay:Security (Tls for 465, StartTls for 587)"));
        }

        return (results, greeting.Date is { } date ? (date.Remote, date.Local, host) : null);
    }

    // As SmtpRelay maps Relay:Security.
    private static SecureSocketOptions Secure(string security) => security.ToUpperInvariant() switch
    {
        "TLS" => SecureSocketOptions.SslOnConnect,
        "NONE" => SecureSocketOptions.None,
        "STARTTLSWHENAVAILABLE" => SecureSocketOptions.StartTlsWhenAvailable,
        _ => SecureSocketOptions.StartTls,
    };

    private static async Task<List<CheckResult>> DnsAsync(GatewayOptions o, CancellationToken ct)
    {
        if (o.Relay.Mode.Equals("Mailbox", StringComparison.OrdinalIgnoreCase))
        {
            return [new CheckResult("dns", CheckStatus.Skip, "Relay:Mode is Mailbox: no mail leaves this machine")];
        }

        var results = new List<CheckResult>();
        string resolver = o.Relay.DnsServer.Length > 0 ? o.Relay.DnsServer : "the system resolver";
        var dns = new DirectMxRelay(o.Relay, o.Sender.Hostname);
        await using (dns.ConfigureAwait(false))
        {
            string sender = o.Sender.Address[(o.Sender.Address.LastIndexOf('@') + 1)..];
            var (hosts, error, permanent, nullMx) = await dns.ExchangersAsync(sender, ct).ConfigureAwait(false);
            if (error is not null)
            {
                results.Add(new CheckResult("dns", CheckStatus.Fail, $"sender domain {sender}: {error} ({resolver})",
                    nullMx ? "use a Sender:Address in a domain that receives mail: servers refuse mail from a null MX domain, and bounces could not reach it"
                    : permanent ? "use a Sender:Address in a domain you own, with MX and SPF records: many servers refuse mail from a domain that does not exist"
                    : "DNS does not answer: check /etc/resolv.conf (or Relay:DnsServer)"));
            }
            else if (hosts.Count == 1 && hosts[0] == sender)
            {
                bool hasAddress = await dns.AddressAsync(sender, ct).ConfigureAwait(false) is not null;
                results.Add(hasAddress
                    ? new CheckResult("dns", CheckStatus.Warn, $"sender domain {sender}: no MX, only an address record", $"publish an MX record for {sender}, so that bounces and replies reach it")
                    : new CheckResult("dns", CheckStatus.Fail, $"sender domain {sender}: neither MX nor address", "use a Sender:Address in a domain you own, with MX and SPF records"));
            }
            else
            {
                results.Add(new CheckResult("dns", CheckStatus.Ok, $"sender domain {sender}: MX {string.Join(", ", hosts)}"));
            }

            if (o.Relay.Mode.Equals("Smarthost", StringComparison.OrdinalIgnoreCase))
            {
                string? address = await dns.AddressAsync(o.Relay.Host, ct).ConfigureAwait(false);
                results.Add(address is null
                    ? new CheckResult("dns", CheckStatus.Fail, $"relay {o.Relay.Host}: no address ({resolver})", "check the spelling of Relay:Host, and that this machine's DNS works")
                    : new CheckResult("dns", CheckStatus.Ok, $"relay {o.Relay.Host}: {address}"));
            }
            else
            {
                foreach (string domain in RecipientDomains(o).Take(10))
                {
                    var (mx, mxError, _, mxNull) = await dns.ExchangersAsync(domain, ct).ConfigureAwait(false);
                    results.Add(mxError is null
                        ? new CheckResult("dns", CheckStatus.Ok, $"recipient domain {domain}: MX {string.Join(", ", mx)}")
                        : new CheckResult("dns", CheckStatus.Fail, $"recipient domain {domain}: {mxError}", mxNull
                            ? "mail to it fails at once: give those users (Users:<id>:Email) an address in a domain that receives mail"
                            : "check the users' addresses (Users:<id>:Email), or this machine's DNS"));
                }
            }
        }

        return results;
    }

    private static IEnumerable<string> RecipientDomains(GatewayOptions o) =>
        o.Users.Values.Select(u => u.Email).Append(o.Sender.Operator)
            .Where(a => a.Contains('@', StringComparison.Ordinal))
            .Select(a => a[(a.LastIndexOf('@') + 1)..].ToLowerInvariant())
            .Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal);

    private static CheckResult Disk(GatewayOptions o)
    {
        string spool = o.SpoolPath();
        var dir = new DirectoryInfo(Path.GetDirectoryName(spool)!);
        while (!dir.Exists && dir.Parent is not null)
        {
            dir = dir.Parent; // not created yet: the file system it will be on
        }

        long free = DiskGuard.SystemProbe(dir.FullName) / (1024 * 1024);
        long floor = o.Spool.MinFreeMegabytes;
        string detail = string.Create(CultureInfo.InvariantCulture, $"{free} MiB free on {dir.FullName} (Spool:MinFreeMegabytes {floor})");
        return floor == 0 ? new CheckResult("disk", CheckStatus.Warn, detail + ": the disk guard is off", "set Spool:MinFreeMegabytes (e.g. 64) so that a full disk refuses new alerts instead of failing commits")
            : free < floor ? new CheckResult("disk", CheckStatus.Fail, detail + ": below the floor, new alerts are refused", "free space on that file system, or move DataDirectory")
            : free < 2 * floor ? new CheckResult("disk", CheckStatus.Warn, detail + ": close to the floor", "free space before alerts are refused")
            : new CheckResult("disk", CheckStatus.Ok, detail);
    }

    // The clock: against the relay's own (an SMTP greeting that carries the date, as Exchange and sendmail send); else
    // whether the kernel's clock is kept by a time-sync daemon (timedatectl); and in any case whether it is earlier than
    // this gateway's own files, the sign of a board without a battery-backed clock that never synchronised.
    private static async Task<List<CheckResult>> ClockAsync((DateTimeOffset Remote, DateTimeOffset Local, string Host)? smtp, CancellationToken ct)
    {
        var now = TimeProvider.System.GetUtcNow();
        var results = new List<CheckResult>();
        var built = File.GetLastWriteTimeUtc(typeof(DoctorCommand).Assembly.Location);
        if (now.UtcDateTime < built - TimeSpan.FromDays(1))
        {
            results.Add(new CheckResult("clock", CheckStatus.Fail, $"the clock says {now:u}, earlier than this gateway's files ({built:u})",
                "this machine has no battery-backed clock or lost it: enable time sync (timedatectl set-ntp true, or install chrony)"));
        }

        if (smtp is { } date)
        {
            var skew = date.Local - date.Remote;
            string detail = string.Create(CultureInfo.InvariantCulture, $"{Math.Abs(skew.TotalSeconds):0} s {(skew >= TimeSpan.Zero ? "ahead of" : "behind")} {date.Host} (its SMTP greeting's date)");
            var abs = skew.Duration();
            results.Add(abs > SkewFail ? new CheckResult("clock", CheckStatus.Fail, detail, "enable time sync: timedatectl set-ntp true (or install chrony)")
                : abs > SkewWarn ? new CheckResult("clock", CheckStatus.Warn, detail, "enable time sync: timedatectl set-ntp true (or install chrony)")
                : new CheckResult("clock", CheckStatus.Ok, detail));
            return results;
        }

        results.Add(await TimeSyncAsync(ct).ConfigureAwait(false));
        return results;
    }

    private static async Task<CheckResult> TimeSyncAsync(CancellationToken ct)
    {
        string? answer = null;
        try
        {
            using var process = Process.Start(new ProcessStartInfo("timedatectl", ["show", "--property=NTPSynchronized", "--value"])
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            });
            if (process is not null)
            {
                var output = process.StandardOutput.ReadToEndAsync(ct);
                await process.WaitForExitAsync(ct).WaitAsync(TimeSpan.FromSeconds(10), ct).ConfigureAwait(false);
                answer = process.ExitCode == 0 ? (await output.ConfigureAwait(false)).Trim() : null;
            }
        }
        catch (Exception ex) when (ex is System.ComponentModel.Win32Exception or TimeoutException or InvalidOperationException)
        {
            // No timedatectl (or no systemd to ask).
        }

        return answer switch
        {
            "yes" => new CheckResult("clock", CheckStatus.Ok, "synchronised by the system's time service (timedatectl)"),
            "no" => new CheckResult("clock", CheckStatus.Warn, "not synchronised: the system's time service has not set the clock (timedatectl)", "enable time sync: timedatectl set-ntp true (or install chrony)"),
            _ => new CheckResult("clock", CheckStatus.Skip, "cannot tell: the relay's greeting has no date and timedatectl did not answer"),
        };
    }

    private static string Shorten(string text, int max) => text.Length <= max ? text : text[..(max - 1)] + "…";

    [GeneratedRegex(@"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), +\d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}")]
    private static partial Regex SmtpDateRegex();

    /// <summary>Keeps what the server said first (its greeting, EHLO reply) and when, to find a date in it.</summary>
    private sealed class ServerText : IProtocolLogger
    {
        private readonly StringBuilder _text = new();
        private DateTimeOffset _first;

        public IAuthenticationSecretDetector? AuthenticationSecretDetector { get; set; }

        public (DateTimeOffset Remote, DateTimeOffset Local)? Date =>
            SmtpDateRegex().Match(_text.ToString()) is { Success: true } m && DateUtils.TryParse(m.Value, out var remote) ? (remote, _first) : null;

        public void LogConnect(Uri uri)
        {
        }

        public void LogClient(byte[] buffer, int offset, int count)
        {
        }

        public void LogServer(byte[] buffer, int offset, int count)
        {
            if (_text.Length == 0)
            {
                _first = TimeProvider.System.GetUtcNow();
            }

            if (_text.Length < 4096)
            {
                _text.Append(Encoding.ASCII.GetString(buffer, offset, Math.Min(count, 4096)));
            }
        }

        public void Dispose()
        {
        }
    }
}
