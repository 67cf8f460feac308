using System.Diagnostics;
using EdgeMail.Testing;

namespace EdgeMail.Gateway.Tests.Smtp;

/// <summary>Runs a peer program (swaks, mosquitto_pub, ...) to completion with a deadline and captures its output.</summary>
public static class PeerProcess
{
    public static async Task<(int ExitCode, string Output)> RunAsync(string program, string package, IEnumerable<string> args, TimeSpan? timeout = null)
    {
        var info = new ProcessStartInfo(Peers.Require(program, package))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in args)
        {
            info.ArgumentList.Add(a);
        }

        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout ?? Await.DefaultTimeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{program} did not finish: {string.Join(' ', args)}");
        }

        return (process.ExitCode, await stdout + await stderr);
    }
}
