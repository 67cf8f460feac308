using Microsoft.Data.Sqlite;

namespace EdgeMail.Gateway.Spool;

/// <summary>The spool's schema, as numbered migrations (docs/spool.md describes each table).</summary>
internal static class SpoolSchema
{
    /// <summary>Migrations in order; index + 1 is the version each produces. Never edit one that has shipped; append.</summary>
    public static readonly IReadOnlyList<string> Migrations =
    [
        """
        CREATE TABLE alerts(
          rowid INTEGER PRIMARY KEY,
          device TEXT NOT NULL,
          alert_id TEXT NOT NULL,
          received_at INTEGER NOT NULL,
          peer TEXT,
          payload BLOB NOT NULL,
          status TEXT NOT NULL,
          reason TEXT,
          code TEXT,
          hold_until INTEGER,
          UNIQUE(device, alert_id));
        CREATE INDEX alerts_new ON alerts(status) WHERE status IN ('new', 'held');
        CREATE TABLE messages(
          rowid INTEGER PRIMARY KEY,
          kind TEXT NOT NULL,
          device TEXT,
          alert_rowid INTEGER REFERENCES alerts(rowid),
          alert_id TEXT,
          message_id TEXT NOT NULL UNIQUE,
          envelope_from TEXT NOT NULL,
          mime BLOB NOT NULL,
          created_at INTEGER NOT NULL,
          expires_at INTEGER NOT NULL,
          next_attempt_at INTEGER NOT NULL,
          attempts INTEGER NOT NULL DEFAULT 0,
          status TEXT NOT NULL,
          last_reply TEXT);
        CREATE INDEX messages_due ON messages(next_attempt_at) WHERE status = 'queued';
        CREATE TABLE recipients(
          message INTEGER NOT NULL REFERENCES messages(rowid),
          address TEXT NOT NULL,
          status TEXT NOT NULL,
          reply TEXT,
          PRIMARY KEY(message, address));
        CREATE TABLE device_status(
          device TEXT PRIMARY KEY,
          received_at INTEGER NOT NULL,
          payload BLOB NOT NULL);
        CREATE TABLE storm(
          device TEXT NOT NULL,
          code TEXT NOT NULL,
          last_mail_at INTEGER NOT NULL,
          last_raised_message_id TEXT,
          PRIMARY KEY(device, code));
        """,
        // 2: indexes the router's and storm worker's queries can use. SQLite does not see that status='new' implies
        // status IN ('new','held'), so the first partial index was never used and every look for new alerts scanned
        // the whole table (the cost grew with the spool's size).
        """
        CREATE INDEX alerts_status_new ON alerts(status) WHERE status = 'new';
        CREATE INDEX alerts_held_due ON alerts(hold_until) WHERE status = 'held';
        CREATE INDEX alerts_held_key ON alerts(device, code) WHERE status = 'held';
        DROP INDEX alerts_new;
        """,
        // 3: the protocol an alert came in with, for the mail's Received trace (RFC 3848 names for SMTP). Rows
        // from before it have NULL: they all came over MQTT.
        """
        ALTER TABLE alerts ADD COLUMN via TEXT;
        """,
        // 4: parking and retention. A parked alert or message keeps its reason (alerts.reason, messages.reason) and
        // when it was parked; messages record when they finished, so the housekeeper can prune by age; the indexes
        // serve pruning and the operator's list of parked items. Mail finished before this version counts as
        // finished when it was created.
        """
        ALTER TABLE alerts ADD COLUMN parked_at INTEGER;
        ALTER TABLE messages ADD COLUMN reason TEXT;
        ALTER TABLE messages ADD COLUMN parked_at INTEGER;
        ALTER TABLE messages ADD COLUMN finished_at INTEGER;
        UPDATE messages SET finished_at = created_at WHERE status IN ('sent', 'failed', 'partial');
        CREATE INDEX messages_finished ON messages(finished_at) WHERE finished_at IS NOT NULL;
        CREATE INDEX messages_alert ON messages(alert_rowid) WHERE alert_rowid IS NOT NULL;
        CREATE INDEX messages_parked ON messages(parked_at) WHERE status = 'parked';
        CREATE INDEX alerts_received ON alerts(received_at);
        CREATE INDEX alerts_parked ON alerts(parked_at) WHERE status = 'parked';
        CREATE INDEX storm_last_mail ON storm(last_mail_at);
        """,
        // 5: devices managed at run time (the operator's console and CLI): added ones, and changes to configured
        // ones (a NULL column keeps the configured value). Secrets are PBKDF2 hashes, never the secret itself.
        """
        CREATE TABLE devices(
          id TEXT PRIMARY KEY,
          secret TEXT,
          name TEXT,
          site TEXT,
          owners TEXT,
          disabled INTEGER NOT NULL DEFAULT 0,
          silent_after_ms INTEGER,
          updated_at INTEGER NOT NULL);
        """,
        // 6: what the operator's console shows. Each alert's severity (filter) and the routes that matched it (why it
        // went to whom); the digest a held repeat went out in; every delivery attempt with each recipient's reply; a
        // thinned history of heartbeats (at most one per device every 5 minutes); the console's admin password
        // hash and API key hashes.
        """
        ALTER TABLE alerts ADD COLUMN severity TEXT;
        ALTER TABLE alerts ADD COLUMN route TEXT;
        ALTER TABLE alerts ADD COLUMN digest_message TEXT;
        CREATE INDEX alerts_device_received ON alerts(device, received_at);
        CREATE TABLE attempts(
          message INTEGER NOT NULL REFERENCES messages(rowid),
          attempt INTEGER NOT NULL,
          at INTEGER NOT NULL,
          results TEXT NOT NULL,
          PRIMARY KEY(message, attempt));
        CREATE TABLE heartbeats(
          device TEXT NOT NULL,
          at INTEGER NOT NULL,
          payload BLOB NOT NULL,
          PRIMARY KEY(device, at));
        CREATE TABLE console_admin(
          id INTEGER PRIMARY KEY CHECK (id = 1),
          password_hash TEXT NOT NULL,
          updated_at INTEGER NOT NULL);
        CREATE TABLE api_keys(
          id TEXT PRIMARY KEY,
          name TEXT NOT NULL,
          hash TEXT NOT NULL,
          created_at INTEGER NOT NULL,
          last_used_at INTEGER,
          revoked_at INTEGER);
        """,
        // 7: final receipts (failed, relayed) kept until the device acknowledged them. The embedded broker's sessions
        // live in memory: a receipt given while the device was away did not outlive a gateway restart. One per
        // (device, alert, state); created_at bounds their age, the per-device cap is kept at insert.
        """
        CREATE TABLE receipts(
          rowid INTEGER PRIMARY KEY,
          device TEXT NOT NULL,
          alert_id TEXT NOT NULL,
          state TEXT NOT NULL,
          at INTEGER NOT NULL,
          detail TEXT NOT NULL,
          created_at INTEGER NOT NULL,
          UNIQUE(device, alert_id, state));
        CREATE INDEX receipts_created ON receipts(created_at);
        """,
        // 8: a mail's bytes in a table of their own. A messages row held its 1-3 KiB of MIME, so a leaf page held one
        // mail and recording a delivery result rewrote that whole page; the rows without it are ~300 bytes, so the
        // results of a commit share a few pages and the body is written once. New mail leaves messages.mime empty
        // (SQLite cannot drop a NOT NULL column without rebuilding the table). Mail from before stays where it is and
        // is read from there: copying every body at the upgrade would need the spool's mail twice over in free disk.
        """
        CREATE TABLE message_bodies(
          message INTEGER PRIMARY KEY REFERENCES messages(rowid),
          mime BLOB NOT NULL);
        """,
        // 9: the gateway's own silence alerts by device, so that a start finds each device's open silence without
        // reading every alert (4 s for a million; SilenceSql). Partial: no other alert writes to it.
        SilenceSql.CreateIndex,
        // 10: each API key's scope, 'read' (the API's GET requests, /metrics, /events) or 'admin' (everything). Keys
        // made before could do everything, and still may.
        """
        ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin';
        """,
        // 11: flap control. Whether a key's clears are held too (its repeats are, or its last digest had a clear in it),
        // and a held alert's state, so that a digest counts the raises and clears of a storm it lists only in part.
        // Held rows from before are all raises: only raises were held then.
        """
        ALTER TABLE storm ADD COLUMN hold_clears INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE alerts ADD COLUMN state TEXT;
        """,
        // 12: held SMTP submissions, parked messages of kind 'quarantined' (a device's mail whose handling failed, kept
        // as it came, handled again when released): the session facts handling needs that have no column of their own,
        // as JSON. NULL on every other message.
        """
        ALTER TABLE messages ADD COLUMN submission TEXT;
        """,
        // 13: the alerts a digest covers, by its Message-ID: its delivery result owes each of them a receipt, and a storm
        // puts thousands of one device's alerts in it (without the index: every alert of the device, in the writer).
        """
        CREATE INDEX alerts_digest ON alerts(digest_message) WHERE digest_message IS NOT NULL;
        """,
        // 14: whether a pair's incident is open (its last mail a raise no clear has followed), so that pruning keeps what
        // its clear threads onto. Rows from before with a raise's Message-ID and a last mail (not reset by a clear) are
        // counted open: a few closed ones are then kept longer, but no open one loses its thread at the upgrade.
        """
        ALTER TABLE storm ADD COLUMN incident_open INTEGER NOT NULL DEFAULT 0;
        UPDATE storm SET incident_open = 1 WHERE last_mail_at > 0 AND last_raised_message_id IS NOT NULL;
        """,
        // 15: the devices the silence watch watches and since when, so that a device configured again after a time away
        // has its whole silence limit from then, not from when it was last heard (SilenceSql).
        SilenceSql.CreateWatched,
    ];

    /// <summary>The version this build writes.</summary>
    public static int CurrentVersion => Migrations.Count;

    /// <summary>Brings the database up to <see cref="CurrentVersion"/>, one transaction per migration.</summary>
    /// <param name="connection">Open connection.</param>
    public static void Migrate(SqliteConnection connection)
    {
        Run(connection, "CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)");
        using var read = connection.CreateCommand();
        read.CommandText = "SELECT MAX(version) FROM schema_version";
        int version = read.ExecuteScalar() is long v ? (int)v : 0;
        if (version > CurrentVersion)
        {
            throw new SpoolException($"The spool has schema version {version} but this gateway knows only up to {CurrentVersion}. Run the newer gateway, or restore a backup.");
        }

        for (int next = version + 1; next <= CurrentVersion; next++)
        {
            Run(connection, "BEGIN IMMEDIATE");
            try
            {
                Run(connection, Migrations[next - 1]);
                Run(connection, $"INSERT INTO schema_version(version) VALUES({next})");
                Run(connection, "COMMIT");
            }
            catch
            {
                Run(connection, "ROLLBACK");
                throw;
            }
        }
    }

    private static void Run(SqliteConnection connection, string sql)
    {
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        command.ExecuteNonQuery();
    }
}
