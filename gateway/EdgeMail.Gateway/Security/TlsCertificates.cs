using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Security;

/// <summary>
/// The gateway's TLS server certificate, shared by the SMTP (and MQTT) listeners: a PKCS#12 file the operator
/// names, or else a self-signed one generated on first start and kept in the data directory (mode 600) so
/// devices that pin it keep working across restarts. A kept certificate that is about to expire is replaced.
/// Each listener reads its certificate once, when it starts: a file renewed on disk is served after a restart.
/// </summary>
public static partial class TlsCertificates
{
    /// <summary>File name of the generated certificate inside the data directory.</summary>
    public const string GeneratedFileName = "tls-selfsigned.pfx";

    /// <summary>
    /// A certificate this close to its end is reported, at start and by <c>edgemail doctor</c>; the kept self-signed
    /// one is replaced at start within it.
    /// </summary>
    public static readonly TimeSpan RenewWithin = TimeSpan.FromDays(30);

    /// <summary>What is wrong with a certificate's dates at <paramref name="now"/>, in the words both the start's warning and the doctor use.</summary>
    /// <param name="certificate">The certificate.</param>
    /// <param name="now">The time.</param>
    /// <returns>Null when it is valid for longer than <see cref="RenewWithin"/>.</returns>
    public static CertificateDates? DatesProblem(X509Certificate2 certificate, DateTimeOffset now)
    {
        ArgumentNullException.ThrowIfNull(certificate);
        var notBefore = certificate.NotBefore.ToUniversalTime();
        var notAfter = certificate.NotAfter.ToUniversalTime();
        if (notBefore > now.UtcDateTime)
        {
            return new CertificateDates(string.Create(CultureInfo.InvariantCulture, $"not valid before {notBefore:u}"), Unusable: true, NotYetValid: true);
        }

        if (notAfter <= now.UtcDateTime)
        {
            return new CertificateDates(string.Create(CultureInfo.InvariantCulture, $"expired on {notAfter:u}"), Unusable: true, NotYetValid: false);
        }

        var left = notAfter - now.UtcDateTime;
        if (left >= RenewWithin)
        {
            return null;
        }

        string within = left >= TimeSpan.FromDays(1.5) ? string.Create(CultureInfo.InvariantCulture, $"{left.TotalDays:0} days")
            : left >= TimeSpan.FromHours(1.5) ? string.Create(CultureInfo.InvariantCulture, $"{left.TotalHours:0} hours")
            : "less than an hour";
        return new CertificateDates(string.Create(CultureInfo.InvariantCulture, $"expires in {within}, on {notAfter:u}"), Unusable: false, NotYetValid: false);
    }

    /// <summary>
    /// Warns when a listener's certificate is expired, not yet valid, or expires within <see cref="RenewWithin"/>. The
    /// listener serves it all the same: a device that does not check dates still connects, and an expired certificate
    /// is no reason to stop taking alerts.
    /// </summary>
    /// <param name="logger">The listener's logger.</param>
    /// <param name="certificate">The certificate it loaded.</param>
    /// <param name="path">The configured file; empty for the self-signed one.</param>
    /// <param name="dataDirectory">Where the self-signed one lives.</param>
    /// <param name="listener">Which listener, for the message (<c>SMTP</c>, <c>MQTT over TLS</c>, <c>console</c>).</param>
    /// <param name="key">The key that names the file, for the fix.</param>
    /// <param name="now">The time.</param>
    public static void WarnAboutDates(ILogger logger, X509Certificate2 certificate, string path, string dataDirectory, string listener, string key, DateTimeOffset now)
    {
        ArgumentNullException.ThrowIfNull(certificate);
        if (DatesProblem(certificate, now) is not { } dates)
        {
            return;
        }

        string file = path.Length > 0 ? path : Path.Combine(dataDirectory, GeneratedFileName);
        string consequence = dates.Unusable
            ? "Devices and clients that check certificates refuse the connection; the listener serves it all the same"
            : "Then devices and clients that check certificates will refuse the connection";
        LogDates(logger, file, certificate.Subject, listener, dates.Problem, consequence, DatesFix(dates, path.Length == 0, key));
    }

