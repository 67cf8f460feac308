using System.Diagnostics.Metrics;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Reflection;
using System.Runtime.ExceptionServices;
using System.Text;
using System.Text.Json;
using EdgeMail.Gateway.Devices;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Ingest.Smtp;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.Operations;
using EdgeMail.Testing.Smtp;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using MimeKit;
using Xunit;

namespace EdgeMail.Gateway.Tests.Smtp;

/// <summary>
/// A device's relayed mail whose handling throws for a reason of its own is quarantined — kept as it came, listed with
/// the parked items, counted — and taken with 250, so the device's later mail flows; released, it is handled again and
/// relayed once, rewritten; quarantining that fails too is a 451. Alert parts: <c>AlertIngestContainmentTests</c>.
/// </summary>
public sealed class QuarantineTests
{
    private const string Body = "Breaker 3 tripped.\r\n.leading dot kept\r\nLast line without newline";

    private static Action<Dictionary<string, object>> Relay(SmtpTestServer sink) => c =>
        c["Relay"] = new { Mode = "Smarthost", Host = "127.0.0.1", Port = sink.Port, Security = "None", Backoff = new[] { "00:00:00.200" }, Concurrency = 2, Timeout = "00:00:05" };

    [Fact]
    public async Task RelayMail_WhoseHandlingThrows_IsTakenAndQuarantined_TheSessionGoesOn_AndReleasedAfterTheFixItIsRelayedOnceRewritten()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        var fault = new RelayFault();
        var gw = await SmtpGateway.StartAsync(tweak: Relay(sink), services: fault.Install, dataDir: dataDir);
        gw.Logs.Expect(e => e.Message.StartsWith("Handling mail from device dev-1 (127.0.0.1) failed; quarantining it", StringComparison.Ordinal)
            && e.Exception is InvalidOperationException);
        gw.Logs.Expect(e => e.Message.Contains("was released but stays quarantined: " + RelayFault.Reason, StringComparison.Ordinal));
        long quarantined = 0;
        using var listener = CountQuarantined(gw, n => Interlocked.Add(ref quarantined, n));
        string poisonMail = SmtpGateway.PlainMail(RelayFault.Subject, Body, to: "alarms@gw.test");
        string poisoned, next;
        await using (var wire = await gw.AuthenticatedAsync("dev-1"))
        {
            poisoned = await wire.SendMailAsync("ups@lan.test", ["alarms@gw.test"], poisonMail);
            next = await wire.SendMailAsync("ups@lan.test", ["alice@example.com"], SmtpGateway.PlainMail("Next", "All fine"));
        }

