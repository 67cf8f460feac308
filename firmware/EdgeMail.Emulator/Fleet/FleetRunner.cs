using EdgeMail.Simulation.Boards;

namespace EdgeMail.Emulator.Fleet;

/// <summary>Live numbers for the progress display.</summary>
internal sealed record FleetProgress(string Phase, double SimulatedSeconds, double RealSeconds, int Devices, int Connected, int Off,
    long Raised, long Acknowledged, long Queued, long PowerCuts);

/// <summary>
/// Runs a fleet of <see cref="VirtualDevice"/>s: a few scheduler threads (one per core), each stepping its share of
/// the devices when they are due, so thousands of devices need no thousands of threads.
/// </summary>
internal sealed class FleetRunner : IDisposable
{
    private readonly Scenario _scenario;
    private readonly List<VirtualDevice> _devices = [];
    private readonly FleetClock _clock;
    private volatile string _phase = "run";

    public FleetRunner(Scenario scenario, BoardProfile board)
    {
        _scenario = scenario;
        _clock = new FleetClock(scenario.Speed);
        Directory.CreateDirectory(scenario.StateDirectory);
        var secrets = new Secrets(scenario.SecretPattern, scenario.SecretsFile);
        for (int n = 1; n <= scenario.Devices; n++)
        {
            string id = scenario.DeviceId(n);
            _devices.Add(new VirtualDevice(n, id, secrets.For(id, n), board, scenario, _clock, scenario.StateDirectory));
        }
    }

    public IReadOnlyList<VirtualDevice> Devices => _devices;

    /// <summary>Runs the scenario, then the drain phase; calls <paramref name="progress"/> about once per real second.</summary>
    public FleetReport Run(Action<FleetProgress>? progress, CancellationToken cancel)
    {
        _clock.Start();
        int workers = Math.Max(1, Math.Min(Environment.ProcessorCount, _devices.Count));
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var threads = new Thread[workers];
        Exception? failure = null;
        for (int w = 0; w < workers; w++)
        {
            VirtualDevice[] shard = [.. _devices.Where((_, i) => i % workers == w)];
            threads[w] = new Thread(() =>
            {
                try
                {
                    Schedule(shard, stop.Token);
                }
                catch (Exception ex) when (ex is not OutOfMemoryException)
                {
                    failure ??= ex;
                    stop.Cancel();
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
            if (quiesced && _devices.All(d => d.LastTickMs >= runEnd) && (now >= drainEnd || _devices.All(d => d.Drained)))
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

        if (failure is not null)
        {
            throw new InvalidOperationException("A device scheduler failed: " + failure.Message, failure);
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

    private void Schedule(VirtualDevice[] shard, CancellationToken stop)
    {
        var due = new long[shard.Length];
        while (!stop.IsCancellationRequested)
        {
            long now = _clock.NowMs;
            long soonest = long.MaxValue;
            for (int i = 0; i < shard.Length; i++)
            {
                if (due[i] <= now)
                {
                    due[i] = shard[i].Tick(now);
                }

                soonest = Math.Min(soonest, due[i]);
            }

            long wait = soonest - _clock.NowMs;
            if (wait > 0)
            {
                double realMs = Math.Min(_clock.ToRealMs(wait), 20);
                if (realMs >= 1)
                {
                    stop.WaitHandle.WaitOne((int)realMs);
                }
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
