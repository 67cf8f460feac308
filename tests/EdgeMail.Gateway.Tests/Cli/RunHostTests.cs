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
/// worker's mail under way had its result dropped, and went again after the next start (a cluster test found three
/// mails sent and not recorded, next to "Hosting failed to start").
/// </summary>
public sealed class RunHostTests
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
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        string config = TestGateway.WriteConfig(dataDir, 1, c =>
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
        Assert.Single(sink.Received);
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