    /// <summary>How to fix a <see cref="DatesProblem"/>, for the start's warning and the doctor.</summary>
    /// <param name="dates">The problem.</param>
    /// <param name="generated">Whether it is the gateway's self-signed certificate.</param>
    /// <param name="key">The key that names the file.</param>
    /// <returns>The fix.</returns>
    public static string DatesFix(CertificateDates dates, bool generated, string key)
    {
        ArgumentNullException.ThrowIfNull(dates);
        return dates.NotYetValid ? "check the clock (timedatectl), or the certificate"
            : generated ? string.Create(CultureInfo.InvariantCulture, $"restart the gateway: it replaces its self-signed certificate within {RenewWithin.TotalDays:0} days of the end (devices that pin it must pin the new one)")
            : $"renew the file ({key}) and restart the gateway, which reads it at start only";
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "The TLS certificate {File} ({Subject}) for {Listener}: {Problem}. {Consequence}. Fix: {Fix}.")]
    private static partial void LogDates(ILogger logger, string file, string subject, string listener, string problem, string consequence, string fix);

    /// <summary>
    /// Why a configured certificate file cannot serve TLS, for the start's validation: a listener that loaded it only
    /// once the others were up failed the start with exit code 1 (retried by systemd for ever) instead of 2.
    /// </summary>
    /// <param name="path">The PKCS#12 file.</param>
    /// <param name="password">Its password.</param>
    /// <returns>The problem, to follow the file's name ("does not exist"); null when it loads with its private key.</returns>
    public static string? Problem(string path, string password)
    {
        try
        {
            using var certificate = X509CertificateLoader.LoadPkcs12FromFile(path, password);
            return certificate.HasPrivateKey ? null : "holds no private key";
        }
        catch (CryptographicException ex)
        {
            return ex.InnerException switch
            {
                FileNotFoundException or DirectoryNotFoundException => "does not exist",
                UnauthorizedAccessException or IOException => $"cannot be read ({ex.InnerException.Message})",
                _ => $"is not a PKCS#12 file this password opens ({ex.Message.TrimEnd('.')})",
            };
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return $"cannot be read ({ex.Message})";
        }
    }

    /// <summary>How to fix a <see cref="Problem"/>, naming the key of the password.</summary>
    /// <param name="passwordKey">The password's key, e.g. <c>Mqtt:CertificatePassword</c>.</param>
    /// <returns>The fix.</returns>
    public static string Fix(string passwordKey) =>
        $"give a PKCS#12 file with the certificate and its private key, readable by the gateway's user, and its password in {passwordKey} "
        + "(from PEM: openssl pkcs12 -export -in cert.pem -inkey key.pem -out gateway.pfx); or leave the path empty for the self-signed certificate";

    /// <summary>Loads the configured certificate, or loads/creates the self-signed one.</summary>
    /// <param name="path">A PKCS#12 (.pfx/.p12) file; empty for the generated one.</param>
    /// <param name="password">Its password (may be empty).</param>
    /// <param name="dataDirectory">Where the generated certificate lives.</param>
    /// <param name="hostname">Host name for the generated certificate's subject and SAN.</param>
    /// <param name="clock">Clock (validity period).</param>
    /// <param name="generated">True when a new self-signed certificate was written now.</param>
    /// <returns>The certificate with its private key.</returns>
    public static X509Certificate2 Load(string path, string password, string dataDirectory, string hostname, TimeProvider clock, out bool generated)
    {
        ArgumentNullException.ThrowIfNull(clock);
        generated = false;
        if (!string.IsNullOrEmpty(path))
        {
            try
            {
                var cert = X509CertificateLoader.LoadPkcs12FromFile(path, password);
                if (!cert.HasPrivateKey)
                {
                    throw new InvalidOperationException($"The TLS certificate '{path}' has no private key. Export it as PKCS#12 with its key.");
                }

                return cert;
            }
            catch (CryptographicException ex)
            {
                throw new InvalidOperationException($"Cannot read the TLS certificate '{path}': {ex.Message} Give a PKCS#12 file and its password.", ex);
            }
        }

        string file = Path.Combine(dataDirectory, GeneratedFileName);
        var now = clock.GetUtcNow();
        if (File.Exists(file))
        {
            try
            {
                var kept = X509CertificateLoader.LoadPkcs12FromFile(file, password: null);
                if (kept.NotAfter.ToUniversalTime() > now.UtcDateTime + RenewWithin && kept.HasPrivateKey)
                {
                    return kept;
                }

                kept.Dispose();
            }
            catch (CryptographicException)
            {
                // Unreadable: make a new one below.
            }
        }

        using var rsa = RSA.Create(2048);
        var request = new CertificateRequest("CN=" + hostname + ", O=EdgeMail gateway (self-signed)", rsa, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(hostname);
        san.AddDnsName("localhost");
        san.AddIpAddress(IPAddress.Loopback);
        san.AddIpAddress(IPAddress.IPv6Loopback);
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], critical: false));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment, critical: true));
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
        using var ephemeral = request.CreateSelfSigned(now.AddMinutes(-5), now.AddYears(2));
        byte[] pfx = ephemeral.Export(X509ContentType.Pfx);
        PrivateFile.Write(file, pfx);
        generated = true;
        return X509CertificateLoader.LoadPkcs12(pfx, password: null);
    }
}

/// <summary>A certificate's dates against the clock (<see cref="TlsCertificates.DatesProblem"/>).</summary>
/// <param name="Problem">What is wrong, e.g. <c>expired on 2026-05-01 10:00:00Z</c>.</param>
/// <param name="Unusable">Expired or not yet valid: clients that check dates refuse it now.</param>
/// <param name="NotYetValid">Not valid before a time still to come (the clock, or the certificate, is wrong).</param>
public sealed record CertificateDates(string Problem, bool Unusable, bool NotYetValid);
