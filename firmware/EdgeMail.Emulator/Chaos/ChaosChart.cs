using System.Globalization;
using OxyPlot;
using OxyPlot.Annotations;
using OxyPlot.Axes;
using OxyPlot.Legends;
using OxyPlot.Series;

namespace EdgeMail.Emulator.Chaos;

/// <summary>What the timeline chart shows: the run's identity and verdict, simulated ms of each raise, acknowledgement and first delivery, and the faults.</summary>
internal sealed record ChartInput(int Seed, int Devices, double DurationSeconds, bool Passed, int Violations, long[] Raised, long[] Acked, long[] Delivered,
    IReadOnlyList<FaultEvent> Faults);

/// <summary>
/// The run's timeline as an SVG a person reads, drawn with OxyPlot: alerts raised, acknowledged by the gateway, delivered
/// to the sink (all cumulative) and queued on the devices, over simulated time; every gateway, proxy and sink fault as a
/// marker of its kind (with a band for its duration), and the devices' power cuts and link drops as markers under the
/// axis (one per time bucket), each kind in the legend with its count. The same input gives the same bytes: points are bucketed and faults
/// sorted before plotting, and OxyPlot's SVG exporter measures text with its built-in font metrics, not the machine's.
/// </summary>
internal static class ChaosChart
{
    public const int Width = 1280, Height = 640;
    private const int Buckets = 300;

    private static readonly OxyColor[] Palette =
    [
        OxyColor.FromRgb(0xd6, 0x27, 0x28), OxyColor.FromRgb(0xff, 0x7f, 0x0e), OxyColor.FromRgb(0x94, 0x67, 0xbd), OxyColor.FromRgb(0x8c, 0x56, 0x4b),
        OxyColor.FromRgb(0xe3, 0x77, 0xc2), OxyColor.FromRgb(0x7f, 0x7f, 0x7f), OxyColor.FromRgb(0xbc, 0xbd, 0x22), OxyColor.FromRgb(0x17, 0xbe, 0xcf),
        OxyColor.FromRgb(0x1f, 0x77, 0xb4), OxyColor.FromRgb(0x2c, 0xa0, 0x2c), OxyColor.FromRgb(0x39, 0x3b, 0x79), OxyColor.FromRgb(0xad, 0x49, 0x4a),
    ];

    private static readonly MarkerType[] Markers = [MarkerType.Triangle, MarkerType.Diamond, MarkerType.Square, MarkerType.Circle];

    public static string Write(ChaosResult result, string path)
    {
        (long[] raised, long[] acked) = result.Ledger.Series();
        var input = new ChartInput(result.Options.Seed, result.Options.Devices, result.Options.DurationSeconds, result.Passed, result.Verdict.Violations.Count,
            raised, acked, [.. result.Verdict.DeliveredAt], result.Faults);
        File.WriteAllText(path, Render(input));
        return path;
    }

    public static string Render(ChartInput input)
    {
        PlotModel model = Model(input);
        var exporter = new SvgExporter { Width = Width, Height = Height, TextMeasurer = new PixelTextMeasurer(Width, Height) };
        return exporter.ExportToString(model);
    }

    // OxyPlot's SVG exporter measures text with its PDF context, which answers in points (1/72 in) where the SVG it writes
    // counts pixels (1/96 in): text came out a third wider than the room made for it, and the legend ran off the image.
    private sealed class PixelTextMeasurer(double width, double height) : PdfRenderContext(width, height, OxyColors.White)
    {
        public override OxySize MeasureText(string text, string fontFamily, double fontSize, double fontWeight) =>
            base.MeasureText(text, fontFamily, fontSize * 96 / 72, fontWeight);
    }

