using System.Globalization;
using System.Text.RegularExpressions;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Relay;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
using Microsoft.Extensions.DependencyInjection;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// The relay's health as <c>/readyz</c> reports it (and <c>edgemail_relay_up</c>, from the same state): up while the
/// relay answers, also when it refuses a recipient or DNS says the recipient's domain does not exist; down when it
/// cannot be reached.
/// </summary>
/// <remarks>
/// The gauge is read from <c>/metrics</c>, which sees every gateway meter in the process: these tests run alone, or
/// another test's gateway with a working relay would answer 1 for the one found down here.
/// </remarks>
[Collection(nameof(EdgeMail.Gateway.Tests.Web.MetricsCollection))]
public sealed class RelayHealthTests
{
    [Fact]
    public async Task Readiness_TheSmarthostRefusesTheOnlyRecipient_TheRelayStaysUp()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        sink.OnCommand = c => c.Verb == "RCPT" ? new SmtpReply(550, "5.1.1 no such user") : null;
        await using var gw = await StartAsync(new { Mode = "Smarthost", Host = "127.0.0.1", Port = sink.Port, Security = "None", Backoff = new[] { "00:10:00" }, Timeout = "00:00:05" },
            "alice@example.com");

        var relay = await RelayAfterTheAttemptAsync(gw, "refused-1", until: m => m.Status == "failed");

        Assert.True(relay.Ok, relay.Detail);
        Assert.Contains("550 5.1.1 no such user", relay.Detail, StringComparison.Ordinal);
        Assert.Equal(1, await RelayUpMetricAsync(gw));
    }

    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Readiness_DirectMxRecipientDomainDoesNotExist_TheRelayStaysUp()
    {
        using var dns = await Dnsmasq.StartAsync("--local=/example.test/"); // every name in example.test is NXDOMAIN
        await using var gw = await StartAsync(new { Mode = "DirectMx", DnsServer = "127.0.0.1:" + dns.Port.ToString(CultureInfo.InvariantCulture), MxPort = Loopback.FreePort(), Backoff = new[] { "00:10:00" }, Timeout = "00:00:05" },
            "alice@nowhere.example.test");

        var relay = await RelayAfterTheAttemptAsync(gw, "nx-1", until: m => m.Status == "failed");

        Assert.True(relay.Ok, relay.Detail);
        Assert.Contains("does not exist", relay.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Readiness_TheSmarthostCannotBeReached_TheRelayIsDown()
    {
        int nobody = Loopback.FreePort(); // nothing listens there
        await using var gw = await StartAsync(new { Mode = "Smarthost", Host = "127.0.0.1", Port = nobody, Security = "None", Backoff = new[] { "00:10:00" }, Timeout = "00:00:05" },
            "alice@example.com");

        var relay = await RelayAfterTheAttemptAsync(gw, "down-1", until: m => m.Attempts >= 1);

        Assert.False(relay.Ok, relay.Detail);
        Assert.Contains($"connection to 127.0.0.1:{nobody} failed", relay.Detail, StringComparison.Ordinal);
        Assert.Equal(0, await RelayUpMetricAsync(gw));
    }

    // The operator is in the recipient's domain too: the failure notice meets the same answer, whenever it goes.
    private static Task<TestGateway> StartAsync(object relay, string recipient) => TestGateway.StartAsync(c =>
    {
        c["Sender"] = new { Address = "edgemail@gw.test", DisplayName = "EdgeMail", Hostname = "gw.test", Operator = "ops@" + recipient[(recipient.IndexOf('@', StringComparison.Ordinal) + 1)..] };
        c["Users"] = new Dictionary<string, object> { ["alice"] = new { Name = "Alice", Email = recipient } };
        c["Groups"] = new Dictionary<string, object>();
        c["Relay"] = relay;
        c["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "alice" } } };
    });

    // Publishes one alert and returns the readiness check of the relay once the attempt's outcome is recorded.
    private static async Task<HealthCheck> RelayAfterTheAttemptAsync(TestGateway gw, string alertId, Func<EdgeMail.Gateway.Spool.MessageState, bool> until)
    {
        using var device = await gw.ConnectAsync("dev-1");
        await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
            .WithPayload(Alerts.Json(alertId)).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        var health = gw.Host.Services.GetRequiredService<RelayHealth>();
        string id = $"dev-1.{alertId}.alert@gw.test";

        // The health is recorded right after the spool commit: wait for both.
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync(id, default)) is { } m && until(m) && health.LastError is not null,
            "the first attempt recorded");
        return gw.Host.Services.GetRequiredService<PipelineProbe>().Readiness().Single(c => c.Name == "relay");
    }

    private static async Task<int> RelayUpMetricAsync(TestGateway gw)
    {
        using var api = await gw.ApiAsync();
        string text = await api.GetStringAsync("/metrics");
        var up = Regex.Match(text, "^edgemail_relay_up(?:\\{[^}]*\\})? ([01])\\b", RegexOptions.Multiline);
        Assert.True(up.Success, "edgemail_relay_up in /metrics:\n" + text);
        return up.Groups[1].Value == "1" ? 1 : 0;
    }
}
