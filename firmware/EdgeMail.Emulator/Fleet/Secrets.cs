using System.Globalization;

namespace EdgeMail.Emulator.Fleet;

/// <summary>Device id → secret, from a secrets file (<c>id secret</c> per line) or else the pattern.</summary>
internal sealed class Secrets
{
    private readonly Dictionary<string, string> _file = new(StringComparer.Ordinal);
    private readonly string _pattern;

    public Secrets(string pattern, string? file)
    {
        _pattern = pattern;
        if (file is null)
        {
            return;
        }

        foreach (string raw in File.ReadAllLines(file))
        {
            string line = raw.Trim();
            if (line.Length == 0 || line[0] == '#')
            {
                continue;
            }

            string[] parts = line.Split((char[]?)null, 2, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length != 2)
            {
                throw new InvalidDataException($"Secrets file {file}: expected 'deviceId secret' per line, got '{line}'.");
            }

            _file[parts[0]] = parts[1].Trim();
        }
    }

    public string For(string id, int n) =>
        _file.TryGetValue(id, out string? s) ? s
            : _pattern.Replace("{id}", id, StringComparison.Ordinal).Replace("{n}", n.ToString(CultureInfo.InvariantCulture), StringComparison.Ordinal);
}
