using System.Text.Json;
using EdgeMail.Testing;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Gateway.Tests.Ingest;

/// <summary>
/// The repository's <c>contract/alerts/</c> is the one copy both test projects read. Where the project's shared contract
/// is on the machine, the copy must be that, byte for byte; anywhere (CI's fresh machine has no shared folder) it must
/// be whole: vectors of both kinds, and a reason beside every invalid one.
/// </summary>
public sealed class ContractVectorsTests(ITestOutputHelper output)
{
    [Fact]
    public void RepositoryCopy_IsCompleteAndMatchesTheSharedContractWhereThatIsPresent()
    {
        var copy = Files(ContractVectors.Directory);

        Assert.NotEmpty(ContractVectors.Names("valid"));
        Assert.NotEmpty(ContractVectors.Names("invalid"));
        Assert.All(copy.Keys, f => Assert.Matches(@"^(valid/[^/]+\.json|invalid/[^/]+\.(json|why))$", f));
        Assert.All(ContractVectors.Names("invalid"), n => Assert.False(
            string.IsNullOrWhiteSpace(File.ReadAllText(ContractVectors.PathOf("invalid", Path.ChangeExtension(n, ".why")))), $"{n} has no reason"));
        Assert.All(ContractVectors.Names("valid"), n => JsonDocument.Parse(copy["valid/" + n]).Dispose());

        if (ContractVectors.Shared() is not { } shared)
        {
            output.WriteLine($"no shared contract beside the repository: checked the copy's {copy.Count} files are whole");
            return;
        }

        var agreed = Files(shared);
        output.WriteLine($"comparing {copy.Count} files with {agreed.Count} in {shared}");
        Assert.Equal(agreed.Keys.Order(StringComparer.Ordinal), copy.Keys.Order(StringComparer.Ordinal));
        Assert.All(agreed, f => Assert.True(f.Value.AsSpan().SequenceEqual(copy[f.Key]), $"contract/alerts/{f.Key} differs from {shared}; copy it over"));
    }

    private static Dictionary<string, byte[]> Files(string root) =>
        Directory.GetFiles(root, "*", SearchOption.AllDirectories)
            .ToDictionary(f => Path.GetRelativePath(root, f).Replace('\\', '/'), File.ReadAllBytes, StringComparer.Ordinal);
}
