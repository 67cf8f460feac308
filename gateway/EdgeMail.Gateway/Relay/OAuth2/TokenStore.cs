using System.Security.Cryptography;
using System.Text;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Security;

namespace EdgeMail.Gateway.Relay.OAuth2;

/// <summary>
/// The refresh token (or MSAL's token cache) at rest: AES-256-GCM in one file (mode 600), replaced atomically on every
/// rotation. The key is the systemd credential <c>edgemail-relay-key</c> when the service has one
/// (<c>LoadCredential=</c>/<c>LoadCredentialEncrypted=</c>), else <c>Relay:OAuth2:KeyFile</c>, else
/// <c>DataDirectory/relay-oauth2.key</c>, created with 32 random bytes and mode 600 on first use. Anyone who can read
/// both the key and the store can send as the mailbox, so the two should not travel together in backups.
/// </summary>
public sealed class TokenStore
{
    /// <summary>Name of the systemd credential that holds the key.</summary>
    public const string CredentialName = "edgemail-relay-key";

    private static readonly byte[] Magic = "EMT1"u8.ToArray();
    private static readonly byte[] AssociatedData = "edgemail relay token store v1"u8.ToArray();
    private readonly string _keyFile;
    private readonly Lock _lock = new();

    /// <summary>Creates the store.</summary>
    /// <param name="path">The encrypted file.</param>
    /// <param name="keyFile">The key file (created when missing).</param>
    public TokenStore(string path, string keyFile)
    {
        Path = path;
        _keyFile = keyFile;
    }

    /// <summary>The encrypted file.</summary>
    public string Path { get; }

    /// <summary>The store the options name.</summary>
    /// <param name="options">Gateway options.</param>
    /// <returns>The store.</returns>
    public static TokenStore For(GatewayOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var o = options.Relay.OAuth2;
        string data = options.DataPath();
        string path = o.TokenStore.Length > 0 ? o.TokenStore : System.IO.Path.Combine(data, "relay-oauth2.token");
        string key = o.KeyFile;
        if (key.Length == 0)
        {
            string? credentials = Environment.GetEnvironmentVariable("CREDENTIALS_DIRECTORY");
            string systemd = credentials is null ? string.Empty : System.IO.Path.Combine(credentials, CredentialName);
            key = systemd.Length > 0 && File.Exists(systemd) ? systemd : System.IO.Path.Combine(data, "relay-oauth2.key");
        }

        return new TokenStore(path, key);
    }

    /// <summary>Whether anything is stored.</summary>
    public bool Exists => File.Exists(Path);

    /// <summary>Reads and decrypts the stored bytes.</summary>
    /// <returns>The plaintext, or null when nothing is stored.</returns>
    /// <exception cref="TokenException">The file exists but cannot be decrypted (another key, tampered): sign in again.</exception>
    public byte[]? Read()
    {
        lock (_lock)
        {
            if (!File.Exists(Path))
            {
                return null;
            }

            byte[] blob = File.ReadAllBytes(Path);
            byte[] key = ReadKey(create: false)
                ?? throw new TokenException($"the token store {Path} exists but its key {_keyFile} does not; run 'edgemail relay login' again", refused: true);
            const int header = 4 + 12 + 16;
            if (blob.Length < header || !blob.AsSpan(0, 4).SequenceEqual(Magic))
            {
                throw new TokenException($"{Path} is not an EdgeMail token store; run 'edgemail relay login' again", refused: true);
            }

            var plain = new byte[blob.Length - header];
            try
            {
                using var gcm = new AesGcm(key, 16);
                gcm.Decrypt(blob.AsSpan(4, 12), blob.AsSpan(header), blob.AsSpan(16, 16), plain, AssociatedData);
            }
            catch (CryptographicException ex)
            {
                throw new TokenException($"{Path} cannot be decrypted with the key {_keyFile} (another key, or the file was changed); run 'edgemail relay login' again", true, ex);
            }

            return plain;
        }
    }

    /// <summary>Encrypts and stores <paramref name="plain"/>, replacing what was there (fsync'd, then renamed).</summary>
    /// <param name="plain">The bytes to keep.</param>
    public void Write(ReadOnlySpan<byte> plain)
    {
        lock (_lock)
        {
            byte[] key = ReadKey(create: true)!;
            var blob = new byte[4 + 12 + 16 + plain.Length];
            Magic.CopyTo(blob, 0);
            RandomNumberGenerator.Fill(blob.AsSpan(4, 12));
            using (var gcm = new AesGcm(key, 16))
            {
                gcm.Encrypt(blob.AsSpan(4, 12), plain, blob.AsSpan(32), blob.AsSpan(16, 16), AssociatedData);
            }

            PrivateFile.Write(Path, blob);
        }
    }

    private byte[]? ReadKey(bool create)
    {
        if (File.Exists(_keyFile))
        {
            byte[] raw = File.ReadAllBytes(_keyFile);
            if (raw.Length == 32)
            {
                return raw;
            }

            // A key made with e.g. "openssl rand -base64 32" or "systemd-creds" from such text.
            string text = Encoding.ASCII.GetString(raw).Trim();
            var decoded = new byte[32];
            if (Convert.TryFromBase64String(text, decoded, out int n) && n == 32)
            {
                return decoded;
            }

            throw new TokenException($"the key {_keyFile} is neither 32 bytes nor 32 bytes in base64; make one with: head -c 32 /dev/urandom > {_keyFile}", refused: true);
        }

        if (!create)
        {
            return null;
        }

        var fresh = RandomNumberGenerator.GetBytes(32);
        PrivateFile.Write(_keyFile, fresh);
        return fresh;
    }
}
