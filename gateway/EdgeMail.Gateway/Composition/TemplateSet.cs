using System.Reflection;
using Fluid;

namespace EdgeMail.Gateway.Composition;

/// <summary>One template: subject, plain text and HTML parts (Liquid, rendered with Fluid).</summary>
/// <param name="Subject">Subject template (one line; control characters are removed after rendering).</param>
/// <param name="Text">text/plain template.</param>
/// <param name="Html">text/html template (every value is HTML-escaped).</param>
public sealed record MailTemplate(IFluidTemplate Subject, IFluidTemplate Text, IFluidTemplate Html);

/// <summary>
/// The templates users can edit: the built-in <c>default</c> and <c>digest</c>, overridden or extended by
/// <c>NAME.subject.liquid</c>, <c>NAME.text.liquid</c> and <c>NAME.html.liquid</c> files in a directory.
/// </summary>
public sealed class TemplateSet
{
    private static readonly FluidParser Parser = new();
    private readonly Dictionary<string, MailTemplate> _templates = new(StringComparer.OrdinalIgnoreCase);

    private TemplateSet()
    {
    }

    /// <summary>Loads the built-in templates and any in <paramref name="directory"/>.</summary>
    /// <param name="directory">Directory of user templates; empty for built-ins only.</param>
    /// <returns>The set.</returns>
    /// <exception cref="InvalidOperationException">A template does not parse; the message names the file and the error.</exception>
    public static TemplateSet Load(string directory)
    {
        var set = new TemplateSet();
        foreach (string name in new[] { "default", "digest" })
        {
            set._templates[name] = new MailTemplate(
                ParseBuiltIn($"{name}.subject.liquid"), ParseBuiltIn($"{name}.text.liquid"), ParseBuiltIn($"{name}.html.liquid"));
        }

        if (!string.IsNullOrEmpty(directory) && Directory.Exists(directory))
        {
            var names = Directory.GetFiles(directory, "*.liquid")
                .Select(f => Path.GetFileName(f).Split('.')[0]).Distinct(StringComparer.OrdinalIgnoreCase);
            foreach (string name in names)
            {
                var fallback = set._templates.GetValueOrDefault(name) ?? set._templates["default"];
                set._templates[name] = new MailTemplate(
                    ParseFile(directory, name, "subject") ?? fallback.Subject,
                    ParseFile(directory, name, "text") ?? fallback.Text,
                    ParseFile(directory, name, "html") ?? fallback.Html);
            }
        }

        return set;
    }

    /// <summary>Names available.</summary>
    public IEnumerable<string> Names => _templates.Keys;

    /// <summary>The template called <paramref name="name"/>, or <c>default</c>.</summary>
    /// <param name="name">Name.</param>
    /// <returns>The template.</returns>
    public MailTemplate Get(string name) => _templates.GetValueOrDefault(name) ?? _templates["default"];

    /// <summary>Parses template source.</summary>
    /// <param name="source">Liquid source.</param>
    /// <param name="where">Name for the error message.</param>
    /// <returns>The parsed template.</returns>
    public static IFluidTemplate Parse(string source, string where) =>
        Parser.TryParse(source, out var template, out string error)
            ? template
            : throw new InvalidOperationException($"Template {where} does not parse: {error}. Fix the Liquid syntax (see docs/gateway.md, Templates).");

    private static IFluidTemplate ParseBuiltIn(string file)
    {
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream("EdgeMail.Gateway.Templates." + file)
            ?? throw new InvalidOperationException($"Built-in template {file} is missing from the assembly.");
        using var reader = new StreamReader(stream);
        return Parse(reader.ReadToEnd(), "built-in " + file);
    }

    private static IFluidTemplate? ParseFile(string directory, string name, string part)
    {
        string path = Path.Combine(directory, $"{name}.{part}.liquid");
        return File.Exists(path) ? Parse(File.ReadAllText(path), path) : null;
    }
}
