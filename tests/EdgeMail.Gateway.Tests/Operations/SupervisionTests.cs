using System.Runtime.Versioning;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Tests.Deployment;
using EdgeMail.Testing;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Operations;

[SupportedOSPlatform("linux")]
public sealed class SupervisionTests
{
    [Fact]
    public async Task LoopThatFaults_IsRestartedAfterABackoffThatDoubles()
    {
        var clock = new TimerSignallingClock(DateTimeOffset.FromUnixTimeSeconds(1_800_000_000));
        using var metrics = new GatewayMetrics();
        using var loop = new FaultingLoop(faults: 2, clock, metrics);
        using var stop = new CancellationTokenSource();

        var firstBackoff = clock.NextTimer();
        await loop.StartAsync(stop.Token);
        await Await.Within(loop.Runs(1), "the first run");

        // Not before its backoff: 1 s, then 2 s.
        await Await.Within(firstBackoff, "the first backoff timer");
        Assert.Equal(1, loop.Restarts);
        clock.Advance(TimeSpan.FromMilliseconds(999));
        Assert.Equal(1, loop.RunCount);
        var secondBackoff = clock.NextTimer();
        clock.Advance(TimeSpan.FromMilliseconds(1));
        await Await.Within(loop.Runs(2), "the second run");
        await Await.Within(secondBackoff, "the second backoff timer");
        clock.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(2, loop.RunCount);
        clock.Advance(TimeSpan.FromSeconds(1));
        await Await.Within(loop.Runs(3), "the third run, which does not fault");
        Assert.Equal(2, loop.Restarts);

        await stop.CancelAsync();
        await loop.StopAsync(default);
    }

    [Fact]
    public async Task Fail_StopsTheHostWithTheFatalExitCode()
    {
        using var host = Host.CreateApplicationBuilder().Build();
        await host.StartAsync();
        var lifetime = new GatewayLifetime(host.Services.GetService(typeof(IHostApplicationLifetime)) as IHostApplicationLifetime ?? throw new InvalidOperationException(),
            NullLogger<GatewayLifetime>.Instance);

        Assert.Equal(0, lifetime.ExitCode);
        lifetime.Fail("the spool database is corrupt");
        lifetime.Fail("a later reason does not replace the first");

        await Await.Within(host.WaitForShutdownAsync().ContinueWith(_ => true, TaskScheduler.Default), "the host to stop");
        Assert.Equal(GatewayLifetime.FatalExitCode, lifetime.ExitCode);
    }

    [Theory]
    [InlineData("port")]
    [InlineData("spool")]
    public async Task Gateway_ThatCannotStart_SaysWhyAndExitsOne(string what)
    {
        string dir = Appliance.NewTempDirectory();
        using var blocker = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        blocker.Start();
        int port = what == "port" ? ((System.Net.IPEndPoint)blocker.LocalEndpoint).Port : Loopback.FreePort();
        if (what == "spool")
        {
            Directory.CreateDirectory(Path.Combine(dir, "data"));
            await File.WriteAllTextAsync(Path.Combine(dir, "data", "spool.db"), "this is not a database, and far too long to be mistaken for an empty one");
        }

        try
        {
            var (code, stdout, stderr) = await Appliance.RunAsync("dotnet", Path.Combine(AppContext.BaseDirectory, "EdgeMail.Gateway.dll"),
                "--config", Appliance.Template, "--DataDirectory=" + Path.Combine(dir, "data"), $"--Mqtt:TlsPort={port}"); // the template listens with TLS only

            Assert.True(code == 1, $"exit {code}\n{stdout}\n{stderr}");
            Assert.Contains("edgemail: cannot start: ", stderr, StringComparison.Ordinal);
            Assert.Contains(what == "port" ? "address already in use" : "not a database", stderr, StringComparison.OrdinalIgnoreCase);
        }
        finally
        {
            Appliance.DeleteQuietly(dir);
        }
    }

    private sealed class FaultingLoop(int faults, TimeProvider clock, GatewayMetrics metrics)
        : SupervisedLoop("test", clock, metrics, NullLogger.Instance)
    {
        private readonly List<TaskCompletionSource<bool>> _runs = [];
        private int _runCount;

        public int RunCount => Volatile.Read(ref _runCount);

        public Task<bool> Runs(int n)
        {
            lock (_runs)
            {
                while (_runs.Count < n)
                {
                    _runs.Add(new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously));
                }

                return _runs[n - 1].Task;
            }
        }

        protected override async Task RunAsync(CancellationToken stoppingToken)
        {
            int n = Interlocked.Increment(ref _runCount);
            _ = Runs(n);
            lock (_runs)
            {
                _runs[n - 1].TrySetResult(true);
            }

            if (n <= faults)
            {
                throw new InvalidOperationException($"fault {n}");
            }

            await Task.Delay(Timeout.Infinite, stoppingToken);
        }
    }

    // A fake clock that tells the test each time a timer is created, so the test advances time only once the loop waits.
    private sealed class TimerSignallingClock(DateTimeOffset start) : FakeTimeProvider(start)
    {
        private TaskCompletionSource<bool> _timer = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task<bool> NextTimer()
        {
            lock (this)
            {
                return _timer.Task;
            }
        }

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            var timer = base.CreateTimer(callback, state, dueTime, period);
            lock (this)
            {
                _timer.TrySetResult(true);
                _timer = new(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            return timer;
        }
    }
}
