using System.Security.Cryptography;
using System.Text.Json;

namespace EdgeMail.Gateway.Relay.OAuth2;

/// <summary>A Google service account's JSON key file (type <c>service_account</c>).</summary>
/// <param name="ClientEmail">The service account's address (the JWT's issuer).</param>
/// <param name="PrivateKeyId">The key's id (the JWT's <c>kid</c>).</param>
/// <param name="PrivateKeyPem">The RSA private key, PEM.</param>
/// <param name="TokenUri">The token endpoint named in the file.</param>
public sealed record GoogleServiceAccountKey(string ClientEmail, string PrivateKeyId, string PrivateKeyPem, string TokenUri)
{
    /// <summary>Reads and checks a key file.</summary>
    /// <param name="path">The file.</param>
    /// <param name="key">The key, when it could be read.</param>
    /// <param name="problem">What is wrong otherwise.</param>
    /// <returns>True when the file is a usable key.</returns>
    public static bool TryLoad(string path, out GoogleServiceAccountKey? key, out string problem)
    {
        key = null;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var root = doc.RootElement;
            string Get(string name) => root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : string.Empty;
            if (Get("type") != "service_account")
            {
                problem = $"'{path}' is not a service account key (\"type\" is not \"service_account\")";
                return false;
            }

            var candidate = new GoogleServiceAccountKey(Get("client_email"), Get("private_key_id"), Get("private_key"), Get("token_uri"));
            if (candidate.ClientEmail.Length == 0 || candidate.PrivateKeyPem.Length == 0)
            {
                problem = $"'{path}' lacks client_email or private_key";
                return false;
            }

            using var rsa = RSA.Create();
            rsa.ImportFromPem(candidate.PrivateKeyPem);
            key = candidate;
            problem = string.Empty;
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or JsonException or CryptographicException or ArgumentException)
        {
            problem = $"'{path}' cannot be read as a service account key ({ex.Message})";
            return false;
        }
    }
}
