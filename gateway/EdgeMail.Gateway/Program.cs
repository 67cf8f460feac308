using EdgeMail.Gateway;
using Microsoft.Extensions.Hosting;

using var host = GatewayHost.CreateBuilder(args).Build();
await host.RunAsync().ConfigureAwait(false);
