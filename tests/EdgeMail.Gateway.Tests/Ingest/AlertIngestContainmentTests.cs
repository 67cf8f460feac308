using System.Diagnostics.Metrics;
using EdgeMail.Gateway.Devices;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.Operations;
using EdgeMail.Gateway.Tests.Smtp;
using Microsoft.Extensions.DependencyInjection;
using MimeKit;
using Xunit;

namespace EdgeMail.Gateway.Tests.Ingest;

/// <summary>
/// An alert whose handling throws for a reason of its own is kept as rejected with that reason and acknowledged, so the
/// device's later alerts flow; the MQTT (embedded broker) and SMTP transports. External mode: <see cref="ExternalStoreFailureTests"/>.
/// </summary>
public sealed class AlertIngestContainmentTests
{
    [Fact]
    public async Task Embedded_HandlingAnAlertThrows_ItIsKeptRejectedAndAcknowledgedAndTheDevicesNextAlertIsMailed()
    {
        await using var gw = await TestGateway.StartAsync();
        gw.Logs.Expect(e => e.Message.StartsWith("Handling alert poison-1 from dev-1 failed", StringComparison.Ordinal) && e.Exception is InvalidOperationException);
        long rejected = 0;
        using var listener = CountRejected(gw, n => Interlocked.Add(ref rejected, n));
        var fault = IngestFault.Arm(gw.Host.Services, "dev-1");
        using var client = await gw.ConnectAsync("dev-1");
        var receipts = await ReceiptInbox.SubscribeAsync(client, "dev-1");

        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("poison-1")); // PUBACK: the device's queue moves on
        fault.Disarm();
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("next-1"));

        Assert.Equal((AlertStatus.Rejected, IngestFault.Reason), (await gw.Spool.GetAlertAsync("dev-1", "poison-1", default))!.Value);
        Assert.Equal(IngestFault.Reason, (await receipts.WaitForAsync("poison-1", "rejected")).GetProperty("detail").GetString());
        await receipts.WaitForAsync("next-1", "accepted");
        var mail = MimeMessage.Load(Assert.Single(await gw.MailAsync(1)));
        Assert.Equal("next-1", mail.Headers["X-EdgeMail-Alert"]);
        Assert.Equal(1, Interlocked.Read(ref rejected));
    }

    [Fact]
    public async Task Embedded_ARetransmissionOfAnAlertKeptRejected_IsAnsweredRejectedWithTheStoredReason_NotAccepted()
    {
        await using var gw = await TestGateway.StartAsync();
        gw.Logs.Expect(e => e.Message.StartsWith("Handling alert poison-2 from dev-1 failed", StringComparison.Ordinal));
        var fault = IngestFault.Arm(gw.Host.Services, "dev-1");
        using var client = await gw.ConnectAsync("dev-1");
        var receipts = await ReceiptInbox.SubscribeAsync(client, "dev-1");
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("poison-2"));
        await receipts.WaitForAsync("poison-2", "rejected");
        fault.Disarm();

        // The device did not take the first receipt and sends the alert again: it parses, but the gateway holds it rejected.
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("poison-2"));
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("next-2"));
        await receipts.WaitForAsync("next-2", "accepted"); // receipts go out in order: every answer to the resend is in

        Assert.Equal(2, receipts.Count("poison-2", "rejected"));
        Assert.Equal(0, receipts.Count("poison-2", "accepted"));
        Assert.Equal(IngestFault.Reason, (await receipts.WaitForAsync("poison-2", "rejected")).GetProperty("detail").GetString());
        Assert.Equal((AlertStatus.Rejected, IngestFault.Reason), (await gw.Spool.GetAlertAsync("dev-1", "poison-2", default))!.Value);
    }

    [Fact]
    public async Task Embedded_ARetransmissionWhoseHandlingFailsAgain_IsAnsweredRejectedToo()
    {
        await using var gw = await TestGateway.StartAsync();
        gw.Logs.Expect(e => e.Message.StartsWith("Handling alert poison-3 from dev-1 failed", StringComparison.Ordinal));
        var fault = IngestFault.Arm(gw.Host.Services, "dev-1");
        using var client = await gw.ConnectAsync("dev-1");
        var receipts = await ReceiptInbox.SubscribeAsync(client, "dev-1");

        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("poison-3"));
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("poison-3"));
        fault.Disarm();
        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("next-3"));
        await receipts.WaitForAsync("next-3", "accepted");

        Assert.Equal(2, receipts.Count("poison-3", "rejected"));
    }

    [Fact]
    public async Task Smtp_HandlingAnAlertPartThrows_ItIsKeptRejectedAndTheMessageTakenWith250()
    {
        await using var gw = await SmtpGateway.StartAsync();
        gw.Logs.Expect(e => e.Message.StartsWith("Handling alert smtp-poison from dev-1 failed", StringComparison.Ordinal));
        var fault = IngestFault.Arm(gw.Host.Services, "dev-1");
        await using var wire = await gw.AuthenticatedAsync("dev-1");

        // A 451 here would have the device's uplink send this message first at every session, for ever.
        string poisoned = await wire.SendMailAsync("dev-1@devices.test", ["alarms@gw.test"], SmtpGateway.AlertMail("smtp-poison"));
        fault.Disarm();
        string next = await wire.SendMailAsync("dev-1@devices.test", ["alarms@gw.test"], SmtpGateway.AlertMail("smtp-next"));

        Assert.StartsWith("250 2.0.0 alert stored (1 new", poisoned);
        Assert.StartsWith("250 2.0.0 alert stored (1 new", next);
        Assert.Equal((AlertStatus.Rejected, IngestFault.Reason), (await gw.Spool.GetAlertAsync("dev-1", "smtp-poison", default))!.Value);
        var mail = MimeMessage.Load(Assert.Single(await gw.MailAsync(1)));
        Assert.Equal("smtp-next", mail.Headers["X-EdgeMail-Alert"]);
    }

    [Fact]
    public async Task Embedded_AFaultAfterTheCommit_DoesNotKeepTheAlertFromBeingAcknowledgedAndMailed()
    {
        await using var gw = await TestGateway.StartAsync();
        gw.Logs.Expect(e => e.Message.StartsWith("Alert late-1 from dev-1 is stored, but", StringComparison.Ordinal) && e.Exception is InvalidOperationException);
        int faults = 0;

        // A metrics exporter that fails on the first alert counted: counting follows the commit.
        using var listener = Listen(gw, (_, _) =>
        {
            if (Interlocked.Exchange(ref faults, 1) == 0)
            {
                throw new InvalidOperationException(IngestFault.Message);
            }
        });
        using var client = await gw.ConnectAsync("dev-1");

        await ContainmentTests.PublishAsync(client, "dev-1", Alerts.Json("late-1"));

        var mail = MimeMessage.Load(Assert.Single(await gw.MailAsync(1)));
        Assert.Equal("late-1", mail.Headers["X-EdgeMail-Alert"]);
        Assert.Equal(1, Volatile.Read(ref faults));
    }

    // edgemail.alerts.received{result=rejected} of this gateway only (every gateway of the process has a meter of its own).
    private static MeterListener CountRejected(TestGateway gw, Action<long> add) =>
        Listen(gw, (value, result) =>
        {
            if (result == "rejected")
            {
                add(value);
            }
        });

    // Measurements of this gateway's edgemail.alerts.received, with their result tag.
    private static MeterListener Listen(TestGateway gw, Action<long, string?> measured)
    {
        var instrument = gw.Host.Services.GetRequiredService<GatewayMetrics>().AlertsReceived;
        var listener = new MeterListener();
        listener.InstrumentPublished = (i, l) =>
        {
            if (ReferenceEquals(i, instrument))
            {
                l.EnableMeasurementEvents(i);
            }
        };
        listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
        {
            string? result = null;
            foreach (var tag in tags)
            {
                if (tag.Key == "result")
                {
                    result = tag.Value as string;
                }
            }

            measured(value, result);
        });
        listener.Start();
        return listener;
    }
}

/// <summary>
/// A fault in the handling of one device's alerts, as a bug would throw it: a <see cref="DevicePresence.Heard"/>
/// subscriber (the ingest tells it of every alert before storing it) that throws for that device while armed.
/// </summary>
internal sealed class IngestFault
{
    public const string Message = "a fault of this alert's own (test)";

    public const string Reason = "handling failed: InvalidOperationException: " + Message;

    private volatile bool _armed = true;

    private IngestFault()
    {
    }

    public static IngestFault Arm(IServiceProvider services, string device)
    {
        var fault = new IngestFault();
        services.GetRequiredService<DevicePresence>().Heard += d =>
        {
            if (d == device && fault._armed)
            {
                throw new InvalidOperationException(Message);
            }
        };
        return fault;
    }

    public void Disarm() => _armed = false;
}
