using System.Text;
using Spectre.Console;

namespace EdgeMail.Gateway.Cli;

/// <summary>
/// Where a command reads and writes: the process's standard streams, or (in tests) strings. Tables go through
/// Spectre.Console, with colour only on a terminal.
/// </summary>
/// <param name="In">Standard input.</param>
/// <param name="Out">Standard output: results.</param>
/// <param name="Error">Standard error: problems and prompts.</param>
/// <param name="InputIsTerminal">Standard input is a terminal: secrets are typed, not piped (no echo, asked twice).</param>
/// <param name="OutputIsTerminal">Standard output is a terminal: colour and the terminal's width.</param>
public sealed record CliIO(TextReader In, TextWriter Out, TextWriter Error, bool InputIsTerminal, bool OutputIsTerminal)
{
    /// <summary>The process's own streams.</summary>
    public static CliIO System => new(Console.In, Console.Out, Console.Error, !Console.IsInputRedirected, !Console.IsOutputRedirected);

    /// <summary>A Spectre console writing to <see cref="Out"/>.</summary>
    /// <returns>The console.</returns>
    public IAnsiConsole Ansi()
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(Out),
            Ansi = OutputIsTerminal ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = OutputIsTerminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        if (!OutputIsTerminal)
        {
            console.Profile.Width = 160; // a file or a pipe: wide enough that tables do not wrap
        }

        return console;
    }

    /// <summary>
    /// Reads a secret from standard input: on a terminal typed without echo (twice, when <paramref name="confirm"/>);
    /// otherwise its first line, without the line ending.
    /// </summary>
    /// <param name="prompt">What to ask for on a terminal.</param>
    /// <param name="confirm">Ask again on a terminal and compare.</param>
    /// <returns>The secret, or null with the problem written to <see cref="Error"/>.</returns>
    public string? ReadSecret(string prompt, bool confirm)
    {
        if (!InputIsTerminal)
        {
            string? line = In.ReadLine();
            if (line is null)
            {
                Error.WriteLine("edgemail: nothing on standard input: pipe the value in (printf '%s' \"$VALUE\" | edgemail ...), or run in a terminal to type it");
            }

            return line;
        }

        string first = ReadHidden(prompt + ": ");
        if (!confirm)
        {
            return first;
        }

        if (ReadHidden("Again: ") != first)
        {
            Error.WriteLine("edgemail: the two entries differ; nothing was changed");
            return null;
        }

        return first;
    }

    private string ReadHidden(string prompt)
    {
        Error.Write(prompt);
        var typed = new StringBuilder();
        while (true)
        {
            var key = Console.ReadKey(intercept: true);
            if (key.Key == ConsoleKey.Enter)
            {
                Error.WriteLine();
                return typed.ToString();
            }

            if (key.Key == ConsoleKey.Backspace)
            {
                if (typed.Length > 0)
                {
                    typed.Length--;
                }
            }
            else if (!char.IsControl(key.KeyChar))
            {
                typed.Append(key.KeyChar);
            }
        }
    }
}
