using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Threading.Channels;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// Direct MX's memory of domains whose exchangers could not be reached (<see cref="UnreachableDomains"/>), against
/// dnsmasq and real sockets: a domain whose exchanger takes connections and never greets (held until the test lets go,
/// then closed) is found unreachable once; its recipients in the next attempts are deferred without a connection for
/// the first back-off step, then one attempt looks again while the others are still deferred, and an exchanger that
/// answers ends the hold. Attempts already connecting when another finds the domain unreachable stop before their next
/// exchanger. Before, every attempt went through every address of the domain, each holding a delivery slot until
/// <c>Relay:Timeout</c>. A domain that is reached but answers slowly takes at most <c>Relay:DomainConcurrency</c> of the
/// delivery slots (<see cref="DomainConcurrency"/>).
/// </summary>
public sealed class UnreachableDomainTests
{
    private static readonly DateTimeOffset Start = new(2026, 12, 7, 10, 0, 0, TimeSpan.Zero);

    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_ADomainFoundUnreachable_IsDeferredWithoutAConnectionUntilTheFirstBackoffStep_ThenOneAttemptLooksAgain()
    {
        await using var a = await SmtpTestServer.StartAsync();
        using var dns = await Dns(a.Port);
        var clock = new FakeTimeProvider(Start);
        await using var relay = Relay(dns, a.Port, clock);

        using (var silent = HeldServer.Start(IPAddress.Parse("127.0.0.2"), a.Port))
        {
            var results = await UnansweredAsync(relay, silent, Mail("m1", "alice@a.example.test", "bob@b.example.test"));
            Assert.Equal(["alice@a.example.test sent", "bob@b.example.test deferred"], results.Select(r => r.Address + " " + r.Outcome));
            string reason = results[1].Reply["451 4.4.1 ".Length..];
            Assert.StartsWith("exchanger mx-b.example.test: ", reason, StringComparison.Ordinal);
            Assert.Equal(1, relay.Unreachable.Count);

            // The next mail for the domain: deferred at once, saying why and until when; the other domain's recipient goes.
            results = await relay.SendAsync(Mail("m2", "bob@b.example.test", "carol@a.example.test"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);
            Assert.Equal(["bob@b.example.test deferred", "carol@a.example.test sent"], results.Select(r => r.Address + " " + r.Outcome));
            Assert.Equal($"451 4.4.1 not tried: the exchangers of b.example.test could not be reached at 2026-12-07T10:00:00Z ({reason}); looked at again from 2026-12-07T10:05:00Z",
                results[0].Reply);
            Assert.True(results[0].NotTried); // no news of the relay: its health is left as it was
            Assert.False(results[0].RelayDown);
            Assert.Equal(1, silent.Connections);
            Assert.Equal(["alice@a.example.test", "carol@a.example.test"], a.Received.SelectMany(m => m.To));

            // Held until the first back-off step; then one attempt connects again, finds nobody, and the hold starts anew.
            clock.Advance(TimeSpan.FromMinutes(5) - TimeSpan.FromSeconds(1));
            results = await relay.SendAsync(Mail("m3", "bob@b.example.test"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);
            Assert.StartsWith("451 4.4.1 not tried: ", Assert.Single(results).Reply, StringComparison.Ordinal);
            Assert.Equal(1, silent.Connections);

            clock.Advance(TimeSpan.FromSeconds(1));
            var probe = relay.SendAsync(Mail("m4", "bob@b.example.test"), CancellationToken.None);
            (await silent.NextAsync()).Close();
            Assert.Equal("451 4.4.1 " + reason, Assert.Single(await probe.WaitAsync(Await.DefaultTimeout)).Reply);
            results = await relay.SendAsync(Mail("m5", "bob@b.example.test"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);
            Assert.EndsWith("; looked at again from 2026-12-07T10:10:00Z", Assert.Single(results).Reply, StringComparison.Ordinal);
            Assert.Equal(2, silent.Connections);
        }

        // The exchanger is back: after the hold, the attempt that looks again delivers, and the domain is not held any more.
        await using var b = await SmtpTestServer.StartAsync(new SmtpTestServerOptions { Address = IPAddress.Parse("127.0.0.2"), Port = a.Port });
        clock.Advance(TimeSpan.FromMinutes(5));
        var sent = await relay.SendAsync(Mail("m6", "bob@b.example.test"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);
        Assert.Equal(RecipientOutcome.Sent, Assert.Single(sent).Outcome);
        Assert.Equal(0, relay.Unreachable.Count);
        sent = await relay.SendAsync(Mail("m7", "bob@b.example.test"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);
        Assert.Equal(RecipientOutcome.Sent, Assert.Single(sent).Outcome);
        Assert.Equal(["m6@lan.example.com", "m7@lan.example.com"], b.Received.Select(m => m.Message.MessageId));
    }

    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_WhileOneAttemptLooksAgain_TheOthersAreDeferredWithoutAConnection()
    {
        await using var a = await SmtpTestServer.StartAsync();
        using var dns = await Dns(a.Port);
        var clock = new FakeTimeProvider(Start);
        await using var relay = Relay(dns, a.Port, clock);
        using var silent = HeldServer.Start(IPAddress.Parse("127.0.0.2"), a.Port);

        await UnansweredAsync(relay, silent, Mail("m1", "bob@b.example.test"));
        clock.Advance(TimeSpan.FromMinutes(5));

        var probe = relay.SendAsync(Mail("m2", "bob@b.example.test"), CancellationToken.None);
        var held = await silent.NextAsync(); // the probe is connected, waiting for a greeting
        var results = await relay.SendAsync(Mail("m3", "bob@b.example.test", "alice@a.example.test"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);
        Assert.Equal(["bob@b.example.test deferred", "alice@a.example.test sent"], results.Select(r => r.Address + " " + r.Outcome));
        Assert.EndsWith("; an attempt is looking again now", results[0].Reply, StringComparison.Ordinal);
        Assert.Equal(2, silent.Connections);
        Assert.False(probe.IsCompleted);

        held.Close();
        Assert.Equal(RecipientOutcome.Deferred, Assert.Single(await probe.WaitAsync(Await.DefaultTimeout)).Outcome);
        Assert.Equal(2, silent.Connections);
    }

    // Two attempts connect to the first exchanger of a domain before either knows anything: the first to hear nothing
    // there tries the second exchanger, reaches nobody and holds the domain; the other, let go by the first exchanger
    // after that, does not try the second one again.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_AnAttemptUnderWayWhenAnotherFindsTheDomainUnreachable_StopsBeforeItsNextExchanger()
    {
        await using var a = await SmtpTestServer.StartAsync();
        using var dns = await Dns(a.Port, "--mx-host=b.example.test,mx-b2.example.test,20", "--host-record=mx-b2.example.test,127.0.0.3");
        var clock = new FakeTimeProvider(Start);
        await using var relay = Relay(dns, a.Port, clock);
        using var first = HeldServer.Start(IPAddress.Parse("127.0.0.2"), a.Port);
        using var second = HeldServer.Start(IPAddress.Parse("127.0.0.3"), a.Port);

        var one = relay.SendAsync(Mail("m1", "bob@b.example.test"), CancellationToken.None);
        var heldOne = await first.NextAsync();
        var two = relay.SendAsync(Mail("m2", "bob@b.example.test"), CancellationToken.None);
        var heldTwo = await first.NextAsync();

        heldOne.Close();
        (await second.NextAsync()).Close();
        string found = Assert.Single(await one.WaitAsync(Await.DefaultTimeout)).Reply;
        Assert.StartsWith("451 4.4.1 exchanger mx-b2.example.test: ", found, StringComparison.Ordinal);

        heldTwo.Close();
        string stopped = Assert.Single(await two.WaitAsync(Await.DefaultTimeout)).Reply;
        Assert.Equal($"451 4.4.1 not tried: the exchangers of b.example.test could not be reached at 2026-12-07T10:00:00Z ({found["451 4.4.1 ".Length..]}); looked at again from 2026-12-07T10:05:00Z", stopped);
        Assert.Equal(1, second.Connections);
    }

    // Someone answers there: a session that ends badly, and a refused greeting, are no reason to hold the domain.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_AnExchangerThatAnswers_EvenBadly_IsNotHeld()
    {
        await using var a = await SmtpTestServer.StartAsync();
        using var dns = await Dns(a.Port, "--mx-host=c.example.test,mx-c.example.test,10", "--host-record=mx-c.example.test,127.0.0.3");
        await using var dropping = await SmtpTestServer.StartAsync(new SmtpTestServerOptions { Address = IPAddress.Parse("127.0.0.2"), Port = a.Port });
        dropping.OnData = _ => SmtpReply.Drop; // the data is sent, and the connection closed without a reply
        await using var refusing = await SmtpTestServer.StartAsync(new SmtpTestServerOptions
        {
            Address = IPAddress.Parse("127.0.0.3"), Port = a.Port, Greeting = () => "554 5.7.1 no mail from you",
        });
        await using var relay = Relay(dns, a.Port, new FakeTimeProvider(Start));

        for (int i = 1; i <= 2; i++)
        {
            var results = await relay.SendAsync(Mail($"m{i}", "bob@b.example.test", "carol@c.example.test"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);
            Assert.All(results, r => Assert.Equal(RecipientOutcome.Deferred, r.Outcome));
            Assert.DoesNotContain(results, r => r.Reply.Contains("not tried", StringComparison.Ordinal));
        }

        Assert.Equal(0, relay.Unreachable.Count);
        Assert.Equal(2, dropping.Messages.Count);
        Assert.Equal(2, refusing.Connections);
    }

    // A black-holed domain with more addresses than the attempt has time for is held when Relay:AttemptTimeout ends
    // the attempt at one of them (the first closed the connection, the second says nothing); not when the second greeted
    // before it stalled: someone answers there.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_AnAttemptCutByItsDeadlineAfterAnUnansweredExchanger_HoldsTheDomain_UnlessTheNextOneGreeted()
    {
        await using var a = await SmtpTestServer.StartAsync();
        using var dns = await Dns(a.Port, "--mx-host=b.example.test,mx-b2.example.test,20", "--host-record=mx-b2.example.test,127.0.0.3");
        foreach (bool greets in new[] { false, true })
        {
            using var first = HeldServer.Start(IPAddress.Parse("127.0.0.2"), a.Port);
            using var second = HeldServer.Start(IPAddress.Parse("127.0.0.3"), a.Port);
            await using var relay = new DirectMxRelay(new RelayOptions
            {
                Mode = "DirectMx", DnsServer = "127.0.0.1:" + dns.Port.ToString(CultureInfo.InvariantCulture), MxPort = a.Port,
                Timeout = TimeSpan.FromMinutes(1), AttemptTimeout = TimeSpan.FromSeconds(2), Backoff = [TimeSpan.FromMinutes(5)],
            }, "gw.test", clock: new FakeTimeProvider(Start));

            var attempt = relay.SendAsync(Mail("m1", "bob@b.example.test"), CancellationToken.None);
            (await first.NextAsync()).Close();
            if (greets)
            {
                (await second.NextAsync()).Greet(); // then says nothing more: the EHLO waits
            }

            var results = await attempt.WaitAsync(Await.DefaultTimeout);
            Assert.StartsWith("451 4.4.2 the delivery attempt did not end within Relay:AttemptTimeout", Assert.Single(results).Reply, StringComparison.Ordinal);
            Assert.Equal(greets ? 0 : 1, relay.Unreachable.Count);
            if (!greets)
            {
                results = await relay.SendAsync(Mail("m2", "bob@b.example.test"), CancellationToken.None).WaitAsync(Await.DefaultTimeout);
                Assert.StartsWith("451 4.4.1 not tried: the exchangers of b.example.test could not be reached at 2026-12-07T10:00:00Z (exchanger mx-b.example.test: ",
                    Assert.Single(results).Reply, StringComparison.Ordinal);
                Assert.Equal(1, second.Connections);
            }
        }
    }

    // A probe that ends without a verdict (the gateway stopping) passes its turn to the next attempt.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Relay_DirectMx_AProbeCancelled_PassesItsTurnToTheNextAttempt()
    {
        await using var a = await SmtpTestServer.StartAsync();
        using var dns = await Dns(a.Port);
        var clock = new FakeTimeProvider(Start);
        await using var relay = Relay(dns, a.Port, clock);
        using var silent = HeldServer.Start(IPAddress.Parse("127.0.0.2"), a.Port);
        await UnansweredAsync(relay, silent, Mail("m1", "bob@b.example.test"));
        clock.Advance(TimeSpan.FromMinutes(5));

        using var stop = new CancellationTokenSource();
        var probe = relay.SendAsync(Mail("m2", "bob@b.example.test"), stop.Token);
        var held = await silent.NextAsync();
        stop.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => probe.WaitAsync(Await.DefaultTimeout));
        held.Close();

        var again = relay.SendAsync(Mail("m3", "bob@b.example.test"), CancellationToken.None);
        (await silent.NextAsync()).Close();
        Assert.StartsWith("451 4.4.1 exchanger mx-b.example.test: ", Assert.Single(await again.WaitAsync(Await.DefaultTimeout)).Reply, StringComparison.Ordinal);
        Assert.Equal(3, silent.Connections);
    }

    // The gauge counts domains held now; a hold nobody looked at again for as long again as it lasted is forgotten.
    [Fact]
    public void AHoldLongOver_IsNeitherCountedNorKept()
    {
        var clock = new FakeTimeProvider(Start);
        var memory = new UnreachableDomains(TimeSpan.FromMinutes(1), clock);
        memory.Unreachable(memory.Enter("b.example.test"), "exchanger mx.b.example.test: connection refused");
        Assert.Equal(1, memory.Count);
        Assert.NotNull(memory.Enter("b.example.test").NotTried);

        clock.Advance(TimeSpan.FromMinutes(1));
        Assert.Equal(0, memory.Count); // over: the next attempt looks again
        clock.Advance(TimeSpan.FromDays(30));
        var pass = memory.Enter("b.example.test");
        Assert.Null(pass.NotTried);
        Assert.False(pass.Probe); // forgotten: a burst of attempts all go, as to any domain
        Assert.False(memory.Enter("b.example.test").Probe);
    }

    // One delivery slot: before, the second alert for the unreachable domain held it (connected, waiting for a greeting
    // that never comes, up to Relay:Timeout), and nothing else went out meanwhile.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Gateway_DirectMx_MailForAnUnreachableDomainDoesNotHoldTheDeliverySlots_MailToOthersGoesOn()
    {
        await using var a = await SmtpTestServer.StartAsync();
        using var dns = await Dns(a.Port);
        using var silent = HeldServer.Start(IPAddress.Parse("127.0.0.2"), a.Port);
        await using var gw = await StartAsync(dns, a.Port, concurrency: 1);
        using var one = await gw.ConnectAsync("dev-1");
        using var two = await gw.ConnectAsync("dev-2");

        await Publish(one, "dev-1", "b-1");
        (await silent.NextAsync()).Close();
        await AttemptedAsync(gw, "dev-1.b-1.alert@gw.test");

        foreach (string id in new[] { "b-2", "b-3", "b-4" })
        {
            await Publish(one, "dev-1", id);
            var state = await AttemptedAsync(gw, $"dev-1.{id}.alert@gw.test");
            Assert.StartsWith("451 4.4.1 not tried: the exchangers of b.example.test could not be reached at ", state.LastReply, StringComparison.Ordinal);
        }

        await Publish(two, "dev-2", "a-1");
        Assert.Equal("dev-2.a-1.alert@gw.test", (await a.NextAsync()).Message.MessageId);
        Assert.Equal(1, silent.Connections);
    }

    // A domain whose exchanger greets and then answers nothing more (a tarpit, an overloaded server) is reached, so not
    // held as unreachable; its attempts last up to Relay:AttemptTimeout. It gets at most Relay:DomainConcurrency of them
    // at once (1 of Relay:Concurrency 2 by default): its second mail waits without connecting, and mail to another
    // domain takes the other slot. Before, its two mails took both slots and nothing else went out for that long.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Gateway_DirectMx_ADomainThatAnswersSlowly_TakesAtMostItsShareOfTheSlots_MailToOthersGoesOn()
    {
        await using var a = await SmtpTestServer.StartAsync();
        using var dns = await Dns(a.Port);
        using var slow = HeldServer.Start(IPAddress.Parse("127.0.0.2"), a.Port);
        var log = new Operations.DeliveryContainmentTests.WorkerLog();
        await using var gw = await StartAsync(dns, a.Port, concurrency: 2, services: s => s.AddSingleton<ILoggerProvider>(log)
            .AddLogging(b => b.AddFilter(typeof(DeliveryWorker).FullName, LogLevel.Information)));
        using var one = await gw.ConnectAsync("dev-1");
        using var two = await gw.ConnectAsync("dev-2");

        await Publish(one, "dev-1", "b-1");
        var first = await slow.NextAsync();
        first.Greet(); // reached; the EHLO waits for an answer that does not come
        await Publish(one, "dev-1", "b-2");
        Assert.Equal("Mail to b.example.test waits, <dev-1.b-2.alert@gw.test> first: 1 deliveries to it are under way (Relay:DomainConcurrency); the next goes when one of them ends",
            await Await.Within(log.ContainingAsync("Mail to b.example.test waits"), "the second mail to the slow domain waiting"));

        await Publish(two, "dev-2", "a-1");
        Assert.Equal("dev-2.a-1.alert@gw.test", (await a.NextAsync()).Message.MessageId);
        Assert.Equal(1, slow.Connections);

        // The first attempt ends (the exchanger hangs up): the waiting mail goes, on a connection of its own.
        first.Close();
        Assert.StartsWith("451 ", (await AttemptedAsync(gw, "dev-1.b-1.alert@gw.test")).LastReply, StringComparison.Ordinal);
        (await slow.NextAsync()).Close();
        await AttemptedAsync(gw, "dev-1.b-2.alert@gw.test");
        Assert.Equal(2, slow.Connections);
    }

    // A domain's place is given back when its exchanger is done with the mail, not when the result is written: a result
    // waiting for a slow spool does not hold up the next mail to the same domain.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Gateway_DirectMx_TheNextMailToADomainGoes_WhileTheLastOnesResultWaitsForTheSpool()
    {
        await using var a = await SmtpTestServer.StartAsync();
        await using var b = await SmtpTestServer.StartAsync(new SmtpTestServerOptions { Address = IPAddress.Parse("127.0.0.2"), Port = a.Port });
        using var dns = await Dns(a.Port);
        Spool.FaultingSpool? faults = null;
        await using var gw = await StartAsync(dns, a.Port, concurrency: 2, timeout: "00:00:01",
            services: s => Spool.FaultingSpool.Add<DeliveryWorker>(s, f => faults = f));
        faults!.Stall(nameof(ISpool.CommitDeliveryAsync));
        using var one = await gw.ConnectAsync("dev-1");

        await Publish(one, "dev-1", "b-1");
        Assert.Equal("dev-1.b-1.alert@gw.test", (await b.NextAsync()).Message.MessageId);
        await Publish(one, "dev-1", "b-2");
        Assert.Equal("dev-1.b-2.alert@gw.test", (await b.NextAsync()).Message.MessageId); // b-1's result is never written
    }

    // The relay's health (/readyz, edgemail_relay_up) goes by the latest attempt that met it: b.example.test unreachable
    // (down), then a.example.test's exchanger taking a mail (up). A later mail for the held domain, deferred without a
    // connection, is no news of the relay; before, it marked it down until the next mail to another domain.
    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Gateway_DirectMx_MailDeferredForAHeldDomain_LeavesTheRelaysHealthAsItWas()
    {
        await using var a = await SmtpTestServer.StartAsync();
        using var dns = await Dns(a.Port);
        using var silent = HeldServer.Start(IPAddress.Parse("127.0.0.2"), a.Port);
        var clock = new FakeTimeProvider(Start);
        await using var gw = await StartAsync(dns, a.Port, concurrency: 1, clock);
        var health = gw.Host.Services.GetRequiredService<RelayHealth>();
        using var one = await gw.ConnectAsync("dev-1");
        using var two = await gw.ConnectAsync("dev-2");

        await Publish(one, "dev-1", "b-1");
        (await silent.NextAsync()).Close();
        await AttemptedAsync(gw, "dev-1.b-1.alert@gw.test");

        clock.Advance(TimeSpan.FromSeconds(1));
        await Publish(two, "dev-2", "a-1");
        await a.NextAsync();
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("dev-2.a-1.alert@gw.test", default))?.Status == MessageStatus.Sent, "the mail to a.example.test recorded");

        clock.Advance(TimeSpan.FromSeconds(1));
        await Publish(one, "dev-1", "b-2");
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("dev-1.b-2.alert@gw.test", default))?.Attempts == 1 && health.LastSuccess is not null,
            "the held domain's mail deferred");

        Assert.StartsWith("451 4.4.1 not tried: ", (await gw.Spool.GetMessageAsync("dev-1.b-2.alert@gw.test", default))!.LastReply, StringComparison.Ordinal);
        Assert.True(health.Up);
        Assert.Equal(1, silent.Connections);
    }

    private static Task<TestGateway> StartAsync(Dnsmasq dns, int port, int concurrency, TimeProvider? clock = null, Action<IServiceCollection>? services = null,
        string timeout = "00:01:00") => TestGateway.StartAsync(c =>
    {
        c["Sender"] = new { Address = "edgemail@gw.test", DisplayName = "EdgeMail", Hostname = "gw.test", Operator = "ops@a.example.test" };
        c["Users"] = new Dictionary<string, object>
        {
            ["alice"] = new { Name = "Alice", Email = "alice@a.example.test" },
            ["bob"] = new { Name = "Bob", Email = "bob@b.example.test" },
        };
        c["Groups"] = new Dictionary<string, object>();
        c["Relay"] = new
        {
            Mode = "DirectMx", DnsServer = "127.0.0.1:" + dns.Port.ToString(CultureInfo.InvariantCulture), MxPort = port,
            Backoff = new[] { "00:10:00" }, Timeout = timeout, Concurrency = concurrency,
        };
        c["Routes"] = new object[]
        {
            new { Devices = "dev-1", Codes = "*", MinSeverity = "info", To = new[] { "bob" } },
            new { Devices = "dev-2", Codes = "*", MinSeverity = "info", To = new[] { "alice" } },
        };
    }, s =>
    {
        if (clock is not null)
        {
            s.AddSingleton(clock);
        }

        services?.Invoke(s);
    });

    private static Task Publish(IMqttClient device, string name, string id) =>
        device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic($"edgemail/v1/{name}/alert")
            .WithPayload(Alerts.Json(id)).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());

    private static async Task<MessageState> AttemptedAsync(TestGateway gw, string messageId)
    {
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync(messageId, default))?.Attempts == 1, $"the first attempt of {messageId} recorded");
        var state = (await gw.Spool.GetMessageAsync(messageId, default))!;
        Assert.Equal("queued", state.Status);
        return state;
    }

    // An attempt whose connection to the silent exchanger is closed before a word: the domain is found unreachable.
    private static async Task<IReadOnlyList<RecipientResult>> UnansweredAsync(DirectMxRelay relay, HeldServer silent, QueuedMessage mail)
    {
        var attempt = relay.SendAsync(mail, CancellationToken.None);
        (await silent.NextAsync()).Close();
        return await attempt.WaitAsync(Await.DefaultTimeout);
    }

    private static Task<Dnsmasq> Dns(int port, params string[] more) => Dnsmasq.StartAsync(
        ["--mx-host=a.example.test,mx-a.example.test,10", "--host-record=mx-a.example.test,127.0.0.1",
         "--mx-host=b.example.test,mx-b.example.test,10", "--host-record=mx-b.example.test,127.0.0.2",
         .. more, "--local=/example.test/"]);

    private static DirectMxRelay Relay(Dnsmasq dns, int port, TimeProvider clock) => new(new RelayOptions
    {
        Mode = "DirectMx", DnsServer = "127.0.0.1:" + dns.Port.ToString(CultureInfo.InvariantCulture), MxPort = port,
        Timeout = TimeSpan.FromMinutes(1), Backoff = [TimeSpan.FromMinutes(5), TimeSpan.FromMinutes(15)],
    }, "gw.test", clock: clock);

    private static QueuedMessage Mail(string id, params string[] to)
    {
        byte[] wire = Encoding.ASCII.GetBytes($"From: <ups-1@lan.example.com>\r\nTo: <ops@example.com>\r\nSubject: {id}\r\nMessage-ID: <{id}@lan.example.com>\r\n\r\nMains lost.\r\n");
        return new QueuedMessage(1, "relay", "ups-1", null, id + "@lan.example.com", "alerts@example.com", to, wire, 0, Start, Start.AddDays(5));
    }

    /// <summary>
    /// An exchanger that takes connections and says nothing: each is held, unanswered, until the test closes it, so an
    /// attempt stays connected for as long as a test needs it to, with no timer involved.
    /// </summary>
    private sealed class HeldServer : IDisposable
    {
        private readonly TcpListener _listener;
        private readonly CancellationTokenSource _stop = new();
        private readonly Channel<Held> _accepted = Channel.CreateUnbounded<Held>();
        private int _connections;

        private HeldServer(IPAddress address, int port)
        {
            _listener = new TcpListener(address, port);
            _listener.Start();
            _ = AcceptAsync();
        }

        public int Connections => Volatile.Read(ref _connections);

        public static HeldServer Start(IPAddress address, int port) => new(address, port);

        public async Task<Held> NextAsync() => await _accepted.Reader.ReadAsync().AsTask().WaitAsync(Await.DefaultTimeout);

        public void Dispose()
        {
            _stop.Cancel();
            _listener.Stop();
            while (_accepted.Reader.TryRead(out var held))
            {
                held.Close();
            }

            _stop.Dispose();
        }

        private async Task AcceptAsync()
        {
            try
            {
                while (true)
                {
                    var client = await _listener.AcceptTcpClientAsync(_stop.Token);
                    Interlocked.Increment(ref _connections);
                    _accepted.Writer.TryWrite(new Held(client));
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                // Stopped.
            }
        }

        public sealed class Held(TcpClient client)
        {
            public void Close() => client.Dispose();

            public void Greet() => client.GetStream().Write("220 mx.example.test ESMTP\r\n"u8);
        }
    }
}
