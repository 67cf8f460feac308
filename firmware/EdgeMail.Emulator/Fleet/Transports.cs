using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using EdgeMail.Firmware.Uplink;
using EdgeMail.Simulation.Network;

namespace EdgeMail.Emulator.Fleet;

/// <summary>The byte stream under a device's uplink: plain TCP, or TLS from the first byte with the scenario's trust rule.</summary>
internal static class Transports
{
    public static ITransport Create(UplinkModel uplink)
    {
        if (!uplink.Tls)
        {
            return new TcpTransport();
        }

        if (uplink.TlsInsecure)
        {
            return new TlsTransport((_, _, _, _) => true);
        }

        if (uplink.TlsPin is string pin)
        {
            return new TlsTransport((_, certificate, _, _) => certificate is not null && Matches(certificate, pin));
        }

        return new TlsTransport(); // the platform's chain and name validation
    }

    private static bool Matches(X509Certificate certificate, string pin) =>
        string.Equals(pin.Length == 40 ? certificate.GetCertHashString() : certificate.GetCertHashString(HashAlgorithmName.SHA256), pin, StringComparison.OrdinalIgnoreCase);
}
