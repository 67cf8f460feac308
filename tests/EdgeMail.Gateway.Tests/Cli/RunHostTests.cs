using System.Text;
using EdgeMail.Gateway.Cli;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Xunit;

namespace EdgeMail.Gateway.Tests.Cli;

/// <summary>
/// <c>edgemail run</c>'s host lifetime (<see cref="RunCommand.RunHostAsync"/>) with the real gateway. A stop that comes
/// while the services are still starting (systemd's SIGTERM while the console starts) stops the services that had
/// started, as any stop does. Before, the host stopped part-way through its start never stopped them: the delivery
/// worker's mail under way had its result dropped, and went again after the next start.
/// </summary>
public sealed class RunHostTests : TempDirectory
{
    [Fact]
    public async Task StopWhileStarting_StopsTheServicesThatStarted_TheMailUnderWayIsRecordedAsSent()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        var taken = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var answer = new ManualResetEventSlim();
        sink.OnData = _ =>
        {
            taken.TrySetResult();
            answer.Wait(Await.DefaultTimeout); // the relay's 250 waits until the stop has begun
            return SmtpReply.Ok;
        };
        string config = TestGateway.WriteConfig(Dir, 1, c =>
            c["Relay"] = new { Mode = "Smarthost", Host = "127.0.0.1", Port = sink.Port, Security = "None", Timeout = "00:00:05", Backoff = new[] { "00:01:00" } });
        var slow = new SlowToStart();
        var builder = GatewayHost.CreateBuilder(["--config", config]);
        builder.Services.AddHostedService(_ => slow); // after every service of the gateway: it starts last
        using var host = builder.Build();
        var spool = host.Services.GetRequiredService<ISpool>();

        var run = RunCommand.RunHostAsync(host);
        await Await.Within(slow.Entered.Task, "every other service started");
        await spool.QueueMailAsync(new NewMessage("relay", "dev-1", null, "under-way@gw.test", "edgemail@gw.test", ["alice@example.com"],
            Encoding.ASCII.GetBytes("Message-ID: <under-way@gw.test>\r\nSubject: mains lost\r\n\r\nOn battery.\r\n")), default);
        await Await.Within(taken.Task, "the mail's data at the relay");

        host.Services.GetRequiredService<IHostApplicationLifetime>().StopApplication(); // what SIGTERM does
        answer.Set();
        await Await.Within(run, "the run to end after the stop");

        Assert.Equal(MessageStatus.Sent, (await spool.GetMessageAsync("under-way@gw.test", default))!.Status);
        Assert.Equal(0, host.Services.GetRequiredService<EdgeMail.Gateway.Operations.GatewayLifetime>().ExitCode); // a stop on request
    }

    // A start that fails: the services that started are stopped all the same, and the start's own failure is what the
    // run ends with (a service that then fails to stop does not take its place, nor does the stop the host requests).
    [Fact]
    public async Task StartThatFails_StopsTheServicesThatStarted_AndEndsWithItsOwnFailure()
    {
        var started = new Recorder(stopThrows: true);
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddHostedService(_ => started);
        builder.Services.AddHostedService(_ => new Failing(new InvalidOperationException("the SMTP port is in use")));
        using var host = builder.Build();

        var failure = await Assert.ThrowsAsync<InvalidOperationException>(() => RunCommand.RunHostAsync(host));

        Assert.Equal("the SMTP port is in use", failure.Message);
        Assert.True(started.Stopped);
    }

    // An OperationCanceledException from a start nobody asked to stop (a start timeout) is a failure, not a stop.
    [Fact]
    public async Task StartCancelledWithoutAStopRequest_IsAFailure()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddHostedService(_ => new Failing(new OperationCanceledException("start timed out")));
        using var host = builder.Build();

        Assert.Equal("start timed out", (await Assert.ThrowsAsync<OperationCanceledException>(() => RunCommand.RunHostAsync(host))).Message);
    }

    private sealed class Recorder(bool stopThrows) : IHostedService
    {
        public bool Stopped { get; private set; }

        public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken)
        {
            Stopped = true;
            return stopThrows ? Task.FromException(new IOException("the listener was never bound")) : Task.CompletedTask;
        }
    }

    private sealed class Failing(Exception failure) : IHostedService
    {
        public Task StartAsync(CancellationToken cancellationToken) => Task.FromException(failure);

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }

    private sealed class SlowToStart : IHostedService
    {
        public TaskCompletionSource Entered { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public async Task StartAsync(CancellationToken cancellationToken)
        {
            Entered.TrySetResult();
            await Task.Delay(Timeout.Infinite, cancellationToken);
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
