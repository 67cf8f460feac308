using System.Globalization;
using System.Text.Json;

namespace EdgeMail.Emulator.Chaos;

/// <summary>The kinds of fault a chaos run injects (the report's rows).</summary>
internal static class FaultKind
{
    public const string PowerCut = "device power cut";
    public const string PowerCutMidWrite = "device power cut mid-write (armed)";
    public const string LinkFlap = "device link down";
    public const string ProxyReset = "proxy: reset all connections";
    public const string ProxyStall = "proxy: stall";
    public const string ProxyHalfOpen = "proxy: half-open connections";
    public const string ProxyBlackhole = "proxy: refuse new connections";
    public const string ProxyThrottle = "proxy: bandwidth limit";
    public const string GatewayKill = "gateway SIGKILL + restart";
    public const string GatewayRestart = "gateway graceful restart with config change";
    public const string Sink421 = "sink: 421 at greeting";
    public const string Sink451 = "sink: 451 after DATA";
    public const string Sink452 = "sink: 452 to RCPT";
    public const string SinkSlow = "sink: slow replies";
    public const string SinkDropAfterData = "sink: connection dropped after DATA, before the reply";
    public const string SinkDown = "sink: down (connections refused)";
    public const string SinkRefusedRecipient = "sink: 550 for chosen recipients (per mail)";
}

/// <summary>One fault: what, when (simulated ms since the start of the run, and wall time), how long, to whom.</summary>
internal sealed record FaultEvent(string Kind, long SimMs, DateTimeOffset Wall, long DurationMs, string Target, string Detail);

/// <summary>
/// Every fault of a run in the order it happened, kept in memory for the verdict and appended to a JSON-lines file
/// as it happens (so a run that dies still leaves its timeline).
/// </summary>
internal sealed class Timeline : IDisposable
{
    private readonly Lock _lock = new();
    private readonly List<FaultEvent> _events = [];
    private readonly StreamWriter? _file;
    private readonly Func<long> _simMs;
    private readonly TimeProvider _time;

    public Timeline(string? path, Func<long> simMs, TimeProvider time)
    {
        _simMs = simMs;
        _time = time;
        if (path is not null)
        {
            _file = new StreamWriter(path, append: false) { AutoFlush = true };
        }
    }

    public IReadOnlyList<FaultEvent> Events
    {
        get
        {
            lock (_lock)
            {
                return [.. _events];
            }
        }
    }

    public void Add(string kind, long durationMs, string target, string detail = "") => Add(kind, _simMs(), durationMs, target, detail);

    public void Add(string kind, long simMs, long durationMs, string target, string detail)
    {
        var e = new FaultEvent(kind, simMs, _time.GetUtcNow(), durationMs, target, detail);
        lock (_lock)
        {
            _events.Add(e);
            _file?.WriteLine(JsonSerializer.Serialize(new
            {
                kind = e.Kind,
                simMs = e.SimMs,
                wall = e.Wall.ToString("O", CultureInfo.InvariantCulture),
                durationMs = e.DurationMs,
                target = e.Target,
                detail = e.Detail,
            }));
        }
    }

    public void Dispose() => _file?.Dispose();
}
