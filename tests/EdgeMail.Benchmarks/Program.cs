using BenchmarkDotNet.Running;
using EdgeMail.Benchmarks;

// Scenario reports measure simulated or end-to-end quantities (see docs/benchmarks.md); anything else
// goes to BenchmarkDotNet's switcher (`-- --filter '*'`).
if (args.Length > 0 && args[0] == "flash")
{
    return FlashQueueReport.Run(Console.Out);
}

if (args.Length > 0 && args[0] == "stages")
{
    return await StagesReport.RunAsync(Console.Out, args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 20_000);
}

if (args.Length > 0 && args[0] == "spool")
{
    return await SpoolReport.RunAsync(Console.Out);
}

BenchmarkSwitcher.FromAssembly(typeof(Crc32Benchmark).Assembly).Run(args);
return 0;
