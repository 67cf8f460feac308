using System.CommandLine;
using System.Globalization;
using EdgeMail.Simulation.Boards;
using Spectre.Console;

namespace EdgeMail.Emulator;

/// <summary>The emulator's command line: one verb per job.</summary>
public static class EmulatorCli
{
    /// <summary>Parses <paramref name="args"/> and runs the chosen command.</summary>
    /// <param name="args">Command-line arguments.</param>
    /// <param name="stdout">Where results go.</param>
    /// <param name="stderr">Where errors and progress go.</param>
    /// <returns>The process exit code: 0 on success.</returns>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var boardsDir = new Option<string?>("--boards") { Description = "Folder of board profiles (default: hardware/boards above the current directory)" };

        var boards = new Command("boards", "List the board profiles the emulator can run, with their flash geometry");
        boards.Options.Add(boardsDir);
        boards.SetAction(parse => ListBoards(parse.GetValue(boardsDir), stdout, stderr));

        var root = new RootCommand("EdgeMail device emulator: runs the firmware core on virtual boards");
        root.Subcommands.Add(boards);
        root.Subcommands.Add(RunCommand.Create(boardsDir, stdout, stderr));
        root.Subcommands.Add(TortureCommand.Create(boardsDir, stdout, stderr));
        root.Subcommands.Add(BenchCommand.Create(boardsDir, stdout, stderr));
        root.Subcommands.Add(Chaos.ChaosCommand.Create(boardsDir, stdout, stderr));
        var config = new InvocationConfiguration { Output = stdout, Error = stderr };
        return root.Parse(args).Invoke(config);
    }

    private static int ListBoards(string? directory, TextWriter stdout, TextWriter stderr)
    {
        try
        {
            string dir = directory ?? BoardProfile.FindBoardsDirectory();
            foreach (var p in BoardProfile.LoadAll(dir))
            {
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{p.Id,-22} {p.Flash.SizeBytes / 1024,8} KiB  sector {p.Flash.EraseSectorBytes,5} B  page {p.Flash.PageBytes,4} B  unit {p.Flash.ProgramUnitBytes,2} B  {(p.Flash.AllowsReprogram ? "reprogram ok" : "no reprogram")}  {p.Name}"));
            }

            return 0;
        }
        catch (Exception ex) when (ex is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            stderr.WriteLine($"error: {ex.Message}");
            return 2;
        }
    }

    internal static IAnsiConsole Console(TextWriter writer, bool interactive)
    {
        IAnsiConsole console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = interactive ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = interactive ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = interactive ? InteractionSupport.Yes : InteractionSupport.No,
        });
        if (!interactive)
        {
            console.Profile.Width = 200;
        }

        return console;
    }
}
