using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Security;
using EdgeMail.Gateway.Web;

namespace EdgeMail.Gateway.Cli;

/// <summary>
/// The running gateway's HTTP API (<c>/api/v1</c>) as the CLI uses it: the console's address from the configuration,
/// the key the gateway writes to its data directory, and over TLS the gateway's own certificate pinned from the files
/// it serves — a certificate trusted by this machine passes too, anything else is refused.
/// </summary>
public sealed class GatewayClient : IDisposable
{
    /// <summary>JSON as the API writes it.</summary>
    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    private static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(30);
    private readonly HttpClient _http;
    private readonly IReadOnlyList<X509Certificate2> _pins;
    private readonly string? _pinSource;

    private GatewayClient(Uri baseAddress, string? apiKey, string keyFile, IReadOnlyList<X509Certificate2> pins, string? pinSource)
    {
        BaseAddress = baseAddress;
        KeyFile = keyFile;
        _pins = pins;
        _pinSource = pinSource;
        var handler = new SocketsHttpHandler { ConnectTimeout = TimeSpan.FromSeconds(10) };
        handler.SslOptions.RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
            errors == SslPolicyErrors.None || (certificate is not null && pins.Any(p => p.RawDataMemory.Span.SequenceEqual(certificate.GetRawCertData())));
        _http = new HttpClient(handler) { BaseAddress = baseAddress, Timeout = RequestTimeout };
        if (apiKey is not null)
        {
            _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        }
    }

    /// <summary>The console's address.</summary>
    public Uri BaseAddress { get; }

    /// <summary>The key file used.</summary>
    public string KeyFile { get; }

    /// <summary>Connects to the gateway the command line and configuration name.</summary>
    /// <param name="c">The invocation (<c>--url</c>, <c>--api-key-file</c>, <c>--config</c>).</param>
    /// <param name="requireKey">Fail when the key cannot be read (else go on without one).</param>
    /// <returns>The client.</returns>
    /// <exception cref="CliException">No console, no key (3), or an unreadable configuration (2).</exception>
    public static GatewayClient Create(CliContext c, bool requireKey = true)
    {
        ArgumentNullException.ThrowIfNull(c);
        var (gateway, console) = c.Configuration().Read();
        string? url = c.Parse.GetValue(c.Options.Url);
        Uri baseAddress;
        if (url is not null)
        {
            if (!Uri.TryCreate(url.EndsWith('/') ? url : url + "/", UriKind.Absolute, out baseAddress!) || baseAddress.Scheme is not ("http" or "https"))
            {
                throw new CliException(ExitCodes.Usage, $"--url '{url}' is not an http:// or https:// address");
            }
        }
        else
        {
            baseAddress = ConsoleAddress(console);
        }

        string keyFile = Path.GetFullPath(c.Parse.GetValue(c.Options.ApiKeyFile) ?? Path.Combine(gateway.DataPath(), ConsoleAuth.CliKeyFileName));
        string? key = ReadKey(keyFile, requireKey);
        var (pins, pinSource) = baseAddress.Scheme == "https" ? Pins(gateway, console) : ([], null);
        return new GatewayClient(baseAddress, key, keyFile, pins, pinSource);
    }

    /// <summary>GETs an API path.</summary>
    /// <param name="path">Path under <c>/api/v1/</c>.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The JSON answer.</returns>
    public Task<JsonElement> GetAsync(string path, CancellationToken cancellationToken) => SendAsync(HttpMethod.Get, path, null, cancellationToken);

    /// <summary>POSTs to an API path.</summary>
    /// <param name="path">Path under <c>/api/v1/</c>.</param>
    /// <param name="body">JSON body, or null.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The JSON answer (undefined when there was none).</returns>
    public Task<JsonElement> PostAsync(string path, object? body, CancellationToken cancellationToken) => SendAsync(HttpMethod.Post, path, body, cancellationToken);

    /// <summary>Whether a gateway answers at the address at all (without a key).</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>True when its console answered.</returns>
    public async Task<bool> IsRunningAsync(CancellationToken cancellationToken)
    {
        try
        {
            using var response = await _http.GetAsync(new Uri("api/v1/setup", UriKind.Relative), cancellationToken).ConfigureAwait(false);
            return response.IsSuccessStatusCode;
        }
        catch (HttpRequestException)
        {
            return false;
        }
        catch (TaskCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return false;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _http.Dispose();
        foreach (var pin in _pins)
        {
            pin.Dispose();
        }
    }

    /// <summary>The console's address on this machine: the bind address (loopback for "every address"), https unless it is loopback.</summary>
    /// <param name="console">Console options.</param>
    /// <returns>The address.</returns>
    /// <exception cref="CliException">The console is off or its address is not an IP address.</exception>
    public static Uri ConsoleAddress(ConsoleOptions console)
    {
        ArgumentNullException.ThrowIfNull(console);
        if (!console.Enabled)
        {
            throw new CliException(ExitCodes.Unreachable, "the console is off (Console:Enabled is false): these commands use its API. Turn it on (it binds to 127.0.0.1 by default), or give --url");
        }

        if (!IPAddress.TryParse(console.BindAddress, out var bind))
        {
            throw new CliException(ExitCodes.InvalidConfiguration, $"Console:BindAddress '{console.BindAddress}' is not an IP address. Fix: use 127.0.0.1 (this machine only) or the address to serve on");
        }

        // The console serves TLS whenever it is not bound to loopback (ConsoleServer), also on "every address".
        bool tls = !IPAddress.IsLoopback(bind);
        var host = bind.Equals(IPAddress.Any) ? IPAddress.Loopback : bind.Equals(IPAddress.IPv6Any) ? IPAddress.IPv6Loopback : bind;
        string hostText = host.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{host}]" : host.ToString();
        return new Uri($"{(tls ? "https" : "http")}://{hostText}:{console.Port}/");
    }

