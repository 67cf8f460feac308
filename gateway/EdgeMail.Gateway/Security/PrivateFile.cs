namespace EdgeMail.Gateway.Security;

/// <summary>
/// Writes a file only its owner may read (mode 600), whole or not at all: a temporary file created with that mode, synced,
/// then renamed over the old one. Created with the mode rather than given it afterwards, so that no other local user can
/// open it in between (an open descriptor keeps its access after a <c>chmod</c>).
/// </summary>
internal static class PrivateFile
{
    public static void Write(string path, ReadOnlySpan<byte> bytes)
    {
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null)
        {
            Directory.CreateDirectory(dir);
        }

        string tmp = path + ".tmp";
        var options = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write, Share = FileShare.None };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }

        using (var stream = new FileStream(tmp, options))
        {
            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(tmp, UnixFileMode.UserRead | UnixFileMode.UserWrite); // a leftover tmp file kept its mode
            }

            stream.Write(bytes);
            stream.Flush(flushToDisk: true);
        }

        File.Move(tmp, path, overwrite: true);
    }
}
