using EdgeMail.Gateway.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Xunit;

namespace EdgeMail.Gateway.Tests.Configuration;

public sealed class CommandLineTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Overrides_AfterAnAbsoluteConfigPath_WinOverTheFile(bool separateValue)
    {
        string dir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        string config = TestGateway.WriteConfig(dir);
        try
        {
            string[] head = separateValue ? ["--config", config] : ["--config=" + config];
            using var host = GatewayHost.CreateBuilder([.. head, "--DataDirectory=/srv/edgemail-override", "--Sender:Hostname=gw2.test"]).Build();

            var options = host.Services.GetRequiredService<IOptions<GatewayOptions>>().Value;

            Assert.StartsWith("/", config, StringComparison.Ordinal);
            Assert.Equal("/srv/edgemail-override", options.DataDirectory); // the file says otherwise
            Assert.Equal("gw2.test", options.Sender.Hostname);
            Assert.Equal(3, options.Devices.Count); // and the file was read
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
