using System.Net;
using EdgeMail.Gateway.Configuration;
using Microsoft.Identity.Client;

namespace EdgeMail.Gateway.Relay.OAuth2;

/// <summary>
/// The one HTTP client the relay's token requests use (MSAL through <see cref="IMsalHttpClientFactory"/>, Google's
/// endpoints directly): <c>Relay:Timeout</c> per request, no proxy surprises, and certificate checks that only
/// <c>Relay:AcceptAnyCertificate</c> (tests) switches off.
/// </summary>
public sealed class RelayHttp : IMsalHttpClientFactory, IDisposable
{
    private readonly HttpClient _client;

    /// <summary>Creates the client.</summary>
    /// <param name="relay">Relay options.</param>
    public RelayHttp(RelayOptions relay)
    {
        ArgumentNullException.ThrowIfNull(relay);
        var handler = new SocketsHttpHandler
        {
            AutomaticDecompression = DecompressionMethods.All,
            PooledConnectionLifetime = TimeSpan.FromMinutes(5),
            AllowAutoRedirect = false,
        };
        if (relay.AcceptAnyCertificate)
        {
            handler.SslOptions.RemoteCertificateValidationCallback = (_, _, _, _) => true;
        }

        _client = new HttpClient(handler) { Timeout = relay.Timeout };
    }

    /// <summary>The client.</summary>
    public HttpClient Client => _client;

    /// <inheritdoc />
    public HttpClient GetHttpClient() => _client;

    /// <inheritdoc />
    public void Dispose() => _client.Dispose();
}
