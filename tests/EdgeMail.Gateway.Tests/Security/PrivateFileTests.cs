using EdgeMail.Gateway.Security;
using Xunit;

namespace EdgeMail.Gateway.Tests.Security;

[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class PrivateFileTests : IDisposable
{
    private const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;
    private readonly string _dir = Directory.CreateTempSubdirectory("edgemail-private-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Write_ANewFile_InADirectoryNotYetThere_IsTheOwnersOnly()
    {
        string path = Path.Combine(_dir, "sub", "key");

        PrivateFile.Write(path, "secret"u8);

        Assert.Equal("secret", File.ReadAllText(path));
        Assert.Equal(OwnerOnly, File.GetUnixFileMode(path));
        Assert.False(File.Exists(path + ".tmp"));
    }

    [Fact]
    public void Write_OverAWorldReadableFileAndLeftoverTmp_ReplacesItWithTheOwnersOnly()
    {
        string path = Path.Combine(_dir, "key");
        const UnixFileMode WorldReadable = OwnerOnly | UnixFileMode.GroupRead | UnixFileMode.OtherRead;
        File.WriteAllText(path, "old secret, longer than the new one");
        File.SetUnixFileMode(path, WorldReadable);
        File.WriteAllText(path + ".tmp", "a write cut short by a power loss");
        File.SetUnixFileMode(path + ".tmp", WorldReadable);

        PrivateFile.Write(path, "new"u8);

        Assert.Equal("new", File.ReadAllText(path));
        Assert.Equal(OwnerOnly, File.GetUnixFileMode(path));
        Assert.False(File.Exists(path + ".tmp"));
    }
}
