using System.Collections.Concurrent;
using System.Security.Cryptography;
using EdgeMail.Gateway.Configuration;

namespace EdgeMail.Gateway.Security;

/// <summary>
/// Checks a device's presented secret against its stored PBKDF2 hash (<see cref="SecretHash"/>). PBKDF2 is
/// deliberately slow; after one successful check the secret's SHA-256 is remembered (keyed by device and stored
/// hash, so changing the configured secret forgets it) and later checks are a constant-time compare.
/// </summary>
public sealed class SecretVerifier
{
    private readonly ConcurrentDictionary<string, byte[]> _verified = new(StringComparer.Ordinal);

    /// <summary>Verifies a secret.</summary>
    /// <param name="device">Device id.</param>
    /// <param name="stored">The stored hash from the configuration.</param>
    /// <param name="presented">The secret the device sent.</param>
    /// <returns>True when it matches.</returns>
    public bool Verify(string device, string stored, ReadOnlySpan<byte> presented)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(stored);
        byte[] digest = SHA256.HashData(presented);
        string key = device + "\n" + stored;
        if (_verified.TryGetValue(key, out var known))
        {
            return CryptographicOperations.FixedTimeEquals(known, digest);
        }

        if (!SecretHash.Verify(stored, presented))
        {
            return false;
        }

        _verified[key] = digest;
        return true;
    }
}
