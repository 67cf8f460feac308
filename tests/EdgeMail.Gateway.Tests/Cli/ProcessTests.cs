using System.Diagnostics;
using EdgeMail.Gateway.Cli;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Cli;

/// <summary>The built executable as a script or systemd runs it: help, exit codes, standard input.</summary>
public sealed class ProcessTests : TempDirectory
{
    [Fact]
    public async Task Help_IsEdgemailsWithTheCommandsAndExitCodes_AndStartsNothing()
    {
        var help = await RunAsync(null, "--help");
        Assert.True(help.Code == 0, help.ToString());
        Assert.Contains("edgemail [command] [options]", help.Out, StringComparison.Ordinal);
        foreach (string command in new[] { "run", "check-config", "hash-secret", "admin", "doctor", "devices", "queue", "alerts", "send-test" })
        {
            Assert.Contains("\n  " + command + " ", help.Out, StringComparison.Ordinal);
        }

        Assert.Contains("Exit codes: 0 done", help.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("listening", help.Out + help.Error, StringComparison.OrdinalIgnoreCase);

        var sub = await RunAsync(null, "queue", "cancel", "--help");
        Assert.True(sub.Code == 0, sub.ToString());
        Assert.Contains("edgemail queue cancel <MAIL> [options]", sub.Out, StringComparison.Ordinal);
        var version = await RunAsync(null, "doctor", "--version");
        Assert.True(version.Code == 0 && version.Out.Trim().Length > 0, version.ToString());
    }

    [Fact]
    public async Task ExitCodes_ForScripts()
    {
        Assert.Equal(ExitCodes.Usage, (await RunAsync(null, "devces", "list")).Code);

        string config = TestGateway.WriteConfig(Dir, tweak: c => c["Relay"] = new { Mode = "Smarthost" });
        // systemd's unit does not restart on 2: 'run' (and the default) exits 2 on an invalid configuration.
        var run = await RunAsync(null, "--config", config);
        Assert.True(run.Code == ExitCodes.InvalidConfiguration, run.ToString());
        Assert.Contains("Relay:Host", run.Error, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.InvalidConfiguration, (await RunAsync(null, "check-config", "--config", config)).Code);

        var down = await RunAsync(null, "devices", "list", "--url", "http://127.0.0.1:" + Loopback.FreePort(), "--api-key-file", config);
        Assert.True(down.Code == ExitCodes.Unreachable, down.ToString());
    }

    [Fact]
    public async Task HashSecret_FromAPipe()
    {
        var hashed = await RunAsync("piped device secret\n", "hash-secret");
        Assert.True(hashed.Code == 0, hashed.ToString());
        Assert.True(SecretHash.Verify(hashed.Out.Trim(), "piped device secret"u8));
    }

    private static async Task<CliResult> RunAsync(string? stdin, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "EdgeMail.Gateway.dll"));
        foreach (string arg in args)
        {
            psi.ArgumentList.Add(arg);
        }

        psi.Environment.Remove(GatewayConfig.FileVariable);
        using var process = Process.Start(psi)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        await process.StandardInput.WriteAsync(stdin ?? string.Empty);
        process.StandardInput.Close();
        await Await.Within(process.WaitForExitAsync().ContinueWith(_ => true), "edgemail " + string.Join(' ', args), TimeSpan.FromSeconds(60));
        return new CliResult(process.ExitCode, await output, await error);
    }
}
