using System.Net;
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
    /// <param name="logger">Where a fallback to plain text is told; none when null.</param>
    public DirectMxRelay(RelayOptions relay, string heloName, ILogger<DirectMxRelay>? logger = null)
    {
        _relay = relay ?? throw new ArgumentNullException(nameof(relay));
        _logger = logger ?? (ILogger)NullLogger.Instance;
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

    /// <summary>The hosts to try for a domain, best first: MX targets, or the domain itself when it has none.</summary>
    /// <param name="domain">Recipient domain.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>
    /// Hosts, or an error text when the lookup failed (transient), or the domain does not exist or publishes a null MX
    /// (permanent; <c>NullMx</c> tells the latter).
    /// </returns>
    public async Task<(IReadOnlyList<string> Hosts, string? Error, bool Permanent, bool NullMx)> ExchangersAsync(string domain, CancellationToken cancellationToken)
    {
        IDnsQueryResponse response;
        try
        {
            response = await _dns.QueryAsync(domain, QueryType.MX, cancellationToken: cancellationToken).ConfigureAwait(false);
        }
        catch (DnsResponseException ex)
        {
            return ([], $"MX lookup for {domain} failed: {ex.Message}", false, false);
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
    public async Task<IReadOnlyList<string>> AddressesAsync(string host, CancellationToken cancellationToken)
    {
        if (IPAddress.TryParse(host, out var literal))
        {
            return [literal.ToString()];
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
            catch (DnsResponseException)
            {
                break;
            }
        }

        return addresses;
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<RecipientResult>> SendAsync(QueuedMessage message, CancellationToken cancellationToken) =>
        SendAsync(message, null, cancellationToken);

    /// <inheritdoc />
    public async Task<IReadOnlyList<RecipientResult>> SendAsync(QueuedMessage message, PartSent? partSent, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(message);
        var results = new List<RecipientResult>();
        var groups = message.PendingRecipients.GroupBy(r => r[(r.LastIndexOf('@') + 1)..].ToLowerInvariant()).ToList();
        var attempt = new MxAttempt(this, message, partSent);
        for (int g = 0; g < groups.Count; g++)
        {
            var group = groups[g];
            var (hosts, error, permanent, nullMx) = await ExchangersAsync(group.Key, cancellationToken).ConfigureAwait(false);
            if (error is not null)
            {
                // NXDOMAIN and a null MX are DNS's answer about these recipients; a lookup that failed leaves the
                // relay without a next hop, as an unreachable exchanger does.
                string status = nullMx ? "556 5.1.10 " : permanent ? "550 5.1.2 " : "451 4.4.3 ";
                results.AddRange(group.Select(r => new RecipientResult(r, permanent ? RecipientOutcome.Failed : RecipientOutcome.Deferred, status + error) { RelayDown = !permanent }));
                continue;
            }

            var part = message with { PendingRecipients = group.ToList() };
            IReadOnlyList<RecipientResult>? sent = null;
            IReadOnlyList<RecipientResult>? refusedForNow = null;
            string last = "no exchanger reachable";
            int budget = AddressesPerAttempt;
            try
            {
                foreach (string host in hosts)
                {
                    // The exchanger's address comes from the same resolver as the MX record (Relay:DnsServer), not the OS.
                    var addresses = await AddressesAsync(host, cancellationToken).ConfigureAwait(false);
                    if (addresses.Count == 0)
                    {
                        last = $"exchanger {host} has no address";
                        continue;
                    }

                    // Each address in turn, as MTAs do: an exchanger whose first address is down is reached at its next.
                    foreach (string address in addresses.Take(budget))
                    {
                        budget--;

                        // Opportunistic TLS (RFC 7435), as MTAs do between MX hosts: encrypt when offered, without requiring a
                        // certificate that names the host. When STARTTLS fails, the same address again in plain text
                        // (PlainTextAfter); that second connection does not count against the budget, as in Postfix.
                        var security = SecureSocketOptions.StartTlsWhenAvailable;
                        RecordingSmtpClient client;
                        while (true)
                        {
                            if (await attempt.MayGoOnAsync(cancellationToken).ConfigureAwait(false) is { } stop)
                            {
                                results.AddRange(PartedAttempt.NotAttempted(groups.Skip(g).SelectMany(rest => rest), stop));
                                return results;
                            }

                            client = SmtpRelay.NewClient();
                            client.ServerCertificateValidationCallback = (_, _, _, _) => true;
                            try
                            {
                                sent = await _smtp.SendOnceAsync(client, part, address, _relay.MxPort, security, authenticate: false, cancellationToken).ConfigureAwait(false);
                            }
                            catch
                            {
                                client.Dispose();
                                throw;
                            }

                            if (sent is null && security != SecureSocketOptions.None && client.TlsFailure is { } tls && PlainTextAfter(tls, message))
                            {
                                LogPlainText(host, address, tls.Error);
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

                    if (sent is not null || budget == 0)
                    {
                        break;
                    }
                }

                sent ??= refusedForNow ?? group.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, "451 4.4.1 " + last) { RelayDown = true }).ToList();
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
            finally
            {
                if (attempt.Exchanger is { } exchanger)
                {
                    attempt.Exchanger = null;
                    exchanger.Client.Dispose();
                }
            }
        }

        return results;
    }

    // Postfix's smtp client at smtp_tls_security_level = may (smtp_proto.c): a refused STARTTLS goes on in plain text at
    // once; after a failed handshake only a mail that has waited (PLAINTEXT_FALLBACK_OK_AFTER_STARTTLS_FAILURE:
    // minimal_backoff_time since it arrived) goes on in plain text, so a fresh mail tries the other exchangers, encrypted,
    // first. Direct MX has no password to protect and no policy requiring TLS; without this, mail to a domain whose
    // only exchanger's TLS is broken would be deferred until Relay:MaxAge and bounce.
    private static bool PlainTextAfter(TlsFailure failure, QueuedMessage message) => failure.Refused || message.Attempts > 0;

    [LoggerMessage(Level = LogLevel.Warning, Message = "STARTTLS with exchanger {Host} ({Address}) failed: {Error}; the mail goes to it in plain text")]
    private partial void LogPlainText(string host, string address, string error);

    /// <summary>A direct MX attempt: a domain's follow-up transactions go to the exchanger that took its first, on its connection.</summary>
    private sealed class MxAttempt(DirectMxRelay relay, QueuedMessage message, PartSent? partSent) : PartedAttempt(message, partSent)
    {
        /// <summary>The exchanger (its connection, name, address and how it was secured) that took the current domain's transaction.</summary>
        public (RecordingSmtpClient Client, string Host, string Address, SecureSocketOptions Security)? Exchanger { get; set; }

        protected override async Task<IReadOnlyList<RecipientResult>> FollowUpAsync(IReadOnlyList<string> recipients, CancellationToken cancellationToken)
        {
            var (client, host, address, security) = Exchanger!.Value;
            var part = Message with { PendingRecipients = recipients };

            // Connected again when the exchanger closed the session meanwhile (in plain text when that is how it took the
            // mail); no other exchanger is tried: this one has the other recipients' copies, and its limit is the reason
            // for this transaction.
            return await relay._smtp.SendOnceAsync(client, part, address, relay._relay.MxPort, security, authenticate: false, cancellationToken).ConfigureAwait(false)
                ?? [.. recipients.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, $"451 4.4.1 exchanger {host}: {client.LastError}") { RelayDown = true })];
        }
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync() => _smtp.DisposeAsync();
}
