using System.Diagnostics;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;
using EdgeMail.Firmware.Uplink;
using EdgeMail.Simulation.Flash;
using EdgeMail.Simulation.Network;

namespace EdgeMail.Firmware.Tests.Uplink;

/// <summary>Real elapsed time plus a jump the test controls (for schedules measured in minutes).</summary>
internal sealed class AdjustableClock : IClock
{
    private readonly Stopwatch _watch = Stopwatch.StartNew();
    private long _offset = 1_000;

    public long UptimeMs => _watch.ElapsedMilliseconds + Interlocked.Read(ref _offset);

    public void Advance(long ms) => Interlocked.Add(ref _offset, ms);
}

/// <summary>One emulated device: simulated flash that survives reboots, the store and the forwarder over real TCP.</summary>
internal sealed class ForwarderRig : IDisposable
{
    public static readonly FlashGeometry Geometry = new(64 * 1024, 4096, 256, 1, allowsReprogram: true, encrypted: false);

    private readonly Func<ForwarderOptions> _options;

    /// <param name="options">The forwarder's options, read at every boot.</param>
    /// <param name="flashSeed">The simulator's seed.</param>
    /// <param name="device">What the queue reads and programs through (a fault wrapper around the simulator); the simulator itself when null.</param>
    /// <param name="geometry">The flash's geometry; <see cref="Geometry"/> when null.</param>
    public ForwarderRig(Func<ForwarderOptions> options, int flashSeed = 1, Func<NorFlashSimulator, IFlashDevice>? device = null, FlashGeometry? geometry = null)
    {
        _options = options;
        Flash = new NorFlashSimulator(geometry ?? Geometry, seed: flashSeed);
        Device = device == null ? Flash : device(Flash);
        Boot();
    }

    public NorFlashSimulator Flash { get; }

    public IFlashDevice Device { get; }

    public AdjustableClock Clock { get; private set; } = null!;

    public FlashQueue Queue { get; private set; } = null!;

    public WallClock Wall { get; private set; } = null!;

    public AlertStore Store { get; private set; } = null!;

    public TcpTransport Transport { get; private set; } = null!;

    public Forwarder Forwarder { get; private set; } = null!;

    public uint BootCount { get; private set; }

    /// <summary>Power on: mount the queue on the same flash, fresh RAM state (clock, window, cursor).</summary>
    public void Boot()
    {
        Transport?.Dispose();
        if (Flash.IsPoweredOff)
        {
            Flash.PowerOn(seed: (int)BootCount);
        }

        BootCount++;
        Clock = new AdjustableClock();
        Queue = new FlashQueue(Device);
        Queue.Mount(0x7F3A9C21);
        Wall = new WallClock(Clock);
        Store = new AlertStore(Queue, Clock, Wall, BootCount);
        Transport = new TcpTransport();
        Forwarder = new Forwarder(Store, Transport, Clock, Wall, _options()) { Boot = BootCount };
    }

    /// <summary>Power off without any goodbye: the socket just dies with the device.</summary>
    public void PowerOff() => Transport.Dispose();

    public uint Raise(string code, Severity severity = Severity.Warning, string text = "test alert")
    {
        var alert = new Alert(code, severity, text);
        return Forwarder.Raise(alert);
    }

    /// <summary>Steps the forwarder until <paramref name="condition"/> holds; fails after a deadline.</summary>
    public void StepUntil(Func<bool> condition, string what, int timeoutMs = 60_000) // a guard against a hang, not a speed check
    {
        var watch = Stopwatch.StartNew();
        while (!condition())
        {
            if (watch.ElapsedMilliseconds > timeoutMs)
            {
                throw new TimeoutException($"Timed out after {timeoutMs} ms waiting for {what}; forwarder {Forwarder.State}, last error: {Forwarder.LastError}");
            }

            Forwarder.Step(20);
        }
    }

    public void Dispose()
    {
        Transport.Dispose();
        Flash.Dispose();
    }
}
