using EdgeMail.Simulation.Boards;

namespace EdgeMail.Emulator.Fleet;

/// <summary>Live numbers for the progress display.</summary>
internal sealed record FleetProgress(string Phase, double SimulatedSeconds, double RealSeconds, int Devices, int Connected, int Off,
    long Raised, long Acknowledged, long Queued, long PowerCuts);

/// <summary>
/// Runs a fleet of <see cref="VirtualDevice"/>s: a few scheduler threads (one per core), each stepping its share of
/// the devices when they are due, so thousands of devices need no thousands of threads; ticks that wait on the network
/// (connects, SMTP sessions) run on a small pool of I/O threads meanwhile.
/// </summary>
internal sealed class FleetRunner : IDisposable
{
    private readonly Scenario _scenario;
    private readonly List<VirtualDevice> _devices = [];
    private readonly FleetClock _clock;
    private volatile string _phase = "run";

    public FleetRunner(Scenario scenario, BoardProfile board, IDeviceObserver? observer = null, FleetClock? clock = null)
    {
        _scenario = scenario;
        _clock = clock ?? new FleetClock(scenario.Speed);
        Directory.CreateDirectory(scenario.StateDirectory);
        var secrets = new Secrets(scenario.SecretPattern, scenario.SecretsFile);
        for (int n = 1; n <= scenario.Devices; n++)
        {
            string id = scenario.DeviceId(n);
            _devices.Add(new VirtualDevice(n, id, secrets.For(id, n), board, scenario, _clock, scenario.StateDirectory, observer));
        }
    }

    public IReadOnlyList<VirtualDevice> Devices => _devices;

    /// <summary>Runs the scenario, then the drain phase; calls <paramref name="progress"/> about once per real second.
    /// With <paramref name="holdUntil"/>, drained devices stay on (connected, taking receipts) until it returns true or the drain time is over.</summary>
    public FleetReport Run(Action<FleetProgress>? progress, CancellationToken cancel, Func<bool>? holdUntil = null)
    {
        _clock.Start();
        int workers = Math.Max(1, Math.Min(Environment.ProcessorCount, _devices.Count));
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        using var blocking = new BlockingPool(Math.Clamp(_devices.Count / 16, 2, 64), stop);
        var threads = new Thread[workers];
        var shards = new Shard[workers];
        for (int w = 0; w < workers; w++)
        {
            var shard = new Shard([.. _devices.Where((_, i) => i % workers == w)]);
            shards[w] = shard;
            threads[w] = new Thread(() =>
            {
                try
                {
                    Schedule(shard, blocking, stop.Token);
                }
                catch (Exception ex) when (ex is not OutOfMemoryException)
                {
                    blocking.Fail(ex);
                }
            })
            { IsBackground = true, Name = $"fleet-{w}" };
            threads[w].Start();
        }

        long runEnd = (long)(_scenario.DurationSeconds * 1000);
        long drainEnd = runEnd + (long)(_scenario.DrainSeconds * 1000);
        bool quiesced = false;
        while (!stop.IsCancellationRequested)
        {
            long now = _clock.NowMs;
            if (!quiesced && now >= runEnd)
            {
                quiesced = true;
                _phase = "drain";
                foreach (VirtualDevice d in _devices)
                {
                    d.RequestQuiesce();
                }
            }

            // Every device must have seen the end of the run (its events are then all raised) before the run may stop.
            if (quiesced && _devices.All(d => d.LastTickMs >= runEnd) && (now >= drainEnd || (_devices.All(d => d.Drained) && (holdUntil is null || holdUntil()))))
            {
                break;
            }

            progress?.Invoke(Snapshot());
            stop.Token.WaitHandle.WaitOne(quiesced ? 100 : 250);
        }

        stop.Cancel();
        foreach (Thread t in threads)
        {
            t.Join();
        }

        blocking.Join();
        foreach (Shard shard in shards)
        {
            shard.Dispose();
        }

        if (blocking.Failure is not null)
        {
            throw new InvalidOperationException("A device scheduler failed: " + blocking.Failure.Message, blocking.Failure);
        }

        foreach (VirtualDevice d in _devices)
        {
            d.Finish();
        }

        progress?.Invoke(Snapshot() with { Phase = "done" });
        return FleetReport.From(_scenario, _devices, _clock);
    }

    public FleetProgress Snapshot() => new(
        _phase,
        _clock.NowMs / 1000.0,
        _clock.RealElapsed.TotalSeconds,
        _devices.Count,
        _devices.Count(d => d.IsConnected),
        _devices.Count(d => d.IsOff),
        _devices.Sum(d => d.Stats.RaiseCalls),
        _devices.Sum(d => d.Stats.Acknowledged),
        _devices.Sum(d => (long)d.Depth),
        _devices.Sum(d => d.Stats.PowerCuts));

