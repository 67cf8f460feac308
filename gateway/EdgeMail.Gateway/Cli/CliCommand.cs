using System.CommandLine;
using System.Text.RegularExpressions;
using EdgeMail.Gateway.Configuration;

namespace EdgeMail.Gateway.Cli;

/// <summary>The options several commands share; one set per parse.</summary>
public sealed class CliOptions
{
    /// <summary><c>--config FILE</c>, on every command.</summary>
    public Option<string?> Config { get; } = new("--config")
    {
        Description = "The gateway's configuration file (default: $EDGEMAIL_CONFIG; the appliance's is /etc/edgemail/edgemail.json). "
            + "--Section:Key=value arguments override it, as EDGEMAIL_Section__Key variables do",
        HelpName = "FILE",
        Recursive = true,
    };

    /// <summary><c>--json</c>: the API's JSON instead of tables.</summary>
    public Option<bool> Json { get; } = new("--json") { Description = "Print JSON (the HTTP API's) instead of a table, for scripts" };

    /// <summary><c>--url</c>: the console to talk to.</summary>
    public Option<string?> Url { get; } = new("--url")
    {
        Description = "The gateway's console, e.g. http://127.0.0.1:8088 (default: from Console:BindAddress and Console:Port)",
        HelpName = "URL",
    };

    /// <summary><c>--api-key-file</c>: where the API key is.</summary>
    public Option<string?> ApiKeyFile { get; } = new("--api-key-file")
    {
        Description = "File holding an API key (default: DataDirectory/cli-api-key, which the gateway writes at start, mode 600)",
        HelpName = "FILE",
    };
}

/// <summary>One invocation of a command: its parse, its streams and the shared options.</summary>
/// <param name="Parse">The parsed command line.</param>
/// <param name="Io">Standard streams.</param>
/// <param name="Options">The shared options.</param>
public sealed partial record CliContext(ParseResult Parse, CliIO Io, CliOptions Options)
{
    /// <summary>Whether <c>--json</c> was given.</summary>
    public bool Json => Parse.GetValue(Options.Json);

    /// <summary>The configuration named on the command line, with its overrides.</summary>
    /// <returns>The configuration.</returns>
    /// <exception cref="CliException">A stray argument that is not an override (a mistyped command).</exception>
    public GatewayConfig Configuration()
    {
        var tokens = Parse.UnmatchedTokens;
        for (int i = 0; i < tokens.Count; i++)
        {
            // "--Key=value", or "--Key value" as the command-line configuration provider also reads it.
            bool isKey = OverrideRegex().IsMatch(tokens[i]);
            bool isValue = i > 0 && !tokens[i - 1].Contains('=', StringComparison.Ordinal) && OverrideRegex().IsMatch(tokens[i - 1]) && !tokens[i].StartsWith('-');
            if (!isKey && !isValue)
            {
                throw new CliException(ExitCodes.Usage,
                    $"'{tokens[i]}' is neither a command nor a --Section:Key=value override. Run '{EdgemailCli.Name} --help' for the commands.");
            }
        }

        return new GatewayConfig(Parse.GetValue(Options.Config), [.. tokens]);
    }

    [GeneratedRegex(@"^--[A-Za-z][^=\s]*(=.*)?$", RegexOptions.Singleline)]
    private static partial Regex OverrideRegex();
}

/// <summary>Builds commands whose failures are <see cref="CliException"/>s printed as one line.</summary>
public static class CliCommand
{
    /// <summary>Sets <paramref name="command"/>'s action; a <see cref="CliException"/> is printed and becomes the exit code.</summary>
    /// <param name="command">The command.</param>
    /// <param name="options">The shared options.</param>
    /// <param name="io">Standard streams.</param>
    /// <param name="action">What it does; returns the exit code.</param>
    public static void SetAction(Command command, CliOptions options, CliIO io, Func<CliContext, CancellationToken, Task<int>> action)
    {
        ArgumentNullException.ThrowIfNull(command);
        command.SetAction(async (parse, ct) =>
        {
            try
            {
                return await action(new CliContext(parse, io, options), ct).ConfigureAwait(false);
            }
            catch (CliException ex)
            {
                await io.Error.WriteLineAsync($"{EdgemailCli.Name}: {ex.Message}").ConfigureAwait(false);
                return ex.ExitCode;
            }
        });
    }

