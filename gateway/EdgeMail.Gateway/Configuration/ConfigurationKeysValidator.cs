using System.Reflection;
using EdgeMail.Gateway.Ingest.Smtp;
using EdgeMail.Gateway.Security;
using EdgeMail.Gateway.Web;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Configuration.CommandLine;
using Microsoft.Extensions.Configuration.EnvironmentVariables;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Configuration;

/// <summary>
/// Refuses keys the gateway does not read, in the configuration file, the <c>EDGEMAIL_Section__Key</c> variables and
/// the <c>--Section:Key=value</c> arguments. The binder skips such a key without a word and the default takes its
/// place: <c>"PlainEnabeld": false</c> left devices sending their secrets in clear text, a <c>"Realy"</c> section left
/// every mail in the local mailbox, a device's <c>"Owner"</c> left its alerts without recipients.
/// </summary>
/// <remarks>
/// The known keys are the options' own properties (<see cref="GatewayOptions"/> at the root, and the <c>Console</c>,
/// <c>Smtp</c> and <c>MqttGuard</c> sections), so a new option is known without being listed here. A key beginning
/// with <c>_</c> is a comment (<c>"_comment"</c>); <c>Logging</c> belongs to the host. A variable without a section
/// (<c>EDGEMAIL_CONFIG</c>, <c>EDGEMAIL_SCHEDULING</c>) is the tools' own, not configuration.
/// </remarks>
/// <param name="providers">The gateway's own configuration sources, in the order they were added.</param>
internal sealed class ConfigurationKeysValidator(IReadOnlyList<IConfigurationProvider> providers) : IValidateOptions<GatewayOptions>
{
    private static readonly Lazy<Shape> Known = new(() =>
    {
        var legacyGuard = Shape.Of(typeof(MqttGuardOptions))
            .With(nameof(Ingest.MqttIngestOptions.TlsEnabled), Shape.Value) // read into Mqtt when Mqtt's own is not set
            .With(nameof(Ingest.MqttIngestOptions.TlsPort), Shape.Value);
        return Shape.Of(typeof(GatewayOptions))
            .With(ConsoleOptions.Section, Shape.Of(typeof(ConsoleOptions)))
            .With(SmtpIngestOptions.Section, Shape.Of(typeof(SmtpIngestOptions)))
            .With(MqttGuardOptions.Section, legacyGuard)
            .With("Logging", Shape.Anything);
    });