    /// <summary>
    /// One scheduler thread: ticks its devices when they are due. A tick that may block on the network (a connect, an
    /// SMTP session, a boot) goes to the <see cref="BlockingPool"/> instead, and the device is left alone until it comes
    /// back, so one slow round trip never stalls the hundreds of devices that share the thread. Each device is still
    /// ticked by one thread at a time (the queue hand-over orders the memory accesses).
    /// </summary>
    private void Schedule(Shard shard, BlockingPool blocking, CancellationToken stop)
    {
        VirtualDevice[] devices = shard.Devices;
        long[] due = shard.Due;
        bool[] away = shard.Away;
        WaitHandle[] wake = [stop.WaitHandle, shard.Returned];
        while (!stop.IsCancellationRequested)
        {
            while (shard.Completed.TryDequeue(out (int Index, long Due) back))
            {
                due[back.Index] = back.Due;
                away[back.Index] = false;
            }

            long now = _clock.NowMs;
            long soonest = long.MaxValue;
            for (int i = 0; i < devices.Length; i++)
            {
                if (away[i])
                {
                    continue;
                }

                if (due[i] <= now)
                {
                    if (devices[i].MayBlock(now))
                    {
                        away[i] = true;
                        blocking.Post(shard, i, _clock);
                        continue;
                    }

                    due[i] = devices[i].Tick(now);
                }

                soonest = Math.Min(soonest, due[i]);
            }

            long wait = soonest - _clock.NowMs;
            if (wait > 0)
            {
                double realMs = Math.Min(_clock.ToRealMs(wait), 20);
                if (realMs >= 1)
                {
                    WaitHandle.WaitAny(wake, (int)realMs);
                }
            }
        }
    }

    /// <summary>A scheduler thread's devices, when each is next due, and which are out in the blocking pool.</summary>
    private sealed class Shard(VirtualDevice[] devices) : IDisposable
    {
        public VirtualDevice[] Devices { get; } = devices;

        public long[] Due { get; } = new long[devices.Length];

        public bool[] Away { get; } = new bool[devices.Length];

        /// <summary>Ticks the pool finished: device index and when it is next due.</summary>
        public System.Collections.Concurrent.ConcurrentQueue<(int Index, long Due)> Completed { get; } = new();

        /// <summary>Set when a tick comes back, so the scheduler looks at once.</summary>
        public AutoResetEvent Returned { get; } = new(false);

        public void Dispose() => Returned.Dispose();
    }

    /// <summary>
    /// Dedicated threads for ticks that wait on the network. Threads, not the thread pool: the devices' I/O is synchronous
    /// by design (the firmware core's transport is), and an in-process broker or receiver lives on the thread pool.
    /// </summary>
    private sealed class BlockingPool : IDisposable
    {
        private readonly System.Collections.Concurrent.BlockingCollection<(Shard Shard, int Index, FleetClock Clock)> _work = [];
        private readonly CancellationTokenSource _stop;
        private readonly Thread[] _threads;

        public BlockingPool(int threads, CancellationTokenSource stop)
        {
            _stop = stop;
            _threads = new Thread[threads];
            for (int t = 0; t < threads; t++)
            {
                _threads[t] = new Thread(Work) { IsBackground = true, Name = $"fleet-io-{t}" };
                _threads[t].Start();
            }
        }

        public Exception? Failure { get; private set; }

        public void Post(Shard shard, int index, FleetClock clock) => _work.Add((shard, index, clock));

        public void Fail(Exception ex)
        {
            Failure ??= ex;
            _stop.Cancel();
        }

        public void Join()
        {
            _work.CompleteAdding();
            foreach (Thread t in _threads)
            {
                t.Join();
            }
        }

        public void Dispose() => _work.Dispose();

        private void Work()
        {
            try
            {
                foreach ((Shard shard, int index, FleetClock clock) in _work.GetConsumingEnumerable())
                {
                    if (_stop.IsCancellationRequested)
                    {
                        shard.Completed.Enqueue((index, 0));
                        continue;
                    }

                    long due = shard.Devices[index].Tick(clock.NowMs);
                    shard.Completed.Enqueue((index, due));
                    shard.Returned.Set();
                }
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                Fail(ex);
            }
        }
    }

    public void Dispose()
    {
        foreach (VirtualDevice d in _devices)
        {
            d.Dispose();
        }
    }
}
