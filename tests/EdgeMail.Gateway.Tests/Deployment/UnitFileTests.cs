using System.Runtime.Versioning;
using EdgeMail.Gateway.Configuration;
using Microsoft.Extensions.Configuration;
using EdgeMail.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Deployment;

/// <summary>The systemd unit says what the deployment promises, and agrees with what install.sh installs.</summary>
[SupportedOSPlatform("linux")]
public sealed class UnitFileTests : IDisposable
{
    private readonly string _dir = Appliance.NewTempDirectory();

    public void Dispose() => Appliance.DeleteQuietly(_dir);

    private static Dictionary<(string Section, string Key), List<string>> Unit => Appliance.ParseUnit(File.ReadAllText(Appliance.UnitFile));

    [Theory]
    [InlineData("Type", "notify")]
    [InlineData("User", "edgemail")]
    [InlineData("Group", "edgemail")]
    [InlineData("StateDirectory", "edgemail")]
    [InlineData("ConfigurationDirectory", "edgemail")]
    [InlineData("ConfigurationDirectoryMode", "0750")]
    [InlineData("Restart", "on-failure")]
    [InlineData("RestartPreventExitStatus", "2")]
    [InlineData("NoNewPrivileges", "yes")]
    [InlineData("ProtectSystem", "strict")]
    [InlineData("ProtectHome", "yes")]
    [InlineData("PrivateTmp", "yes")]
    [InlineData("PrivateDevices", "yes")]
    [InlineData("CapabilityBoundingSet", "")]
    [InlineData("AmbientCapabilities", "")]
    [InlineData("KillSignal", "SIGTERM")]
    public void Unit_Service_HasDirective(string key, string value)
    {
        Assert.True(Unit.TryGetValue(("Service", key), out var values), $"[Service] {key}= is missing");
        Assert.Equal(value, Assert.Single(values));
    }

    [Fact]
    public void Unit_AddressFamilies_AreInternetUnixAndNetlinkOnly()
    {
        string families = Assert.Single(Unit[("Service", "RestrictAddressFamilies")]);
        Assert.Equal(["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"], families.Split(' ', StringSplitOptions.RemoveEmptyEntries).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Unit_Limits_AllowTenThousandDevicesAndAGracefulStop()
    {
        Assert.True(int.Parse(Assert.Single(Unit[("Service", "LimitNOFILE")]), System.Globalization.CultureInfo.InvariantCulture) >= 20_000);
        // The host gives its services time to stop (relay attempts under way record their results); systemd must wait
        // longer before it kills, with the appliance's own configuration.
        var options = new GatewayOptions();
        new ConfigurationBuilder().AddConfigFile(Appliance.Template).Build().Bind(options);
        var hostLimit = GatewayHost.ShutdownTimeout(options.Relay.Timeout);
        string stop = Assert.Single(Unit[("Service", "TimeoutStopSec")]);
        Assert.EndsWith("s", stop, StringComparison.Ordinal);
        Assert.True(int.Parse(stop[..^1], System.Globalization.CultureInfo.InvariantCulture) > hostLimit.TotalSeconds, $"TimeoutStopSec={stop}, host {hostLimit}");
        Assert.False(Unit.ContainsKey(("Service", "MemoryDenyWriteExecute")), "the .NET JIT needs writable executable memory");
        Assert.Equal("multi-user.target", Assert.Single(Unit[("Install", "WantedBy")]));
    }

    [Fact]
    public async Task Unit_ExecStart_RunsWhatInstallShInstallsOnTheConfigItWrites()
    {
        string root = await Appliance.StageInstallAsync(_dir);
        string execStart = Assert.Single(Unit[("Service", "ExecStart")]);
        string[] argv = execStart.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(["/opt/edgemail/EdgeMail.Gateway", "--config", "/etc/edgemail/edgemail.json"], argv);

        string exe = Path.Combine(root, argv[0].TrimStart('/'));
        Assert.True(File.Exists(exe), $"install.sh did not install {argv[0]}");
        Assert.True(File.GetUnixFileMode(exe).HasFlag(UnixFileMode.UserExecute));

        string config = Path.Combine(root, argv[2].TrimStart('/'));
        Assert.True(File.Exists(config), $"install.sh did not write {argv[2]}");
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead, File.GetUnixFileMode(config));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute,
            File.GetUnixFileMode(Path.GetDirectoryName(config)!));
        Assert.Equal("/etc/" + Assert.Single(Unit[("Service", "ConfigurationDirectory")]), Path.GetDirectoryName(argv[2]));

        Assert.Equal(File.ReadAllText(Appliance.UnitFile), File.ReadAllText(Path.Combine(root, "etc", "systemd", "system", Appliance.UnitName)));
        Assert.True(Directory.Exists(Path.Combine(root, "var", "lib", Assert.Single(Unit[("Service", "StateDirectory")]))));
        Assert.False(Directory.Exists(Path.Combine(root, "etc", "systemd", "system", Appliance.UnitName + ".d")), "no drop-in without options");
    }

