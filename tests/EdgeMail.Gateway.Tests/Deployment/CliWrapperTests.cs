using System.Runtime.Versioning;
using Xunit;

namespace EdgeMail.Gateway.Tests.Deployment;

/// <summary>install.sh puts the CLI on PATH as <c>edgemail</c>: the gateway executable on the appliance's configuration, never the gateway itself.</summary>
[SupportedOSPlatform("linux")]
public sealed class CliWrapperTests : IDisposable
{
    private readonly string _dir = Appliance.NewTempDirectory();

    public void Dispose() => Appliance.DeleteQuietly(_dir);

    [Fact]
    public async Task Edgemail_PassesCommandsWithTheAppliancesConfiguration_RefusesToRunTheGateway_AndUninstallRemovesIt()
    {
        string root = await Appliance.StageInstallAsync(_dir);
        string wrapper = Path.Combine(root, "usr", "local", "bin", "edgemail");
        Assert.True(File.Exists(wrapper));
        Assert.Equal(UnixFileMode.UserExecute, File.GetUnixFileMode(wrapper) & UnixFileMode.UserExecute);

        // The staged copy execs /opt/edgemail/EdgeMail.Gateway; a stand-in there says what it was given.
        string probe = Path.Combine(_dir, "gateway-probe");
        File.WriteAllText(probe, "#!/bin/sh\necho \"config=$EDGEMAIL_CONFIG args=$*\"\n");
        File.SetUnixFileMode(probe, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        string testable = Path.Combine(_dir, "edgemail");
        File.WriteAllText(testable, File.ReadAllText(wrapper).Replace("/opt/edgemail/EdgeMail.Gateway \"$@\"", probe + " \"$@\"", StringComparison.Ordinal));

        var (code, stdout, stderr) = await Appliance.RunAsync("sh", testable, "devices", "list", "--json");
        Assert.True(code == 0, stderr);
        Assert.Equal("config=/etc/edgemail/edgemail.json args=devices list --json", stdout.Trim());
        (code, stdout, _) = await Appliance.RunAsync("sh", testable, "--config", "/srv/other.json", "doctor");
        Assert.Equal("config=/etc/edgemail/edgemail.json args=--config /srv/other.json doctor", stdout.Trim()); // --config still wins inside

        foreach (string[] gateway in new[] { Array.Empty<string>(), ["run"], ["--config", "/etc/edgemail/edgemail.json"] })
        {
            (code, stdout, stderr) = await Appliance.RunAsync("sh", [testable, .. gateway]);
            Assert.Equal(64, code);
            Assert.Empty(stdout);
            Assert.Contains("systemctl start edgemail-gateway", stderr, StringComparison.Ordinal);
        }

        (code, _, stderr) = await Appliance.RunAsync("bash", Appliance.UninstallScript, "--root", root);
        Assert.True(code == 0, stderr);
        Assert.False(File.Exists(wrapper));
    }
}
