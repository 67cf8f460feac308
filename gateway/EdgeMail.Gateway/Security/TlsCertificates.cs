using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace EdgeMail.Gateway.Security;

/// <summary>
/// The gateway's TLS server certificate, shared by the SMTP (and MQTT) listeners: a PKCS#12 file the operator
/// names, or else a self-signed one generated on first start and kept in the data directory (mode 600) so
/// devices that pin it keep working across restarts. A kept certificate that is about to expire is replaced.
/// </summary>
public static class TlsCertificates
{
    /// <summary>File name of the generated certificate inside the data directory.</summary>
    public const string GeneratedFileName = "tls-selfsigned.pfx";

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
                if (kept.NotAfter.ToUniversalTime() > now.UtcDateTime.AddDays(30) && kept.HasPrivateKey)
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
