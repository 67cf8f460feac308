using EdgeMail.Gateway.Spool;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// One attempt that sends a message in several SMTP transactions — direct MX one per recipient domain, a smarthost one
/// per <c>Relay:Limits:RecipientsPerMessage</c> recipients, and either one more for those a transaction turned away with
/// "452 too many recipients" (<see cref="TakeAsync"/>) — kept to the <see cref="PartSent"/> contract: before each
/// connection or transaction but the first it asks whether it may go on, and after each transaction but the last it
/// hands over the recipients that transaction delivered to. Either answer may end the attempt, its recipients not yet
/// tried deferred with the reply (<see cref="NotAttempted"/>). A transport derives its own to say how a follow-up
/// transaction is sent (<see cref="FollowUpAsync"/>): on the connection its last transaction used.
/// </summary>
/// <param name="message">The message being sent.</param>
/// <param name="partSent">The hand-over, or null: then the attempt always goes on.</param>
internal abstract class PartedAttempt(QueuedMessage message, PartSent? partSent)
{
    private bool _begun;

    /// <summary>The message being sent.</summary>
    protected QueuedMessage Message => message;

    /// <summary>
    /// Before each connection (direct MX) or transaction (smarthost): null when it may begin; otherwise the reply to defer
    /// the recipients not yet tried with. The first is not asked about.
    /// </summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Null, or the reply.</returns>
    public async Task<string?> MayGoOnAsync(CancellationToken cancellationToken)
    {
        // The last transaction (or the DNS lookups since) may have taken minutes, and the attempt may have to end before
        // the next one begins even when nothing was accepted: the mail was cancelled, or its claim on a shared spool was
        // lost, or ran out unrenewed, meanwhile.
        if (_begun && partSent is not null && await partSent(message, [], cancellationToken).ConfigureAwait(false) is { } stop)
        {
            return stop;
        }

        _begun = true;
        return null;
    }

    /// <summary>
    /// Takes a transaction's results into the attempt's. Recipients a server's limit per transaction turned away ("452 too
    /// many recipients", RFC 5321 §4.5.3.1.10) from a transaction that delivered to others follow at once, in a further
    /// transaction to the same server (<see cref="FollowUpAsync"/>), after those it delivered to are handed over and the
    /// attempt was asked whether it may go on; and so on until a transaction turns nobody away or delivers to nobody.
    /// </summary>
    /// <param name="sent">The transaction's results (a deferral per recipient when no server took it).</param>
    /// <param name="more">Whether another part of the attempt (a domain, a part of a split mail) comes after this one.</param>
    /// <param name="results">The attempt's results so far: every recipient of this part is added.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Null; or the reply that ends the attempt, with which the parts not yet tried are to be deferred.</returns>
    public async Task<string?> TakeAsync(IReadOnlyList<RecipientResult> sent, bool more, List<RecipientResult> results, CancellationToken cancellationToken)
    {
        while (true)
        {
            var again = TooManyRecipients(sent);
            results.AddRange(again.Count == 0 ? sent : Except(sent, again));
            if (again.Count == 0 && !more)
            {
                // The attempt's last transaction: its result goes with the attempt's at once.
                return null;
            }

            if (await TransactionDoneAsync(sent, cancellationToken).ConfigureAwait(false) is { } notRecorded)
            {
                results.AddRange(NotAttempted(again, notRecorded));
                return notRecorded;
            }

            if (again.Count == 0)
            {
                return null;
            }

            if (await MayGoOnAsync(cancellationToken).ConfigureAwait(false) is { } stop)
            {
                results.AddRange(NotAttempted(again, stop));
                return stop;
            }

            sent = await FollowUpAsync(again, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>A further transaction to the server of the last one, for recipients it turned away as too many.</summary>
    /// <param name="recipients">The recipients.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A result per recipient: a deferral each when the server could not be reached again.</returns>
    protected abstract Task<IReadOnlyList<RecipientResult>> FollowUpAsync(IReadOnlyList<string> recipients, CancellationToken cancellationToken);

    /// <summary>The results of recipients an attempt ended before trying.</summary>
    /// <param name="recipients">The recipients not yet tried.</param>
    /// <param name="reply">The reply that ended it.</param>
    /// <returns>A deferral per recipient.</returns>
    public static IEnumerable<RecipientResult> NotAttempted(IEnumerable<string> recipients, string reply) =>
        recipients.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, reply) { NotTried = true });

    /// <summary>Whether a reply to RCPT says the transaction has too many recipients: 452 (4.5.3, or those words), or the 552 older servers sent for it.</summary>
    /// <param name="reply">The reply, code first.</param>
    /// <returns>True when it does.</returns>
    public static bool IsTooManyRecipients(string reply) =>
        (reply.StartsWith("452 ", StringComparison.Ordinal) || reply.StartsWith("552 ", StringComparison.Ordinal))
        && (reply.AsSpan(4).StartsWith("4.5.3") || reply.AsSpan(4).StartsWith("5.5.3") || reply.Contains("too many recipients", StringComparison.OrdinalIgnoreCase));

    // A server's limit on recipients per transaction: RFC 5321 (4.5.3.1.10) has it answer the RCPTs past the limit with
    // 452 and the client send the rest in a new transaction, right away. Only when the transaction delivered to someone:
    // each such follow-up then has fewer recipients than the one before, so an attempt makes at most as many as the mail
    // has recipients, and a server that turns every recipient of one away (a 452 for want of storage, a limit per hour)
    // leaves them deferred on the Relay:Backoff schedule. Walked by index: a transaction with nobody turned away (the
    // usual one) costs no allocation.
    private static IReadOnlyList<string> TooManyRecipients(IReadOnlyList<RecipientResult> results)
    {
        bool delivered = false;
        bool turnedAway = false;
        for (int i = 0; i < results.Count; i++)
        {
            var r = results[i];
            delivered |= r.Outcome == RecipientOutcome.Sent;
            turnedAway |= r.Outcome == RecipientOutcome.Deferred && IsTooManyRecipients(r.Reply);
        }

        return delivered && turnedAway
            ? [.. results.Where(r => r.Outcome == RecipientOutcome.Deferred && IsTooManyRecipients(r.Reply)).Select(r => r.Address)]
            : [];
    }

    // Not inline: a lambda there would capture again, whose closure would then be allocated for every transaction.
    private static IEnumerable<RecipientResult> Except(IReadOnlyList<RecipientResult> results, IReadOnlyList<string> again) =>
        results.Where(r => !again.Contains(r.Address));

    // The next transaction may take minutes (an exchanger that greylists, a server that holds the data until
    // Relay:Timeout): what this one delivered is recorded first, or a crash, a spool that fails the attempt's result, or
    // another instance taking the mail over meanwhile would send it to them again. Not on record, their copy goes again
    // with the next attempt whatever happens now; going on would put the next transactions' copies at the same risk (or
    // send a mail the operator cancelled, or one another instance now holds and sends). Null when they are on record (or
    // there were none); otherwise the reply to defer the recipients not yet tried with.
    private async Task<string?> TransactionDoneAsync(IReadOnlyList<RecipientResult> results, CancellationToken cancellationToken)
    {
        if (partSent is not null && results.Where(r => r.Outcome == RecipientOutcome.Sent).ToList() is { Count: > 0 } accepted)
        {
            return await partSent(message, accepted, cancellationToken).ConfigureAwait(false);
        }

        return null;
    }
}