    /// <summary>
    /// A command that needs the gateway's validated configuration (as <c>run</c> would check it): an invalid one is
    /// printed, key by key, and exits 2 before <paramref name="action"/> runs. It takes <c>--Section:Key=value</c> overrides.
    /// </summary>
    /// <param name="name">Command name.</param>
    /// <param name="description">Its help.</param>
    /// <param name="options">The shared options.</param>
    /// <param name="io">Standard streams.</param>
    /// <param name="action">What it does with the options; returns the exit code.</param>
    /// <param name="extra">Its own options.</param>
    /// <returns>The command.</returns>
    public static Command Configured(string name, string description, CliOptions options, CliIO io,
        Func<GatewayOptions, CliContext, CancellationToken, Task<int>> action, params Option[] extra) =>
        Checked(name, description, options, io, (check, c, ct) => action(check.Options, c, ct), extra);

    /// <summary>As <see cref="Configured"/>, handing over the whole check (the built host's other options too).</summary>
    /// <param name="name">Command name.</param>
    /// <param name="description">Its help.</param>
    /// <param name="options">The shared options.</param>
    /// <param name="io">Standard streams.</param>
    /// <param name="action">What it does with the valid configuration; returns the exit code.</param>
    /// <param name="extra">Its own options.</param>
    /// <returns>The command.</returns>
    public static Command Checked(string name, string description, CliOptions options, CliIO io,
        Func<ConfigCheck, CliContext, CancellationToken, Task<int>> action, params Option[] extra)
    {
        ArgumentNullException.ThrowIfNull(extra);
        var command = new Command(name, description) { TreatUnmatchedTokensAsErrors = false };
        foreach (var option in extra)
        {
            command.Options.Add(option);
        }

        SetAction(command, options, io, async (c, ct) =>
        {
            using var check = await c.Configuration().CheckAsync(ct).ConfigureAwait(false);
            await RequireValidAsync(check, c).ConfigureAwait(false);
            return await action(check, c, ct).ConfigureAwait(false);
        });
        return command;
    }

    /// <summary>Prints the configuration's problems and fails with exit code 2 when there are any.</summary>
    /// <param name="check">The check.</param>
    /// <param name="c">The invocation.</param>
    /// <returns>A task.</returns>
    /// <exception cref="CliException">The configuration is invalid (2).</exception>
    public static async Task RequireValidAsync(ConfigCheck check, CliContext c)
    {
        ArgumentNullException.ThrowIfNull(check);
        ArgumentNullException.ThrowIfNull(c);
        if (check.Demo)
        {
            throw new CliException(ExitCodes.InvalidConfiguration, DemoMessage);
        }

        if (check.Problems.Count > 0)
        {
            await c.Io.Error.WriteLineAsync($"{EdgemailCli.Name}: the configuration ({c.Configuration().Describe}) is invalid:").ConfigureAwait(false);
            foreach (string problem in check.Problems)
            {
                await c.Io.Error.WriteLineAsync("  - " + problem).ConfigureAwait(false);
            }

            throw new CliException(ExitCodes.InvalidConfiguration, $"{check.Problems.Count} problem(s) in the configuration; correct them and run '{EdgemailCli.Name} check-config' again");
        }
    }

    /// <summary>What is said when there is nothing to check.</summary>
    public const string DemoMessage =
        "no configuration file (--config FILE or EDGEMAIL_CONFIG) and no device configured: 'edgemail run' would start in demo mode on generated devices; nothing to check";
}
