using System.Collections.Concurrent;
using System.Security.Cryptography;
using EdgeMail.Gateway.Configuration;

namespace EdgeMail.Gateway.Security;

/// <summary>
/// Checks a device's presented secret against its stored PBKDF2 hash (<see cref="SecretHash"/>). PBKDF2 is
/// deliberately slow; after one successful check the secret's SHA-256 is remembered per device together with the
/// stored hash it was checked against (a changed secret no longer matches it and is checked again) and later checks
/// are a constant-time compare.
/// </summary>
public sealed class SecretVerifier
{
    // Keyed by the device id alone, holding a reference to the stored hash string the registry already keeps: a key
    // of id and hash concatenated was a ~200-byte string per device (2 MB with 10,000 devices) and one more such
    // string allocated on every connect.
    private readonly ConcurrentDictionary<string, (string Stored, byte[] Digest)> _verified = new(StringComparer.Ordinal);

    /// <summary>Whether the secret is the one already verified for this device against this stored hash: a cheap check, no key derivation.</summary>
    /// <param name="device">Device id.</param>
    /// <param name="stored">The stored hash from the configuration.</param>
    /// <param name="presented">The secret the device sent.</param>
    /// <returns>True when it matches a verified one; false when it does not, or nothing was verified yet.</returns>
    public bool Recognizes(string device, string stored, ReadOnlySpan<byte> presented)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(stored);
        return Verified(device, stored) is { } known && CryptographicOperations.FixedTimeEquals(known, SHA256.HashData(presented));
    }

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
        if (Verified(device, stored) is { } known)
        {
            return CryptographicOperations.FixedTimeEquals(known, digest);
        }

        if (!SecretHash.Verify(stored, presented))
        {
            return false;
        }

        _verified[device] = (stored, digest);
        return true;
    }

    // The digest of the secret verified for this device against this stored hash; null when none was (or the hash changed).
    private byte[]? Verified(string device, string stored) =>
        _verified.TryGetValue(device, out var known) && string.Equals(known.Stored, stored, StringComparison.Ordinal) ? known.Digest : null;
}
