using System.Globalization;
using Microsoft.Diagnostics.Tracing.Etlx;
using Microsoft.Diagnostics.Tracing.Parsers.Clr;

// dotnet run -c Release --project gateway/bench/AllocReport -- FILE.nettrace [TOP] [FRAMES]
// The runtime samples an allocation about every 100 KB (GCAllocationTick) and names the object's type; each sample
// stands for the bytes allocated since the last. Shares are of the sampled bytes, so they hold for the traced window.
if (args.Length == 0)
{
    Console.Error.WriteLine("usage: AllocReport FILE.nettrace [TOP=30] [FRAMES=6]");
    return 2;
}

int top = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 30;
int frames = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 6;
using var log = new TraceLog(TraceLog.CreateFromEventPipeDataFile(args[0]));
var byType = new Dictionary<string, long>();
var byMethod = new Dictionary<string, long>();
var byStack = new Dictionary<string, long>();
long total = 0;
foreach (var e in log.Events)
{
    if (e is not GCAllocationTickTraceData sample)
    {
        continue;
    }

    long bytes = sample.AllocationAmount64;
    string type = sample.TypeName ?? "?";
    total += bytes;
    Add(byType, type, bytes);
    var stack = new List<string>();
    var counted = new HashSet<string>();
    for (var frame = sample.CallStack(); frame is not null; frame = frame.Caller)
    {
        string method = frame.CodeAddress.FullMethodName is { Length: > 0 } name ? name : frame.CodeAddress.ModuleName + "!?";
        if (stack.Count < frames)
        {
            stack.Add(method);
        }

        if (counted.Add(method))
        {
            Add(byMethod, method, bytes); // once per sample: recursion does not count twice
        }
    }

    Add(byStack, type + "  <=  " + string.Join("  <  ", stack), bytes);
}

Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{total / 1048576.0:F1} MiB sampled in {args[0]}"));
Print("by type", byType, top);
Print("by method, inclusive", byMethod, top * 2);
Print("by stack", byStack, top);
return 0;

void Print(string title, Dictionary<string, long> table, int rows)
{
    Console.WriteLine("== " + title);
    foreach (var (key, bytes) in table.OrderByDescending(p => p.Value).Take(rows))
    {
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{100.0 * bytes / Math.Max(1, total),6:F1}%  {key}"));
    }
}

static void Add(Dictionary<string, long> table, string key, long bytes) => table[key] = table.GetValueOrDefault(key) + bytes;
