using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace EdgeMail.Gateway.Configuration;

/// <summary>Device secrets stored as <c>pbkdf2-sha256$iterations$salt$hash</c> (salt and hash in base64).</summary>
public static class SecretHash
{
    /// <summary>The scheme prefix.</summary>
    public const string Scheme = "pbkdf2-sha256";

    /// <summary>Iterations used by <see cref="Create(string)"/>.</summary>
    public const int DefaultIterations = 100_000;

    /// <summary>Hashes a secret with a fresh random salt.</summary>
    /// <param name="secret">The plain secret.</param>
    /// <returns>The stored form.</returns>
    public static string Create(string secret) => Create(secret, DefaultIterations);

    /// <summary>Hashes a secret with a fresh random salt and the given work factor.</summary>
    /// <param name="secret">The plain secret.</param>
    /// <param name="iterations">PBKDF2 iterations.</param>
    /// <returns>The stored form.</returns>
    public static string Create(string secret, int iterations)
    {
        ArgumentNullException.ThrowIfNull(secret);
        byte[] salt = RandomNumberGenerator.GetBytes(16);
        byte[] hash = Rfc2898DeriveBytes.Pbkdf2(Encoding.UTF8.GetBytes(secret), salt, iterations, HashAlgorithmName.SHA256, 32);
        return string.Join('$', Scheme, iterations.ToString(CultureInfo.InvariantCulture), Convert.ToBase64String(salt), Convert.ToBase64String(hash));
    }

    /// <summary>Checks the stored form is well-formed.</summary>
    /// <param name="stored">The stored form.</param>
    /// <param name="problem">What is wrong, when false.</param>
    /// <returns>True when it can be verified against.</returns>
    public static bool IsWellFormed(string stored, out string problem)
    {
        problem = string.Empty;
        if (!TryParse(stored, out _, out _, out _))
        {
            problem = "expected pbkdf2-sha256$ITERATIONS$SALT_BASE64$HASH_BASE64 (make one with `edgemail hash-secret`, which reads the secret from standard input)";
            return false;
        }

        return true;
    }

    /// <summary>Verifies a presented secret in constant time.</summary>
    /// <param name="stored">The stored form.</param>
    /// <param name="presented">The secret the device sent.</param>
    /// <returns>True when it matches.</returns>
    public static bool Verify(string stored, ReadOnlySpan<byte> presented)
    {
        if (!TryParse(stored, out int iterations, out byte[] salt, out byte[] expected))
        {
            return false;
        }

        byte[] actual = Rfc2898DeriveBytes.Pbkdf2(presented, salt, iterations, HashAlgorithmName.SHA256, expected.Length);
        return CryptographicOperations.FixedTimeEquals(actual, expected);
    }

    private static bool TryParse(string stored, out int iterations, out byte[] salt, out byte[] hash)
    {
        iterations = 0;
        salt = [];
        hash = [];
        string[] parts = (stored ?? string.Empty).Split('$');
        if (parts.Length != 4 || parts[0] != Scheme
            || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out iterations) || iterations < 1)
        {
            return false;
        }

        try
        {
            salt = Convert.FromBase64String(parts[2]);
            hash = Convert.FromBase64String(parts[3]);
        }
        catch (FormatException)
        {
            return false;
        }

        return salt.Length >= 8 && hash.Length >= 16;
    }
}
