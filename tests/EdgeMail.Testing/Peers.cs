using Xunit;

namespace EdgeMail.Testing;

/// <summary>
/// Real peers (Debian's mosquitto, swaks, smtp-source, ...) that some tests run against. On a developer
/// machine a missing peer skips those tests with the reason; under CI (<c>CI=true</c>) it fails them,
/// because <c>.ci/run</c> installs every peer.
/// </summary>
public static class Peers
{
    /// <summary>True when running under CI, where every peer must be present.</summary>
    public static bool InCi => string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase);

    /// <summary>Finds a program on PATH.</summary>
    /// <param name="program">Program name, e.g. <c>mosquitto_pub</c>.</param>
    /// <returns>Its full path, or null when absent.</returns>
    public static string? Find(string program)
    {
        string[] dirs = (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(Path.PathSeparator);
        foreach (string dir in dirs.Concat(["/usr/sbin", "/sbin"]))
        {
            string candidate = Path.Combine(dir, program);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    /// <summary>Returns the path of a peer program, or fails the test with what to install.</summary>
    /// <param name="program">Program name.</param>
    /// <param name="debianPackage">Debian package that provides it.</param>
    /// <returns>Its full path.</returns>
    public static string Require(string program, string debianPackage) =>
        Find(program) ?? throw new InvalidOperationException($"{program} is not installed; apt-get install {debianPackage} (.ci/run does this).");
}

/// <summary>
/// A fact that needs real peer programs. Skipped with the reason when one is missing on a developer
/// machine; under CI it runs, and fails if the peer is missing.
/// </summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class PeerFactAttribute : FactAttribute
{
    /// <summary>Declares the programs (and the Debian package of each, as <c>program:package</c>) the test needs.</summary>
    /// <param name="programs">Entries like <c>mosquitto_pub:mosquitto-clients</c>.</param>
    public PeerFactAttribute(params string[] programs)
    {
        var missing = programs.Where(p => Peers.Find(p.Split(':')[0]) is null).ToArray();
        if (missing.Length > 0 && !Peers.InCi)
        {
            Skip = "needs " + string.Join(", ", missing.Select(p => p.Split(':')[0])) + "; apt-get install "
                + string.Join(' ', missing.Select(p => p.Contains(':', StringComparison.Ordinal) ? p.Split(':')[1] : p).Distinct());
        }
    }
}

/// <summary>
/// A fact that needs root (to mount a small file system). Skipped with the reason on a developer machine without it;
/// under CI, which runs as root, it runs.
/// </summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class RootFactAttribute : FactAttribute
{
    /// <summary>Declares the need.</summary>
    public RootFactAttribute()
    {
        if (!Environment.IsPrivilegedProcess && !Peers.InCi)
        {
            Skip = "needs root (mounts a small tmpfs); run as root, as .ci/run does";
        }
    }
}
