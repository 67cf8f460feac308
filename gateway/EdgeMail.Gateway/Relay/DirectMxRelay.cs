using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using DnsClient;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Spool;
using MailKit.Security;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// Delivers straight to each recipient domain's mail exchangers (DnsClient MX lookup, lowest preference first;
/// a domain without MX records falls back to its own address records — the implicit MX of RFC 5321 §5.1; one with a
/// null MX, RFC 7505, takes no mail and its recipients fail at once).
/// Opportunistic STARTTLS, as Postfix's <c>smtp_tls_security_level = may</c>: an exchanger that refuses STARTTLS is
/// talked to in plain text at once; one whose handshake fails passes a mail's first attempt to the next address or
/// exchanger, and takes a mail that has been deferred before in plain text at once. An exchanger that cannot be reached,
/// refuses the session or answers every recipient with a 4xx passes the domain to the next address or exchanger. One
/// SMTP transaction per domain; results are per recipient, and the recipients a domain's exchanger accepted are handed
/// over for recording before the next domain is tried (if they cannot be, the domains not yet tried are deferred).
/// Before each connection but the first, the attempt asks whether it may go on.
/// Recipients the exchanger turned away with "452 too many recipients" in a transaction that delivered to others follow
/// at once in a further transaction to it, on the same connection, as the smarthost's do (<see cref="PartedAttempt.TakeAsync"/>).
/// A domain's lookup that fails is that domain's result alone (a name DNS cannot be asked about fails its recipients, a
/// reply that cannot be read defers them); an address literal (<c>[192.0.2.1]</c>, <c>[IPv6:2001:db8::1]</c>) is
/// delivered to at that address. The whole attempt ends at <c>Relay:AttemptTimeout</c>: the recipients not done by then
/// are deferred, the results it had stand. A domain whose exchangers could not be reached is left alone for a while,
/// its recipients deferred without a connection (<see cref="UnreachableDomains"/>), so that its messages do not hold the
/// delivery slots the mail to other domains needs.
/// </summary>
public sealed partial class DirectMxRelay : IMailTransport
{
    private readonly RelayOptions _relay;
    private readonly SmtpRelay _smtp;
    private readonly LookupClient _dns;
    private readonly ILogger _logger;

    // Addresses tried per domain in one attempt, across its exchangers (Postfix's smtp_mx_address_limit): an attempt
    // where each costs up to Relay:Timeout stays bounded however many exchangers and addresses a domain publishes.
    private const int AddressesPerAttempt = 5;

    /// <summary>Creates the relay.</summary>
    /// <param name="relay">Relay options (<c>MxPort</c>, <c>DnsServer</c>).</param>
    /// <param name="heloName">Name for EHLO.</param>
    /// <param name="logger">Where a fallback to plain text, and a domain found unreachable, are told; none when null.</param>
    /// <param name="clock">Clock of the domains' holds; the system's when null.</param>
    public DirectMxRelay(RelayOptions relay, string heloName, ILogger<DirectMxRelay>? logger = null, TimeProvider? clock = null)
    {
        _relay = relay ?? throw new ArgumentNullException(nameof(relay));
        _logger = logger ?? (ILogger)NullLogger.Instance;
        Unreachable = new UnreachableDomains(relay.EffectiveBackoff()[0], clock, _logger);
        _smtp = new SmtpRelay(relay, heloName);
        var options = relay.DnsServer.Length > 0
            ? new LookupClientOptions(new NameServer(IPEndPoint.Parse(relay.DnsServer)))
            : new LookupClientOptions();
        options.UseCache = true;
        options.Timeout = TimeSpan.FromSeconds(5);
        options.Retries = 1;
        options.ThrowDnsErrors = false;
        options.UseTcpFallback = true;
        _dns = new LookupClient(options);
    }

    /// <summary>The domains whose exchangers could not be reached lately, and whose mail is deferred without a connection.</summary>
    public UnreachableDomains Unreachable { get; }