        // A 451 would have the device send it first at every session, for ever, and nothing behind it would move.
        Assert.StartsWith("250 2.0.0 taken and quarantined for the operator as <", poisoned);
        Assert.StartsWith("250 2.0.0 queued as <", next);
        var item = Assert.Single(await gw.Spool.ParkedAsync(10, default));
        Assert.Equal((ParkedKinds.Message, "dev-1", RelayFault.Reason), (item.Kind, item.Device, item.Reason));
        Assert.Contains($"<{item.Reference}>", poisoned, StringComparison.Ordinal);
        Assert.Equal(1, Interlocked.Read(ref quarantined));
        using (var api = await gw.ApiAsync())
        {
            var listed = await api.GetFromJsonAsync<JsonElement>("/api/v1/parked");
            var entry = Assert.Single(listed.EnumerateArray());
            Assert.Equal((item.RowId, RelayFault.Reason), (entry.GetProperty("rowId").GetInt64(), entry.GetProperty("reason").GetString()));

            // Released while the fault is still there: handled again, it fails again and stays, with the new reason.
            var again = await api.PostAsync($"/api/v1/queue/{item.RowId}/release", null);
            Assert.Equal(HttpStatusCode.Conflict, again.StatusCode);
            Assert.Equal($"mail {item.RowId} stays quarantined: {RelayFault.Reason}", (await again.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("error").GetString());
        }

        Assert.Equal(item.RowId, Assert.Single(await gw.Spool.ParkedAsync(10, default)).RowId);
        var mails = new[] { await sink.NextAsync(), await sink.NextAsync() }; // the next mail, and the notice to the operator
        Assert.Equal("Next", Assert.Single(mails, m => m.To.Contains("alice@example.com")).Message.Subject);
        Assert.Contains(item.Reference!, Assert.Single(mails, m => m.To.Contains("ops@example.com")).Message.TextBody, StringComparison.Ordinal);
        await gw.StopAsync();

        // The fixed gateway on the same spool: the quarantined mail was kept, envelope and session with it.
        await using var fixedGw = await SmtpGateway.StartAsync(tweak: Relay(sink), dataDir: dataDir);
        using (var api = await fixedGw.ApiAsync())
        {
            Assert.Equal(HttpStatusCode.NoContent, (await api.PostAsync($"/api/v1/queue/{item.RowId}/release", null)).StatusCode);
            var relayed = await NextWithSubjectAsync(sink, RelayFault.Subject);
            Assert.Equal(HttpStatusCode.Conflict, (await api.PostAsync($"/api/v1/queue/{item.RowId}/release", null)).StatusCode);

            // Rewritten and checked as any relayed mail: never the bytes as they came.
            Assert.Equal("edgemail@gw.test", relayed.From);
            Assert.Equal(["alice@example.com", "bob@example.com"], relayed.To.Order(StringComparer.Ordinal)); // alias alarms -> group oncall
            var message = relayed.Message;
            Assert.Equal("edgemail@gw.test", message.From.Mailboxes.Single().Address);
            Assert.Equal("ups@lan.test", message.ReplyTo.Mailboxes.Single().Address);
            Assert.Equal("dev-1", message.Headers["X-EdgeMail-Device"]);
            Assert.Matches(@"^from dev-1 \(\[127\.0\.0\.1\]\) by gw\.test \(EdgeMail\) with ESMTPSA\s+id [0-9a-f]{12};", message.Headers[HeaderId.Received]); // the session it came in
            Assert.Equal(MessageIdOf(poisonMail), message.MessageId);
            Assert.EndsWith("\r\n\r\n" + Body, Encoding.UTF8.GetString(relayed.Data).TrimEnd('\r', '\n'), StringComparison.Ordinal); // the body, byte for byte
        }

        Assert.Empty(await fixedGw.Spool.ParkedAsync(10, default));
        await fixedGw.UntilAsync(async () => (await fixedGw.Spool.CountsAsync(default)).Messages.GetValueOrDefault(MessageStatus.Queued) == 0, "nothing queued");
        Assert.Single(sink.Received, m => m.Message.Subject == RelayFault.Subject);
    }

    [Theory]
    [InlineData(nameof(ISpool.QuarantineAsync))] // handling failed, and keeping it failed too
    [InlineData(nameof(ISpool.QueueMailAsync))] // the spool failed: not the mail's fault, nothing to quarantine
    public async Task RelayMail_WhenTheSpoolFails_IsAnswered451AndNothingIsTaken_AndSentAgainItIsQueued(string failing)
    {
        var fault = new RelayFault { SpoolFails = failing };
        await using var gw = await SmtpGateway.StartAsync(services: fault.Install);
        gw.Logs.Expect(e => e.Message.StartsWith("Handling mail from device dev-1", StringComparison.Ordinal));
        await using var wire = await gw.AuthenticatedAsync("dev-1");
        string mail = SmtpGateway.PlainMail(RelayFault.Subject, Body);

        string refused = await wire.SendMailAsync("ups@lan.test", ["alice@example.com"], mail);
        fault.Disarm();
        string retried = await wire.SendMailAsync("ups@lan.test", ["alice@example.com"], mail);

        Assert.StartsWith("451 4.3.0", refused);
        Assert.StartsWith("250 2.0.0 queued as <", retried);
        Assert.Empty(await gw.Spool.ParkedAsync(10, default));
        Assert.Equal(RelayFault.Subject, MimeMessage.Load(Assert.Single(await gw.MailAsync(1))).Subject);
    }

    [Fact]
    public async Task QuarantinedMail_Cancelled_IsNeverSent_AndCannotBeReleasedAfter()
    {
        var fault = new RelayFault();
        await using var gw = await SmtpGateway.StartAsync(services: fault.Install);
        gw.Logs.Expect(e => e.Message.StartsWith("Handling mail from device dev-1", StringComparison.Ordinal));
        await using (var wire = await gw.AuthenticatedAsync("dev-1"))
        {
            Assert.StartsWith("250 2.0.0 taken and quarantined", await wire.SendMailAsync("ups@lan.test", ["alice@example.com"], SmtpGateway.PlainMail(RelayFault.Subject, Body)));
        }

        var item = Assert.Single(await gw.Spool.ParkedAsync(10, default));
        fault.Disarm();
        using var api = await gw.ApiAsync();

        Assert.Equal(HttpStatusCode.NoContent, (await api.PostAsync($"/api/v1/queue/{item.RowId}/cancel", JsonContent.Create(new { reason = "a test mail" }))).StatusCode);
        var release = await api.PostAsync($"/api/v1/queue/{item.RowId}/release", null);

        Assert.Equal(HttpStatusCode.Conflict, release.StatusCode);
        Assert.Empty(await gw.Spool.ParkedAsync(10, default));
        Assert.Equal(MessageStatus.Cancelled, (await gw.Spool.GetMessageAsync(item.Reference!, default))?.Status);
        var notice = MimeMessage.Load(Assert.Single(await gw.MailAsync(1))); // the operator's notice; the mail itself never
        Assert.Equal("ops@example.com", notice.To.Mailboxes.Single().Address);

        // The mailbox has the notice before its delivery is committed: nothing stays queued once it is.
        await gw.UntilAsync(async () => (await gw.Spool.CountsAsync(default)).Messages.GetValueOrDefault(MessageStatus.Queued) == 0, "no mail left queued");
    }

