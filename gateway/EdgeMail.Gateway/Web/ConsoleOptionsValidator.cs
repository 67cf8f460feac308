using System.Net;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Web;

/// <summary>
/// Checks <c>Console</c> at start, so a mistyped address or port stops the gateway with the key to fix (exit 2) instead
/// of an exception from Kestrel once the other listeners are already up.
/// </summary>
public sealed class ConsoleOptionsValidator : IValidateOptions<ConsoleOptions>
{
    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, ConsoleOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var errors = Check(options);
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    /// <summary>The problems in <paramref name="options"/>, one line per key: the key, the problem and the fix.</summary>
    /// <param name="options">The console options.</param>
    /// <returns>Empty when valid.</returns>
    public static List<string> Check(ConsoleOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var errors = new List<string>();
        if (!options.Enabled)
        {
            return errors;
        }

        if (!IPAddress.TryParse(options.BindAddress, out _))
        {
            errors.Add($"Console:BindAddress: '{options.BindAddress}' is not an IP address. Fix: use 127.0.0.1 (this machine only), or 0.0.0.0 for every interface (then served over TLS only).");
        }

        if (options.Port is < 0 or > 65535)
        {
            errors.Add($"Console:Port: {options.Port} is not a TCP port. Fix: use 8088, or 0 to let the OS choose.");
        }

        if (options.CertificatePath.Length > 0 && Security.TlsCertificates.Problem(options.CertificatePath, options.CertificatePassword) is { } problem)
        {
            errors.Add($"Console:CertificatePath: the TLS certificate '{options.CertificatePath}' {problem}. Fix: {Security.TlsCertificates.Fix("Console:CertificatePassword")} "
                + "(an empty Console:CertificatePath takes Mqtt:CertificatePath's).");
        }

        for (int i = 0; i < options.TrustedProxies.Count; i++)
        {
            string proxy = options.TrustedProxies[i];
            if (!IPNetwork.TryParse(proxy, out _) && !IPAddress.TryParse(proxy, out _))
            {
                errors.Add($"Console:TrustedProxies:{i}: '{proxy}' is neither an IP address nor a network. Fix: give the proxy's address or network, e.g. 127.0.0.1 or 10.0.0.0/8.");
            }
        }

        if (options.PublicUrl.Length > 0
            && !(Uri.TryCreate(options.PublicUrl, UriKind.Absolute, out var url) && (url.Scheme == Uri.UriSchemeHttps || url.Scheme == Uri.UriSchemeHttp)))
        {
            errors.Add($"Console:PublicUrl: '{options.PublicUrl}' is not an http(s) URL. Fix: give the address a browser uses, e.g. https://gw1.example.com:8088.");
        }

        return errors;
    }
}
