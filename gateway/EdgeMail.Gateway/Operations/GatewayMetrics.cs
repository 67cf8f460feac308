using System.Diagnostics.Metrics;

namespace EdgeMail.Gateway.Operations;

/// <summary>
/// The gateway's own instruments, on the meter <see cref="MeterName"/> (System.Diagnostics.Metrics: any exporter
/// that listens to it — OpenTelemetry, dotnet-counters — sees them).
/// </summary>
public sealed class GatewayMetrics : IDisposable
{
    /// <summary>The meter's name.</summary>
    public const string MeterName = "EdgeMail.Gateway";

    private readonly Meter _meter;

    /// <summary>Creates the instruments.</summary>
    /// <param name="meterFactory">The host's meter factory; null for a meter of its own (tests).</param>
    public GatewayMetrics(IMeterFactory? meterFactory = null)
    {
        _meter = meterFactory?.Create(MeterName) ?? new Meter(MeterName);
        Parked = _meter.CreateCounter<long>("edgemail.parked", "{item}", "Alerts and mail parked because handling them failed, by stage");
        LoopRestarts = _meter.CreateCounter<long>("edgemail.loop.restarts", "{restart}", "Background loops restarted after an unexpected fault, by loop");
        IngestRefused = _meter.CreateCounter<long>("edgemail.ingest.refused", "{message}", "Alerts and mail refused with back-pressure, by reason");
        IngestThrottled = _meter.CreateCounter<long>("edgemail.ingest.throttled", "{message}", "MQTT publishes whose PUBACK was delayed to keep a device within its rate");
        Pruned = _meter.CreateCounter<long>("edgemail.spool.pruned", "{row}", "Finished alerts and mail removed after the retention period, by kind");
    }

    /// <summary>Items parked; tag <c>stage</c> = route, compose, digest, deliver.</summary>
    public Counter<long> Parked { get; }

    /// <summary>Loop restarts; tag <c>loop</c>.</summary>
    public Counter<long> LoopRestarts { get; }

    /// <summary>Ingest refusals; tag <c>reason</c> = disk.</summary>
    public Counter<long> IngestRefused { get; }

    /// <summary>Publishes held back by the per-device rate limit.</summary>
    public Counter<long> IngestThrottled { get; }

    /// <summary>Rows pruned; tag <c>kind</c> = alert, message, mailbox.</summary>
    public Counter<long> Pruned { get; }

    /// <inheritdoc />
    public void Dispose() => _meter.Dispose();
}
