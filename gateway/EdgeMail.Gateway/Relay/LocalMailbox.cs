using System.Text;
using EdgeMail.Gateway.Spool;

namespace EdgeMail.Gateway.Relay;

/// <summary>
/// The embedded default: each message becomes one <c>.eml</c> file in a Maildir-like folder (<c>tmp/</c> then
/// an atomic rename into <c>new/</c>, fsync'd) that any mail program opens. The file name comes from the
/// Message-ID, so a repeated attempt after a crash replaces the same file instead of adding a second one.
/// </summary>
public sealed class LocalMailbox : IMailTransport
{
    private readonly string _root;

    /// <summary>Creates the mailbox at <paramref name="root"/> (creating <c>tmp</c>, <c>new</c>, <c>cur</c>).</summary>
    /// <param name="root">Mailbox directory.</param>
    public LocalMailbox(string root)
    {
        _root = Path.GetFullPath(root);
        foreach (string sub in new[] { "tmp", "new", "cur" })
        {
            Directory.CreateDirectory(Path.Combine(_root, sub));
        }
    }

    /// <summary>Where new mail lands.</summary>
    public string NewDirectory => Path.Combine(_root, "new");

    /// <summary>
    /// The file name used for a Message-ID: the same id always gives the same name (a repeated attempt replaces its
    /// file) and two ids never share one. Letters, digits, <c>.</c>, <c>-</c>, <c>_</c> and <c>@</c> stay (so the
    /// gateway's own Message-IDs are their own file names); every other byte of the UTF-8, <c>%</c> included,
    /// becomes <c>%XX</c>; a name that would pass the file system's 255-byte limit keeps its start and ends in a
    /// hash of the whole id.
    /// </summary>
    /// <param name="messageId">Message-ID without brackets.</param>
    /// <returns>A safe file name ending in <c>.eml</c>.</returns>
    public static string FileName(string messageId)
    {
        ArgumentNullException.ThrowIfNull(messageId);
        var sb = new StringBuilder(messageId.Length + 4);
        foreach (byte b in Encoding.UTF8.GetBytes(messageId))
        {
            if (char.IsAsciiLetterOrDigit((char)b) || b is (byte)'.' or (byte)'-' or (byte)'_' or (byte)'@')
            {
                sb.Append((char)b);
            }
            else
            {
                sb.Append('%').Append(b.ToString("X2", System.Globalization.CultureInfo.InvariantCulture));
            }
        }

        if (sb.Length is 0 or > 200 || sb[0] == '.')
        {
            string hash = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(messageId)));
            sb.Length = Math.Min(sb.Length, 150);
            sb.Insert(0, 'x').Append("%h").Append(hash);
        }

        return sb.Append(".eml").ToString();
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<RecipientResult>> SendAsync(QueuedMessage message, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(message);
        string name = FileName(message.MessageId);
        string tmp = Path.Combine(_root, "tmp", name);
        string final = Path.Combine(_root, "new", name);
        try
        {
            var envelope = Encoding.ASCII.GetBytes($"X-EdgeMail-Envelope-To: {string.Join(", ", message.PendingRecipients)}\r\n");
            await using (var file = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 16384, FileOptions.Asynchronous))
            {
                await file.WriteAsync(envelope, cancellationToken).ConfigureAwait(false);
                await file.WriteAsync(message.Mime, cancellationToken).ConfigureAwait(false);
                await file.FlushAsync(cancellationToken).ConfigureAwait(false);
                file.Flush(flushToDisk: true);
            }

            File.Move(tmp, final, overwrite: true);
            SyncDirectory(Path.Combine(_root, "new"));
        }
        catch (IOException ex)
        {
            return message.PendingRecipients.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, "451 4.3.0 local mailbox: " + ex.Message) { RelayDown = true }).ToList();
        }
        catch (UnauthorizedAccessException ex)
        {
            return message.PendingRecipients.Select(r => new RecipientResult(r, RecipientOutcome.Deferred, "451 4.3.0 local mailbox: " + ex.Message) { RelayDown = true }).ToList();
        }

        return message.PendingRecipients.Select(r => new RecipientResult(r, RecipientOutcome.Sent, "250 2.0.0 stored in " + final)).ToList();
    }

    /// <summary>
    /// Removes messages (in <c>new/</c> and <c>cur/</c>) last written before <paramref name="olderThan"/>, then the
    /// oldest ones until the mailbox holds at most <paramref name="maxBytes"/> (0: no size limit).
    /// </summary>
    /// <param name="olderThan">Age horizon.</param>
    /// <param name="maxBytes">Size limit.</param>
    /// <returns>Files removed.</returns>
    public int Prune(DateTimeOffset olderThan, long maxBytes) =>
        Prune(new[] { "new", "cur" }.SelectMany(d => new DirectoryInfo(Path.Combine(_root, d)).EnumerateFiles("*.eml")), olderThan, maxBytes);

    /// <summary>
    /// <see cref="Prune(DateTimeOffset, long)"/> over listed files. A mail reader moves and deletes files while a pass runs
    /// (new/ to cur/, or read and removed): one gone between the listing and its size is skipped, not the end of the pass.
    /// </summary>
    /// <param name="listed">The mailbox's files as listed.</param>
    /// <param name="olderThan">Age horizon.</param>
    /// <param name="maxBytes">Size limit.</param>
    /// <returns>Files removed.</returns>
    internal static int Prune(IEnumerable<FileInfo> listed, DateTimeOffset olderThan, long maxBytes)
    {
        var files = new List<(FileInfo File, DateTime Written, long Length)>();
        foreach (var file in listed)
        {
            try
            {
                files.Add((file, file.LastWriteTimeUtc, file.Length));
            }
            catch (FileNotFoundException)
            {
                // Moved to cur/ (listed there too, or in the next pass) or removed by the reader.
            }
        }

        files.Sort((a, b) => a.Written.CompareTo(b.Written));
        long total = files.Sum(f => f.Length);
        int removed = 0;
        foreach (var (file, written, length) in files)
        {
            if (written >= olderThan.UtcDateTime && (maxBytes <= 0 || total <= maxBytes))
            {
                break;
            }

            try
            {
                file.Delete();
                total -= length;
                removed++;
            }
            catch (IOException)
            {
                // Busy: the next pass tries again.
            }
        }

        return removed;
    }

    // The rename is durable only once the directory itself is flushed.
    private static void SyncDirectory(string directory)
    {
        if (OperatingSystem.IsWindows())
        {
            return;
        }

        int fd = NativeMethods.Open(directory, 0);
        if (fd >= 0)
        {
            _ = NativeMethods.Fsync(fd);
            _ = NativeMethods.Close(fd);
        }
    }

    private static class NativeMethods
    {
        [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "open", SetLastError = true)]
        [System.Runtime.InteropServices.DefaultDllImportSearchPaths(System.Runtime.InteropServices.DllImportSearchPath.SafeDirectories)]
        public static extern int Open([System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.LPUTF8Str)] string path, int flags);

        [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "fsync", SetLastError = true)]
        [System.Runtime.InteropServices.DefaultDllImportSearchPaths(System.Runtime.InteropServices.DllImportSearchPath.SafeDirectories)]
        public static extern int Fsync(int fd);

        [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "close", SetLastError = true)]
        [System.Runtime.InteropServices.DefaultDllImportSearchPaths(System.Runtime.InteropServices.DllImportSearchPath.SafeDirectories)]
        public static extern int Close(int fd);
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
