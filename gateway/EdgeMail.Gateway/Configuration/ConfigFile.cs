using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Configuration.Json;

namespace EdgeMail.Gateway.Configuration;

/// <summary>
/// The gateway's JSON configuration file as a configuration source whose child keys come from its sorted keys.
/// </summary>
/// <remarks>
/// The stock JSON provider answers "the children of this path" by scanning every key of the file, and binding the
/// options asks that once per device (for its <c>Owners</c> list, which is usually absent): with 10,000 configured
/// devices a start spent 10 s of CPU there. Here the keys are sorted once per load, and a path's children are read from
/// the run of keys below it.
/// </remarks>
internal static class ConfigFile
{
    /// <summary>Adds the JSON file at <paramref name="path"/>, required and read once (never reloaded).</summary>
    /// <param name="builder">The configuration being built.</param>
    /// <param name="path">The file.</param>
    /// <returns><paramref name="builder"/>.</returns>
    public static IConfigurationBuilder AddConfigFile(this IConfigurationBuilder builder, string path)
    {
        var source = new IndexedJsonConfigurationSource { Path = path, Optional = false, ReloadOnChange = false, FullPath = path };
        source.ResolveFileProvider();
        return builder.Add(source);
    }

    private sealed class IndexedJsonConfigurationSource : JsonConfigurationSource
    {
        public required string FullPath { get; init; }

        public override IConfigurationProvider Build(IConfigurationBuilder builder)
        {
            EnsureDefaults(builder);
            return new IndexedJsonConfigurationProvider(this, FullPath);
        }
    }
}

/// <summary>The configuration file is there but cannot be read (no permission, a directory, an I/O error); the message names it and the OS's error.</summary>
public sealed class ConfigFileException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ConfigFileException()
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">What cannot be read, and why.</param>
    public ConfigFileException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">What cannot be read, and why.</param>
    /// <param name="inner">The OS's error.</param>
    public ConfigFileException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>What to do about it, for <c>Fix:</c>.</summary>
    public string Fix { get; init; } = "give the path of a JSON file the gateway's user can read with --config FILE (or EDGEMAIL_CONFIG).";
}

/// <summary>A JSON file provider that answers "the children of this path" from its keys in sorted order.</summary>
/// <param name="source">The file.</param>
/// <param name="path">Its full path, for messages.</param>
internal sealed class IndexedJsonConfigurationProvider(JsonConfigurationSource source, string path) : JsonConfigurationProvider(source)
{
    // The keys in case-insensitive ordinal order (configuration keys ignore case): every key below a path "p" starts
    // with "p:" and so sits in one run, found by binary search. No per-path copy of the names is kept: with 10,000
    // devices a per-path index held about 3 MB for the gateway's whole life, to answer questions asked at start.
    private string[]? _sorted;

    public override void Load()
    {
        // The stock provider reports a directory as a file not found, and lets the OS's error on opening a file that is
        // there escape as it came (no file named, no fix): the start failed as if it were not a configuration error.
        if (Directory.Exists(path))
        {
            throw new ConfigFileException($"The configuration file '{path}' is a directory.")
            {
                Fix = "give the path of the JSON file itself with --config FILE (or EDGEMAIL_CONFIG), e.g. /etc/edgemail/edgemail.json.",
            };
        }

        try
        {
            base.Load();
        }
        catch (UnauthorizedAccessException ex)
        {
            throw new ConfigFileException($"The configuration file '{path}' cannot be read: {ex.Message}", ex)
            {
                Fix = "let the gateway's user read it (on the appliance it is root:edgemail 0640), or run as root or as that user.",
            };
        }
        catch (IOException ex) when (ex is not FileNotFoundException and not DirectoryNotFoundException)
        {
            throw new ConfigFileException($"The configuration file '{path}' cannot be read: {ex.Message}", ex);
        }

        _sorted = null;
    }

    public override void Load(Stream stream)
    {
        base.Load(stream);
        ShareRepeatedValues();
        _sorted = null;
    }

    public override void Set(string key, string? value)
    {
        base.Set(key, value);
        _sorted = null;
    }

    /// <inheritdoc />
    /// <remarks>
    /// As the base provider, but each child name once rather than once per key below it; the configuration root
    /// removes those repeats anyway.
    /// </remarks>
    public override IEnumerable<string> GetChildKeys(IEnumerable<string> earlierKeys, string? parentPath)
    {
        var keys = _sorted ??= Sorted(Data.Keys); // two threads at once sort the same keys
        string prefix = parentPath is null ? string.Empty : parentPath + ConfigurationPath.KeyDelimiter;
        var results = new List<string>(earlierKeys);
        var seen = new HashSet<string>(StringComparer.OrdinalIgnoreCase).GetAlternateLookup<ReadOnlySpan<char>>();
        for (int i = LowerBound(keys, prefix); i < keys.Length && keys[i].StartsWith(prefix, StringComparison.OrdinalIgnoreCase); i++)
        {
            // Not only neighbours repeat a name: "p:a", "p:a-b", "p:a:c" sort in that order.
            var rest = keys[i].AsSpan(prefix.Length);
            int end = rest.IndexOf(ConfigurationPath.KeyDelimiter, StringComparison.Ordinal);
            var name = end < 0 ? rest : rest[..end];
            if (!seen.Contains(name))
            {
                string child = name.ToString();
                seen.Add(child);
                results.Add(child);
            }
        }

        results.Sort(ConfigurationKeyComparer.Instance);
        return results;
    }

    // A short value that many devices repeat ("Site": "Hall 3", an owner, "true") as one string for the gateway's life,
    // instead of one per device.
    private void ShareRepeatedValues()
    {
        var shared = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string key in Data.Keys.ToArray())
        {
            if (Data[key] is { Length: <= 64 } value)
            {
                if (shared.TryGetValue(value, out string? same))
                {
                    Data[key] = same;
                }
                else
                {
                    shared[value] = value;
                }
            }
        }
    }

    private static string[] Sorted(ICollection<string> keys)
    {
        var sorted = new string[keys.Count];
        keys.CopyTo(sorted, 0);
        Array.Sort(sorted, StringComparer.OrdinalIgnoreCase);
        return sorted;
    }

    // The first key not ordered before prefix.
    private static int LowerBound(string[] keys, string prefix)
    {
        int lo = 0, hi = keys.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (string.Compare(keys[mid], prefix, StringComparison.OrdinalIgnoreCase) < 0)
            {
                lo = mid + 1;
            }
            else
            {
                hi = mid;
            }
        }

        return lo;
    }
}
