using System.Diagnostics;
using System.Globalization;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging;
using SQLitePCL;

namespace EdgeMail.Gateway.Spool;

// Statements without a result set, and single values, go to SQLite through SQLitePCL's prepared statements, kept per
// SQL text and bound by parameter index: Microsoft.Data.Sqlite's command made a data reader and looked every parameter
// up by name on each execution (~1 µs and ~600 bytes each, at about ten statements per alert). Result sets stay with
// Microsoft.Data.Sqlite's reader (Query), on the same connection. A statement here is reset before its call returns,
// so none holds a read snapshot open (which would keep the WAL from being started anew).
public sealed partial class SqliteSpool
{
    private readonly Dictionary<string, Prepared> _statements = new(StringComparer.Ordinal);

    // As Microsoft.Data.Sqlite does with its default command timeout: a busy or locked database (another process
    // holding a lock beyond busy_timeout) is tried again until this long has passed.
    private static readonly TimeSpan BusyRetryFor = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Raised on the statement's thread when another process has kept the database locked past <c>busy_timeout</c> and
    /// the statement is about to be tried again.
    /// </summary>
    public event Action? Locked;

    private sealed class Prepared(sqlite3_stmt statement, int[] index, bool readOnly)
    {
        public sqlite3_stmt Statement { get; } = statement;

        // Where argument i ($p{i}) is bound: SQLite numbers named parameters in order of first appearance.
        public int[] Index { get; } = index;

        public bool ReadOnly { get; } = readOnly;
    }

    private int Exec(string sql, params object?[] args)
    {
        var prepared = Prepare(sql, args.Length);
        try
        {
            Bind(prepared, args);
            while (Step(prepared.Statement) == raw.SQLITE_ROW)
            {
            }

            // Changes of the last INSERT, UPDATE or DELETE: a statement that changes nothing (BEGIN, a PRAGMA) would
            // otherwise report the count of the one before it.
            return prepared.ReadOnly ? -1 : raw.sqlite3_changes(_connection.Handle);
        }
        finally
        {
            raw.sqlite3_reset(prepared.Statement);
        }
    }

    private object? Scalar(string sql, params object?[] args)
    {
        var prepared = Prepare(sql, args.Length);
        try
        {
            Bind(prepared, args);
            var statement = prepared.Statement;
            if (Step(statement) != raw.SQLITE_ROW)
            {
                return null;
            }

            return raw.sqlite3_column_type(statement, 0) switch
            {
                raw.SQLITE_INTEGER => raw.sqlite3_column_int64(statement, 0),
                raw.SQLITE_FLOAT => raw.sqlite3_column_double(statement, 0),
                raw.SQLITE_TEXT => raw.sqlite3_column_text(statement, 0).utf8_to_string(),
                raw.SQLITE_BLOB => raw.sqlite3_column_blob(statement, 0).ToArray(),
                _ => null,
            };
        }
        finally
        {
            raw.sqlite3_reset(prepared.Statement);
        }
    }

    private Prepared Prepare(string sql, int arguments)
    {
        if (_statements.TryGetValue(sql, out var prepared))
        {
            return prepared;
        }

        var db = _connection.Handle!;
        int rc = raw.sqlite3_prepare_v2(db, sql, out var statement, out string tail);
        if (rc != raw.SQLITE_OK)
        {
            statement.Dispose();
            SqliteException.ThrowExceptionForRC(rc, db);
        }

        if (!string.IsNullOrWhiteSpace(tail))
        {
            statement.Dispose();
            throw new InvalidOperationException($"One statement per call, not '{sql}'.");
        }

        int count = raw.sqlite3_bind_parameter_count(statement);
        var index = new int[arguments];
        int bound = 0;
        for (int i = 0; i < arguments; i++)
        {
            index[i] = raw.sqlite3_bind_parameter_index(statement, "$p" + i.ToString(CultureInfo.InvariantCulture));
            bound += index[i] > 0 ? 1 : 0;
        }

        if (bound != count)
        {
            statement.Dispose();
            throw new InvalidOperationException($"'{sql}' has {count} parameters; {arguments} values ($p0..) were given for it.");
        }

        prepared = new Prepared(statement, index, raw.sqlite3_stmt_readonly(statement) != 0);
        _statements[sql] = prepared;
        return prepared;
    }

    private static void Bind(Prepared prepared, object?[] args)
    {
        var statement = prepared.Statement;
        for (int i = 0; i < args.Length; i++)
        {
            int at = prepared.Index[i];
            if (at == 0)
            {
                continue;
            }

            int rc = args[i] switch
            {
                null or DBNull => raw.sqlite3_bind_null(statement, at),
                string s => raw.sqlite3_bind_text(statement, at, s),
                long l => raw.sqlite3_bind_int64(statement, at, l),
                int n => raw.sqlite3_bind_int64(statement, at, n),
                bool b => raw.sqlite3_bind_int64(statement, at, b ? 1 : 0),
                double d => raw.sqlite3_bind_double(statement, at, d),
                byte[] bytes => raw.sqlite3_bind_blob(statement, at, bytes),
                var other => throw new ArgumentException($"Cannot store a {other.GetType().Name} in the spool.", nameof(args)),
            };
            if (rc != raw.SQLITE_OK)
            {
                throw new SqliteException($"SQLite Error {rc}: binding $p{i} failed.", rc);
            }
        }
    }

    private int Step(sqlite3_stmt statement)
    {
        long start = 0;
        while (true)
        {
            int rc = raw.sqlite3_step(statement);
            if (rc is raw.SQLITE_ROW or raw.SQLITE_DONE)
            {
                return rc;
            }

            if (rc is not (raw.SQLITE_BUSY or raw.SQLITE_LOCKED))
            {
                SqliteException.ThrowExceptionForRC(rc, _connection.Handle);
            }

            if (start == 0)
            {
                start = Stopwatch.GetTimestamp();
                LogLocked(rc, BusyRetryFor.TotalSeconds);
                Locked?.Invoke();
            }
            else if (Stopwatch.GetElapsedTime(start) >= BusyRetryFor)
            {
                SqliteException.ThrowExceptionForRC(rc, _connection.Handle);
            }

            raw.sqlite3_reset(statement);
            Thread.Sleep(150);
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "The spool's database is locked by another process (SQLite error {Code}); trying again for up to {Seconds} s")]
    private partial void LogLocked(int code, double seconds);

    private void FinalizeStatements()
    {
        foreach (var prepared in _statements.Values)
        {
            prepared.Statement.Dispose();
        }

        _statements.Clear();
    }
}
