using EdgeMail.Gateway.Operations;
using Microsoft.Extensions.DependencyInjection;
using Xunit;

namespace EdgeMail.Gateway.Tests.Operations;

/// <summary>The housekeeping pass removes everything past its retention, however much there is, in chunks.</summary>
public sealed class HousekeeperTests
{
    // The pass repeated its chunks only while mail or alerts filled one: heartbeats went at most 1,000 a pass, so a fleet
    // writing more than that an hour (84 devices at one per 5 minutes) grew the table until the disk guard refused alerts.
    [Fact]
    public async Task Pass_WithMoreExpiredHeartbeatsThanOneChunk_RemovesEveryOne()
    {
        await using var gw = await TestGateway.StartAsync(c => { });
        var old = DateTimeOffset.UtcNow - TimeSpan.FromDays(8); // past the 7 days heartbeats are kept
        byte[] status = "{\"v\":1,\"fw\":\"1.0\"}"u8.ToArray();
        const int devices = 2500;
        await Task.WhenAll(Enumerable.Range(0, devices).Select(i => gw.Spool.RecordStatusAsync($"fleet-{i}", old, status, default)));

        await gw.Host.Services.GetRequiredService<Housekeeper>().PassAsync(default);

        int left = 0;
        for (int i = 0; i < devices; i++)
        {
            left += (await gw.Spool.HeartbeatsAsync($"fleet-{i}", old - TimeSpan.FromDays(1), default)).Count;
        }

        Assert.Equal(0, left);
    }
}
