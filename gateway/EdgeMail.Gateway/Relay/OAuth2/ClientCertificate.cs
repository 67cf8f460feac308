using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using EdgeMail.Gateway.Configuration;

namespace EdgeMail.Gateway.Relay.OAuth2;

/// <summary>The certificate an Entra ID app proves itself with (client credentials): PKCS#12, or PEM certificate and key.</summary>
public static class ClientCertificate
{
    /// <summary>Loads <c>Relay:OAuth2:CertificatePath</c>.</summary>
    /// <param name="options">The OAuth2 options.</param>
    /// <returns>The certificate with its private key.</returns>
    /// <exception cref="InvalidOperationException">It cannot be read or has no private key; the message says which.</exception>
    public static X509Certificate2 Load(RelayOAuth2Options options)
    {
        ArgumentNullException.ThrowIfNull(options);
        string path = options.CertificatePath;
        try
        {
            X509Certificate2 certificate = options.CertificateKeyPath.Length > 0 || IsPem(path)
                ? LoadPem(path, options.CertificateKeyPath.Length > 0 ? options.CertificateKeyPath : path)
                : X509CertificateLoader.LoadPkcs12FromFile(path, options.CertificatePassword);
            if (!certificate.HasPrivateKey)
            {
                certificate.Dispose();
                throw new InvalidOperationException($"'{path}' has no private key");
            }

            return certificate;
        }
        catch (Exception ex) when (ex is CryptographicException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new InvalidOperationException($"'{path}' cannot be loaded ({ex.Message})", ex);
        }
    }

    private static X509Certificate2 LoadPem(string certificatePath, string keyPath)
    {
        using var pem = X509Certificate2.CreateFromPemFile(certificatePath, keyPath);

        // An ephemeral PEM key cannot sign on every platform; a PKCS#12 round trip gives a usable one.
        return X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), password: null);
    }

    private static bool IsPem(string path)
    {
        try
        {
            using var reader = new StreamReader(path);
            var start = new char[64];
            int n = reader.ReadBlock(start, 0, start.Length);
            return new string(start, 0, n).Contains("-----BEGIN", StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
    }
}
