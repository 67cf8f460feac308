using System.Security.Cryptography;
using System.Text;

namespace EdgeMail.Gateway.Composition;

/// <summary>
/// Deterministic Message-IDs: the same (device, alert id) always gives the same id, so a retransmitted alert
/// cannot make a second distinct mail and a cleared alert can name its raised twin in In-Reply-To.
/// </summary>
public static class MessageIds
{
    /// <summary>The Message-ID (without angle brackets) of the mail for one alert.</summary>
    /// <param name="device">Device id.</param>
    /// <param name="alertId">Alert id.</param>
    /// <param name="host">Gateway host name.</param>
    /// <returns>An RFC 5322 msg-id body.</returns>
    public static string ForAlert(string device, string alertId, string host) => $"{Token(device, alertId)}.alert@{host}";

    /// <summary>The Message-ID of a storm digest starting with the given held alert.</summary>
    /// <param name="device">Device id.</param>
    /// <param name="code">Alert code.</param>
    /// <param name="firstAlertId">First held alert in the digest.</param>
    /// <param name="host">Gateway host name.</param>
    /// <returns>An RFC 5322 msg-id body.</returns>
    public static string ForDigest(string device, string code, string firstAlertId, string host) => $"{Token(device, code + "/" + firstAlertId)}.digest@{host}";

    /// <summary>The Message-ID of a failure notice about a message, for the attempt that failed.</summary>
    /// <param name="failedMessageId">The failed message's id.</param>
    /// <param name="attempt">The attempt.</param>
    /// <returns>An RFC 5322 msg-id body.</returns>
    public static string ForNotice(string failedMessageId, int attempt)
    {
        ArgumentNullException.ThrowIfNull(failedMessageId);
        int at = failedMessageId.LastIndexOf('@');
        return string.Concat(failedMessageId.AsSpan(0, at), ".notice", attempt.ToString(System.Globalization.CultureInfo.InvariantCulture), failedMessageId.AsSpan(at));
    }

    // Readable when both parts are plain atoms, else a hash; either way only atext and dots.
    private static string Token(string device, string id)
    {
        if (IsAtom(device) && IsAtom(id) && device.Length + id.Length < 120)
        {
            return $"{device}.{id}";
        }

        byte[] hash = SHA256.HashData(Encoding.UTF8.GetBytes(device + "\0" + id));
        return (IsAtom(device) ? device : "device") + ".h" + Convert.ToHexStringLower(hash.AsSpan(0, 16));
    }

    private static bool IsAtom(string s) =>
        s.Length > 0 && s[0] != '.' && s[^1] != '.' && !s.Contains("..", StringComparison.Ordinal)
        && s.All(c => c is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or (>= '0' and <= '9') or '-' or '_' or '.');
}
