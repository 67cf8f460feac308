using System.Text;
using EdgeMail.Gateway.Spool;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;

namespace EdgeMail.Gateway.Tests.Spool;

/// <summary>Migration 2 and the query plans it exists for: the router's and storm worker's reads must not scan the alerts table.</summary>
public sealed class SpoolSchemaTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));

    public SpoolSchemaTests() => Directory.CreateDirectory(_dir);

    private string DbPath => Path.Combine(_dir, "spool.db");

    public void Dispose()
    {
        SqliteConnection.ClearAllPools();
        Directory.Delete(_dir, recursive: true);
    }

    private SqliteConnection Connect()
    {
        var connection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = DbPath, Pooling = false }.ToString());
        connection.Open();
        return connection;
    }

    // A spool as a build that wrote schema `version` left it, holding `rows`.
    private void CreateAtVersion(int version, string rows)
    {
        using var connection = Connect();
        using var command = connection.CreateCommand();
        command.CommandText = "CREATE TABLE schema_version(version INTEGER NOT NULL);" + string.Join(";", SpoolSchema.Migrations.Take(version))
            + $";INSERT INTO schema_version VALUES({version});" + rows;
        command.ExecuteNonQuery();
    }

    private static string Plan(SqliteConnection connection, string sql)
    {
        using var command = connection.CreateCommand();
        command.CommandText = "EXPLAIN QUERY PLAN " + sql;
        using var reader = command.ExecuteReader();
        var rows = new List<string>();
        while (reader.Read())
        {
            rows.Add(reader.GetString(3));
        }

        return string.Join(" | ", rows);
    }

    [Theory]
    [InlineData("SELECT rowid, device, alert_id, received_at, peer, payload FROM alerts WHERE status='new' ORDER BY rowid LIMIT 256", "alerts_status_new")]
    [InlineData("SELECT MIN(hold_until) FROM alerts WHERE status='held'", "alerts_held_due")]
    [InlineData("SELECT DISTINCT device, code FROM alerts WHERE status='held' AND hold_until <= 0", "alerts_held_")] // either partial index: both hold only held rows
    [InlineData("SELECT rowid, device, alert_id, received_at, peer, payload FROM alerts WHERE status='held' AND device='d' AND code='c' ORDER BY rowid", "alerts_held_key")]
    [InlineData("SELECT severity, COUNT(CASE WHEN state='cleared' THEN 1 END) FROM alerts WHERE status='held' AND device='d' AND code='c' AND rowid <= 9 GROUP BY severity", "alerts_held_key")]
    [InlineData("SELECT rowid, device, alert_id, received_at, peer, payload, via FROM alerts WHERE status='held' AND device='d' AND code='c' AND rowid > 3 AND rowid <= 9 ORDER BY rowid LIMIT 1000", "alerts_held_key")]
    public async Task RouterQuery_OnCurrentSchema_UsesItsPartialIndex(string sql, string index)
    {
        await using (SqliteSpool.Open(DbPath, fsync: false, maxBatch: 16, NullLogger.Instance))
        {
        }

        using var connection = Connect();
        string plan = Plan(connection, sql);

        Assert.Contains(index, plan, StringComparison.Ordinal);
        Assert.DoesNotContain("SCAN alerts", plan.Replace("SCAN alerts USING INDEX alerts_held_", "partial index ", StringComparison.Ordinal), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Open_VersionOneSpoolWithAlerts_MigratesToTheCurrentVersionAndKeepsThem()
    {
        CreateAtVersion(1,
            "INSERT INTO alerts(device, alert_id, received_at, payload, status, code) VALUES('dev-1', 'a-1', 0, x'7B7D', 'new', 'X');");

        await using (var spool = SqliteSpool.Open(DbPath, fsync: false, maxBatch: 16, NullLogger.Instance))
        {
            var alerts = await spool.NewAlertsAsync(10, default);
            Assert.Equal("a-1", Assert.Single(alerts).AlertId);
            Assert.Equal("{}", Encoding.UTF8.GetString(alerts[0].Payload));
            Assert.Equal(IngestProtocols.Mqtt, alerts[0].Via); // rows from before version 3 all came over MQTT
        }

        using var check = Connect();
        using var version = check.CreateCommand();
        version.CommandText = "SELECT MAX(version) FROM schema_version; ";
        Assert.Equal((long)SpoolSchema.CurrentVersion, version.ExecuteScalar());
        version.CommandText = "PRAGMA auto_vacuum"; // converted once, so pruning gives space back (2 = incremental)
        Assert.Equal(2L, version.ExecuteScalar());
        version.CommandText = "SELECT COUNT(*) FROM sqlite_master WHERE type='index' AND name IN ('alerts_status_new', 'alerts_held_due', 'alerts_held_key', 'alerts_new')";
        Assert.Equal(3L, version.ExecuteScalar());
    }

    [Fact]
    public async Task Open_VersionSevenSpoolWithMail_KeepsItsBodiesWhereTheyAre_AndStillSendsAndShowsIt()
    {
        byte[] queued = Encoding.UTF8.GetBytes("Message-ID: <q@gw>\r\nSubject: queued\r\n\r\nstill to go\r\n");
        byte[] sent = Encoding.UTF8.GetBytes("Message-ID: <s@gw>\r\nSubject: sent\r\n\r\ndone\r\n");
        using (var connection = Connect())
        {
            using var command = connection.CreateCommand();
            command.CommandText = "CREATE TABLE schema_version(version INTEGER NOT NULL);" + string.Join(";", SpoolSchema.Migrations.Take(7)) + ";INSERT INTO schema_version VALUES(7);"
                + "INSERT INTO messages(rowid, kind, message_id, envelope_from, mime, created_at, expires_at, next_attempt_at, status) VALUES(1, 'alert', 'q@gw', 'gw@site', $q, 0, 9000000000000, 0, 'queued');"
                + "INSERT INTO recipients(message, address, status) VALUES(1, 'ops@example.com', 'pending');"
                + "INSERT INTO messages(rowid, kind, message_id, envelope_from, mime, created_at, expires_at, next_attempt_at, status, finished_at) VALUES(2, 'alert', 's@gw', 'gw@site', $s, 0, 9000000000000, 0, 'sent', 0);";
            command.Parameters.AddWithValue("$q", queued);
            command.Parameters.AddWithValue("$s", sent);
            command.ExecuteNonQuery();
        }

        await using (var spool = SqliteSpool.Open(DbPath, fsync: false, maxBatch: 16, NullLogger.Instance))
        {
            var due = Assert.Single(await spool.DueMessagesAsync(DateTimeOffset.UtcNow, 10, new HashSet<long>(), default));
            Assert.Equal(queued, due.Mime);
            Assert.Equal(["ops@example.com"], due.PendingRecipients);
            Assert.Equal(sent, (await spool.MessageDetailAsync(2, default))!.Mime);
        }

        using var check = Connect();
        using var rows = check.CreateCommand();
        rows.CommandText = "SELECT COUNT(*) FROM message_bodies; ";
        Assert.Equal(0L, rows.ExecuteScalar()); // nothing copied at the upgrade
    }

    [Fact]
    public async Task Open_VersionNineSpoolWithAnApiKey_KeepsItAsAnAdminKey()
    {
        CreateAtVersion(9,
            "INSERT INTO api_keys(id, name, hash, created_at, revoked_at) VALUES('k1', 'old script', 'ab', 0, NULL);");

        await using var spool = SqliteSpool.Open(DbPath, fsync: false, maxBatch: 16, NullLogger.Instance);

        var key = Assert.Single(await spool.ApiKeysAsync(default));
        Assert.Equal(("k1", "ab", ApiKeyScope.Admin), (key.Id, key.Hash, key.Scope)); // keys made before scopes could do everything
    }

    [Fact]
    public async Task Open_VersionTenSpoolWithHeldRepeats_DigestsThemAsRaises()
    {
        // Before version 11 only raises were held, and no alert kept its state.
        CreateAtVersion(10,
            "INSERT INTO storm(device, code, last_mail_at, last_raised_message_id) VALUES('dev-1', 'TEMP_HIGH', 1000, '<r-0@gw.test>');"
            + "INSERT INTO alerts(device, alert_id, received_at, payload, status, code, hold_until, severity) VALUES"
            + "('dev-1', 'r-1', 2000, x'7b7d', 'held', 'TEMP_HIGH', 5000, 'warning'), ('dev-1', 'r-2', 3000, x'7b7d', 'held', 'TEMP_HIGH', 5000, 'warning');");

        await using var spool = SqliteSpool.Open(DbPath, fsync: false, maxBatch: 16, NullLogger.Instance);

        var digest = Assert.Single(await spool.DueDigestsAsync(DateTimeOffset.FromUnixTimeMilliseconds(5000), 100, default));
        Assert.Equal((2L, 0L), (digest.Total, digest.Clears));
        Assert.Equal(new StormState(DateTimeOffset.FromUnixTimeMilliseconds(1000), "<r-0@gw.test>", HoldClears: false, IncidentOpen: true), // version 14
            await spool.GetStormAsync("dev-1", "TEMP_HIGH", default));
    }

    [Fact]
    public async Task Open_VersionThirteenSpool_CountsAPairWhoseLastMailWasARaiseAsAnOpenIncident_AndOneResetByAClearAsClosed()
    {
        // Nothing before version 14 said whether a pair's incident was open; a raise's Message-ID and a last mail not reset
        // by a clear (last_mail_at 0) are what an open one looks like.
        CreateAtVersion(13,
            "INSERT INTO storm(device, code, last_mail_at, last_raised_message_id) VALUES"
            + "('dev-1', 'TEMP_HIGH', 1000, '<r-1@gw.test>'), ('dev-1', 'DOOR_OPEN', 0, '<r-2@gw.test>'), ('dev-1', 'DEVICE_SILENT', 1000, NULL);");

        await using var spool = SqliteSpool.Open(DbPath, fsync: false, maxBatch: 16, NullLogger.Instance);

        var raised = await spool.GetStormAsync("dev-1", "TEMP_HIGH", default);
        var reset = await spool.GetStormAsync("dev-1", "DOOR_OPEN", default);
        var neverRaised = await spool.GetStormAsync("dev-1", "DEVICE_SILENT", default);
        Assert.Equal((true, false, false), (raised!.IncidentOpen, reset!.IncidentOpen, neverRaised!.IncidentOpen));
    }

    [Fact]
    public async Task Open_VersionFourteenSpool_CountsEveryDeviceItHeardFromAsWatchedFromBefore()
    {
        // Nothing before version 15 said since when a device was configured: one the spool heard from keeps measuring its
        // silence from when it was last heard, as before. Any other is watched from the first start that names it.
        CreateAtVersion(14,
            "INSERT INTO alerts(device, alert_id, received_at, payload, status) VALUES('dev-1', 'a-1', 1000, x'7b7d', 'routed'), ('dev-1', 'a-2', 2000, x'7b7d', 'routed'),"
            + " ('dev-3', 'gw-silent-1', 1000, x'7b7d', 'routed');"
            + "INSERT INTO device_status(device, received_at, payload) VALUES('dev-2', 1000, x'7b7d'), ('dev-3', 1000, x'7b7d');");

        await using var spool = SqliteSpool.Open(DbPath, fsync: false, maxBatch: 16, NullLogger.Instance);

        var now = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000);
        Assert.Equal(new Dictionary<string, DateTimeOffset> { ["dev-1"] = DateTimeOffset.UnixEpoch, ["dev-2"] = DateTimeOffset.UnixEpoch, ["dev-3"] = DateTimeOffset.UnixEpoch, ["dev-4"] = now },
            await spool.WatchDevicesAsync(["dev-1", "dev-2", "dev-3", "dev-4"], now, forgetOthers: true, default));
    }

    [Fact]
    public async Task Read_AfterAwaitedWrite_SeesItOnTheReadConnection()
    {
        await using var spool = SqliteSpool.Open(DbPath, fsync: true, maxBatch: 16, NullLogger.Instance);
        var payload = Encoding.UTF8.GetBytes(Alerts.Json("r-1"));

        Assert.Empty(await spool.NewAlertsAsync(10, default));
        await spool.AcceptAlertAsync(new IncomingAlert("dev-1", "r-1", DateTimeOffset.FromUnixTimeSeconds(1_800_000_000), null, payload, null, "TEMP_HIGH"), default);

        Assert.Equal("r-1", Assert.Single(await spool.NewAlertsAsync(10, default)).AlertId);
        Assert.Equal(("new", (string?)null), await spool.GetAlertAsync("dev-1", "r-1", default));
    }

    [Fact]
    public async Task Read_AfterDispose_FailsWithSpoolException()
    {
        var spool = SqliteSpool.Open(DbPath, fsync: false, maxBatch: 16, NullLogger.Instance);
        await spool.DisposeAsync();

        await Assert.ThrowsAsync<SpoolException>(() => spool.NewAlertsAsync(10, default));
    }
}
