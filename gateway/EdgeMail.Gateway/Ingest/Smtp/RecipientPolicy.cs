using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Routing;
using MimeKit;

namespace EdgeMail.Gateway.Ingest.Smtp;

/// <summary>
/// Which envelope recipients the gateway accepts from a device (no I/O). Only its own people: a configured
/// user's address; <c>userid@</c>, <c>groupid@</c> or <c>alias@</c> one of the gateway's domains; the gateway's
/// own sender address and <c>postmaster@</c> any of its domains (RFC 5321 §4.5.1; the bare <c>&lt;postmaster&gt;</c>
/// arrives here with <c>Sender:Hostname</c> added), which go to the operator unless a user, group or alias of that
/// name is configured. Everything else — other domains, and every classic
/// relay trick (percent hack <c>a%b@gw</c>, bang paths <c>a!b@gw</c>, source routes, quoted or escaped local
/// parts, a second <c>@</c>, IP-literal domains, control characters) — is refused, so the gateway is never an
/// open relay.
/// </summary>
public sealed class RecipientPolicy
{
    /// <summary>The reserved mailbox every mail system must accept (RFC 5321 §4.5.1), case-insensitively.</summary>
    public const string Postmaster = "postmaster";

    private readonly GatewayOptions _options;
    private readonly SmtpIngestOptions _smtp;
    private readonly Router _router;
    private readonly HashSet<string> _domains = new(StringComparer.OrdinalIgnoreCase);
    private readonly Dictionary<string, string> _userByEmail = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>Creates the policy.</summary>
    /// <param name="options">Gateway options (users, groups, sender).</param>
    /// <param name="smtp">SMTP options (aliases, domains).</param>
    public RecipientPolicy(GatewayOptions options, SmtpIngestOptions smtp)
    {
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _smtp = smtp ?? throw new ArgumentNullException(nameof(smtp));
        _router = new Router(options);
        _domains.Add(options.Sender.Hostname);
        int at = options.Sender.Address.LastIndexOf('@');
        if (at > 0)
        {
            _domains.Add(options.Sender.Address[(at + 1)..]);
        }

        foreach (string d in smtp.Domains)
        {
            _domains.Add(d);
        }

        foreach (var (id, user) in options.Users)
        {
            _userByEmail.TryAdd(user.Email, id);
        }
    }

    /// <summary>Resolves one envelope recipient.</summary>
    /// <param name="user">Local part as the client sent it.</param>
    /// <param name="host">Domain as the client sent it.</param>
    /// <param name="mailboxes">The people it stands for (distinct).</param>
    /// <param name="reason">Why it is refused.</param>
    /// <returns>True when accepted.</returns>
    public bool TryResolve(string? user, string? host, out IReadOnlyList<MailboxAddress> mailboxes, out string reason)
    {
        mailboxes = [];
        user ??= string.Empty;
        host ??= string.Empty;
        if (!IsPlainLocalPart(user))
        {
            reason = "local part is not a plain name (no %, !, @, quotes, routes or control characters)";
            return false;
        }

        if (!IsPlainDomain(host))
        {
            reason = "domain is not a plain host name (no IP literals)";
            return false;
        }

        string address = user + "@" + host;
        var found = new List<MailboxAddress>();
        var seen = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        if (_userByEmail.TryGetValue(address, out string? userId))
        {
            Add(userId, found, seen, 0);
        }
        else if (string.Equals(address, _options.Sender.Address, StringComparison.OrdinalIgnoreCase))
        {
            AddOperator(found, seen);
        }
        else if (_smtp.Aliases.TryGetValue(address, out var fullAlias))
        {
            fullAlias.ForEach(t => Add(t, found, seen, 0));
        }
        else if (_domains.Contains(host))
        {
            if (_smtp.Aliases.TryGetValue(user, out var alias))
            {
                alias.ForEach(t => Add(t, found, seen, 0));
            }
            else if (_options.Users.ContainsKey(user) || _options.Groups.ContainsKey(user))
            {
                Add(user, found, seen, 0);
            }
            else if (string.Equals(user, Postmaster, StringComparison.OrdinalIgnoreCase))
            {
                AddOperator(found, seen);
            }
        }

        if (found.Count == 0)
        {
            reason = "not a user, group or alias of this gateway (relay access denied)";
            return false;
        }

        mailboxes = found;
        reason = string.Empty;
        return true;
    }

    // Where failure notices go too (DeliveryWorker): Sender:Operator, a user id or an address, or else Sender:Address.
    private void AddOperator(List<MailboxAddress> into, HashSet<string> seen) =>
        Add(_options.Sender.Operator.Length > 0 ? _options.Sender.Operator : _options.Sender.Address, into, seen, 0);

    private void Add(string target, List<MailboxAddress> into, HashSet<string> seen, int depth)
    {
        if (depth > 4)
        {
            return;
        }

        if (_options.Groups.TryGetValue(target, out var members))
        {
            foreach (string m in members)
            {
                Add(m, into, seen, depth + 1);
            }
        }
        else if (depth == 0 && _smtp.Aliases.TryGetValue(target, out var alias) && !_options.Users.ContainsKey(target))
        {
            foreach (string a in alias)
            {
                Add(a, into, seen, depth + 1);
            }
        }
        else if (_router.Resolve(target) is { } mailbox && mailbox.Address.IndexOf('@', StringComparison.Ordinal) > 0 && seen.Add(mailbox.Address))
        {
            into.Add(mailbox);
        }
    }

    /// <summary>A dot-atom local part of letters, digits and <c>. _ + -</c>, 1–64 characters.</summary>
    /// <param name="user">Local part.</param>
    /// <returns>True when plain.</returns>
    public static bool IsPlainLocalPart(string user)
    {
        ArgumentNullException.ThrowIfNull(user);
        if (user.Length is 0 or > 64 || user[0] == '.' || user[^1] == '.' || user.Contains("..", StringComparison.Ordinal))
        {
            return false;
        }

        foreach (char c in user)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '+' or '-'))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>A host name of letters, digits, dots and hyphens; no IP literal.</summary>
    /// <param name="host">Domain.</param>
    /// <returns>True when plain.</returns>
    public static bool IsPlainDomain(string host)
    {
        ArgumentNullException.ThrowIfNull(host);
        if (host.Length is 0 or > 253 || host[0] is '.' or '-' || host[^1] is '.' or '-')
        {
            return false;
        }

        foreach (char c in host)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '-'))
            {
                return false;
            }
        }

        return !host.Contains("..", StringComparison.Ordinal);
    }
}
