using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Security;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Ingest;

/// <summary>Registers MQTT ingest with the host: the embedded broker and its guard, or the client of an external broker.</summary>
public static class MqttIngestRegistration
{
    /// <summary>
    /// Adds the <c>MqttGuard</c> options and the guard, the embedded broker and the external-broker client, and — by
    /// <c>Mqtt:Mode</c> — starts one of them and sends receipts the way alerts came in. An unknown mode is refused at
    /// start by the options validator. Reads the older <c>MqttGuard:TlsEnabled</c>/<c>TlsPort</c> keys into
    /// <c>Mqtt</c> when the new ones are not set, and the TLS certificate from <c>Smtp:CertificatePath</c> when
    /// <c>Mqtt:CertificatePath</c> is empty — from the configuration itself, so nothing here depends on SMTP ingest
    /// being registered.
    /// </summary>
    /// <param name="services">Services.</param>
    /// <param name="configuration">Configuration root.</param>
    /// <returns>The services.</returns>
    public static IServiceCollection AddMqttIngest(this IServiceCollection services, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        services.AddSingleton<IPostConfigureOptions<GatewayOptions>>(new MqttListenerDefaults(configuration));
        services.AddSingleton<IValidateOptions<MqttGuardOptions>, MqttGuardOptionsValidator>();
        services.AddOptions<MqttGuardOptions>().Bind(configuration.GetSection(MqttGuardOptions.Section)).ValidateOnStart();
        services.AddSingleton<MqttGuard>();
        services.AddSingleton<EmbeddedBroker>();
        services.AddSingleton<ExternalBrokerClient>();
        if (string.Equals(configuration["Mqtt:Mode"], MqttModes.External, StringComparison.OrdinalIgnoreCase))
        {
            services.AddSingleton(sp => new Lazy<IReceiptSink>(() => sp.GetRequiredService<ExternalBrokerClient>()));
            services.AddHostedService(sp => sp.GetRequiredService<ExternalBrokerClient>());
        }
        else
        {
            services.AddSingleton(sp => new Lazy<IReceiptSink>(() => sp.GetRequiredService<EmbeddedBroker>()));
            services.AddHostedService(sp => sp.GetRequiredService<EmbeddedBroker>());
        }

        return services;
    }

    // Runs after binding and before validation, so the validator and the broker see the effective values.
    private sealed class MqttListenerDefaults(IConfiguration configuration) : IPostConfigureOptions<GatewayOptions>
    {
        public void PostConfigure(string? name, GatewayOptions options)
        {
            var mqtt = options.Mqtt;
            var section = configuration.GetSection(MqttIngestOptions.Section);
            var legacy = configuration.GetSection(MqttGuardOptions.Section);
            if (section[nameof(MqttIngestOptions.TlsEnabled)] is null && legacy[nameof(MqttIngestOptions.TlsEnabled)] is not null)
            {
                mqtt.TlsEnabled = legacy.GetValue<bool>(nameof(MqttIngestOptions.TlsEnabled));
            }

            if (section[nameof(MqttIngestOptions.TlsPort)] is null && legacy[nameof(MqttIngestOptions.TlsPort)] is not null)
            {
                mqtt.TlsPort = legacy.GetValue<int>(nameof(MqttIngestOptions.TlsPort));
            }

            if (mqtt.CertificatePath.Length == 0)
            {
                mqtt.CertificatePath = configuration["Smtp:CertificatePath"] ?? string.Empty;
                mqtt.CertificatePassword = configuration["Smtp:CertificatePassword"] ?? string.Empty;
            }
        }
    }
}
