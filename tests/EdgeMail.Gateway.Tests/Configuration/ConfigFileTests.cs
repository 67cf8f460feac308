using System.Text.Json.Nodes;
using EdgeMail.Gateway.Tests.Cli;
using EdgeMail.Gateway.Configuration;
using Microsoft.Extensions.Configuration;
using Xunit;

namespace EdgeMail.Gateway.Tests.Configuration;

public sealed class ConfigFileTests : TempDirectory
{
    /// <summary>
    /// The indexed file reads as the stock JSON provider does: random nested files (objects, arrays, empty ones, names
    /// that differ in case across branches, a ":" inside a name, names that sort between a name and its children), every path's children in the same order with the
    /// same values, with an environment-variable source on top as the gateway has. Replay a failure with
    /// EDGEMAIL_TEST_SEED set to the seed it prints.
    /// </summary>
    [Fact]
    public void EveryPath_HasTheStockProvidersChildrenAndValues()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("EDGEMAIL_TEST_SEED"), out int replay) ? replay : Random.Shared.Next();
        var random = new Random(seed);
        Directory.CreateDirectory(Dir);
        for (int i = 0; i < 50; i++)
        {
            string file = Path.Combine(Dir, $"c{i}.json");
            File.WriteAllText(file, RandomObject(random, depth: 0).ToJsonString());
            var stock = new ConfigurationBuilder().AddJsonFile(file, optional: false, reloadOnChange: false).AddEnvironmentVariables("EDGEMAIL_TEST_").Build();
            var indexed = new ConfigurationBuilder().AddConfigFile(file).AddEnvironmentVariables("EDGEMAIL_TEST_").Build();

            Assert.True(Walk(stock) == Walk(indexed), $"seed {seed} (replay: EDGEMAIL_TEST_SEED={seed}), file {i}:\n{File.ReadAllText(file)}");
        }
    }

    [Fact]
    public void ManyDevices_EachBoundWithItsOwnValues()
    {
        Directory.CreateDirectory(Dir);
        var devices = new JsonObject();
        for (int d = 0; d < 5_000; d++)
        {
            var device = new JsonObject { ["Secret"] = $"s{d}", ["Site"] = $"Hall {d % 7}" };
            if (d % 3 == 0)
            {
                device["Owners"] = new JsonArray($"owner-{d}", "ops");
            }

            devices[$"dev-{d}"] = device;
        }

        string file = Path.Combine(Dir, "many.json");
        File.WriteAllText(file, new JsonObject { ["Devices"] = devices }.ToJsonString());

        var options = new GatewayOptions();
        new ConfigurationBuilder().AddConfigFile(file).Build().Bind(options);

        Assert.Equal(5_000, options.Devices.Count);
        Assert.Equal(["owner-3000", "ops"], options.Devices["dev-3000"].Owners);
        Assert.Empty(options.Devices["dev-3001"].Owners);
        Assert.Equal(("s4999", "Hall 1"), (options.Devices["dev-4999"].Secret, options.Devices["dev-4999"].Site));
    }

    [Fact]
    public void MissingFile_SaysWhichFileAsTheStockProviderDoes()
    {
        string file = Path.Combine(Dir, "absent.json");

        var ex = Assert.Throws<FileNotFoundException>(() => new ConfigurationBuilder().AddConfigFile(file).Build());

        Assert.Contains(file, ex.Message, StringComparison.Ordinal);
    }

    // Every path below the root, depth first in the order GetChildren gives, with its value.
    private static string Walk(IConfiguration configuration)
    {
        var text = new System.Text.StringBuilder();
        void Visit(IConfiguration node)
        {
            foreach (var child in node.GetChildren())
            {
                text.Append(child.Path).Append('=').Append(child.Value ?? "<null>").Append('\n');
                Visit(child);
            }
        }

        Visit(configuration);
        Visit(configuration.GetSection(string.Empty)); // the section named "" (keys that start with ':') is a path of its own
        foreach (var section in configuration.GetChildren())
        {
            Visit(configuration.GetSection(section.Key.ToUpperInvariant())); // keys ignore case, as binding "Devices" to "devices" needs
        }

        return text.ToString();
    }

    private static readonly string[] Names = ["Devices", "devices", "Owners", "a", "A", "a-b", "b", "10", "2", "x:y", "", "Site"];

    private static JsonObject RandomObject(Random random, int depth)
    {
        var node = new JsonObject();
        var used = new HashSet<string>(StringComparer.OrdinalIgnoreCase); // one JSON object cannot hold two spellings of a name
        int count = random.Next(depth == 0 ? 1 : 0, 6);
        for (int i = 0; i < count; i++)
        {
            string name = Names[random.Next(Names.Length)];
            if (used.Add(name))
            {
                node[name] = RandomValue(random, depth + 1);
            }
        }

        return node;
    }

    private static JsonNode? RandomValue(Random random, int depth) => random.Next(depth >= 4 ? 2 : 5) switch
    {
        0 => JsonValue.Create($"v{random.Next(100)}"),
        1 => JsonValue.Create(random.Next(1000)),
        2 => RandomObject(random, depth),
        3 => new JsonArray([.. Enumerable.Range(0, random.Next(4)).Select(_ => RandomValue(random, depth + 1))]),
        _ => null,
    };
}