    // The host's own keys, which it reads from the same command line (--environment Production).
    private static readonly HashSet<string> HostKeys = new([HostDefaults.EnvironmentKey, HostDefaults.ContentRootKey, HostDefaults.ApplicationKey], StringComparer.OrdinalIgnoreCase);

    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, GatewayOptions options)
    {
        var errors = Check(providers);
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    /// <summary>One message per key the gateway does not know, naming where it was given and the key it resembles.</summary>
    /// <param name="providers">Configuration sources.</param>
    /// <returns>Empty when every key is known.</returns>
    public static List<string> Check(IEnumerable<IConfigurationProvider> providers)
    {
        ArgumentNullException.ThrowIfNull(providers);
        var errors = new List<string>();
        foreach (var provider in providers)
        {
            Walk(provider, null, Known.Value, errors);
        }

        return errors;
    }

    private static void Walk(IConfigurationProvider provider, string? path, Shape shape, List<string> errors)
    {
        if (shape.IsAnything)
        {
            return;
        }

        foreach (string name in provider.GetChildKeys([], path).Distinct(StringComparer.OrdinalIgnoreCase))
        {
            string key = path is null ? name : ConfigurationPath.Combine(path, name);
            if (path is null && (HostKeys.Contains(name) || (provider is EnvironmentVariablesConfigurationProvider && !provider.GetChildKeys([], key).Any())))
            {
                continue;
            }

            if (shape.Child(name) is { } child)
            {
                Walk(provider, key, child, errors);
            }
            else if (!(shape.IsObject && name.StartsWith('_')))
            {
                errors.Add(Unknown(provider, path, key, name, shape));
            }
        }
    }

    private static string Unknown(IConfigurationProvider provider, string? path, string key, string name, Shape parent)
    {
        string where = provider switch
        {
            EnvironmentVariablesConfigurationProvider => "from the variable EDGEMAIL_" + key.Replace(":", "__", StringComparison.Ordinal),
            CommandLineConfigurationProvider => "from the argument --" + key,
            FileConfigurationProvider file => "in " + (file.Source.FileProvider?.GetFileInfo(file.Source.Path ?? string.Empty).PhysicalPath ?? file.Source.Path),
            _ => "in " + provider,
        };
        string section = path is null ? "the top level" : path;
        if (parent.Members.Count == 0)
        {
            return $"{key}: is not read: {path} takes a single value ({where}). Fix: give {path} its value directly, or remove {key}.";
        }

        string? like = parent.Members.Keys.Where(k => Distance(k, name) <= Math.Max(1, Math.Min(3, name.Length / 3)))
            .OrderBy(k => Distance(k, name)).FirstOrDefault();
        string fix = like is not null
            ? $"rename it to {(path is null ? like : ConfigurationPath.Combine(path, like))}, or remove it"
            : $"remove it, or use a key of {section}: {string.Join(", ", parent.Members.Keys)}";
        return $"{key}: is not a key the gateway knows, so it would be ignored and the default used ({where}). Fix: {fix} (a key beginning with _ is a comment).";
    }

    // Levenshtein distance, ignoring case, with a swap of neighbours as one step ("PlainEnabeld").
    private static int Distance(string a, string b)
    {
        a = a.ToUpperInvariant();
        b = b.ToUpperInvariant();
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++)
        {
            d[i, 0] = i;
        }

        for (int j = 0; j <= b.Length; j++)
        {
            d[0, j] = j;
        }

        for (int i = 1; i <= a.Length; i++)
        {
            for (int j = 1; j <= b.Length; j++)
            {
                int cost = a[i - 1] == b[j - 1] ? 0 : 1;
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + cost);
                if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                {
                    d[i, j] = Math.Min(d[i, j], d[i - 2, j - 2] + 1);
                }
            }
        }

        return d[a.Length, b.Length];
    }

    /// <summary>What may stand below a key: nothing (a value), named members (an object), any names (a list or dictionary), or anything.</summary>
    private sealed class Shape
    {
        public static readonly Shape Value = new(new Dictionary<string, Shape>(StringComparer.OrdinalIgnoreCase), null, anything: false);
        public static readonly Shape Anything = new(new Dictionary<string, Shape>(StringComparer.OrdinalIgnoreCase), null, anything: true);

        private readonly Shape? _items;

        private Shape(Dictionary<string, Shape> members, Shape? items, bool anything)
        {
            Members = members;
            _items = items;
            IsAnything = anything;
        }

        public Dictionary<string, Shape> Members { get; }

        public bool IsAnything { get; }

        /// <summary>An object with named members (a value has none, and takes no keys below it).</summary>
        public bool IsObject => _items is null && !IsAnything;

        public Shape? Child(string name) => _items ?? Members.GetValueOrDefault(name);

        public Shape With(string name, Shape shape)
        {
            Members[name] = shape;
            return this;
        }

        // The binder's view of a type: values convert from one string; dictionaries and lists take any child name; any
        // other class binds its public properties (get-only ones only when the binder fills them in place).
        public static Shape Of(Type type)
        {
            type = Nullable.GetUnderlyingType(type) ?? type;
            if (type.IsPrimitive || type.IsEnum || type == typeof(string) || type == typeof(decimal) || type == typeof(TimeSpan)
                || type == typeof(DateTime) || type == typeof(DateTimeOffset) || type == typeof(Guid) || type == typeof(Uri))
            {
                return Value;
            }

            if (type.IsArray)
            {
                return new Shape(new(StringComparer.OrdinalIgnoreCase), Of(type.GetElementType()!), anything: false);
            }

            var generic = type.GetInterfaces().Append(type).Where(i => i.IsGenericType).Select(i => (Definition: i.GetGenericTypeDefinition(), Arguments: i.GetGenericArguments())).ToList();
            if (generic.FirstOrDefault(i => i.Definition == typeof(IDictionary<,>)) is { Arguments: { } dictionary })
            {
                return new Shape(new(StringComparer.OrdinalIgnoreCase), Of(dictionary[1]), anything: false);
            }

            if (generic.FirstOrDefault(i => i.Definition == typeof(IEnumerable<>)) is { Arguments: { } list })
            {
                return new Shape(new(StringComparer.OrdinalIgnoreCase), Of(list[0]), anything: false);
            }

            var members = new Dictionary<string, Shape>(StringComparer.OrdinalIgnoreCase);
            foreach (var property in type.GetProperties(BindingFlags.Public | BindingFlags.Instance))
            {
                if (property.GetIndexParameters().Length > 0 || property.GetMethod is null)
                {
                    continue;
                }

                var shape = Of(property.PropertyType);
                if (property.SetMethod is { IsPublic: true } || shape != Value)
                {
                    members[property.Name] = shape;
                }
            }

            return new Shape(members, null, anything: false);
        }
    }
}
