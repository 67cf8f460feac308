using System.Text;
using System.Text.Json;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Devices;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Web.Api;

/// <summary>Devices by state.</summary>
/// <param name="Total">All devices.</param>
/// <param name="Online">Connected now, or heard from within 15 minutes when the broker is external.</param>
/// <param name="Offline">Enabled, not online, not silent.</param>
/// <param name="Silent">Quiet for longer than their silence limit.</param>
/// <param name="Disabled">Disabled.</param>
public sealed record DeviceCounts(int Total, int Online, int Offline, int Silent, int Disabled);

/// <summary>The relay as the last attempts saw it.</summary>
/// <param name="Mode">Relay:Mode.</param>
/// <param name="Up">The last attempt with an outcome succeeded (or none failed yet).</param>
/// <param name="LastSuccess">Last accepted recipient.</param>
/// <param name="LastErrorAt">Last failed or deferred attempt.</param>
/// <param name="LastError">Its reply.</param>
public sealed record RelayState(string Mode, bool Up, DateTimeOffset? LastSuccess, DateTimeOffset? LastErrorAt, string? LastError);

/// <summary>What the dashboard shows.</summary>
/// <param name="At">When it was taken.</param>
/// <param name="AlertsToday">Alerts received since midnight UTC by severity (and <c>rejected</c>).</param>
/// <param name="Mail">Mail by state: queued, deferred, parked, parked_alerts; failed and sent today.</param>
/// <param name="Devices">Devices by state.</param>
/// <param name="Relay">The relay.</param>
/// <param name="SpoolBytes">Spool size.</param>
/// <param name="DiskFreeBytes">Free space where the spool is.</param>
/// <param name="DiskLow">Below the floor: new work is refused.</param>
/// <param name="AlertsPerSecond">Alerts accepted per second lately.</param>
public sealed record Dashboard(DateTimeOffset At, IReadOnlyDictionary<string, long> AlertsToday, IReadOnlyDictionary<string, long> Mail, DeviceCounts Devices,
    RelayState Relay, long SpoolBytes, long DiskFreeBytes, bool DiskLow, double AlertsPerSecond);

/// <summary>The dashboard, and its live feed as Server-Sent Events.</summary>
public static class DashboardApi
{
    private static readonly TimeSpan SnapshotAge = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan StreamInterval = TimeSpan.FromMilliseconds(500);
    private static readonly Lock CacheLock = new();
    private static (object? Spool, DateTimeOffset At, Dashboard? Value, TimeSpan Cost) _cache;

    /// <summary>Maps the routes.</summary>
    /// <param name="api">The <c>/api/v1</c> group.</param>
    public static void Map(RouteGroupBuilder api)
    {
        api.MapGet("/dashboard", (ConsoleContext c, CancellationToken ct) => SnapshotAsync(c, ct))
            .WithSummary("Alerts today, mail by state, devices, relay, spool and disk");
        api.MapGet("/events", StreamAsync)
            .WithSummary("Server-Sent Events: 'dashboard' (at most once a second, when it changed) and 'alert' (the newest alert's number, when alerts arrive)")
            .WithDescription("The server ends the stream when the session or API key it was opened with ends (logout, a new password, the key revoked) and when the gateway stops.");
    }

    /// <summary>A dashboard at most a second old: however many consoles are open, the spool is asked once a second.</summary>
    /// <param name="c">The console's services.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The dashboard.</returns>
    public static async Task<Dashboard> SnapshotAsync(ConsoleContext c, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(c);
        var now = c.Clock.GetUtcNow();
        lock (CacheLock)
        {
            if (ReferenceEquals(_cache.Spool, c.Spool) && _cache.Value is { } cached && now - _cache.At < Freshness(_cache.Cost))
            {
                return cached;
            }
        }

        long began = System.Diagnostics.Stopwatch.GetTimestamp();
        var midnight = new DateTimeOffset(now.UtcDateTime.Date, TimeSpan.Zero);
        var counts = await c.Spool.DashboardAsync(midnight, cancellationToken).ConfigureAwait(false);
        var views = await DeviceApi.ViewsAsync(c, cancellationToken).ConfigureAwait(false);
        var devices = new DeviceCounts(views.Count, views.Count(v => v.Online), views.Count(v => !v.Disabled && !v.Online && !v.Silent),
            views.Count(v => v.Silent), views.Count(v => v.Disabled));
        var error = c.Relay.LastError;
        var relay = new RelayState(c.Options.Relay.Mode, c.Relay.Up, c.Relay.LastSuccess, error?.At, error?.Reply);
        long free;
        try
        {
            free = c.FreeSpace(Path.GetDirectoryName(c.Options.SpoolPath())!);
        }
        catch (IOException)
        {
            free = -1;
        }

        var dashboard = new Dashboard(now, counts.AlertsBySeverity, counts.MessagesByState, devices, relay, counts.SpoolBytes, free, c.Disk.IsLow, Math.Round(c.Pressure.Rate, 1));
        lock (CacheLock)
        {
            _cache = (c.Spool, now, dashboard, System.Diagnostics.Stopwatch.GetElapsedTime(began));
        }

        return dashboard;
    }

