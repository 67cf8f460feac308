using System.Globalization;

namespace EdgeMail.Gateway.Cli;

/// <summary>
/// Which process listens on a TCP port, from Linux's <c>/proc/net/tcp{,6}</c> (the socket's inode) and
/// <c>/proc/PID/fd</c> (who holds it). Another user's processes are visible to root only.
/// </summary>
public static class PortOwner
{
    /// <summary>A process holding a listening socket.</summary>
    /// <param name="Pid">Its id.</param>
    /// <param name="CommandLine">Its command line, arguments separated by spaces.</param>
    public sealed record Process(int Pid, string CommandLine)
    {
        /// <summary>A gateway: this process (the CLI hosting one, as tests do) or an EdgeMail.Gateway executable.</summary>
        public bool IsGateway => Pid == Environment.ProcessId || CommandLine.Contains("EdgeMail.Gateway", StringComparison.Ordinal);
    }

    /// <summary>The process listening on <paramref name="port"/>, when this user may see it.</summary>
    /// <param name="port">TCP port.</param>
    /// <returns>The process, or null when unknown (not Linux, no permission, or it just closed).</returns>
    public static Process? Find(int port)
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        var inodes = new HashSet<string>(StringComparer.Ordinal);
        foreach (string table in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
        {
            try
            {
                foreach (string line in File.ReadLines(table).Skip(1))
                {
                    string[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    // sl local_address rem_address st ... inode; st 0A is LISTEN
                    if (f.Length > 9 && f[3] == "0A" && int.Parse(f[1][(f[1].LastIndexOf(':') + 1)..], NumberStyles.HexNumber, CultureInfo.InvariantCulture) == port)
                    {
                        inodes.Add($"socket:[{f[9]}]");
                    }
                }
            }
            catch (IOException)
            {
                // No IPv6 table: fine.
            }
        }

        if (inodes.Count == 0)
        {
            return null;
        }

        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
            {
                continue;
            }

            try
            {
                foreach (string fd in Directory.EnumerateFileSystemEntries(Path.Combine(dir, "fd")))
                {
                    if (new FileInfo(fd).LinkTarget is { } target && inodes.Contains(target))
                    {
                        string cmdline = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ').Trim();
                        return new Process(pid, cmdline);
                    }
                }
            }
            catch (Exception ex) when (ex is UnauthorizedAccessException or IOException)
            {
                // Another user's process (not root), or it ended while we looked.
            }
        }

        return null;
    }
}
