using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest;
using MimeKit;

namespace EdgeMail.Gateway.Routing;

/// <summary>The people an alert goes to and how it is written.</summary>
/// <param name="Recipients">Distinct mailboxes, in route order.</param>
/// <param name="Template">Template of the first matching route.</param>
/// <param name="Explanation">Which routes matched and whom each named (for the alert's journey).</param>
public sealed record RouteResult(IReadOnlyList<MailboxAddress> Recipients, string Template, string Explanation = "");

/// <summary>
/// Decides who is told about an alert (no I/O): every route whose device pattern, code pattern and minimum
/// severity match adds its recipients; user ids, group ids, <c>owners</c> (the device's owners) and literal
/// addresses are expanded to distinct mailboxes.
/// </summary>
public sealed class Router
{
    private readonly GatewayOptions _options;
    private readonly Devices.DeviceRegistry? _devices;

    /// <summary>Creates a router over validated options.</summary>
    /// <param name="options">The gateway's options.</param>
    /// <param name="devices">Devices (for <c>owners</c>); null to take them from the options only.</param>
    public Router(GatewayOptions options, Devices.DeviceRegistry? devices = null)
    {
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _devices = devices;
    }

    /// <summary>Routes an alert.</summary>
    /// <param name="deviceId">Sending device.</param>
    /// <param name="alert">The alert.</param>
    /// <returns>Recipients (possibly none) and the template.</returns>
    public RouteResult Route(string deviceId, Alert alert)
    {
        ArgumentNullException.ThrowIfNull(alert);
        var recipients = new List<MailboxAddress>();
        var seen = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        string? template = null;
        var matched = new List<string>();
        for (int i = 0; i < _options.Routes.Count; i++)
        {
            var route = _options.Routes[i];
            if (!Glob.IsMatch(route.Devices, deviceId) || !Glob.IsMatch(route.Codes, alert.Code)
                || !Severities.TryParse(route.MinSeverity, out var min) || alert.Severity < min)
            {
                continue;
            }

            template ??= route.Template;
            int before = recipients.Count;
            foreach (string to in route.To)
            {
                Expand(to, deviceId, recipients, seen, depth: 0);
            }

            matched.Add($"Routes:{i} (devices '{route.Devices}', codes '{route.Codes}', from {route.MinSeverity}) to {string.Join(", ", route.To)}: "
                + (recipients.Count > before ? string.Join(", ", recipients.Skip(before).Select(r => r.Address)) : "nobody new"));
        }

        return new RouteResult(recipients, template ?? "default", matched.Count > 0 ? string.Join("; ", matched) : "no route matched");
    }

    /// <summary>The mailbox of a user id or address (for the operator), or null.</summary>
    /// <param name="userOrAddress">User id or address.</param>
    /// <returns>The mailbox.</returns>
    public MailboxAddress? Resolve(string userOrAddress)
    {
        if (_options.Users.TryGetValue(userOrAddress, out var user))
        {
            return new MailboxAddress(user.Name, user.Email);
        }

        return MailboxAddress.TryParse(userOrAddress, out var address) ? address : null;
    }

    private void Expand(string to, string deviceId, List<MailboxAddress> into, HashSet<string> seen, int depth)
    {
        if (depth > 4)
        {
            return;
        }

        if (to == "owners")
        {
            var owners = _devices is not null ? _devices.Find(deviceId)?.Owners : _options.Devices.GetValueOrDefault(deviceId)?.Owners;
            if (owners is not null)
            {
                foreach (string owner in owners)
                {
                    Expand(owner, deviceId, into, seen, depth + 1);
                }
            }
        }
        else if (_options.Groups.TryGetValue(to, out var members))
        {
            foreach (string member in members)
            {
                Expand(member, deviceId, into, seen, depth + 1);
            }
        }
        else if (Resolve(to) is { } mailbox && seen.Add(mailbox.Address))
        {
            into.Add(mailbox);
        }
    }
}

/// <summary>Shell-style patterns with <c>*</c> (any run) and <c>?</c> (one character), case-sensitive.</summary>
public static class Glob
{
    /// <summary>Matches <paramref name="text"/> against <paramref name="pattern"/>.</summary>
    /// <param name="pattern">The pattern.</param>
    /// <param name="text">The text.</param>
    /// <returns>True on a match.</returns>
    public static bool IsMatch(string pattern, string text)
    {
        ArgumentNullException.ThrowIfNull(pattern);
        ArgumentNullException.ThrowIfNull(text);
        int p = 0, t = 0, star = -1, mark = 0;
        while (t < text.Length)
        {
            if (p < pattern.Length && (pattern[p] == '?' || pattern[p] == text[t]))
            {
                p++;
                t++;
            }
            else if (p < pattern.Length && pattern[p] == '*')
            {
                star = p++;
                mark = t;
            }
            else if (star >= 0)
            {
                p = star + 1;
                t = ++mark;
            }
            else
            {
                return false;
            }
        }

        while (p < pattern.Length && pattern[p] == '*')
        {
            p++;
        }

        return p == pattern.Length;
    }
}
