using System.Globalization;
using EdgeMail.Gateway.Cli;

namespace EdgeMail.Gateway.Tests.Cli;

/// <summary>What a command printed and exited with.</summary>
public sealed record CliResult(int Code, string Out, string Error)
{
    public override string ToString() => $"exit {Code}\n--- stdout\n{Out}--- stderr\n{Error}";
}

/// <summary>Runs <c>edgemail</c> in this process, the real root command with captured streams.</summary>
internal static class CliRun
{
    public static async Task<CliResult> RunWithInputAsync(string stdin, params string[] args)
    {
        using var output = new StringWriter(CultureInfo.InvariantCulture);
        using var error = new StringWriter(CultureInfo.InvariantCulture);
        using var input = new StringReader(stdin);
        int code = await EdgemailCli.InvokeAsync(args, new CliIO(input, output, error, InputIsTerminal: false, OutputIsTerminal: false));
        return new CliResult(code, output.ToString(), error.ToString());
    }

    public static Task<CliResult> RunAsync(params string[] args) => RunWithInputAsync(string.Empty, args);

    /// <summary>The options that point the CLI at a test gateway the way the appliance does: its configuration file (with the console's real port).</summary>
    public static string[] At(TestGateway gw) =>
        ["--config", Path.Combine(gw.DataDir, "edgemail.json"), "--Console:Port=" + gw.ConsoleAddress.Port.ToString(CultureInfo.InvariantCulture)];
}
