using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using System.Runtime.CompilerServices;

namespace EdgeMail.Gateway.Cli;

/// <summary>
/// <c>--help</c> as System.CommandLine writes it, followed by what its layout has no place for: a command's exit codes,
/// and what the extra arguments of the commands that read the configuration are.
/// </summary>
public static class CliHelp
{
    private static readonly ConditionalWeakTable<Command, string> Notes = [];

    /// <summary>Gives <paramref name="command"/> a note printed at the end of its help.</summary>
    /// <param name="command">The command.</param>
    /// <param name="note">The text.</param>
    /// <returns>The command.</returns>
    public static Command Note(this Command command, string note)
    {
        Notes.AddOrUpdate(command, note);
        return command;
    }

    /// <summary>The help option for the root (recursive: every command has it).</summary>
    /// <returns>The option.</returns>
    public static HelpOption Option()
    {
        var help = new HelpOption();
        help.Action = new WithNotes((HelpAction)help.Action!);
        return help;
    }

    private sealed class WithNotes(HelpAction inner) : SynchronousCommandLineAction
    {
        public override bool ClearsParseErrors => true;

        public override int Invoke(ParseResult parseResult)
        {
            int result = inner.Invoke(parseResult);
            var command = parseResult.CommandResult.Command;
            var output = parseResult.InvocationConfiguration.Output;
            if (!command.TreatUnmatchedTokensAsErrors)
            {
                output.WriteLine("Additional arguments: configuration overrides --Section:Key=value (e.g. --Console:Port=8089), applied after the file and");
                output.WriteLine("EDGEMAIL_Section__Key environment variables.");
                output.WriteLine();
            }

            if (Notes.TryGetValue(command, out string? note))
            {
                output.WriteLine(note);
                output.WriteLine();
            }

            return result;
        }
    }
}
