namespace EdgeMail.Testing;

/// <summary>
/// The Contract 1 vectors (the repository's <c>contract/alerts/</c>, copied beside every test assembly by
/// EdgeMail.Testing's project file): one copy for the firmware's encoder and the gateway's parser alike.
/// </summary>
public static class ContractVectors
{
    /// <summary>The <c>alerts</c> folder beside the test binaries, with <c>valid/</c> and <c>invalid/</c>.</summary>
    public static string Directory => Path.Combine(AppContext.BaseDirectory, "contract", "alerts");

    /// <summary>The file names (e.g. <c>full.json</c>) of one kind of vector, in ordinal order.</summary>
    /// <param name="kind"><c>valid</c> or <c>invalid</c>.</param>
    /// <returns>The names of the <c>.json</c> vectors.</returns>
    public static IReadOnlyList<string> Names(string kind) =>
        [.. System.IO.Directory.GetFiles(Path.Combine(Directory, kind), "*.json").Select(f => Path.GetFileName(f)).Order(StringComparer.Ordinal)];

    /// <summary>The full path of one vector.</summary>
    /// <param name="kind"><c>valid</c> or <c>invalid</c>.</param>
    /// <param name="name">File name, e.g. <c>bad-sev.json</c> or <c>bad-sev.why</c>.</param>
    /// <returns>The path beside the test binaries.</returns>
    public static string PathOf(string kind, string name) => Path.Combine(Directory, kind, name);

    /// <summary>
    /// The project's shared contract folder (<c>../shared/contract/alerts</c> beside the repository, where the vectors
    /// are agreed), or null when this machine has none (CI's fresh checkout).
    /// </summary>
    /// <returns>Its path, or null.</returns>
    public static string? Shared()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "EdgeMail.sln")))
            {
                string shared = Path.Combine(dir.FullName, "..", "shared", "contract", "alerts");
                return System.IO.Directory.Exists(shared) ? Path.GetFullPath(shared) : null;
            }
        }

        return null;
    }
}
