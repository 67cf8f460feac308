using System.Security.Cryptography.X509Certificates;
using EdgeMail.Gateway.Configuration;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;

namespace EdgeMail.Gateway.Ingest;

/// <summary>Turns <c>Mqtt:External</c> into MQTTnet client and subscription options. No I/O beyond reading certificate files.</summary>
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
    /// The subscription: every device's alerts and status at QoS 1. With MQTT 5, retained status messages are sent
    /// only when the subscription is new, so a reconnect does not replay every device's last status.
    /// </summary>
    /// <returns>MQTTnet subscribe options.</returns>
    public static MqttClientSubscribeOptions SubscribeOptions() =>
        new MqttClientSubscribeOptionsBuilder()
            .WithTopicFilter(f => f.WithTopic(ExternalTopics.AlertFilter).WithAtLeastOnceQoS()
                .WithRetainHandling(MqttRetainHandling.SendAtSubscribeIfNewSubscriptionOnly))
            .WithTopicFilter(f => f.WithTopic(ExternalTopics.StatusFilter).WithAtLeastOnceQoS()
                .WithRetainHandling(MqttRetainHandling.SendAtSubscribeIfNewSubscriptionOnly))
            .Build();
}