    public static PlotModel Model(ChartInput input)
    {
        long end = Math.Max(1000, new[] { Max(input.Raised), Max(input.Acked), Max(input.Delivered), input.Faults.Select(f => f.SimMs + f.DurationMs).DefaultIfEmpty().Max() }.Max());
        double step = end / (double)Buckets;
        int[] raised = Cumulative(input.Raised, step), acked = Cumulative(input.Acked, step), delivered = Cumulative(input.Delivered, step);
        int[] queued = [.. raised.Select((r, i) => r - acked[i])];
        double top = Math.Max(1, raised[Buckets]);

        var model = new PlotModel
        {
            Title = string.Create(CultureInfo.InvariantCulture,
                $"EdgeMail chaos, seed {input.Seed}: {input.Devices} devices, {input.DurationSeconds:0} s of faults — {(input.Passed ? "PASS" : "FAIL")}, {input.Violations} violation(s)"),
            Subtitle = "alerts over simulated time (= wall time, speed 1); gateway, proxy and sink faults above the curves, device faults below the axis",
            Background = OxyColors.White,
            DefaultFont = "Arial", // the metrics OxyPlot measures text with (Helvetica's) fit Arial and its metric twins; a wider font would overrun the legend
            DefaultFontSize = 11,
            TitleFontSize = 15,
            Padding = new OxyThickness(8, 8, 16, 8),
        };
        model.Legends.Add(new Legend
        {
            LegendPlacement = LegendPlacement.Outside, LegendPosition = LegendPosition.RightTop, LegendOrientation = LegendOrientation.Vertical, LegendFontSize = 11,
            LegendPadding = 8, LegendLineSpacing = 4,
        });
        model.Axes.Add(new LinearAxis
        {
            Position = AxisPosition.Bottom, Title = "seconds since the start", Minimum = 0, Maximum = end / 1000.0,
            MajorGridlineStyle = LineStyle.Solid, MajorGridlineColor = OxyColor.FromRgb(0xe4, 0xe4, 0xe4),
        });
        model.Axes.Add(new LinearAxis
        {
            Position = AxisPosition.Left, Title = "alerts", Minimum = -0.12 * top, Maximum = 1.12 * top, AxisTitleDistance = 10,
            MajorGridlineStyle = LineStyle.Solid, MajorGridlineColor = OxyColor.FromRgb(0xe4, 0xe4, 0xe4),
        });

        // Faults first, so the curves are drawn over their bands.
        var faults = input.Faults.OrderBy(f => f.SimMs).ThenBy(f => f.Kind, StringComparer.Ordinal).ThenBy(f => f.Target, StringComparer.Ordinal).ToList();
        var global = faults.Where(f => f.Target is "gateway" or "proxy" or "sink").ToList();
        var kinds = global.Select(f => f.Kind).Distinct().Order(StringComparer.Ordinal).ToList();
        for (int k = 0; k < kinds.Count; k++)
        {
            OxyColor colour = Palette[k % Palette.Length];
            var marks = new ScatterSeries
            {
                Title = $"{kinds[k]} ({global.Count(f => f.Kind == kinds[k])})", MarkerType = Markers[k % Markers.Length], MarkerSize = 5,
                MarkerFill = colour, MarkerStroke = colour, MarkerStrokeThickness = 1,
            };
            double row = top * (1.02 + (0.08 * (k % 2))); // alternate two rows so marks close in time stay apart
            foreach (FaultEvent f in global.Where(f => f.Kind == kinds[k]))
            {
                marks.Points.Add(new ScatterPoint(f.SimMs / 1000.0, row));
                if (f.DurationMs > 0)
                {
                    model.Annotations.Add(new RectangleAnnotation
                    {
                        MinimumX = f.SimMs / 1000.0, MaximumX = (f.SimMs + f.DurationMs) / 1000.0, MinimumY = 0, MaximumY = row,
                        Fill = OxyColor.FromAColor(40, colour), Layer = AnnotationLayer.BelowSeries,
                    });
                }
            }

            model.Series.Add(marks);
        }

        AddDeviceFaults(model, faults, FaultKind.PowerCut, -0.04 * top, step, OxyColor.FromRgb(0xd6, 0x27, 0x28));
        AddDeviceFaults(model, faults, FaultKind.LinkFlap, -0.09 * top, step, OxyColor.FromRgb(0x1f, 0x77, 0xb4));

        model.Series.Add(Curve("raised (cumulative)", raised, step, OxyColor.FromRgb(0x1f, 0x77, 0xb4), LineStyle.Solid));
        model.Series.Add(Curve("acknowledged by the gateway", acked, step, OxyColor.FromRgb(0xff, 0x7f, 0x0e), LineStyle.Dash));
        model.Series.Add(Curve("delivered to the sink", delivered, step, OxyColor.FromRgb(0x2c, 0xa0, 0x2c), LineStyle.Solid));
        model.Series.Add(Curve("queued on devices", queued, step, OxyColor.FromRgb(0xd6, 0x27, 0x28), LineStyle.Dot));
        return model;
    }

    // One mark per time bucket that had any (the legend keeps the count): a fleet of thousands has faults by the
    // hundred thousand, which as one mark each would make an SVG of megabytes that shows nothing more.
    private static void AddDeviceFaults(PlotModel model, List<FaultEvent> faults, string kind, double y, double step, OxyColor colour)
    {
        var marks = new ScatterSeries
        {
            Title = $"{kind} ({faults.Count(f => f.Kind == kind)})", MarkerType = MarkerType.Square, MarkerSize = 2,
            MarkerFill = OxyColor.FromAColor(140, colour), MarkerStroke = OxyColors.Undefined,
        };
        foreach (int bucket in faults.Where(f => f.Kind == kind).Select(f => Math.Clamp((int)Math.Ceiling(f.SimMs / step), 0, Buckets)).Distinct().Order())
        {
            marks.Points.Add(new ScatterPoint(bucket * step / 1000.0, y));
        }

        model.Series.Add(marks);
    }

    private static LineSeries Curve(string title, int[] values, double step, OxyColor colour, LineStyle style)
    {
        var line = new LineSeries { Title = title, Color = colour, StrokeThickness = 2, LineStyle = style };
        for (int i = 0; i <= Buckets; i++)
        {
            line.Points.Add(new DataPoint(i * step / 1000.0, values[i]));
        }

        return line;
    }

    // Counts per bucket, summed up: the order the times came in (threads, timing) does not change the curve.
    private static int[] Cumulative(long[] times, double step)
    {
        int[] c = new int[Buckets + 1];
        foreach (long t in times)
        {
            c[Math.Clamp((int)Math.Ceiling(t / step), 0, Buckets)]++;
        }

        for (int i = 1; i <= Buckets; i++)
        {
            c[i] += c[i - 1];
        }

        return c;
    }

    private static long Max(long[] values) => values.Length == 0 ? 0 : values.Max();
}