    // A device disabled since its mail was quarantined (perhaps because it was taken over): its held mail is no more
    // its to send than new mail would be.
    [Fact]
    public async Task QuarantinedMail_OfADeviceDisabledSince_IsNotRelayedWhenReleased_UntilTheDeviceIsEnabledAgain()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        var fault = new RelayFault();
        await using var gw = await SmtpGateway.StartAsync(tweak: Relay(sink), services: fault.Install);
        gw.Logs.Expect(e => e.Message.StartsWith("Handling mail from device dev-1", StringComparison.Ordinal));
        gw.Logs.Expect(e => e.Message.Contains("was released but stays quarantined: refused when released: device dev-1 is disabled", StringComparison.Ordinal));
        await using (var wire = await gw.AuthenticatedAsync("dev-1"))
        {
            Assert.StartsWith("250 2.0.0 taken and quarantined", await wire.SendMailAsync("ups@lan.test", ["alice@example.com"], SmtpGateway.PlainMail(RelayFault.Subject, Body)));
        }

        var item = Assert.Single(await gw.Spool.ParkedAsync(10, default));
        fault.Disarm();
        using var api = await gw.ApiAsync();
        Assert.Equal(HttpStatusCode.OK, (await api.PostAsync("/api/v1/devices/dev-1/disable", null)).StatusCode);

        var refused = await api.PostAsync($"/api/v1/queue/{item.RowId}/release", null);

