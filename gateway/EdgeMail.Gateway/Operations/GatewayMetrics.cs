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
        MqttConnectsRefused = _meter.CreateCounter<long>("edgemail.mqtt.connects.refused", "{connection}",
            "MQTT CONNECTs refused, by reason: rate (too many from the address or of the device), wrong_secrets (too many wrong ones), credentials, client_id; "
            + "and pending: connections closed as accepted because their address, or all together, held too many not yet authenticated");
        IngestThrottled = _meter.CreateCounter<long>("edgemail.ingest.throttled", "{message}", "MQTT publishes whose PUBACK was delayed to keep a device within its rate");
        Pruned = _meter.CreateCounter<long>("edgemail.spool.pruned", "{row}", "Finished alerts and mail removed after the retention period, by kind");
        AlertsReceived = _meter.CreateCounter<long>("edgemail.alerts.received", "{alert}", "Alerts received, by transport (mqtt, smtp) and result (stored, duplicate, rejected)");
        MailRecipients = _meter.CreateCounter<long>("edgemail.mail.recipients", "{recipient}", "Recipient results of delivery attempts, by outcome (sent, deferred, failed)");
        SpoolCommitDuration = _meter.CreateHistogram("edgemail.spool.commit.duration", "s", "Time from BEGIN to a durable COMMIT of one group commit",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5] });
        RelayTokens = _meter.CreateCounter<long>("edgemail.relay.tokens", "{request}", "Relay OAuth2 token requests and server refusals, by outcome");
        RelayThrottled = _meter.CreateCounter<long>("edgemail.relay.throttled", "{episode}", "Times the relay's sending limit held mail back, by limit");
    }

    /// <summary>Token requests; tag <c>outcome</c> = acquired, refused, unavailable, refused_by_server.</summary>
    public Counter<long> RelayTokens { get; }

    /// <summary>Throttle episodes; tag <c>limit</c>.</summary>
    public Counter<long> RelayThrottled { get; }

    /// <summary>Publishes the relay throttle's state as gauges (1 while mail is held back; use of each window).</summary>
    /// <param name="held">1 while mail is held back, else 0.</param>
    /// <param name="used">Per limit name, how much of its window is used.</param>
    public void ObserveRelayThrottle(Func<int> held, Func<IEnumerable<Measurement<long>>> used)
    {
        _meter.CreateObservableGauge("edgemail.relay.throttle.active", held, "{state}", "1 while the relay's sending limit holds mail back in the spool");
        _meter.CreateObservableGauge("edgemail.relay.throttle.used", used, "{unit}", "Messages or recipients counted in each sending-limit window, by limit");
    }

    /// <summary>The meter, for observable instruments registered by the parts that know the values.</summary>
    public Meter Meter => _meter;

    /// <summary>Alerts received; tags <c>transport</c>, <c>result</c>.</summary>
    public Counter<long> AlertsReceived { get; }

    /// <summary>Recipient outcomes of delivery attempts; tag <c>outcome</c>.</summary>
    public Counter<long> MailRecipients { get; }

    /// <summary>Spool group-commit latency, seconds.</summary>
    public Histogram<double> SpoolCommitDuration { get; }

    /// <summary>Items parked; tag <c>stage</c> = route, compose, digest, deliver.</summary>
    public Counter<long> Parked { get; }

    /// <summary>Loop restarts; tag <c>loop</c>.</summary>
    public Counter<long> LoopRestarts { get; }

    /// <summary>
    /// Refused MQTT connections; tag <c>reason</c> = rate, wrong_secrets, credentials, client_id, pending (closed unread:
    /// too many connections not yet authenticated). The log has at most a line a minute per address of rate,
    /// wrong_secrets and pending; this has every one.
    /// </summary>
    public Counter<long> MqttConnectsRefused { get; }

    /// <summary>Ingest refusals; tag <c>reason</c> = disk.</summary>
    public Counter<long> IngestRefused { get; }

    /// <summary>Publishes held back by the per-device rate limit.</summary>
    public Counter<long> IngestThrottled { get; }

    /// <summary>Rows pruned; tag <c>kind</c> = alert, message, mailbox.</summary>
    public Counter<long> Pruned { get; }

    /// <inheritdoc />
    public void Dispose() => _meter.Dispose();
}