    private async Task<JsonElement> SendAsync(HttpMethod method, string path, object? body, CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(method, new Uri("api/v1/" + path, UriKind.Relative));
        if (body is not null)
        {
            request.Content = JsonContent.Create(body, options: Json);
        }

        HttpResponseMessage response;
        try
        {
            response = await _http.SendAsync(request, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException ex) when (ex.HttpRequestError == HttpRequestError.SecureConnectionError)
        {
            throw new CliException(ExitCodes.Unreachable, $"TLS with the console at {BaseAddress} failed ({Innermost(ex)}): its certificate is neither trusted by this machine "
                + $"nor the gateway's own{(_pinSource is null ? " (which could not be read: run as root or as the gateway's user)" : $" ({_pinSource})")}. Is --url this gateway?");
        }
        catch (HttpRequestException ex)
        {
            throw new CliException(ExitCodes.Unreachable, $"cannot reach the gateway's console at {BaseAddress} ({Innermost(ex)}): is the gateway running? "
                + "systemctl status edgemail-gateway. (The address comes from Console:BindAddress and Console:Port of the configuration; --url overrides.)");
        }
        catch (TaskCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new CliException(ExitCodes.Unreachable, $"the gateway's console at {BaseAddress} did not answer within {RequestTimeout.TotalSeconds:0} s: is it overloaded? journalctl -u edgemail-gateway");
        }

        using (response)
        {
            string text = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
            if (response.IsSuccessStatusCode)
            {
                return text.Length == 0 ? default : JsonDocument.Parse(text).RootElement.Clone();
            }

            string error = ErrorText(text) ?? $"{(int)response.StatusCode} {response.ReasonPhrase}";
            throw response.StatusCode switch
            {
                // A key that works but may not do this (a read key from --api-key-file): the gateway says which scope it needs.
                HttpStatusCode.Forbidden when ErrorText(text) is not null => new CliException(ExitCodes.Unreachable, $"the gateway at {BaseAddress} refused the API key from {KeyFile}: {error}"),
                HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden => new CliException(ExitCodes.Unreachable,
                    $"the gateway at {BaseAddress} refused the API key from {KeyFile}: the gateway writes a new one there when it starts and its key is unknown or revoked. "
                    + "Is the file this gateway's (--config, --api-key-file)? Restarting the gateway rewrites it."),
                HttpStatusCode.NotFound or HttpStatusCode.Conflict or HttpStatusCode.BadRequest or HttpStatusCode.UnprocessableEntity => new CliException(ExitCodes.Failed, error),
                _ => new CliException(ExitCodes.Failed, $"the gateway answered {(int)response.StatusCode} to {method} /api/v1/{path}: {error}. Its log says more: journalctl -u edgemail-gateway"),
            };
        }
    }

    private static string? ErrorText(string body)
    {
        try
        {
            using var doc = JsonDocument.Parse(body);
            return doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("error", out var e) && e.ValueKind == JsonValueKind.String ? e.GetString() : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private static string Innermost(Exception ex)
    {
        while (ex.InnerException is not null)
        {
            ex = ex.InnerException;
        }

        return ex.Message;
    }

    private static string? ReadKey(string file, bool required)
    {
        try
        {
            string key = File.ReadAllText(file).Trim();
            if (key.Length > 0)
            {
                return key;
            }

            if (required)
            {
                throw new CliException(ExitCodes.Unreachable, $"the API key file {file} is empty: restart the gateway to write it again, or give --api-key-file");
            }
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException && required)
        {
            throw new CliException(ExitCodes.Unreachable, $"no API key at {file}: the gateway writes it at its first start with the console on. "
                + "Is DataDirectory right (--config FILE; the appliance's is /etc/edgemail/edgemail.json)? Or give --api-key-file");
        }
        catch (UnauthorizedAccessException) when (required)
        {
            throw new CliException(ExitCodes.Unreachable, $"cannot read the API key {file} (mode 600, the gateway's user): run as root or as that user, e.g. sudo edgemail ...");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException && !required)
        {
            // Not needed for this request.
        }

        return null;
    }

    // The certificate the console serves, as ConsoleServer chooses it: Console:CertificatePath, else the gateway's
    // (Mqtt:CertificatePath), else the self-signed one generated in the data directory.
    private static (IReadOnlyList<X509Certificate2> Pins, string? Source) Pins(GatewayOptions gateway, ConsoleOptions console)
    {
        var (path, password) = console.CertificatePath.Length > 0 ? (console.CertificatePath, console.CertificatePassword)
            : gateway.Mqtt.CertificatePath.Length > 0 ? (gateway.Mqtt.CertificatePath, gateway.Mqtt.CertificatePassword)
            : (Path.Combine(gateway.DataPath(), TlsCertificates.GeneratedFileName), string.Empty);
        try
        {
            return ([X509CertificateLoader.LoadPkcs12FromFile(path, password)], "pinned from " + path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or CryptographicException)
        {
            return ([], null);
        }
    }
}
