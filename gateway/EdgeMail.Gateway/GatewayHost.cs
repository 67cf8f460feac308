using EdgeMail.Gateway.Ingest;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace EdgeMail.Gateway;

/// <summary>Builds the gateway's generic host: configuration, services and listeners.</summary>
public static class GatewayHost
{
    /// <summary>Creates a host builder with every gateway service registered.</summary>
    /// <param name="args">Command-line arguments; <c>--Section:Key=value</c> overrides configuration.</param>
    /// <returns>The builder, ready to build and run.</returns>
    public static HostApplicationBuilder CreateBuilder(string[] args)
    {
        var builder = Host.CreateApplicationBuilder(args);
        builder.Services.AddSingleton(TimeProvider.System);
        builder.Services.Configure<MqttIngestOptions>(builder.Configuration.GetSection(MqttIngestOptions.Section));
        builder.Services.AddSingleton<EmbeddedBroker>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<EmbeddedBroker>());
        return builder;
    }
}
