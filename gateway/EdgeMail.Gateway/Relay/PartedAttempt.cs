using EdgeMail.Gateway.Spool;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// One attempt that sends a message in several SMTP transactions — direct MX one per recipient domain, a smarthost one
/// per <c>Relay:Limits:RecipientsPerMessage</c> recipients and one more for those a transaction turned away with "452
/// too many recipients" — kept to the <see cref="PartSent"/> contract: before each connection but the first it asks
/// whether it may go on, and after each transaction but the last it hands over the recipients that transaction
/// delivered to. Either answer may end the attempt, its recipients not yet tried deferred
/// with the reply (<see cref="NotAttempted"/>).
/// </summary>
/// <param name="message">The message being sent.</param>
/// <param name="partSent">The hand-over, or null: then the attempt always goes on.</param>
internal sealed class PartedAttempt(QueuedMessage message, PartSent? partSent)
{
    private bool _begun;

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
    /// After a transaction another one follows: hands over the recipients it delivered to. Null when they are on record
    /// (or there were none); otherwise the reply to defer the recipients not yet tried with.
    /// </summary>
    /// <param name="results">The transaction's results; null when no exchanger took the session.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Null, or the reply.</returns>
    public async Task<string?> TransactionDoneAsync(IReadOnlyList<RecipientResult>? results, CancellationToken cancellationToken)
    {
        // The next transaction may take minutes (an exchanger that greylists, a server that holds the data until
        // Relay:Timeout): what this one delivered is recorded first, or a crash, a spool that fails the attempt's result,
        // or another instance taking the mail over meanwhile would send it to them again. Not on record, their copy
        // goes again with the next attempt whatever happens now; going on would put the next transactions' copies at
        // the same risk (or send a mail the operator cancelled, or one another instance now holds and sends).
        if (partSent is not null && results?.Where(r => r.Outcome == RecipientOutcome.Sent).ToList() is { Count: > 0 } accepted)
        {
            return await partSent(message, accepted, cancellationToken).ConfigureAwait(false);
        }

        return null;
    }

    /// <summary>The results of recipients an attempt ended before trying.</summary>
    /// <param name="recipients">The recipients not yet tried.</param>
    /// <param name="reply">The reply that ended it.</param>
    /// <returns>A deferral per recipient.</returns>
    public static IEnumerable<RecipientResult> NotAttempted(IEnumerable<string> recipients, string reply) =>
        recipients.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, reply));
}
