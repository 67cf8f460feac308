using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Configuration.Json;

namespace EdgeMail.Gateway.Configuration;

/// <summary>
/// The gateway's JSON configuration file as a configuration source whose child keys come from an index.
/// </summary>
/// <remarks>
/// The stock JSON provider answers "the children of this path" by scanning every key of the file, and binding the
/// options asks that once per device (for its <c>Owners</c> list, which is usually absent): with 10,000 configured
/// devices a start spent 10 s of CPU there. The index is built once per load, in one pass over the keys.
/// </remarks>
internal static class ConfigFile
{
    /// <summary>Adds the JSON file at <paramref name="path"/>, required and read once (never reloaded).</summary>
    /// <param name="builder">The configuration being built.</param>
    /// <param name="path">The file.</param>
    /// <returns><paramref name="builder"/>.</returns>
    public static IConfigurationBuilder AddConfigFile(this IConfigurationBuilder builder, string path)
    {
        var source = new IndexedJsonConfigurationSource { Path = path, Optional = false, ReloadOnChange = false };
        source.ResolveFileProvider();
        return builder.Add(source);
    }

    private sealed class IndexedJsonConfigurationSource : JsonConfigurationSource
    {
        public override IConfigurationProvider Build(IConfigurationBuilder builder)
        {
            EnsureDefaults(builder);
            return new IndexedJsonConfigurationProvider(this);
        }
    }
}

/// <summary>A JSON file provider that keeps, for every path, the distinct names of its children.</summary>
/// <param name="source">The file.</param>
internal sealed class IndexedJsonConfigurationProvider(JsonConfigurationSource source) : JsonConfigurationProvider(source)
{
    private ChildIndex? _children;

    public override void Load()
    {
        base.Load();
        _children = null;
    }

    public override void Load(Stream stream)
    {
        base.Load(stream);
        _children = null;
    }

    public override void Set(string key, string? value)
    {
        base.Set(key, value);
        _children = null;
    }

    /// <inheritdoc />
    /// <remarks>
    /// As the base provider, but each child name once rather than once per key below it; the configuration root
    /// removes those repeats anyway.
    /// </remarks>
    public override IEnumerable<string> GetChildKeys(IEnumerable<string> earlierKeys, string? parentPath)
    {
        var index = _children ??= ChildIndex.Of(Data.Keys); // two threads at once build the same index
        var results = new List<string>(earlierKeys);
        if (parentPath is null)
        {
            results.AddRange(index.Root);
        }
        else if (index.Children.TryGetValue(parentPath, out var mine))
        {
            results.AddRange(mine);
        }

        results.Sort(ConfigurationKeyComparer.Instance);
        return results;
    }

    // The names under the root (a null parent path) and under each path, each once: the first spelling of a name that
    // differs only in case, as the configuration root keeps one of them.
    private sealed record ChildIndex(List<string> Root, Dictionary<string, List<string>> Children)
    {
        public static ChildIndex Of(IEnumerable<string> keys)
        {
            var index = new ChildIndex([], new Dictionary<string, List<string>>(StringComparer.OrdinalIgnoreCase));
            var listed = new HashSet<string>(StringComparer.OrdinalIgnoreCase); // paths already listed under their parent
            foreach (string key in keys)
            {
                // "a:b:c" lists a under the root, b under "a" and c under "a:b".
                int start = 0;
                while (true)
                {
                    int end = key.IndexOf(ConfigurationPath.KeyDelimiter, start, StringComparison.Ordinal);
                    if (listed.Add(end < 0 ? key : key[..end]))
                    {
                        List<string> siblings;
                        if (start == 0)
                        {
                            siblings = index.Root;
                        }
                        else if (!index.Children.TryGetValue(key[..(start - 1)], out siblings!))
                        {
                            index.Children[key[..(start - 1)]] = siblings = [];
                        }

                        siblings.Add(end < 0 ? key[start..] : key[start..end]);
                    }

                    if (end < 0)
                    {
                        break;
                    }

                    start = end + 1;
                }
            }

            return index;
        }
    }
}
