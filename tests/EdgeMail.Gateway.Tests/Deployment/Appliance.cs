using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Versioning;
using Xunit;

namespace EdgeMail.Gateway.Tests.Deployment;

/// <summary>The files of <c>hardware/gateway-appliance</c> and small tools to run its scripts in tests.</summary>
[SupportedOSPlatform("linux")]
internal static class Appliance
{
    public const string UnitName = "edgemail-gateway.service";

    /// <summary>The folder holding the unit, the scripts and the config template.</summary>
    public static string Directory { get; } = Locate();

    public static string UnitFile => Path.Combine(Directory, UnitName);

    public static string Template => Path.Combine(Directory, "edgemail.json");

    public static string InstallScript => Path.Combine(Directory, "install.sh");

    public static string UninstallScript => Path.Combine(Directory, "uninstall.sh");

    /// <summary>A new empty directory under the temp folder, short enough for a unix socket path.</summary>
    public static string NewTempDirectory()
    {
        string dir = Path.Combine(Path.GetTempPath(), "edgemail-appl-" + Guid.NewGuid().ToString("N")[..12]);
        System.IO.Directory.CreateDirectory(dir);
        return dir;
    }

    public static void DeleteQuietly(string dir)
    {
        try
        {
            System.IO.Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    /// <summary>Runs a program to its end and returns its exit code and output.</summary>
    public static async Task<(int ExitCode, string Stdout, string Stderr)> RunAsync(string program, params string[] args)
    {
        var psi = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in args)
        {
            psi.ArgumentList.Add(arg);
        }

        using var process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {program}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        return (process.ExitCode, await stdout, await stderr);
    }

    /// <summary>
    /// Stages an install with <c>install.sh --root</c> from a stand-in publish output (one executable
    /// <c>EdgeMail.Gateway</c>): the layout, the unit and the configuration are the real ones.
    /// </summary>
    public static async Task<string> StageInstallAsync(string workDir, params string[] options)
    {
        string payload = Path.Combine(workDir, "payload");
        System.IO.Directory.CreateDirectory(payload);
        string exe = Path.Combine(payload, "EdgeMail.Gateway");
        File.WriteAllText(exe, "#!/bin/sh\nexit 0\n");
        File.SetUnixFileMode(exe, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        string root = Path.Combine(workDir, "root");
        var (code, stdout, stderr) = await RunAsync("bash", [InstallScript, "--root", root, "--from", payload, .. options]);
        Assert.True(code == 0, $"install.sh exited {code}:\n{stdout}\n{stderr}");
        return root;
    }

    /// <summary>
    /// The unit file as systemd reads it, reduced to what the tests need: (section, key) to every assigned value
    /// in order. Comment lines (# and ;) are skipped; a trailing backslash continues a line.
    /// </summary>
    public static Dictionary<(string Section, string Key), List<string>> ParseUnit(string text)
    {
        var result = new Dictionary<(string, string), List<string>>();
        string section = string.Empty;
        string pending = string.Empty;
        foreach (string raw in text.Split('\n'))
        {
            string line = (pending + raw).Trim();
            pending = string.Empty;
            if (line.Length == 0 || line[0] is '#' or ';')
            {
                continue;
            }

            if (line.EndsWith('\\'))
            {
                pending = line[..^1] + " ";
                continue;
            }

            if (line[0] == '[' && line[^1] == ']')
            {
                section = line[1..^1];
                continue;
            }

            int eq = line.IndexOf('=', StringComparison.Ordinal);
            Assert.True(eq > 0, $"not a key=value line in the unit: '{line}'");
            var key = (section, line[..eq].Trim());
            if (!result.TryGetValue(key, out var values))
            {
                result[key] = values = [];
            }

            values.Add(line[(eq + 1)..].Trim());
        }

        return result;
    }

    private static string Locate([CallerFilePath] string thisFile = "")
    {
        // The source path works for a build from the checkout; a CI build maps it (PathMap), and then the test
        // output folder, which lies inside the checkout, leads to it.
        var starts = new[] { Path.GetDirectoryName(thisFile) ?? string.Empty, AppContext.BaseDirectory, Environment.CurrentDirectory };
        foreach (string start in starts.Where(s => s.Length > 0))
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                string candidate = Path.Combine(dir.FullName, "hardware", "gateway-appliance");
                if (File.Exists(Path.Combine(candidate, UnitName)))
                {
                    return candidate;
                }
            }
        }

        throw new InvalidOperationException("hardware/gateway-appliance not found above " + string.Join(" or ", starts));
    }
}