    // The counts scan today's alerts and mail: on a busy day a snapshot costs more, and is taken less often, so that
    // open dashboards never take more than about 2 % of a core from the pipeline they watch.
    private static TimeSpan Freshness(TimeSpan cost) => cost * 50 > SnapshotAge ? cost * 50 : SnapshotAge;

    // Writes go with the request's own token; waits and reads also end when the credential ends or the console stops,
    // and then the response is completed, so the browser sees the stream end (and, reconnecting, is asked to log in)
    // rather than a cut connection. Left open, a stream also held the gateway's stop for its whole shutdown timeout.
    private static async Task StreamAsync(HttpContext http, ConsoleContext c, ConsoleAuth auth, IHostApplicationLifetime console, CancellationToken ct)
    {
        http.Response.Headers.ContentType = "text/event-stream";
        http.Response.Headers.CacheControl = "no-store";
        http.Response.Headers["X-Accel-Buffering"] = "no";
        using var credential = auth.Watch(http.User);
        using var over = CancellationTokenSource.CreateLinkedTokenSource(ct, credential.Ended, console.ApplicationStopping);
        var end = over.Token;
        var alerts = new Spool.Signal();
        void OnAlerts() => alerts.Set();
        c.Spool.AlertsStored += OnAlerts;
        try
        {
            string last = string.Empty;
            long lastAlert = (await c.Spool.QueryAlertsAsync(new AlertQuery(Limit: 1), end).ConfigureAwait(false)).FirstOrDefault()?.RowId ?? 0;
            int idleSeconds = 0;
            while (!end.IsCancellationRequested)
            {
                var started = c.Clock.GetUtcNow();
                var dashboard = await SnapshotAsync(c, end).ConfigureAwait(false);
                string json = JsonSerializer.Serialize(dashboard with { At = default }, JsonOptions);
                if (json != last)
                {
                    last = json;
                    await SendAsync(http, "dashboard", JsonSerializer.Serialize(dashboard, JsonOptions), ct).ConfigureAwait(false);
                    idleSeconds = 0;
                }

                // Row 0 stands for an empty spool at the start, so the very first alert is announced too.
                var newest = await c.Spool.QueryAlertsAsync(new AlertQuery(Limit: 1), end).ConfigureAwait(false);
                if (newest.Count > 0 && newest[0].RowId > lastAlert)
                {
                    await SendAsync(http, "alert", JsonSerializer.Serialize(newest[0], JsonOptions), ct).ConfigureAwait(false);
                    lastAlert = newest[0].RowId;
                }

                if (++idleSeconds >= 15)
                {
                    await http.Response.WriteAsync(": keep-alive\n\n", ct).ConfigureAwait(false); // through proxies that close quiet connections
                    await http.Response.Body.FlushAsync(ct).ConfigureAwait(false);
                    idleSeconds = 0;
                }

                await alerts.WaitAsync(TimeSpan.FromSeconds(1), c.Clock, end).ConfigureAwait(false);

                // Under load alerts are stored dozens of times a second: an open dashboard looks a few times a second,
                // not at every commit, so that watching the gateway does not slow it down.
                var rest = StreamInterval - (c.Clock.GetUtcNow() - started);
                if (rest > TimeSpan.Zero)
                {
                    await Task.Delay(rest, c.Clock, end).ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException) when (end.IsCancellationRequested)
        {
            // The browser went away, the session or key ended, or the console is stopping.
        }
        finally
        {
            c.Spool.AlertsStored -= OnAlerts;
        }
    }

    private static async Task SendAsync(HttpContext http, string name, string json, CancellationToken ct)
    {
        var frame = new StringBuilder().Append("event: ").Append(name).Append('\n').Append("data: ").Append(json).Append("\n\n");
        await http.Response.WriteAsync(frame.ToString(), ct).ConfigureAwait(false);
        await http.Response.Body.FlushAsync(ct).ConfigureAwait(false);
    }

    internal static readonly JsonSerializerOptions JsonOptions = new(JsonSerializerDefaults.Web);
}

/// <summary>The gateway services the console's handlers use, in one parameter.</summary>
/// <param name="Spool">The spool.</param>
/// <param name="Devices">Device registry.</param>
/// <param name="Presence">Who is connected and when each device was last heard from.</param>
/// <param name="OptionsAccessor">Gateway options.</param>
/// <param name="Clock">Clock.</param>
/// <param name="Relay">Relay health.</param>
/// <param name="Disk">Disk guard.</param>
/// <param name="FreeSpace">Free-space probe.</param>
/// <param name="Pressure">Ingest rate.</param>
/// <param name="Silence">Which devices are silent.</param>
public sealed record ConsoleContext(ISpool Spool, DeviceRegistry Devices, DevicePresence Presence, IOptions<GatewayOptions> OptionsAccessor, TimeProvider Clock,
    RelayHealth Relay, DiskGuard Disk, FreeSpaceProbe FreeSpace, IngestPressure Pressure, SilenceWatch Silence)
{
    /// <summary>Gateway options.</summary>
    public GatewayOptions Options => OptionsAccessor.Value;
}
