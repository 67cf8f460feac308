using BenchmarkDotNet.Attributes;
using EdgeMail.Firmware.Storage;

namespace EdgeMail.Benchmarks;

/// <summary>CPU cost of the CRC every flash record carries.</summary>
[MemoryDiagnoser]
public class Crc32Benchmark
{
    private readonly byte[] _record = new byte[256];

    /// <summary>One 256-byte alert record.</summary>
    [Benchmark]
    public uint Crc256() => Crc32.Compute(_record, 0, _record.Length);
}
