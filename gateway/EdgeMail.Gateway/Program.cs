using EdgeMail.Gateway;
using EdgeMail.Gateway.Configuration;
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

try
{
    using var host = GatewayHost.CreateBuilder(args).Build();
    await host.RunAsync().ConfigureAwait(false);
    return 0;
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