        Assert.Equal(HttpStatusCode.Conflict, refused.StatusCode);
        Assert.Contains("device dev-1 is disabled", (await refused.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("error").GetString(), StringComparison.Ordinal);
        Assert.Equal(item.RowId, Assert.Single(await gw.Spool.ParkedAsync(10, default)).RowId);

        Assert.Equal(HttpStatusCode.OK, (await api.PostAsync("/api/v1/devices/dev-1/enable", null)).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await api.PostAsync($"/api/v1/queue/{item.RowId}/release", null)).StatusCode);
        Assert.Equal("dev-1", (await NextWithSubjectAsync(sink, RelayFault.Subject)).Message.Headers["X-EdgeMail-Device"]);
    }

    // The device did not see the 250 (its link dropped after the commit) and sends the same mail in its next session:
    // with a Message-ID it is the same mail, kept, counted and told once, as relayed mail is queued once.
    [Fact]
    public async Task RelayMail_WithAMessageId_SentAgainAfterItWasQuarantined_IsAnsweredAlreadyQuarantined_KeptAndCountedOnce()
    {
        var fault = new RelayFault();
        await using var gw = await SmtpGateway.StartAsync(services: fault.Install);
        gw.Logs.Expect(e => e.Message.StartsWith("Handling mail from device dev-", StringComparison.Ordinal));
        long quarantined = 0;
        using var listener = CountQuarantined(gw, n => Interlocked.Add(ref quarantined, n));
        string mail = SmtpGateway.PlainMail(RelayFault.Subject, Body);

        string first = await SendAsync(gw, "dev-1", mail);
        string again = await SendAsync(gw, "dev-1", mail);
        string otherDevice = await SendAsync(gw, "dev-2", mail); // the same bytes from another device are that device's mail

        var parked = await gw.Spool.ParkedAsync(10, default);
        var item = Assert.Single(parked, p => p.Device == "dev-1");
        Assert.Equal($"250 2.0.0 taken and quarantined for the operator as <{item.Reference}>: handling it failed", first);
        Assert.Equal($"250 2.0.0 already quarantined as <{item.Reference}>", again);
        Assert.StartsWith("250 2.0.0 taken and quarantined for the operator as <", otherDevice);
        Assert.Equal(2, parked.Count);
        Assert.Equal(2, Interlocked.Read(ref quarantined)); // dev-1's mail once, dev-2's once: each one notice to the operator
    }

    // Without a Message-ID two identical mails are two mails (a device without a clock may repeat itself word for word).
    [Fact]
    public async Task RelayMail_WithoutAMessageId_SentTwice_IsQuarantinedTwice()
    {
        var fault = new RelayFault();
        await using var gw = await SmtpGateway.StartAsync(services: fault.Install);
        gw.Logs.Expect(e => e.Message.StartsWith("Handling mail from device dev-1", StringComparison.Ordinal));
        string mail = $"From: <ups@lan.test>\r\nTo: <alice@example.com>\r\nSubject: {RelayFault.Subject}\r\n\r\n{Body}";

        string first = await SendAsync(gw, "dev-1", mail);
        string second = await SendAsync(gw, "dev-1", mail);

        var parked = await gw.Spool.ParkedAsync(10, default);
        Assert.Equal(2, parked.Select(p => p.Reference).Distinct().Count());
        Assert.All(parked, p => Assert.Single(new[] { first, second }, r => r.Contains($"<{p.Reference}>", StringComparison.Ordinal)));
    }

    // Quarantined mail can carry alert parts: here the alert ingest's spool failed with a fault of its own, for the alert
    // and again for keeping it rejected. Released, its alert is stored through the alert ingest; but the operator's
    // release is not the device speaking, so a device silent since stays silent and no DEVICE_BACK goes to its people.
    [Fact]
    public async Task AlertMail_QuarantinedThenReleasedWhileItsDeviceIsSilent_StoresTheAlertAsReceivedThen_AndDoesNotReportTheDeviceBack()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        int armed = 1;
        await using var gw = await SmtpGateway.StartAsync(tweak: c => c["Silence"] = new { DefaultAfter = "00:10:00", CheckInterval = "00:00:30" }, services: s =>
        {
            s.AddSingleton<TimeProvider>(clock);
            s.AddSingleton(sp => ActivatorUtilities.CreateInstance<AlertIngest>(sp, FaultySpool.Wrap(sp.GetRequiredService<ISpool>(), (method, _) =>
                method == nameof(ISpool.AcceptAlertAsync) && Volatile.Read(ref armed) == 1 ? new InvalidOperationException(RelayFault.Message) : null)));
        });
        gw.Logs.Expect(e => e.Message.StartsWith("Handling alert held-1 from dev-1 failed", StringComparison.Ordinal));
        gw.Logs.Expect(e => e.Message.StartsWith("Handling mail from device dev-1 (127.0.0.1) failed; quarantining it", StringComparison.Ordinal));
        Assert.StartsWith("250 2.0.0 taken and quarantined for the operator as <", await SendAsync(gw, "dev-1", SmtpGateway.AlertMail("held-1")));
        var item = Assert.Single(await gw.Spool.ParkedAsync(10, default));
        var watch = gw.Host.Services.GetRequiredService<SilenceWatch>();
        var presence = gw.Host.Services.GetRequiredService<DevicePresence>();
        clock.Advance(TimeSpan.FromMinutes(11));
        await SilenceTests.CheckedAsync(watch);
        Assert.True(watch.IsSilent("dev-1"));
        var lastHeard = presence.LastSeen("dev-1")!.Value;
        Volatile.Write(ref armed, 0);

        using (var api = await gw.ApiAsync())
        {
            Assert.Equal(HttpStatusCode.NoContent, (await api.PostAsync($"/api/v1/queue/{item.RowId}/release", null)).StatusCode);
        }

        await SilenceTests.CheckedAsync(watch);
        Assert.NotEqual(AlertStatus.Rejected, (await gw.Spool.GetAlertAsync("dev-1", "held-1", default))?.Status ?? AlertStatus.Rejected); // stored, to be routed
        Assert.Equal(lastHeard, presence.LastSeen("dev-1"));
        Assert.True(watch.IsSilent("dev-1"));

        // Stored as received when the device sent it: what the watch reads back at the next start, and the console shows.
        var activity = Assert.Single(await gw.Spool.DeviceActivityAsync(default), a => a.Device == "dev-1");
        Assert.Equal(lastHeard.ToUnixTimeMilliseconds(), activity.LastAlertAt?.ToUnixTimeMilliseconds());
        Assert.Null(await gw.Spool.GetAlertAsync("dev-1", "gw-back-" + lastHeard.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture), default));
    }

    private static async Task<string> SendAsync(TestGateway gw, string device, string mail)
    {
        await using var wire = await gw.AuthenticatedAsync(device);
        return await wire.SendMailAsync("ups@lan.test", ["alice@example.com"], mail);
    }

    private static async Task<ReceivedMail> NextWithSubjectAsync(SmtpTestServer sink, string subject)
    {
        while (true)
        {
            var mail = await sink.NextAsync();
            if (mail.Message.Subject == subject)
            {
                return mail;
            }
        }
    }

    private static string MessageIdOf(string mail) =>
        mail.Split("\r\n").Single(l => l.StartsWith("Message-ID: <", StringComparison.Ordinal))["Message-ID: <".Length..].TrimEnd('>');

    // edgemail.parked{stage=submit} of this gateway only.
    private static MeterListener CountQuarantined(TestGateway gw, Action<long> add)
    {
        var instrument = gw.Host.Services.GetRequiredService<GatewayMetrics>().Parked;
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
            foreach (var tag in tags)
            {
                if (tag is { Key: "stage", Value: "submit" })
                {
                    add(value);
                }
            }
        });
        listener.Start();
        return listener;
    }
}

