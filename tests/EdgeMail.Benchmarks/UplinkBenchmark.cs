using BenchmarkDotNet.Attributes;
using EdgeMail.Firmware;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;
using EdgeMail.Firmware.Uplink;
using EdgeMail.Simulation.Flash;

namespace EdgeMail.Benchmarks;

/// <summary>
/// CPU and allocations of raising and forwarding alerts through the real store, forwarder and MQTT client, over an
/// in-memory MQTT peer (no broker costs). Expected: 0 B allocated per operation. Results: docs/uplink-benchmarks.md.
/// </summary>
[MemoryDiagnoser]
public class UplinkBenchmark
{
    private const int Batch = 50;
    private readonly string[] _codes = [.. Enumerable.Range(0, Batch).Select(i => "BENCH_CODE_" + i)];
    private readonly Alert _alert = new("BENCH", Severity.Warning, "A bench alert of typical size: freezer 2 above -15 °C for 10 minutes");
    private NorFlashSimulator _flash = null!;
    private AlertStore _store = null!;
    private Forwarder _forwarder = null!;

    /// <summary>A connected device on 256 KiB of simulated NOR flash (4 KiB sectors, no timing).</summary>
    [GlobalSetup]
    public void Setup()
    {
        _flash = new NorFlashSimulator(new FlashGeometry(256 * 1024, 4096, 256, 1, allowsReprogram: true, encrypted: false));
        var clock = new TickClock();
        var queue = new FlashQueue(_flash);
        queue.Mount(1);
        var wall = new WallClock(clock);
        _store = new AlertStore(queue, clock, wall, 1);
        _forwarder = new Forwarder(_store, new UplinkLoopbackPeer(), clock, wall, new ForwarderOptions { DeviceId = "bench-device-0001", Secret = "x", HeartbeatIntervalMs = 0 });
        _alert.AddValue("temp_c", -95, 1);
        RaiseAndForward();
    }

    /// <summary>Releases the flash.</summary>
    [GlobalCleanup]
    public void Cleanup() => _flash.Dispose();

    /// <summary>Raises 50 alerts (distinct codes) and forwards them until all are acknowledged on flash.</summary>
    /// <returns>The store's depth (0).</returns>
    [Benchmark(OperationsPerInvoke = Batch)]
    public uint RaiseAndForward()
    {
        for (int i = 0; i < Batch; i++)
        {
            _alert.Code = _codes[i];
            _store.Raise(_alert);
        }

        while (_store.Depth > 0 || _forwarder.State != ForwarderState.Idle)
        {
            _forwarder.Step(0);
        }

        _store.Maintain();
        return _store.Depth;
    }

    private sealed class TickClock : IClock
    {
        private long _now = 1;

        public long UptimeMs => _now++;
    }
}

/// <summary>The broker side of MQTT 3.1.1 in memory: CONNACK, SUBACK, PUBACK, PINGRESP; no allocation.</summary>
internal sealed class UplinkLoopbackPeer : ITransport
{
    private readonly byte[] _in = new byte[16 * 1024];
    private readonly byte[] _out = new byte[4 * 1024];
    private int _inCount;
    private int _outCount;
    private bool _open;

    public void Open(string host, int port, int timeoutMs)
    {
        _open = true;
        _inCount = 0;
        _outCount = 0;
    }

    public int Send(byte[] buffer, int offset, int count, int timeoutMs)
    {
        if (!_open)
        {
            return -1;
        }

        Array.Copy(buffer, offset, _in, _inCount, count);
        _inCount += count;
        int p = 0;
        while (p + 2 <= _inCount)
        {
            int length = 0, shift = 0, q = p + 1;
            bool whole = false;
            while (q < _inCount)
            {
                byte b = _in[q++];
                length |= (b & 0x7F) << shift;
                shift += 7;
                if ((b & 0x80) == 0)
                {
                    whole = true;
                    break;
                }
            }

            if (!whole || q + length > _inCount)
            {
                break;
            }

            switch (_in[p] >> 4)
            {
                case 1:
                    Put(0x20, 0x02, 0x00, 0x00);
                    break;
                case 3 when ((_in[p] >> 1) & 3) == 1:
                    int id = q + 2 + ((_in[q] << 8) | _in[q + 1]);
                    Put(0x40, 0x02, _in[id], _in[id + 1]);
                    break;
                case 8:
                    Put(0x90, 0x03, _in[q], _in[q + 1]);
                    _out[_outCount++] = 0x01;
                    break;
                case 12:
                    Put(0xD0, 0x00, 0, 0);
                    _outCount -= 2;
                    break;
                case 14:
                    _open = false;
                    break;
                default:
                    break;
            }

            p = q + length;
        }

        _inCount -= p;
        Array.Copy(_in, p, _in, 0, _inCount);
        return count;
    }

    public int Receive(byte[] buffer, int offset, int count, int timeoutMs)
    {
        if (!_open)
        {
            return -1;
        }

        int n = Math.Min(count, _outCount);
        Array.Copy(_out, 0, buffer, offset, n);
        _outCount -= n;
        Array.Copy(_out, n, _out, 0, _outCount);
        return n;
    }

    public void Close() => _open = false;

    private void Put(byte a, byte b, byte c, byte d)
    {
        _out[_outCount++] = a;
        _out[_outCount++] = b;
        _out[_outCount++] = c;
        _out[_outCount++] = d;
    }
}
