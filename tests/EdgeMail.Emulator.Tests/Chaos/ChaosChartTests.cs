using System.Text;
using System.Xml.Linq;
using EdgeMail.Emulator.Chaos;
using Xunit;

namespace EdgeMail.Emulator.Tests.Chaos;

/// <summary>The chaos timeline chart (OxyPlot, SVG): the same input gives the same bytes, whatever order it was gathered in.</summary>
public sealed class ChaosChartTests
{
    private static readonly DateTimeOffset T0 = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000);

    private static ChartInput Input(int seed = 14, bool shuffled = false)
    {
        var random = new Random(seed);
        long[] raised = [.. Enumerable.Range(0, 400).Select(_ => (long)random.Next(0, 40_000))];
        long[] acked = [.. raised.Select(r => r + random.Next(50, 9_000))];
        long[] delivered = [.. acked.Select(a => a + random.Next(100, 20_000))];
        var faults = new List<FaultEvent>
        {
            new(FaultKind.GatewayKill, 12_000, T0.AddSeconds(12), 3_500, "gateway", "SIGKILL"),
            new(FaultKind.GatewayRestart, 25_000, T0.AddSeconds(25), 4_000, "gateway", "SIGTERM"),
            new(FaultKind.SinkDown, 30_000, T0.AddSeconds(30), 8_000, "sink", string.Empty),
            new(FaultKind.ProxyReset, 18_000, T0.AddSeconds(18), 0, "proxy", "12 connections reset"),
        };
        for (int i = 0; i < 60; i++)
        {
            faults.Add(new(i % 3 == 0 ? FaultKind.LinkFlap : FaultKind.PowerCut, random.Next(0, 40_000), T0, 2_000, $"dev-{i % 24}", string.Empty));
        }

        if (shuffled)
        {
            // The same facts in another order: as threads and timing would have delivered them in another run.
            var again = new Random(99);
            raised = [.. raised.OrderBy(_ => again.Next())];
            acked = [.. acked.OrderBy(_ => again.Next())];
            delivered = [.. delivered.OrderBy(_ => again.Next())];
            faults = [.. faults.OrderBy(_ => again.Next())];
        }

        return new ChartInput(seed, 24, 40, Passed: true, Violations: 0, raised, acked, delivered, faults);
    }

    [Fact]
    public void Render_SameInput_GivesTheSameBytes_InWhateverOrderItWasGathered()
    {
        byte[] first = Encoding.UTF8.GetBytes(ChaosChart.Render(Input()));
        byte[] again = Encoding.UTF8.GetBytes(ChaosChart.Render(Input()));
        byte[] shuffled = Encoding.UTF8.GetBytes(ChaosChart.Render(Input(shuffled: true)));

        Assert.Equal(first, again);
        Assert.Equal(first, shuffled);
        Assert.NotEqual(first, Encoding.UTF8.GetBytes(ChaosChart.Render(Input(seed: 15))));
    }

    [Fact]
    public void Render_AThousandDeviceSoaksFaults_StaysASmallSvg_WithEveryFaultCounted()
    {
        var input = Input();
        var random = new Random(7);
        var many = new List<FaultEvent>(input.Faults);
        for (int i = 0; i < 120_000; i++)
        {
            many.Add(new(i % 2 == 0 ? FaultKind.LinkFlap : FaultKind.PowerCut, random.Next(0, 40_000), T0, 2_000, $"dev-{i % 1000}", string.Empty));
        }

        string svg = ChaosChart.Render(input with { Faults = many });

        Assert.True(svg.Length < 2 * ChaosChart.Render(input).Length, $"{svg.Length} characters: device faults plotted one mark each");
        Assert.Contains($"{FaultKind.PowerCut} ({many.Count(f => f.Kind == FaultKind.PowerCut)})", svg, StringComparison.Ordinal);
    }

    [Fact]
    public void Render_IsAnSvgWithTheFourCurvesAndEveryFaultKindInTheLegend()
    {
        string svg = ChaosChart.Render(Input());

        var root = XDocument.Parse(svg).Root!;
        Assert.Equal("svg", root.Name.LocalName);
        Assert.Equal(ChaosChart.Width.ToString(System.Globalization.CultureInfo.InvariantCulture), root.Attribute("width")?.Value);
        string text = string.Join("\n", root.Descendants().Where(e => e.Name.LocalName == "text").Select(e => e.Value));
        Assert.Contains("seed 14: 24 devices, 40 s of faults — PASS, 0 violation(s)", text, StringComparison.Ordinal);
        foreach (string entry in new[]
        {
            "raised (cumulative)", "acknowledged by the gateway", "delivered to the sink", "queued on devices",
            $"{FaultKind.GatewayKill} (1)", $"{FaultKind.GatewayRestart} (1)", $"{FaultKind.SinkDown} (1)", $"{FaultKind.ProxyReset} (1)",
            $"{FaultKind.PowerCut} (40)", $"{FaultKind.LinkFlap} (20)",
        })
        {
            Assert.Contains(entry, text, StringComparison.Ordinal);
        }
    }
}
