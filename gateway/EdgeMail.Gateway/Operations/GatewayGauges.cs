using System.Diagnostics.Metrics;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Devices;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Operations;

/// <summary>
/// The gauges a scrape reads: queue depth by state, connected and silent devices, MQTT connections not yet
/// authenticated, relay up, free disk, the SQLite spool's file sizes. Queue depths
/// come from the spool at most every 5 s, however often it is scraped.
/// </summary>
public sealed class GatewayGauges
{
    private static readonly TimeSpan CacheFor = TimeSpan.FromSeconds(5);
    private readonly ISpool _spool;
    private readonly TimeProvider _clock;
    private readonly Lock _lock = new();
    private (long At, IReadOnlyDictionary<string, long> Depth) _cache = (0, new Dictionary<string, long>());

    /// <summary>Registers the gauges on the gateway's meter.</summary>
    /// <param name="metrics">The meter's owner.</param>
    /// <param name="spool">Spool.</param>
    /// <param name="presence">Connected devices.</param>
    /// <param name="silence">Silent devices.</param>
    /// <param name="guard">The embedded broker's connections not yet authenticated.</param>
    /// <param name="relay">Relay health.</param>
    /// <param name="probe">Free-space probe.</param>
    /// <param name="options">Where the spool is.</param>
    /// <param name="clock">Clock.</param>
    public GatewayGauges(GatewayMetrics metrics, ISpool spool, DevicePresence presence, SilenceWatch silence, Security.MqttGuard guard, RelayHealth relay,
        FreeSpaceProbe probe, IOptions<GatewayOptions> options, TimeProvider clock)
    {
        ArgumentNullException.ThrowIfNull(metrics);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(guard);
        _spool = spool;
        _clock = clock;
        var o = options.Value;
        string spoolPath = o.SpoolPath();
        string spoolDir = Path.GetDirectoryName(spoolPath)!;
        var meter = metrics.Meter;
        meter.CreateObservableGauge("edgemail.queue.depth", QueueDepth, "{message}", "Mail by state: queued, deferred, parked; and parked alerts (state parked_alerts)");
        meter.CreateObservableGauge("edgemail.devices.connected", () => presence.Connected.Count, "{device}", "Devices with an open MQTT connection");
        meter.CreateObservableGauge("edgemail.devices.silent", () => silence.SilentCount, "{device}", "Devices quiet for longer than their silence limit");
        if (!o.Mqtt.IsExternal())
        {
            meter.CreateObservableGauge("edgemail.mqtt.connections.pending", () => guard.PendingConnections, "{connection}",
                "MQTT connections not yet authenticated (in the TLS handshake, before CONNECT or its check): what MqttGuard:MaxPendingConnectionsPerSource and MaxPendingConnections cap");
        }

        meter.CreateObservableGauge("edgemail.relay.up", () => relay.Up ? 1 : 0, null, "1 while the relay answered its last attempt with an outcome, a refused recipient too (or none failed yet); 0 when it could not be reached or refused the gateway");
        meter.CreateObservableGauge("edgemail.disk.free", () => Free(probe, spoolDir), "By", "Bytes free on the spool's file system");
        if (o.Spool.Provider != SpoolProviders.Postgres)
        {
            meter.CreateObservableGauge("edgemail.spool.size", () => SpoolFiles(spoolPath), "By",
                "Bytes of the SQLite spool's files: the database, and its write-ahead log (kept near Spool:WalLimitMegabytes)");
        }
    }

    private static IEnumerable<Measurement<long>> SpoolFiles(string database)
    {
        yield return new Measurement<long>(Length(database), new KeyValuePair<string, object?>("file", "database"));
        yield return new Measurement<long>(Length(database + "-wal"), new KeyValuePair<string, object?>("file", "wal"));
    }

    private static long Length(string path)
    {
        try
        {
            return new FileInfo(path).Length;
        }
        catch (IOException)
        {
            return 0; // a WAL not there yet (or after a clean stop) holds nothing
        }
    }

    private static long Free(FreeSpaceProbe probe, string directory)
    {
        try
        {
            return probe(directory);
        }
        catch (IOException)
        {
            return -1;
        }
    }

    private IEnumerable<Measurement<long>> QueueDepth()
    {
        IReadOnlyDictionary<string, long> depth;
        lock (_lock)
        {
            if (_cache.At == 0 || _clock.GetElapsedTime(_cache.At) > CacheFor)
            {
                try
                {
                    // The spool reads synchronously on the caller's thread (its read connection); a scrape waits for it.
                    var counts = _spool.DashboardAsync(_clock.GetUtcNow().AddDays(-1), CancellationToken.None).GetAwaiter().GetResult();
                    _cache = (_clock.GetTimestamp(), counts.MessagesByState);
                }
                catch (SpoolException)
                {
                    // Keep the last values; the pipeline check reports the spool.
                }
            }

            depth = _cache.Depth;
        }

        foreach (string state in new[] { "queued", "deferred", "parked", "parked_alerts" })
        {
            yield return new Measurement<long>(depth.GetValueOrDefault(state), new KeyValuePair<string, object?>("state", state));
        }
    }
}
