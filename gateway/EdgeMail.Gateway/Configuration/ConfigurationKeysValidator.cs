using System.ComponentModel;
using System.Globalization;
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
/// every mail in the local mailbox, a device's <c>"Owner"</c> left its alerts without recipients. Refuses as well a
/// value in force that its option's type cannot take (<c>"Port": "many"</c>), and a bare number for a time
/// (<c>"Timeout": 5</c>), which .NET reads as days.
/// </summary>
/// <remarks>
/// The known keys are the options' own properties (<see cref="GatewayOptions"/> at the root, and the <c>Console</c>,
/// <c>Smtp</c> and <c>MqttGuard</c> sections), so a new option is known without being listed here, and so is its type
/// (every <see cref="TimeSpan"/> option, in any section, list or device, is checked here and nowhere else). A key
/// beginning with <c>_</c> is a comment (<c>"_comment"</c>); <c>Logging</c> belongs to the host. A variable without a
/// section (<c>EDGEMAIL_CONFIG</c>, <c>EDGEMAIL_SCHEDULING</c>) is the tools' own, not configuration.
/// </remarks>
/// <param name="providers">The gateway's own configuration sources, in the order they were added.</param>
internal sealed class ConfigurationKeysValidator(IReadOnlyList<IConfigurationProvider> providers) : IValidateOptions<GatewayOptions>
{
    private static readonly Lazy<Shape> Known = new(() =>
    {
        var legacyGuard = Shape.Of(typeof(MqttGuardOptions))
            .With(nameof(Ingest.MqttIngestOptions.TlsEnabled), Shape.Of(typeof(bool))) // read into Mqtt when Mqtt's own is not set
            .With(nameof(Ingest.MqttIngestOptions.TlsPort), Shape.Of(typeof(int)));
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
        var errors = Check();
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    /// <summary>
    /// The problems in the gateway's own sources. Also what explains a binding that failed: a value the binder cannot
    /// convert throws before any validator runs, with a message that has no fix and names only the first such key.
    /// </summary>
    /// <returns>Empty when every key is known and every value fits its option.</returns>
    public List<string> Check() => Check(providers);

    /// <summary>One message per key the gateway does not know (naming where it was given and the key it resembles), and per value in force that its option cannot take.</summary>
    /// <param name="providers">Configuration sources, in the order they were added (a later one overrides an earlier one).</param>
    /// <returns>Empty when every key is known and every value fits.</returns>
    public static List<string> Check(IEnumerable<IConfigurationProvider> providers)
    {
        ArgumentNullException.ThrowIfNull(providers);
        var list = providers.ToList();
        var errors = new List<string>();
        for (int i = 0; i < list.Count; i++)
        {
            Walk(list, i, null, Known.Value, errors);
        }

        return errors;
    }

    private static void Walk(List<IConfigurationProvider> providers, int index, string? path, Shape shape, List<string> errors)
    {
        if (shape.IsAnything)
        {
            return;
        }

        var provider = providers[index];
        foreach (string name in provider.GetChildKeys([], path).Distinct(StringComparer.OrdinalIgnoreCase))
        {
            string key = path is null ? name : ConfigurationPath.Combine(path, name);
            if (path is null && (HostKeys.Contains(name) || (provider is EnvironmentVariablesConfigurationProvider && !provider.GetChildKeys([], key).Any())))
            {
                continue;
            }

            if (shape.Child(name) is { } child)
            {
                // Only the value in force: one a later source overrides never reaches the options.
                if (child.ValueType is { } type && provider.TryGet(key, out string? value) && !providers.Skip(index + 1).Any(p => p.TryGet(key, out _))
                    && ValueProblem(type, value, child.Default) is { } bad)
                {
                    errors.Add($"{key}: {bad.Problem} ({Where(provider, key)}). Fix: {bad.Fix}.");
                }

                Walk(providers, index, key, child, errors);
            }
            else if (!(shape.IsObject && name.StartsWith('_')))
            {
                errors.Add(Unknown(provider, path, key, name, shape));
            }
        }
    }

    private static string Where(IConfigurationProvider provider, string key) => provider switch
    {
        EnvironmentVariablesConfigurationProvider => "from the variable EDGEMAIL_" + key.Replace(":", "__", StringComparison.Ordinal),
        CommandLineConfigurationProvider => "from the argument --" + key,
        FileConfigurationProvider file => "in " + (file.Source.FileProvider?.GetFileInfo(file.Source.Path ?? string.Empty).PhysicalPath ?? file.Source.Path),
        _ => "in " + provider,
    };

    // What the binder would make of the value (it converts with the type's TypeConverter, invariant culture), and a
    // bare number for a time, which converts without complaint into days. An empty value the binder skips, leaving the
    // default, as it always has: refusing it now would stop a start that worked.
    private static (string Problem, string Fix)? ValueProblem(Type type, string? value, object? defaultValue)
    {
        type = Nullable.GetUnderlyingType(type) ?? type;
        if (type == typeof(string) || string.IsNullOrEmpty(value))
        {
            return null;
        }

        if (type == typeof(TimeSpan) && BareNumber(value) is { } bare)
        {
            return bare;
        }

        try
        {
            _ = TypeDescriptor.GetConverter(type).ConvertFromInvariantString(value);
            return null;
        }
#pragma warning disable CA1031 // Whatever the converter throws, the binder would turn into a failed start: say which key and how to fix it.
        catch (Exception)
#pragma warning restore CA1031
        {
            return Unconvertible(type, value, defaultValue);
        }
    }

    private static (string Problem, string Fix)? BareNumber(string value)
    {
        // Zero is zero in any unit ("Window": 0 turns storm control off, as 00:00:00 does).
        if (!long.TryParse(value, NumberStyles.AllowLeadingWhite | NumberStyles.AllowTrailingWhite | NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long n)
            || n == 0 || !TimeSpan.TryParse(value, CultureInfo.InvariantCulture, out _))
        {
            return null;
        }

        string Unit(string unit) => string.Create(CultureInfo.InvariantCulture, $"{n} {unit}{(n is 1 or -1 ? string.Empty : "s")}");
        string fix = Math.Abs(n) <= 1_000_000
            ? $"write a time as [d.]hh:mm:ss, e.g. {TimeSpan.FromSeconds(n):c} for {Unit("second")}, {TimeSpan.FromMinutes(n):c} for {Unit("minute")} or {TimeSpan.FromDays(n):c} for {Unit("day")}"
            : "write a time as [d.]hh:mm:ss, e.g. 00:00:30 for 30 seconds or 5.00:00:00 for 5 days";
        return ($"{value.Trim()} is a bare number, which would be read as {Unit("day")}", fix);
    }

    private static (string Problem, string Fix) Unconvertible(Type type, string value, object? defaultValue)
    {
        string Default(string what) => defaultValue is null ? string.Empty : $"{what}{Invariant(defaultValue)} (the default)";
        if (type == typeof(TimeSpan))
        {
            return ($"'{value}' is not a time", "write a time as [d.]hh:mm:ss, " + (defaultValue is null ? "e.g. 00:05:00 for 5 minutes" : Default("e.g. ")));
        }

        if (type == typeof(bool))
        {
            return ($"'{value}' is not true or false", "write true or false" + (defaultValue is null ? string.Empty : $" (the default is {Invariant(defaultValue)})"));
        }

        if (type.IsEnum)
        {
            return ($"'{value}' is not one of {string.Join(", ", Enum.GetNames(type))}", "use one of them" + Default(", e.g. "));
        }

        if (type == typeof(int) || type == typeof(long) || type == typeof(short) || type == typeof(byte)
            || type == typeof(uint) || type == typeof(ulong) || type == typeof(ushort) || type == typeof(sbyte))
        {
            // Digits that do not fit, or not a whole number at all.
            bool digits = value.Trim().TrimStart('-', '+').Length > 0 && value.Trim().TrimStart('-', '+').All(char.IsAsciiDigit);
            string range = string.Create(CultureInfo.InvariantCulture, $"{type.GetField("MinValue")!.GetValue(null)} to {type.GetField("MaxValue")!.GetValue(null)}");
            return (digits ? $"'{value}' is outside {range}" : $"'{value}' is not a whole number", "write a whole number" + Default(", e.g. "));
        }

        if (type == typeof(double) || type == typeof(float) || type == typeof(decimal))
        {
            return ($"'{value}' is not a number", "write a number with a point for decimals" + Default(", e.g. "));
        }

        return ($"'{value}' cannot be read as {type.Name}", "correct it, or remove the key for the default");
    }

    private static string Invariant(object value) => value switch
    {
        TimeSpan time => time.ToString("c", CultureInfo.InvariantCulture),
        bool flag => flag ? "true" : "false",
        IFormattable formattable => formattable.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString() ?? string.Empty,
    };

    private static string Unknown(IConfigurationProvider provider, string? path, string key, string name, Shape parent)
    {
        string where = Where(provider, key);
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

    /// <summary>What may stand below a key: nothing (a value of a type), named members (an object), any names (a list or dictionary), or anything.</summary>
    private sealed class Shape
    {
        public static readonly Shape Anything = new(new Dictionary<string, Shape>(StringComparer.OrdinalIgnoreCase), null, anything: true);

        private readonly Shape? _items;

        private Shape(Dictionary<string, Shape> members, Shape? items, bool anything, Type? valueType = null, object? defaultValue = null)
        {
            Members = members;
            _items = items;
            IsAnything = anything;
            ValueType = valueType;
            Default = defaultValue;
        }

        public Dictionary<string, Shape> Members { get; }

        public bool IsAnything { get; }

        /// <summary>For a value, its option's type (nullable as declared); null for an object, list or dictionary.</summary>
        public Type? ValueType { get; }

        /// <summary>For a value, the option's default, when it has one (not for list items or dictionary values).</summary>
        public object? Default { get; }

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
        public static Shape Of(Type type, object? defaultValue = null)
        {
            var declared = type;
            type = Nullable.GetUnderlyingType(type) ?? type;
            if (type.IsPrimitive || type.IsEnum || type == typeof(string) || type == typeof(decimal) || type == typeof(TimeSpan)
                || type == typeof(DateTime) || type == typeof(DateTimeOffset) || type == typeof(Guid) || type == typeof(Uri))
            {
                return new Shape(new(StringComparer.OrdinalIgnoreCase), null, anything: false, declared, defaultValue);
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

            // The defaults, for the fix of a value that does not convert ("e.g. 1883 (the default)").
            object? defaults = type.GetConstructor(Type.EmptyTypes) is not null ? Activator.CreateInstance(type) : null;
            var members = new Dictionary<string, Shape>(StringComparer.OrdinalIgnoreCase);
            foreach (var property in type.GetProperties(BindingFlags.Public | BindingFlags.Instance))
            {
                if (property.GetIndexParameters().Length > 0 || property.GetMethod is null)
                {
                    continue;
                }

                var shape = Of(property.PropertyType, defaults is null ? null : property.GetValue(defaults));
                if (property.SetMethod is { IsPublic: true } || shape.ValueType is null)
                {
                    members[property.Name] = shape;
                }
            }

            return new Shape(members, null, anything: false);
        }
    }
}
