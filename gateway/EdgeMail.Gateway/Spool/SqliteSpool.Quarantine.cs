namespace EdgeMail.Gateway.Spool;

/// <summary>Quarantined SMTP submissions on the SQLite spool (see <see cref="ISpool.QuarantineAsync"/>, docs/spool.md).</summary>
public sealed partial class SqliteSpool
{
    /// <inheritdoc />
    public Task<long?> QuarantineAsync(QuarantinedMail mail, string reason, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(mail);
        ArgumentNullException.ThrowIfNull(reason);
        return Enqueue<long?>((s, ctx) =>
        {
            if (s.Scalar("SELECT 1 FROM messages WHERE message_id=$p0", mail.MessageId) is not null)
            {
                return null;
            }

            s.Exec(
                """
                INSERT INTO messages(kind, device, message_id, envelope_from, mime, created_at, expires_at, next_attempt_at, status, reason, parked_at, submission)
                VALUES($p0,$p1,$p2,$p3,x'',$p4,$p4,$p4,'parked',$p5,$p6,$p7)
                """,
                QuarantinedMail.Kind, mail.Device, mail.MessageId, mail.EnvelopeFrom, mail.ReceivedAt.ToUnixTimeMilliseconds(), Truncate(reason), ctx.Now.ToUnixTimeMilliseconds(),
                QuarantineFacts.Write(mail));

            long rowId = SQLitePCL.raw.sqlite3_last_insert_rowid(_connection.Handle);
            s.Exec("INSERT INTO message_bodies(message, mime) VALUES($p0,$p1)", rowId, mail.Raw);
            foreach (string rcpt in mail.Recipients.Distinct(StringComparer.OrdinalIgnoreCase))
            {
                s.Exec("INSERT INTO recipients(message, address, status) VALUES($p0,$p1,'pending')", rowId, rcpt);
            }

            return rowId;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public Task<QuarantinedMail?> QuarantinedAsync(long rowId, CancellationToken cancellationToken) =>
        Read<QuarantinedMail?>((s, _) =>
        {
            string messageId, device, envelopeFrom, facts;
            long receivedAt;
            byte[] raw;
            using (var r = s.Query(
                $"""
                SELECT message_id, device, envelope_from, submission, created_at, (SELECT mime FROM message_bodies WHERE message=messages.rowid)
                FROM messages WHERE rowid=$p0 AND kind='{QuarantinedMail.Kind}' AND status='parked'
                """, rowId))
            {
                if (!r.Read())
                {
                    return null;
                }

                (messageId, device, envelopeFrom, facts, receivedAt, raw) = (r.GetString(0), r.GetString(1), r.GetString(2), r.GetString(3), r.GetInt64(4), (byte[])r.GetValue(5));
            }

            var recipients = new List<string>();
            using (var r = s.Query("SELECT address FROM recipients WHERE message=$p0 ORDER BY address", rowId))
            {
                while (r.Read())
                {
                    recipients.Add(r.GetString(0));
                }
            }

            return QuarantineFacts.Read(facts, messageId, device, envelopeFrom, recipients, FromMs(receivedAt), raw);
        }, cancellationToken);

    /// <inheritdoc />
    public Task<bool> SettleQuarantinedAsync(long rowId, NewMessage? relay, CancellationToken cancellationToken) =>
        Enqueue((s, ctx) =>
        {
            if (s.Scalar($"SELECT 1 FROM messages WHERE rowid=$p0 AND kind='{QuarantinedMail.Kind}' AND status='parked'", rowId) is null)
            {
                return false;
            }

            s.Exec("DELETE FROM recipients WHERE message=$p0", rowId);
            s.Exec("DELETE FROM message_bodies WHERE message=$p0", rowId);
            s.Exec("DELETE FROM messages WHERE rowid=$p0", rowId);
            if (relay is not null && s.Scalar("SELECT 1 FROM messages WHERE message_id=$p0", relay.MessageId) is null)
            {
                s.InsertMessage(relay, null, ctx);
            }

            return true;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<bool> QuarantineAgainAsync(long rowId, string reason, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(reason);
        return Enqueue((s, ctx) => s.Exec($"UPDATE messages SET reason=$p0, parked_at=$p1 WHERE rowid=$p2 AND kind='{QuarantinedMail.Kind}' AND status='parked'",
            Truncate(reason), ctx.Now.ToUnixTimeMilliseconds(), rowId) > 0, cancellationToken, isolate: false);
    }
}
