using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace EdgeMail.Gateway.Composition;

/// <summary>
/// Deterministic Message-IDs: the same (device, alert id) always gives the same id, so a retransmitted alert
/// cannot make a second distinct mail and a cleared alert can name its raised twin in In-Reply-To.
/// </summary>
/// <remarks>
/// <para>
/// Distinct inputs never share an id (the spool keys messages by it, so a shared id would silently drop a mail):
/// every id is <c>labels.kind@host</c>, and the labels are an injective encoding of the inputs. The kind label
/// (<c>alert</c>, <c>digest</c>, <c>notice</c>) keeps the families apart. Inside a label, <c>[A-Za-z0-9-]</c> stand
/// for themselves and every other UTF-16 unit is escaped as <c>_XX</c> (units up to U+00FF) or <c>_uXXXX</c>, in
/// upper-case hex. So <c>('site.pump', '7')</c> is <c>site_2Epump.7.alert</c> and <c>('site', 'pump.7')</c> is
/// <c>site.pump.7.alert</c>: the device (and the code of a digest) is always exactly one label, the alert id is the
/// rest, in which a lone dot between two other characters stays readable.
/// </para>
/// <para>
/// Ids longer than <see cref="MaxReadableLength"/> would not fit a file name (the local mailbox names files after
/// them) or read well; they keep the device label and replace the rest with <c>_h</c> and 32 hex digits of the
/// SHA-256 of the readable form. An escape never puts a lower-case letter after <c>_</c>, so a hashed label cannot
/// be mistaken for an escaped one (an alert id that itself looks like <c>_h…</c> is escaped to <c>_5Fh…</c>).
/// </para>
/// <para>
/// Every character is from <c>[A-Za-z0-9._-]</c>: a valid RFC 5322 dot-atom, and unchanged by
/// <see cref="Relay.LocalMailbox.FileName"/>, so distinct ids are also distinct files.
/// </para>
/// </remarks>
public static class MessageIds
{
    /// <summary>Longest local part written readably; longer ones are hashed.</summary>
    public const int MaxReadableLength = 100;

    // A device label longer than this is left out of a hashed id, which then stays below MaxReadableLength.
    private const int MaxKeptLabel = 60;

    /// <summary>The Message-ID (without angle brackets) of the mail for one alert.</summary>
    /// <param name="device">Device id.</param>
    /// <param name="alertId">Alert id.</param>
    /// <param name="host">Gateway host name.</param>
    /// <returns>An RFC 5322 msg-id body.</returns>
    public static string ForAlert(string device, string alertId, string host)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(alertId);
        ArgumentNullException.ThrowIfNull(host);
        return Build(Label(device), [], Tail(alertId), "alert", host);
    }

    /// <summary>The Message-ID of a storm digest starting with the given held alert.</summary>
    /// <param name="device">Device id.</param>
    /// <param name="code">Alert code.</param>
    /// <param name="firstAlertId">First held alert in the digest.</param>
    /// <param name="host">Gateway host name.</param>
    /// <returns>An RFC 5322 msg-id body.</returns>
    public static string ForDigest(string device, string code, string firstAlertId, string host)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(code);
        ArgumentNullException.ThrowIfNull(firstAlertId);
        ArgumentNullException.ThrowIfNull(host);
        return Build(Label(device), [Label(code)], Tail(firstAlertId), "digest", host);
    }

    /// <summary>
    /// The Message-ID of the failure notice sent after attempt <paramref name="attempt"/> of a message:
    /// <c>{failed}.n{attempt}.notice@{host}</c>, where <c>{failed}</c> is the failed id's local part when its domain
    /// is <paramref name="host"/> (our own mail), else <c>_f.</c> and the whole failed id, both encoded like an
    /// alert id. Distinct (failed id, attempt) pairs give distinct ids.
    /// </summary>
    /// <param name="failedMessageId">The failed message's Message-ID, without angle brackets.</param>
    /// <param name="attempt">The attempt the notice reports (any integer; the delivery worker's attempt count).</param>
    /// <param name="host">Gateway host name.</param>
    /// <returns>An RFC 5322 msg-id body.</returns>
    public static string ForNotice(string failedMessageId, int attempt, string host)
    {
        ArgumentNullException.ThrowIfNull(failedMessageId);
        ArgumentNullException.ThrowIfNull(host);
        int at = failedMessageId.LastIndexOf('@');
        string failed = at >= 0 && string.Equals(failedMessageId[(at + 1)..], host, StringComparison.Ordinal)
            ? Tail(failedMessageId[..at])
            : "_f." + Tail(failedMessageId);
        string local = failed.Length <= MaxReadableLength ? failed : Hash(failed);
        return $"{local}.n{attempt.ToString(CultureInfo.InvariantCulture)}.notice@{host}";
    }

    private static string Build(string device, string[] middle, string tail, string kind, string host)
    {
        var readable = new StringBuilder(device);
        foreach (string label in middle)
        {
            readable.Append('.').Append(label);
        }

        readable.Append('.').Append(tail);
        string local = readable.Length <= MaxReadableLength
            ? readable.ToString()
            : device.Length <= MaxKeptLabel ? device + "." + Hash(readable.ToString()) : Hash(readable.ToString());
        return $"{local}.{kind}@{host}";
    }

    private static string Hash(string readable) =>
        "_h" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(readable)).AsSpan(0, 16));

    // One label: no dots at all, so it ends where the next label begins.
    private static string Label(string s) => Encode(s, keepDots: false);

    // The last variable part: may hold dots, as long as the result stays a dot-atom (none first, last or doubled).
    private static string Tail(string s) => Encode(s, keepDots: true);

    private static string Encode(string s, bool keepDots)
    {
        if (s.Length == 0)
        {
            return "_"; // No escape is a bare underscore, so this stands only for the empty string.
        }

        var sb = new StringBuilder(s.Length + 8);
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (char.IsAsciiLetterOrDigit(c) || c == '-'
                || (keepDots && c == '.' && i > 0 && i < s.Length - 1 && s[i - 1] != '.' && s[i + 1] != '.'))
            {
                sb.Append(c);
            }
            else if (c <= 0xFF)
            {
                sb.Append('_').Append(((int)c).ToString("X2", CultureInfo.InvariantCulture));
            }
            else
            {
                sb.Append("_u").Append(((int)c).ToString("X4", CultureInfo.InvariantCulture));
            }
        }

        return sb.ToString();
    }
}