/// <summary>
/// A fault in handling one device's relayed mail, as a bug would throw it, while armed: the SMTP handler's spool throws
/// when the rewritten mail with subject <see cref="Subject"/> is queued, as it is submitted or released (the relay path
/// calls nothing else a test can reach: the rewrite is static, and it tells <c>DevicePresence</c> nothing, which the
/// alert path's fault uses). With <see cref="SpoolFails"/> set, that spool method fails as the spool does instead (a
/// <see cref="SpoolException"/>).
/// </summary>
internal sealed class RelayFault
{
    public const string Subject = "Poisoned";

    public const string Message = "a fault of this mail's own (test)";

    public const string Reason = "handling failed: InvalidOperationException: " + Message;

    private volatile bool _armed = true;

    /// <summary>A spool method that fails with a <see cref="SpoolException"/> while armed; the mail still fails its handling.</summary>
    public string? SpoolFails { get; init; }

    public void Disarm() => _armed = false;

    /// <summary>Registers the SMTP handler again, over a spool with this fault.</summary>
    public void Install(IServiceCollection services) =>
        services.AddSingleton(sp => ActivatorUtilities.CreateInstance<SubmissionHandler>(sp, FaultySpool.Wrap(sp.GetRequiredService<ISpool>(), Fault)));

    private Exception? Fault(string method, object?[] args)
    {
        if (!_armed)
        {
            return null;
        }

        if (method == SpoolFails)
        {
            return new SpoolException("the spool failed (test)");
        }

        // Where the rewritten mail is queued: as it is submitted, or as it is released.
        var relay = method switch
        {
            nameof(ISpool.QueueMailAsync) => args[0] as NewMessage,
            nameof(ISpool.SettleQuarantinedAsync) => args[1] as NewMessage,
            _ => null,
        };
        return relay is { Kind: "relay" } && Encoding.ASCII.GetString(relay.Mime).Contains("\r\nSubject: " + Subject + "\r\n", StringComparison.Ordinal)
            ? new InvalidOperationException(Message)
            : null;
    }
}

/// <summary>An <see cref="ISpool"/> that forwards every call to the real one, unless the fault says what to throw.</summary>
public class FaultySpool : DispatchProxy
{
    private ISpool _inner = null!;
    private Func<string, object?[], Exception?> _fault = (_, _) => null;

    public static ISpool Wrap(ISpool inner, Func<string, object?[], Exception?> fault)
    {
        var proxy = Create<ISpool, FaultySpool>();
        var self = (FaultySpool)(object)proxy;
        self._inner = inner;
        self._fault = fault;
        return proxy;
    }

    protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
    {
        ArgumentNullException.ThrowIfNull(targetMethod);
        if (_fault(targetMethod.Name, args ?? []) is { } fault)
        {
            return targetMethod.ReturnType.IsGenericType && targetMethod.ReturnType.GetGenericTypeDefinition() == typeof(Task<>)
                ? typeof(Task).GetMethod(nameof(Task.FromException), 1, [typeof(Exception)])!.MakeGenericMethod(targetMethod.ReturnType.GetGenericArguments()[0])
                    .Invoke(null, [fault])
                : throw fault;
        }

        try
        {
            return targetMethod.Invoke(_inner, args);
        }
        catch (TargetInvocationException ex) when (ex.InnerException is not null)
        {
            ExceptionDispatchInfo.Throw(ex.InnerException);
            throw;
        }
    }
}