    [Fact]
    public async Task InstallSh_PrivilegedPorts_AddsOnlyNetBindServiceInADropIn()
    {
        string root = await Appliance.StageInstallAsync(_dir, "--privileged-ports");
        string dropIn = Path.Combine(root, "etc", "systemd", "system", Appliance.UnitName + ".d", "10-privileged-ports.conf");
        var parsed = Appliance.ParseUnit(File.ReadAllText(dropIn));
        Assert.Equal("CAP_NET_BIND_SERVICE", Assert.Single(parsed[("Service", "CapabilityBoundingSet")]));
        Assert.Equal("CAP_NET_BIND_SERVICE", Assert.Single(parsed[("Service", "AmbientCapabilities")]));
        Assert.Equal(2, parsed.Count);
    }

    [Fact]
    public async Task InstallSh_Rerun_KeepsTheEditedConfigAndThePreviousBinaries()
    {
        string root = await Appliance.StageInstallAsync(_dir);
        string config = Path.Combine(root, "etc", "edgemail", "edgemail.json");
        File.AppendAllText(config, "\n");
        string edited = File.ReadAllText(config);

        await Appliance.StageInstallAsync(_dir, "--mqtt-bind", "0.0.0.0");
        Assert.Equal(edited, File.ReadAllText(config));
        Assert.True(File.Exists(Path.Combine(root, "opt", "edgemail.old", "EdgeMail.Gateway")));
    }

    [Fact]
    public async Task UninstallSh_WithoutPurge_KeepsSpoolAndConfig_WithPurgeRemovesThem()
    {
        string root = await Appliance.StageInstallAsync(_dir);
        string state = Path.Combine(root, "var", "lib", "edgemail");
        foreach (string file in new[] { "spool.db", "spool.db-wal", "spool.db-shm" })
        {
            File.WriteAllText(Path.Combine(state, file), "x");
        }

        var (code, stdout, stderr) = await Appliance.RunAsync("bash", Appliance.UninstallScript, "--root", root);
        Assert.True(code == 0, stdout + stderr);
        Assert.False(Directory.Exists(Path.Combine(root, "opt", "edgemail")));
        Assert.False(File.Exists(Path.Combine(root, "etc", "systemd", "system", Appliance.UnitName)));
        Assert.Equal(3, Directory.GetFiles(state, "spool.db*").Length);
        Assert.True(File.Exists(Path.Combine(root, "etc", "edgemail", "edgemail.json")));

        (code, stdout, stderr) = await Appliance.RunAsync("bash", Appliance.UninstallScript, "--root", root, "--purge");
        Assert.True(code == 0, stdout + stderr);
        Assert.False(Directory.Exists(state));
        Assert.False(Directory.Exists(Path.Combine(root, "etc", "edgemail")));
    }

    [Theory]
    [InlineData("install.sh")]
    [InlineData("uninstall.sh")]
    public async Task Script_ParsesWithBashDashN(string script)
    {
        var (code, _, stderr) = await Appliance.RunAsync("bash", "-n", Path.Combine(Appliance.Directory, script));
        Assert.True(code == 0, stderr);
    }

    [PeerFact("shellcheck:shellcheck")]
    public async Task Scripts_PassShellcheck()
    {
        var (code, stdout, stderr) = await Appliance.RunAsync("shellcheck", Appliance.InstallScript, Appliance.UninstallScript);
        Assert.True(code == 0, stdout + stderr);
    }

    [PeerFact("systemd-analyze:systemd")]
    public async Task SystemdAnalyzeVerify_StagedInstall_ReportsNothing()
    {
        // Verified inside the staged tree, so ExecStart's /opt/edgemail/EdgeMail.Gateway is the one install.sh put
        // there; the targets the unit names (sysinit, network-online, multi-user) come from this machine's systemd.
        string root = await Appliance.StageInstallAsync(_dir, "--privileged-ports");
        string systemUnits = Path.Combine(root, "usr", "lib", "systemd", "system");
        Directory.CreateDirectory(systemUnits);
        string hostUnits = Directory.Exists("/usr/lib/systemd/system") ? "/usr/lib/systemd/system" : "/lib/systemd/system";
        foreach (string file in Directory.GetFiles(hostUnits, "*.target"))
        {
            File.Copy(file, Path.Combine(systemUnits, Path.GetFileName(file)));
        }

        var (code, stdout, stderr) = await Appliance.RunAsync(Peers.Find("systemd-analyze")!, "verify", "--root=" + root, Appliance.UnitName);
        Assert.True(code == 0, $"systemd-analyze verify exited {code}:\n{stdout}{stderr}");
        // verify exits 0 on a line it ignores ("Unknown key name", "Failed to parse ... ignoring"): any output is a finding.
        Assert.Equal(string.Empty, (stdout + stderr).Trim());
    }
}
