namespace EdgeMail.Gateway.Spool;

/// <summary>Quarantined SMTP submissions on the PostgreSQL spool (see <see cref="ISpool.QuarantineAsync"/>, docs/spool.md).</summary>
public sealed partial class PostgresSpool
{
    private const string Quarantined = $"kind='{QuarantinedMail.Kind}' AND status='parked'";

    /// <inheritdoc />
    public Task<long?> QuarantineAsync(QuarantinedMail mail, string reason, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(mail);
        ArgumentNullException.ThrowIfNull(reason);

        // The same mail sent again to two instances at once: the unique Message-ID makes the second a duplicate.
        return WriteAsync<long?>(async (c, tx, ctx) =>
        {
            object? row = await ScalarAsync(c, tx, cancellationToken,
                """
                INSERT INTO messages(kind, device, message_id, envelope_from, mime, created_at, expires_at, next_attempt_at, status, reason, parked_at, submission)
                VALUES($1,$2,$3,$4,$5,$6,$6,$6,'parked',$7,$8,$9)
                ON CONFLICT (message_id) DO NOTHING
                RETURNING rowid
                """,
                QuarantinedMail.Kind, Text(mail.Device), Text(mail.MessageId), Text(mail.EnvelopeFrom), mail.Raw, mail.ReceivedAt.ToUnixTimeMilliseconds(),
                Truncate(Text(reason)!), ctx.NowMs, QuarantineFacts.Write(mail)).ConfigureAwait(false);
            if (row is not long rowId)
            {
                return null;
            }

            string[] recipients = mail.Recipients.Distinct(StringComparer.OrdinalIgnoreCase).Select(r => Text(r)!).ToArray();
            await ExecAsync(c, tx, cancellationToken, "INSERT INTO recipients(message, address, status) SELECT $1, a, 'pending' FROM unnest($2::text[]) a",
                rowId, recipients).ConfigureAwait(false);
            return rowId;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<QuarantinedMail?> QuarantinedAsync(long rowId, CancellationToken cancellationToken) =>
        ReadAsync<QuarantinedMail?>(async (c, tx) =>
        {
            var found = await ListAsync(c, tx, cancellationToken,
                r => (MessageId: r.GetString(0), Device: r.GetString(1), EnvelopeFrom: r.GetString(2), Facts: r.GetString(3), ReceivedAt: r.GetInt64(4), Raw: (byte[])r.GetValue(5)),
                $"SELECT message_id, device, envelope_from, submission, created_at, mime FROM messages WHERE rowid=$1 AND {Quarantined}", rowId).ConfigureAwait(false);
            if (found.Count == 0)
            {
                return null;
            }

            var m = found[0];
            var recipients = await ListAsync(c, tx, cancellationToken, r => r.GetString(0), "SELECT address FROM recipients WHERE message=$1 ORDER BY address", rowId)
                .ConfigureAwait(false);
            return QuarantineFacts.Read(m.Facts, m.MessageId, m.Device, m.EnvelopeFrom, recipients, FromMs(m.ReceivedAt), m.Raw);
        }, cancellationToken);

    /// <summary>
    /// The quarantined row is locked first, so that two instances releasing it at once, or a release and a cancel, end it
    /// once: the second finds it gone (or cancelled) and queues nothing.
    /// </summary>
    /// <inheritdoc />
    public Task<bool> SettleQuarantinedAsync(long rowId, NewMessage? relay, CancellationToken cancellationToken) =>
        WriteAsync(async (c, tx, ctx) =>
        {
            if (await ScalarAsync(c, tx, cancellationToken, $"SELECT 1 FROM messages WHERE rowid=$1 AND {Quarantined} FOR UPDATE", rowId).ConfigureAwait(false) is null)
            {
                return false;
            }

            await ExecAsync(c, tx, cancellationToken, "DELETE FROM recipients WHERE message=$1", rowId).ConfigureAwait(false);
            await ExecAsync(c, tx, cancellationToken, "DELETE FROM messages WHERE rowid=$1", rowId).ConfigureAwait(false);
            if (relay is not null)
            {
                await InsertMessageAsync(c, tx, relay, null, ctx, duplicateIsConflict: false).ConfigureAwait(false);
            }

            return true;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<bool> QuarantineAgainAsync(long rowId, string reason, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(reason);
        return WriteAsync(async (c, tx, ctx) => await ExecAsync(c, tx, cancellationToken,
            $"UPDATE messages SET reason=$1, parked_at=$2 WHERE rowid=$3 AND {Quarantined}", Truncate(Text(reason)!), ctx.NowMs, rowId).ConfigureAwait(false) > 0,
            cancellationToken);
    }
}
