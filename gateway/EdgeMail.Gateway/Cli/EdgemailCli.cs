using System.CommandLine;
using EdgeMail.Gateway.Relay;

namespace EdgeMail.Gateway.Cli;

/// <summary>
/// <c>edgemail</c>: the gateway executable's command line. With no command it runs the gateway (as systemd starts
/// it); the other commands check and repair its configuration and machine, or talk to the running gateway through
/// its console's HTTP API with the key the gateway leaves in its data directory.
/// </summary>
public static class EdgemailCli
{
    /// <summary>The command's name in help and messages (the appliance installs it as /usr/local/bin/edgemail).</summary>
    public const string Name = "edgemail";

    /// <summary>Parses <paramref name="args"/> and runs the command.</summary>
    /// <param name="args">The command line, without the program.</param>
    /// <param name="io">Standard streams.</param>
    /// <param name="cancellationToken">Cancellation (tests); the gateway itself stops on SIGTERM and Ctrl+C.</param>
    /// <returns>The exit code (<see cref="ExitCodes"/>).</returns>
    public static async Task<int> InvokeAsync(string[] args, CliIO io, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(io);
        var root = Build(io);
        var parse = root.Parse(args, new ParserConfiguration { ResponseFileTokenReplacer = null });
        var invocation = new InvocationConfiguration
        {
            Output = io.Out,
            Error = io.Error,
            // The generic host handles SIGTERM and Ctrl+C itself (a graceful stop of up to 30 s): System.CommandLine must
            // not exit the process after its own 2 s.
            ProcessTerminationTimeout = null,
        };
        if (parse.Errors.Count > 0)
        {
            foreach (var error in parse.Errors)
            {
                await io.Error.WriteLineAsync($"{Name}: {error.Message}").ConfigureAwait(false);
            }

            await io.Error.WriteLineAsync($"Run '{Name} --help' for the commands and their options.").ConfigureAwait(false);
            return ExitCodes.Usage;
        }

        return await parse.InvokeAsync(invocation, cancellationToken).ConfigureAwait(false);
    }

    private static Command Build(CliIO io)
    {
        var root = new Command(Name, "EdgeMail gateway: device alerts over MQTT and SMTP to mail. Without a command it runs the gateway (as 'run').")
        {
            TreatUnmatchedTokensAsErrors = false,
        };
        root.Note(ExitCodes.Help);
        root.Options.Add(CliHelp.Option());
        root.Options.Add(new VersionOption { Recursive = true });
        var options = new CliOptions();
        root.Options.Add(options.Config);
        RunCommand.Add(root, options, io);
        ConfigCommands.Add(root, options, io);
        var doctor = DoctorCommand.Add(root, options, io);
        RemoteCommands.Add(root, options, io);

        var relay = new Command("relay", "The smarthost account: sign in for Relay:Auth = OAuth2RefreshToken");
        relay.Subcommands.Add(CliCommand.Configured("login", "Sign in once as Relay:User (device code or browser); the refresh token is stored encrypted",
            options, io, (gateway, c, ct) => RelayLogin.RunAsync(gateway, c.Io.In, c.Io.Out, ct)));
        root.Subcommands.Add(relay);
        var sendTest = new Option<bool>("--send-test") { Description = "Also send a test mail through the relay" };
        var to = new Option<string?>("--to") { Description = "Its recipient (default: Sender:Operator)" };
        doctor.Subcommands.Add(CliCommand.Configured("relay", "Check the smarthost step by step: name, TCP, TLS, token, AUTH, a test mail",
            options, io, (gateway, c, ct) => RelayDoctor.RunAsync(gateway, c.Io.Out, c.Parse.GetValue(sendTest), c.Parse.GetValue(to), ct), sendTest, to));
        return root;
    }
}
