using System.Security.Cryptography.X509Certificates;
using EdgeMail.Gateway.Configuration;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;

namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// Turns <c>Mqtt:External</c> into MQTTnet client and subscription options and the reconnect schedule. No I/O beyond
/// reading certificate files.
/// </summary>
public static class ExternalBrokerConnection
{
    /// <summary>The MQTT protocol versions <c>Mqtt:External:ProtocolVersion</c> accepts.</summary>
    public static readonly IReadOnlyList<string> ProtocolVersions = ["5", "3.1.1"];

    /// <summary>Whether the options ask for MQTT 3.1.1.</summary>
    /// <param name="options">The external broker options.</param>
    /// <returns>True for 3.1.1, false for 5.</returns>
    public static bool IsV311(ExternalBrokerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options.ProtocolVersion == "3.1.1";
    }

    /// <summary>
    /// Client options: a persistent session (clean start off; MQTT 5 session expiry), the credentials, TLS with the
    /// configured trust, and the receive maximum that bounds the alerts in flight to the gateway.
    /// </summary>
    /// <param name="options">The external broker options.</param>
    /// <returns>MQTTnet client options.</returns>
    public static MqttClientOptions ClientOptions(ExternalBrokerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var builder = new MqttClientOptionsBuilder()
            .WithTcpServer(options.Host, options.Port)
            .WithClientId(options.ClientId)
            .WithCleanStart(false)
            .WithKeepAlivePeriod(options.KeepAlive)
            .WithTimeout(options.ConnectTimeout);
        if (IsV311(options))
        {
            builder.WithProtocolVersion(MqttProtocolVersion.V311);
        }
        else
        {
            builder.WithProtocolVersion(MqttProtocolVersion.V500)
                .WithSessionExpiryInterval((uint)Math.Min(options.SessionExpiry.TotalSeconds, uint.MaxValue - 1))
                .WithReceiveMaximum((ushort)Math.Clamp(options.MaxInFlight, 1, ushort.MaxValue));
        }

        if (options.Username.Length > 0)
        {
            builder.WithCredentials(options.Username, options.Password);
        }

        if (options.Tls)
        {
            builder.WithTlsOptions(tls =>
            {
                tls.UseTls().WithTargetHost(options.TlsServerName.Length > 0 ? options.TlsServerName : options.Host);
                if (options.CaFile.Length > 0)
                {
                    var trust = new X509Certificate2Collection();
                    trust.ImportFromPemFile(options.CaFile);
                    tls.WithTrustChain(trust);
                }

                if (options.ClientCertificateFile.Length > 0)
                {
                    tls.WithClientCertificates([X509Certificate2.CreateFromPemFile(options.ClientCertificateFile, options.ClientKeyFile)]);
                }
            });
        }

        return builder.Build();
    }

    /// <summary>
    /// The topic filters the gateway subscribes to: every device's alerts and status, each under
    /// <c>$share/&lt;group&gt;/</c> when <c>Mqtt:External:SharedGroup</c> is set.
    /// </summary>
    /// <param name="options">The external broker options.</param>
    /// <returns>The alert filter and the status filter.</returns>
    public static IReadOnlyList<string> Filters(ExternalBrokerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        string prefix = options.SharedGroup.Length > 0 ? $"$share/{options.SharedGroup}/" : string.Empty;
        return [prefix + ExternalTopics.AlertFilter, prefix + ExternalTopics.StatusFilter];
    }

    /// <summary>
    /// The subscription: <see cref="Filters"/> at QoS 1. With MQTT 5, retained status messages are sent only when the
    /// subscription is new, so a reconnect does not replay every device's last status (brokers send no retained
    /// messages to shared subscriptions at all). MQTT 3.1.1 has no retain handling (MQTTnet refuses to send one), so
    /// there a 3.1.1 session that is present keeps its subscription instead of subscribing again.
    /// </summary>
    /// <param name="options">The external broker options.</param>
    /// <returns>MQTTnet subscribe options.</returns>
    public static MqttClientSubscribeOptions SubscribeOptions(ExternalBrokerOptions options)
    {
        bool v311 = IsV311(options);
        var builder = new MqttClientSubscribeOptionsBuilder();
        foreach (string filter in Filters(options))
        {
            builder.WithTopicFilter(f =>
            {
                f.WithTopic(filter).WithAtLeastOnceQoS();
                if (!v311)
                {
                    f.WithRetainHandling(MqttRetainHandling.SendAtSubscribeIfNewSubscriptionOnly);
                }
            });
        }

        return builder.Build();
    }

    /// <summary>The UNSUBSCRIBE of <see cref="Filters"/> (an instance leaving its share group).</summary>
    /// <param name="options">The external broker options.</param>
    /// <returns>MQTTnet unsubscribe options.</returns>
    public static MqttClientUnsubscribeOptions UnsubscribeOptions(ExternalBrokerOptions options)
    {
        var builder = new MqttClientUnsubscribeOptionsBuilder();
        foreach (string filter in Filters(options))
        {
            builder.WithTopicFilter(filter);
        }

        return builder.Build();
    }

    /// <summary>
    /// The wait after the <paramref name="failures"/>th failed connection attempt in a row: <c>ReconnectDelay</c>
    /// doubled per failure up to <c>MaxReconnectDelay</c>, less a jitter of up to a quarter so several gateways do not
    /// reconnect in step. The jitter is a hash of the client id and the attempt, so it is the same on every run.
    /// </summary>
    /// <param name="options">The external broker options.</param>
    /// <param name="failures">Failed attempts in a row, from 1.</param>
    /// <returns>How long to wait before the next attempt.</returns>
    public static TimeSpan ReconnectDelay(ExternalBrokerOptions options, int failures)
    {
        ArgumentNullException.ThrowIfNull(options);
        double first = Math.Max(options.ReconnectDelay.TotalMilliseconds, 1);
        double max = Math.Max(options.MaxReconnectDelay.TotalMilliseconds, first);
        double wait = Math.Min(max, first * Math.Pow(2, Math.Min(failures - 1, 30)));

        // FNV-1a over the client id and the attempt number.
        uint hash = 2166136261;
        foreach (char c in options.ClientId + "#" + failures.ToString(System.Globalization.CultureInfo.InvariantCulture))
        {
            hash = (hash ^ c) * 16777619;
        }

        double jitter = 0.75 + (0.25 * (hash / (double)uint.MaxValue));
        return TimeSpan.FromMilliseconds(wait * jitter);
    }
}
