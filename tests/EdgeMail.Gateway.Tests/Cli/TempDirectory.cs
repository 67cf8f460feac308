namespace EdgeMail.Gateway.Tests.Cli;

/// <summary>A fresh directory under the temp folder, deleted with the test.</summary>
public abstract class TempDirectory : IDisposable
{
    protected string Dir { get; } = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        try
        {
            Directory.Delete(Dir, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
            // Never created, or a gateway's disposal removed it already.
        }

        GC.SuppressFinalize(this);
    }
}
