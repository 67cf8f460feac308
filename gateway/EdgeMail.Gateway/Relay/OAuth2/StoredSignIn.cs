using System.Text.Json;
using System.Text.Json.Serialization;

namespace EdgeMail.Gateway.Relay.OAuth2;

/// <summary>What <c>edgemail relay login</c> keeps (encrypted) in the <see cref="TokenStore"/>.</summary>
/// <param name="Provider"><c>Microsoft</c> or <c>Google</c>.</param>
/// <param name="ClientId">The client it was issued to: a store for another client is not used.</param>
/// <param name="User">The mailbox.</param>
/// <param name="RefreshToken">Google: the refresh token.</param>
/// <param name="Msal">Microsoft: MSAL's serialized token cache, base64.</param>
internal sealed record StoredSignIn(
    [property: JsonPropertyName("provider")] string Provider,
    [property: JsonPropertyName("client_id")] string ClientId,
    [property: JsonPropertyName("user")] string User,
    [property: JsonPropertyName("refresh_token")] string? RefreshToken,
    [property: JsonPropertyName("msal")] string? Msal)
{
    /// <inheritdoc />
    public override string ToString() => $"StoredSignIn({Provider}, {ClientId}, {User})"; // never the token

    public static StoredSignIn? Read(TokenStore store, string provider, string clientId)
    {
        byte[]? plain = store.Read();
        if (plain is null)
        {
            return null;
        }

        StoredSignIn? stored;
        try
        {
            stored = JsonSerializer.Deserialize<StoredSignIn>(plain);
        }
        catch (JsonException ex)
        {
            throw new TokenException($"{store.Path} holds no sign-in; run 'edgemail relay login' again", true, ex);
        }

        if (stored is null || !string.Equals(stored.Provider, provider, StringComparison.OrdinalIgnoreCase) || stored.ClientId != clientId)
        {
            throw new TokenException($"the sign-in stored in {store.Path} is for {stored?.Provider} client {stored?.ClientId}, not {provider} client {clientId}; run 'edgemail relay login' again", refused: true);
        }

        return stored;
    }

    public void Write(TokenStore store) => store.Write(JsonSerializer.SerializeToUtf8Bytes(this));
}
