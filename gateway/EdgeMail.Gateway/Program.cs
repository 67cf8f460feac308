using EdgeMail.Gateway;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Operations;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

if (args.Length > 0 && args[0] == "hash-secret")
{
    if (args.Length != 2)
    {
        Console.Error.WriteLine("usage: EdgeMail.Gateway hash-secret SECRET   (prints the value for Devices:<id>:Secret)");
        return 2;
    }

    Console.WriteLine(SecretHash.Create(args[1]));
    return 0;
}

// Exit codes (the appliance's systemd unit restarts on any but 2): 0 stopped on request; 1 could not start (a port
// in use, the spool cannot be opened); 2 the configuration is invalid; 70 stopped because it could not go on.
try
{
    using var host = GatewayHost.CreateBuilder(args).Build();
    var lifetime = host.Services.GetRequiredService<GatewayLifetime>(); // RunAsync disposes the services
    var stopping = host.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping;
    try
    {
        await host.RunAsync().ConfigureAwait(false);
    }
    catch (OperationCanceledException) when (stopping.IsCancellationRequested)
    {
        // Asked to stop (SIGTERM) while still starting: a clean stop, not a failure.
    }

    return lifetime.ExitCode;
}
catch (OptionsValidationException ex)
{
    Console.Error.WriteLine("edgemail: the configuration is invalid:");
    foreach (string failure in ex.Failures)
    {
        Console.Error.WriteLine("  - " + failure);
    }

    return 2;
}
#pragma warning disable CA1031 // Whatever stopped the start, say it in one line and exit non-zero instead of aborting with a crash dump.
catch (Exception ex)
#pragma warning restore CA1031
{
    Console.Error.WriteLine($"edgemail: cannot start: {ex.Message}");
    return 1;
}
