using System.Globalization;
using System.Net;
using System.Text;

namespace EdgeMail.Emulator.Chaos;

/// <summary>
/// The run's timeline as an SVG a person reads: alerts raised, acknowledged by the gateway, delivered to the sink (all
/// cumulative) and queued on the devices, over simulated time, with the gateway, proxy and sink faults as labelled
/// bands and the device faults (power cuts, link drops) as ticks along the bottom. Plain SVG, written here: one chart
/// does not need a plotting library, and the output is byte-for-byte the same for the same inputs.
/// </summary>
internal static class ChaosChart
{
    private const int Width = 1200, Height = 560, Left = 70, Right = 260, Top = 40, Bottom = 110;

    public static string Write(ChaosResult result, string path)
    {
        (long[] raised, long[] acked) = result.Ledger.Series();
        long[] delivered = [.. result.Verdict.DeliveredAt];
        long end = Math.Max(1000, new[] { raised.DefaultIfEmpty().Max(), acked.DefaultIfEmpty().Max(), delivered.DefaultIfEmpty().Max(), result.Faults.Select(f => f.SimMs + f.DurationMs).DefaultIfEmpty().Max() }.Max());
        int buckets = 300;
        double step = end / (double)buckets;
        int[] Cumulative(long[] times)
        {
            int[] c = new int[buckets + 1];
            foreach (long t in times)
            {
                c[Math.Clamp((int)Math.Ceiling(t / step), 0, buckets)]++;
            }

            for (int i = 1; i <= buckets; i++)
            {
                c[i] += c[i - 1];
            }

            return c;
        }

        int[] r = Cumulative(raised), a = Cumulative(acked), d = Cumulative(delivered);
        int[] q = [.. r.Select((v, i) => v - a[i])];
        int max = Math.Max(1, r[buckets]);
        double plotW = Width - Left - Right, plotH = Height - Top - Bottom;
        string X(double ms) => F(Left + (ms / end * plotW));
        string Y(double v) => F(Top + plotH - (v / max * plotH));
        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{Width}\" height=\"{Height}\" viewBox=\"0 0 {Width} {Height}\" font-family=\"sans-serif\" font-size=\"11\">\n");
        svg.Append("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{Left}\" y=\"22\" font-size=\"15\">EdgeMail chaos, seed {result.Options.Seed}: {result.Options.Devices} devices, {result.Options.DurationSeconds:0} s of faults — {(result.Passed ? "PASS" : "FAIL")}, {result.Verdict.Violations.Count} violation(s)</text>\n");

        // Fault bands (gateway, proxy, sink), each kind its own colour and row of labels.
        string[] palette = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#1f77b4", "#2ca02c", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5"];
        var global = result.Faults.Where(f => f.Target is "gateway" or "proxy" or "sink").ToList();
        var kinds = global.Select(f => f.Kind).Distinct().OrderBy(k => k, StringComparer.Ordinal).ToList();
        foreach (FaultEvent f in global)
        {
            string colour = palette[kinds.IndexOf(f.Kind) % palette.Length];
            double w = Math.Max(2, f.DurationMs / (double)end * plotW);
            svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"{X(f.SimMs)}\" y=\"{Top}\" width=\"{F(w)}\" height=\"{F(plotH)}\" fill=\"{colour}\" fill-opacity=\"0.18\"><title>{Esc(f.Kind)} @{f.SimMs / 1000.0:0.0}s for {f.DurationMs / 1000.0:0.0}s {Esc(f.Detail)}</title></rect>\n");
        }

        // Axes and grid.
        svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{Left}\" y1=\"{F(Top + plotH)}\" x2=\"{F(Left + plotW)}\" y2=\"{F(Top + plotH)}\" stroke=\"black\"/>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{Left}\" y1=\"{Top}\" x2=\"{Left}\" y2=\"{F(Top + plotH)}\" stroke=\"black\"/>\n");
        for (int i = 0; i <= 5; i++)
        {
            double v = max * i / 5.0, t = end * i / 5.0;
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{Left - 6}\" y=\"{Y(v)}\" text-anchor=\"end\" dominant-baseline=\"middle\">{v:0}</text><line x1=\"{Left}\" y1=\"{Y(v)}\" x2=\"{F(Left + plotW)}\" y2=\"{Y(v)}\" stroke=\"#ddd\"/>\n");
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{X(t)}\" y=\"{F(Top + plotH + 16)}\" text-anchor=\"middle\">{t / 1000:0} s</text>\n");
        }

        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(Left + (plotW / 2))}\" y=\"{F(Top + plotH + 32)}\" text-anchor=\"middle\">simulated time since the start (= wall time, speed 1)</text>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text transform=\"translate(16 {F(Top + (plotH / 2))}) rotate(-90)\" text-anchor=\"middle\">alerts</text>\n");

        // Device faults: one tick per power cut / link drop along the bottom.
        double tickY = Top + plotH + 44;
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{Left - 6}\" y=\"{F(tickY + 5)}\" text-anchor=\"end\">power</text><text x=\"{Left - 6}\" y=\"{F(tickY + 21)}\" text-anchor=\"end\">link</text>\n");
        foreach (FaultEvent f in result.Faults.Where(f => f.Kind is FaultKind.PowerCut or FaultKind.LinkFlap))
        {
            double y = f.Kind == FaultKind.PowerCut ? tickY : tickY + 16;
            svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{X(f.SimMs)}\" y1=\"{F(y)}\" x2=\"{X(f.SimMs)}\" y2=\"{F(y + 10)}\" stroke=\"{(f.Kind == FaultKind.PowerCut ? "#d62728" : "#1f77b4")}\" stroke-opacity=\"0.5\"/>\n");
        }

        void Series(int[] values, string colour, string dash)
        {
            var points = new StringBuilder();
            for (int i = 0; i <= buckets; i++)
            {
                points.Append(X(i * step)).Append(',').Append(Y(values[i])).Append(' ');
            }

            svg.Append(CultureInfo.InvariantCulture, $"<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\" points=\"{points.ToString().TrimEnd()}\"/>\n");
        }

        Series(r, "#1f77b4", "none");
        Series(a, "#ff7f0e", "6 3");
        Series(d, "#2ca02c", "none");
        Series(q, "#d62728", "2 2");

        // Legend: the series, then the fault kinds.
        double lx = Left + plotW + 16, ly = Top + 6;
        foreach ((string name, string colour) in new[] { ("raised (cumulative)", "#1f77b4"), ("acknowledged by the gateway", "#ff7f0e"), ("delivered to the sink", "#2ca02c"), ("queued on devices", "#d62728") })
        {
            svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{F(lx)}\" y1=\"{F(ly)}\" x2=\"{F(lx + 22)}\" y2=\"{F(ly)}\" stroke=\"{colour}\" stroke-width=\"2\"/><text x=\"{F(lx + 28)}\" y=\"{F(ly + 4)}\">{Esc(name)}</text>\n");
            ly += 18;
        }

        ly += 8;
        foreach (string kind in kinds)
        {
            svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"{F(lx)}\" y=\"{F(ly - 7)}\" width=\"22\" height=\"12\" fill=\"{palette[kinds.IndexOf(kind) % palette.Length]}\" fill-opacity=\"0.35\"/><text x=\"{F(lx + 28)}\" y=\"{F(ly + 3)}\">{Esc(kind)}</text>\n");
            ly += 17;
        }

        svg.Append("</svg>\n");
        File.WriteAllText(path, svg.ToString());
        return path;
    }

    private static string F(double v) => v.ToString("0.#", CultureInfo.InvariantCulture);

    private static string Esc(string s) => WebUtility.HtmlEncode(s);
}
