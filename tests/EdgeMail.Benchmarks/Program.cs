using BenchmarkDotNet.Running;

// Micro-benchmarks (BenchmarkDotNet) are picked by the switcher; scenario reports that measure a
// simulated or end-to-end quantity rather than CPU time are separate verbs (see docs/benchmarks.md).
BenchmarkSwitcher.FromAssembly(typeof(EdgeMail.Benchmarks.Crc32Benchmark).Assembly).Run(args);