    /// <summary>
    /// The hosts to try for a domain, best first: MX targets, or the domain itself when it has none; for an address
    /// literal (<c>[192.0.2.1]</c>, <c>[IPv6:2001:db8::1]</c>) that address, as RFC 5321 §5.1 asks.
    /// </summary>
    /// <param name="domain">Recipient domain.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>
    /// Hosts, or an error text when the lookup failed (transient), or the domain does not exist, cannot be a DNS name or
    /// publishes a null MX (permanent; <c>NullMx</c> tells the latter).
    /// </returns>
    public async Task<(IReadOnlyList<string> Hosts, string? Error, bool Permanent, bool NullMx)> ExchangersAsync(string domain, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(domain);
        if (AddressLiteral(domain) is { } literal)
        {
            return ([literal.ToString()], null, false, false);
        }

        if (DomainProblem(domain) is { } problem)
        {
            return ([], problem, true, false);
        }

        IDnsQueryResponse response;
        try
        {
            response = await _dns.QueryAsync(domain, QueryType.MX, cancellationToken: cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is DnsResponseException or DnsResponseParseException)
        {
            // DnsClient reports a cancelled query as a timeout: the attempt's deadline or a stop is no DNS failure.
            cancellationToken.ThrowIfCancellationRequested();
            return ([], $"MX lookup for {domain} failed: {DnsError(ex)}", false, false);
        }
        catch (ArgumentException ex)
        {
            // DnsClient cannot encode the name as a query (DomainProblem should have said so already).
            return ([], $"{domain} cannot be looked up in DNS: {ex.Message}", true, false);
        }

        if (response.Header.ResponseCode == DnsHeaderResponseCode.NotExistentDomain)
        {
            return ([], $"domain {domain} does not exist", true, false);
        }

        if (response.HasError)
        {
            return ([], $"MX lookup for {domain} failed: {response.ErrorMessage}", false, false);
        }

        var exchanges = response.Answers.MxRecords().OrderBy(m => m.Preference).Select(m => m.Exchange.Value.TrimEnd('.')).ToList();
        if (exchanges is [""])
        {
            // A null MX (RFC 7505): the domain says it takes no mail at all. Its address records, if any, are not an
            // implicit MX; nothing is to be tried, now or later.
            return ([], $"{domain} accepts no mail (null MX, RFC 7505)", true, true);
        }

        var hosts = exchanges.Where(h => h.Length > 0).ToList();
        return hosts.Count > 0 ? (hosts, null, false, false) : ([domain], null, false, false);
    }

    /// <summary>An IPv4 (else IPv6) address of <paramref name="host"/>, or null when it has none or the lookup failed.</summary>
    /// <param name="host">Host name or address literal.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The address as text, or null.</returns>
    public async Task<string?> AddressAsync(string host, CancellationToken cancellationToken) =>
        (await AddressesAsync(host, cancellationToken).ConfigureAwait(false)).FirstOrDefault();

    /// <summary>Every address of <paramref name="host"/>, IPv4 first, in the order DNS gave them; empty when it has none or the lookup failed.</summary>
    /// <param name="host">Host name or address literal.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The addresses as text.</returns>
    public async Task<IReadOnlyList<string>> AddressesAsync(string host, CancellationToken cancellationToken) =>
        (await LookUpAddressesAsync(host, cancellationToken).ConfigureAwait(false)).Addresses;

    // The addresses, and why there are none when the lookup failed rather than found none.
    private async Task<(IReadOnlyList<string> Addresses, string? Error)> LookUpAddressesAsync(string host, CancellationToken cancellationToken)
    {
        if (IPAddress.TryParse(host, out var literal))
        {
            return ([literal.ToString()], null);
        }

        var addresses = new List<string>();
        foreach (var type in new[] { QueryType.A, QueryType.AAAA })
        {
            try
            {
                var response = await _dns.QueryAsync(host, type, cancellationToken: cancellationToken).ConfigureAwait(false);
                addresses.AddRange(type == QueryType.A
                    ? response.Answers.ARecords().Select(a => a.Address.ToString())
                    : response.Answers.AaaaRecords().Select(a => a.Address.ToString()));
            }
            catch (Exception ex) when (ex is DnsResponseException or DnsResponseParseException)
            {
                cancellationToken.ThrowIfCancellationRequested();
                return (addresses, $"{type} lookup for {host} failed: {DnsError(ex)}");
            }
            catch (ArgumentException ex)
            {
                // An MX target DNS returned that DnsClient cannot ask about in turn: this exchanger only.
                return (addresses, $"{host} cannot be looked up in DNS: {ex.Message}");
            }
        }

        return (addresses, null);
    }

    // DnsClient's text for a reply it could not parse runs over lines and ends in a base64 dump of the reply; a reply
    // (kept, shown, sent in a receipt) takes its first line.
    private static string DnsError(Exception ex) => ex is DnsResponseParseException
        ? "the DNS server's reply could not be read: " + ex.Message.Split('\n', 2)[0].TrimEnd('\r')
        : ex.Message;

    /// <summary>
    /// Why mail cannot be delivered to <paramref name="domain"/> (the part of an address after the <c>@</c>), or null when
    /// it can: a name DNS can be asked about (labels of 1 to 63 octets, 253 in all, internationalised names as their
    /// ASCII form) or an address literal of RFC 5321 §4.1.3 (<c>[192.0.2.1]</c>, <c>[IPv6:2001:db8::1]</c>).
    /// </summary>
    /// <param name="domain">The domain.</param>
    /// <returns>Null, or the reason, naming the domain.</returns>
    internal static string? DomainProblem(string domain)
    {
        if (domain.StartsWith('['))
        {
            return AddressLiteral(domain) is null
                ? $"{domain} is neither an IPv4 address literal ([192.0.2.1]) nor an IPv6 one ([IPv6:2001:db8::1])"
                : null;
        }

        string ascii = domain;
        if (!Ascii.IsValid(domain))
        {
            try
            {
                ascii = new IdnMapping().GetAscii(domain);
            }
            catch (ArgumentException)
            {
                return $"{domain} is not a valid internationalised domain name";
            }
        }

        // A final dot (the root) is how DNS writes a name in full, and what DnsClient adds itself.
        if (ascii.EndsWith('.') && ascii.Length > 1)
        {
            ascii = ascii[..^1];
        }

        string[] labels = ascii.Split('.');
        for (int i = 0; i < labels.Length; i++)
        {
            if (labels[i].Length == 0)
            {
                return $"{domain} has an empty label (a leading or doubled dot)";
            }

            if (labels[i].Length > 63)
            {
                return $"label {i + 1} of {domain} is {labels[i].Length} characters long, more than the 63 a DNS label may have";
            }
        }

        if (ascii.Length > 253)
        {
            return $"{domain} is {ascii.Length} characters long, more than the 253 a DNS name may have";
        }

        try
        {
            // What the MX lookup will do with it: any name it refuses is refused here, in its words.
            _ = DnsString.Parse(ascii);
            return null;
        }
        catch (ArgumentException ex)
        {
            return $"{domain} cannot be looked up in DNS: {ex.Message}";
        }
    }

    /// <summary>The address of an address literal (<c>[192.0.2.1]</c>, <c>[IPv6:2001:db8::1]</c>); null when <paramref name="domain"/> is none.</summary>
    /// <param name="domain">The part of an address after the <c>@</c>.</param>
    /// <returns>The address, or null.</returns>
    internal static IPAddress? AddressLiteral(string domain)
    {
        if (domain.Length < 3 || domain[0] != '[' || domain[^1] != ']')
        {
            return null;
        }

        var inner = domain.AsSpan(1, domain.Length - 2);
        if (inner.StartsWith("IPv6:", StringComparison.OrdinalIgnoreCase))
        {
            // Without a zone (fe80::1%eth0): RFC 5321's IPv6-addr has none, and it would name an interface of this machine.
            var v6 = inner[5..];
            return v6.IndexOf('%') < 0 && IPAddress.TryParse(v6, out var address) && address.AddressFamily == AddressFamily.InterNetworkV6 ? address : null;
        }

        // RFC 5321's IPv4-address-literal is four decimal numbers: IPAddress.TryParse would also take 127.1 and 0x7f.0.0.1.
        int parts = 0;
        foreach (var range in inner.Split('.'))
        {
            var part = inner[range];
            if (++parts > 4 || part.Length is < 1 or > 3 || !int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out int value) || value > 255)
            {
                return null;
            }
        }

        return parts == 4 ? IPAddress.Parse(inner) : null;
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<RecipientResult>> SendAsync(QueuedMessage message, CancellationToken cancellationToken) =>
        SendAsync(message, null, cancellationToken);

    /// <inheritdoc />
    public async Task<IReadOnlyList<RecipientResult>> SendAsync(QueuedMessage message, PartSent? partSent, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(message);
        var results = new List<RecipientResult>();
        var groups = message.PendingRecipients.GroupBy(Domain).ToList();

        // The attempt's deadline bounds its DNS lookups and SMTP sessions; the hand-overs to the spool (partSent) keep the
        // caller's token: one cut short would leave recipients that have the mail neither recorded nor known not to be.
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(_relay.EffectiveAttemptTimeout());
        var attempt = new MxAttempt(this, message, partSent, deadline.Token);
        string doing = string.Empty;
        try
        {
            for (int g = 0; g < groups.Count; g++)
            {
                var group = groups[g];
                var pass = Unreachable.Enter(group.Key);
                if (pass.NotTried is { } notTried)
                {
                    results.AddRange(Deferred(group, notTried, notTried: true));
                    continue;
                }

                // Whether an exchanger of the domain gave a session, and how many connections were made to find out.
                bool reached = false;
                int connections = 0;
                bool judged = false;
                string? stopped = null;
                IReadOnlyList<RecipientResult>? sent = null;
                IReadOnlyList<RecipientResult>? refusedForNow = null;
                string last = "no exchanger reachable";
                int budget = AddressesPerAttempt;
                try
                {
                    doing = $"looking up the exchangers of {group.Key}";
                    var (hosts, error, permanent, nullMx) = await ExchangersAsync(group.Key, deadline.Token).ConfigureAwait(false);
                    if (error is not null)
                    {
                        // NXDOMAIN, a null MX and a name DNS cannot be asked about are about these recipients; a lookup that
                        // failed (no answer, one that could not be read) leaves the relay without a next hop, as an
                        // unreachable exchanger does. Either way the other domains go on.
                        string status = nullMx ? "556 5.1.10 " : permanent ? "550 5.1.2 " : "451 4.4.3 ";
                        results.AddRange(group.Select(r => new RecipientResult(r, permanent ? RecipientOutcome.Failed : RecipientOutcome.Deferred, status + error) { RelayDown = !permanent }));
                        continue;
                    }

                    var part = message with { PendingRecipients = group.ToList() };
                    foreach (string host in hosts)
                    {
                        // The exchanger's address comes from the same resolver as the MX record (Relay:DnsServer), not the OS.
                        doing = $"looking up the address of exchanger {host}";
                        var (addresses, lookupError) = await LookUpAddressesAsync(host, deadline.Token).ConfigureAwait(false);
                        if (addresses.Count == 0)
                        {
                            last = lookupError is null ? $"exchanger {host} has no address" : $"exchanger {host}: {lookupError}";
                            continue;
                        }

                        // Each address in turn, as MTAs do: an exchanger whose first address is down is reached at its next.
                        foreach (string address in addresses.Take(budget))
                        {
                            if (!reached && Unreachable.FoundUnreachableSince(pass) is { } since)
                            {
                                // Another attempt has just tried these exchangers and reached none.
                                stopped = since;
                                break;
                            }

                            budget--;

                            // Opportunistic TLS (RFC 7435), as MTAs do between MX hosts: encrypt when offered, without requiring a
                            // certificate that names the host. When STARTTLS fails, the same address again in plain text
                            // (PlainTextAfter); that second connection does not count against the budget, as in Postfix.
                            var security = SecureSocketOptions.StartTlsWhenAvailable;
                            RecordingSmtpClient client;

                            // Someone answers there (a refused greeting, a session that failed later or that the attempt's
                            // deadline cut, a failed STARTTLS too): whatever the mail's fate, the domain can be reached,
                            // and a hold on it ends.
                            void Greeted()
                            {
                                if (!reached && client.Greeted)
                                {
                                    reached = true;
                                    Unreachable.Reached(pass);
                                }
                            }
                            while (true)
                            {
                                if (await attempt.MayGoOnAsync(cancellationToken).ConfigureAwait(false) is { } stop)
                                {
                                    results.AddRange(PartedAttempt.NotAttempted(groups.Skip(g).SelectMany(rest => rest), stop));
                                    return results;
                                }

                                doing = $"at exchanger {host} ({address})";
                                client = SmtpRelay.NewClient();
                                client.ServerCertificateValidationCallback = (_, _, _, _) => true;
                                try
                                {
                                    connections++;
                                    sent = await _smtp.SendOnceAsync(client, part, address, _relay.MxPort, security, authenticate: false, deadline.Token).ConfigureAwait(false);
                                }
                                catch
                                {
                                    // Here, not in a finally: the deadline's catch below decides by its filter, which runs
                                    // before any finally on the way out.
                                    Greeted();
                                    client.Dispose();
                                    throw;
                                }

                                Greeted();

                                if (sent is null && security != SecureSocketOptions.None && client.TlsFailure is { } tls && PlainTextAfter(tls, message))
                                {
                                    LogPlainText(host, address, RemoteReply.Clean(tls.Error));
                                    client.Dispose();
                                    security = SecureSocketOptions.None;
                                    continue;
                                }

                                break;
                            }

                            if (sent is not null && !sent.All(r => r.Outcome == RecipientOutcome.Deferred))
                            {
                                // This exchanger has the domain's mail: recipients it turned away as too many follow on its connection.
                                attempt.Exchanger = (client, host, address, security);
                                break;
                            }

                            await SmtpRelay.SafeDisconnectAsync(client, quit: true).ConfigureAwait(false);
                            client.Dispose();
                            if (sent is not null)
                            {
                                // Every recipient turned away for now (MAIL FROM refused with a 4xx, each RCPT greylisted): nobody
                                // has the mail, so the next address or exchanger may take it, as MTAs try it (RFC 5321 5.1). With
                                // none that does, these replies say more than "unreachable".
                                refusedForNow = sent;
                                sent = null;
                                continue;
                            }

                            // Unreachable, or it refused the session (greeting, EHLO), or its TLS handshake failed on the mail's
                            // first attempt: the next address or exchanger may take it.
                            last = client.TlsFailure is { Refused: false } handshake
                                ? $"exchanger {host}: {handshake.Error} (the next attempt goes on in plain text)"
                                : $"exchanger {host}: {client.LastError}";
                        }

                        if (sent is not null || budget == 0 || stopped is not null)
                        {
                            break;
                        }
                    }

                    if (!reached && stopped is null && connections > 0)
                    {
                        Unreachable.Unreachable(pass, last);
                        judged = true;
                    }

                    sent ??= refusedForNow ?? (stopped is not null ? Deferred(group, stopped, notTried: connections == 0) : Deferred(group, "451 4.4.1 " + last));
                    string? ended = await attempt.TakeAsync(sent, g < groups.Count - 1, results, cancellationToken).ConfigureAwait(false);

                    // The exchanger that took the domain's mail is left once its follow-ups are done, politely.
                    if (attempt.Exchanger is { } taken)
                    {
                        await SmtpRelay.SafeDisconnectAsync(taken.Client, quit: true).ConfigureAwait(false);
                    }

                    if (ended is not null)
                    {
                        results.AddRange(PartedAttempt.NotAttempted(groups.Skip(g + 1).SelectMany(rest => rest), ended));
                        break;
                    }
                }
                catch (OperationCanceledException) when (deadline.IsCancellationRequested && !cancellationToken.IsCancellationRequested
                    && !reached && stopped is null && connections > 1)
                {
                    // Relay:AttemptTimeout ran out while the attempt went through a domain's addresses, none of which had
                    // answered: a black-holed domain with more addresses than the attempt has time for is held too.
                    Unreachable.Unreachable(pass, last);
                    judged = true;
                    throw;
                }
                finally
                {
                    if (attempt.Exchanger is { } exchanger)
                    {
                        attempt.Exchanger = null;
                        exchanger.Client.Dispose();
                    }

                    if (!reached && !judged)
                    {
                        Unreachable.Abandon(pass);
                    }
                }
            }
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            // Relay:Timeout bounds each read and write, not an exchanger that drips a byte at a time, nor all of a
            // domain's exchangers and addresses, nor all domains: what the attempt has done stands, the rest waits for
            // the next attempt. A transaction cut short after its data went out may have been delivered: sent again
            // then, as after any timeout.
            results.AddRange(SmtpRelay.NotDone(message, results,
                $"451 4.4.2 the delivery attempt did not end within Relay:AttemptTimeout ({_relay.EffectiveAttemptTimeout():c}); it was cut short {doing}"));
        }

        return results;
    }

    private static string Domain(string recipient) => recipient[(recipient.LastIndexOf('@') + 1)..].ToLowerInvariant();

    private static List<RecipientResult> Deferred(IEnumerable<string> recipients, string reply, bool notTried = false) =>
        [.. recipients.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, reply) { RelayDown = !notTried, NotTried = notTried })];

    // Postfix's smtp client at smtp_tls_security_level = may (smtp_proto.c): a refused STARTTLS goes on in plain text at
    // once; after a failed handshake only a mail that has waited (PLAINTEXT_FALLBACK_OK_AFTER_STARTTLS_FAILURE:
    // minimal_backoff_time since it arrived) goes on in plain text, so a fresh mail tries the other exchangers, encrypted,
    // first. Direct MX has no password to protect and no policy requiring TLS; without this, mail to a domain whose
    // only exchanger's TLS is broken would be deferred until Relay:MaxAge and bounce.
    private static bool PlainTextAfter(TlsFailure failure, QueuedMessage message) => failure.Refused || message.Attempts > 0;

    [LoggerMessage(Level = LogLevel.Warning, Message = "STARTTLS with exchanger {Host} ({Address}) failed: {Error}; the mail goes to it in plain text")]
    private partial void LogPlainText(string host, string address, string error);

    /// <summary>
    /// A direct MX attempt: a domain's follow-up transactions go to the exchanger that took its first, on its connection,
    /// bounded by the attempt's deadline (linked to the caller's cancellation).
    /// </summary>
    private sealed class MxAttempt(DirectMxRelay relay, QueuedMessage message, PartSent? partSent, CancellationToken deadline) : PartedAttempt(message, partSent)
    {
        /// <summary>The exchanger (its connection, name, address and how it was secured) that took the current domain's transaction.</summary>
        public (RecordingSmtpClient Client, string Host, string Address, SecureSocketOptions Security)? Exchanger { get; set; }

        // The token passed in is the caller's, which the hand-overs take; a transaction takes the attempt's deadline.
        protected override async Task<IReadOnlyList<RecipientResult>> FollowUpAsync(IReadOnlyList<string> recipients, CancellationToken cancellationToken)
        {
            var (client, host, address, security) = Exchanger!.Value;
            var part = Message with { PendingRecipients = recipients };

            // Connected again when the exchanger closed the session meanwhile (in plain text when that is how it took the
            // mail); no other exchanger is tried: this one has the other recipients' copies, and its limit is the reason
            // for this transaction.
            return await relay._smtp.SendOnceAsync(client, part, address, relay._relay.MxPort, security, authenticate: false, deadline).ConfigureAwait(false)
                ?? [.. recipients.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, $"451 4.4.1 exchanger {host}: {client.LastError}") { RelayDown = true })];
        }
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync() => _smtp.DisposeAsync();
}
