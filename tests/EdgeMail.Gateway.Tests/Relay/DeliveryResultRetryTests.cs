using System.Text;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Tests.Operations;
using EdgeMail.Gateway.Tests.Spool;
using EdgeMail.Testing;
using EdgeMail.Testing.Smtp;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;
using MQTTnet;
using MQTTnet.Protocol;
using Xunit;
using static EdgeMail.Gateway.Tests.Relay.DirectMxEarlyRecordTests;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// A smarthost (a real SMTP server on loopback) took the mail, and the spool fails to commit the attempt's result — a full
/// disk, an I/O error, while reads still work. The mail is with its recipients; the result waits in memory and is
/// committed again on a back-off, and the mail is not sent again for it. Only a stop before the spool takes it leaves it
/// unrecorded: then, and only then, the mail goes once more after the restart (the at-least-once window of every MTA).
/// </summary>
public sealed class DeliveryResultRetryTests
{
    private static readonly DateTimeOffset Start = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000);

    // Before, the worker left such a message due after a 5 s cool-down and sent it again at every round: five copies
    // for four failed commits, and one every few seconds for as long as the disk stayed full. Each commit here takes
    // the spool a minute to fail (the clock moves on while it is tried), so every wait for the next try is over at once.
    [Fact]
    public async Task ResultTheSpoolFailsToCommitFourTimes_IsCommittedAtTheFifth_TheAlertReachesEachRecipientOnce()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        var clock = new FakeTimeProvider(Start);
        FaultingSpool? faults = null;
        await using var gw = await TestGateway.StartAsync(c => Smarthost(c, sink.Port), s =>
        {
            s.AddSingleton<TimeProvider>(clock);
            FaultingSpool.Add<DeliveryWorker>(s, f => faults = f);
        });
        var worker = gw.Host.Services.GetRequiredService<DeliveryWorker>();
        faults!.Fail(nameof(ISpool.CommitDeliveryAsync), 4);
        faults.Called += MinuteEachCommit(clock);

        await PublishAsync(gw, "dev-1", "once-1");
        string id = (await sink.NextAsync()).Message.MessageId!;
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync(id, default))?.Status == MessageStatus.Sent, "the result committed at the fifth try");

        Assert.Equal(4, faults.Failed(nameof(ISpool.CommitDeliveryAsync)));
        var mail = Assert.Single(sink.Received);
        Assert.Equal(["alice@example.com", "bob@example.com"], mail.To.Order(StringComparer.Ordinal));
        var done = await DetailAsync(gw.Spool, id);
        Assert.Equal(1, done.Summary.Attempts);
        Assert.All(done.Recipients, r => Assert.Equal("sent", r.Status));
    }

    // A result that fails for a reason of its own (not the spool's) parks the mail; a park the spool then fails is
    // written again the same way, and the mail is not sent again meanwhile (before, it went again after a 5 s cool-down).
    [Fact]
    public async Task ResultThatCannotBeRecorded_IsParked_AParkTheSpoolFailsIsWrittenAgain_TheMailGoesOnce()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        var clock = new FakeTimeProvider(Start);
        FaultingSpool? faults = null;
        await using var gw = await TestGateway.StartAsync(c => Smarthost(c, sink.Port), s =>
        {
            s.AddSingleton<TimeProvider>(clock);
            FaultingSpool.Add<DeliveryWorker>(s, f => faults = f);
        });
        gw.Logs.Expect(e => e.Message.StartsWith("Parked relay mail <park-1@gw.test>", StringComparison.Ordinal));
        faults!.FailUnexpectedly(nameof(ISpool.CommitDeliveryAsync));
        faults.Fail(nameof(ISpool.ParkMessageAsync), 3);
        faults.Called += method =>
        {
            if (method == nameof(ISpool.ParkMessageAsync))
            {
                clock.Advance(TimeSpan.FromMinutes(1));
            }
        };

        await gw.Spool.QueueMailAsync(Relay("park-1@gw.test"), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("park-1@gw.test", default))?.Status == MessageStatus.Parked, "the mail parked at the fourth try");

        Assert.Equal(3, faults.Failed(nameof(ISpool.ParkMessageAsync)));
        Assert.StartsWith("recording the delivery failed: InvalidOperationException", (await gw.Spool.GetMessageAsync("park-1@gw.test", default))!.Reason, StringComparison.Ordinal);
        Assert.Single(sink.Received);
    }

    // The stop does not wait out the back-off: it tries once more at once, and gives the result up when that fails too.
    // The restarted gateway finds the mail queued with nothing on record and sends it again, once, with the same
    // Message-ID.
    [Fact]
    public async Task StoppedWhileAResultWaitsToBeCommitted_ItIsTriedOnceMore_AndAfterTheRestartTheMailGoesAgainOnce()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        var log = new DeliveryContainmentTests.WorkerLog();
        var (first, faults) = await FirstAsync(sink.Port, dataDir, log);
        faults.Fail(nameof(ISpool.CommitDeliveryAsync), 1_000);

        await first.Spool.QueueMailAsync(Relay("stop-1@gw.test"), default);
        Assert.StartsWith("The spool could not write the result of the attempt on <stop-1@gw.test>",
            await Await.Within(log.AboutAsync("stop-1@gw.test"), "the failed commit reported"), StringComparison.Ordinal);
        int failedBeforeTheStop = faults.Failed(nameof(ISpool.CommitDeliveryAsync));
        await first.StopAsync();

        string stopped = await Await.Within(log.ContainingAsync("Stopping with"), "the worker's word at the stop");
        Assert.StartsWith("Stopping with the result of the attempt on <stop-1@gw.test> not written", stopped, StringComparison.Ordinal);
        Assert.Contains(FaultingSpool.Message, stopped, StringComparison.Ordinal);
        Assert.True(faults.Failed(nameof(ISpool.CommitDeliveryAsync)) > failedBeforeTheStop, "one more try at the stop");
        Assert.Single(sink.Received);

        await using var second = await SentAgainAfterTheRestartAsync(sink, dataDir, "stop-1@gw.test");
        Assert.Equal(1, (await DetailAsync(second.Spool, "stop-1@gw.test")).Summary.Attempts);
    }

    // A spool that stops answering while the mail's result waits: a graceful stop waits for attempts under way and their
    // results for twice Relay:Timeout, then ends, and the worker names the mail whose recipients took it with nothing on
    // record (before, it said nothing: the copy sent after the restart was unexplained). Not covered: a stop that cuts
    // the early record of a part (Relay:Limits, direct MX's domains) inside the transport, which says nothing yet.
    [Fact]
    public async Task StoppedWhileTheSpoolDoesNotAnswer_TheMailTakenWithoutARecordIsNamed_AndGoesAgainAfterTheRestart()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        string dataDir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        var log = new DeliveryContainmentTests.WorkerLog();
        var committing = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var (first, faults) = await FirstAsync(sink.Port, dataDir, log, timeout: "00:00:01");
        faults.Stall(nameof(ISpool.CommitDeliveryAsync));
        faults.Called += method =>
        {
            if (method == nameof(ISpool.CommitDeliveryAsync))
            {
                committing.TrySetResult();
            }
        };

        await first.Spool.QueueMailAsync(Relay("slow-1@gw.test"), default);
        await Await.Within(committing.Task, "the attempt's result on its way to the spool");
        await first.StopAsync();

        string stopped = await Await.Within(log.ContainingAsync("Stopping with"), "the worker's word at the stop");
        Assert.StartsWith("Stopping with the result of the attempt on <slow-1@gw.test> perhaps not written: the stop's wait for attempts under way (00:00:02", stopped, StringComparison.Ordinal);
        Assert.Single(sink.Received);

        await using var second = await SentAgainAfterTheRestartAsync(sink, dataDir, "slow-1@gw.test");
    }

    // A gateway on dataDir whose delivery worker has a faulting spool and writes its lines to log.
    private static async Task<(TestGateway Gateway, FaultingSpool Faults)> FirstAsync(int port, string dataDir, ILoggerProvider log, string timeout = "00:00:05")
    {
        FaultingSpool? faults = null;
        var gw = await TestGateway.StartAsync(c => Smarthost(c, port, timeout: timeout), s =>
        {
            s.AddSingleton(log);
            FaultingSpool.Add<DeliveryWorker>(s, f => faults = f);
        }, dataDir: dataDir);
        return (gw, faults!);
    }

    // A gateway restarted on dataDir's spool, once it has sent the mail left unrecorded again: twice at the sink in all,
    // with the same Message-ID.
    private static async Task<TestGateway> SentAgainAfterTheRestartAsync(SmtpTestServer sink, string dataDir, string id)
    {
        var second = await TestGateway.StartAsync(c => Smarthost(c, sink.Port), null, dataDir: dataDir);
        await second.UntilAsync(async () => (await second.Spool.GetMessageAsync(id, default))?.Status == MessageStatus.Sent,
            "the mail sent again after the restart");
        Assert.Equal(2, sink.Received.Count);
        Assert.All(sink.Received, m => Assert.Equal(id, m.Message.MessageId));
        return second;
    }

    // With Relay:Concurrency 1, four results waiting make the worker send nothing more (the attempt under way then may
    // add a fifth): mail sent meanwhile could not be recorded either, and all of it would go again after a restart.
    // Once the spool takes them, the rest follows, and every mail has gone out once.
    [Fact]
    public async Task ResultsTheSpoolKeepsFailing_DeliveryPausesOnceFourWait_AndGoesOnWhenTheSpoolTakesThem()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        var clock = new FakeTimeProvider(Start);
        var log = new DeliveryContainmentTests.WorkerLog();
        var (started, faults) = await OneSlotAsync(sink.Port, clock, log);
        await using var gw = started;
        var worker = gw.Host.Services.GetRequiredService<DeliveryWorker>();
        faults.Fail(nameof(ISpool.CommitDeliveryAsync), 1_000);
        string[] ids = [.. Enumerable.Range(1, 6).Select(i => $"pause-{i}@gw.test")];
        foreach (string id in ids)
        {
            await gw.Spool.QueueMailAsync(Relay(id), default);
        }

        Assert.StartsWith("Delivery paused", await Await.Within(log.ContainingAsync("Delivery paused"), "the worker pausing"), StringComparison.Ordinal);

        // Minutes go by; the waiting results are tried again and again, and nothing more is sent.
        for (int minute = 0; minute < 3; minute++)
        {
            clock.Advance(TimeSpan.FromMinutes(1));
            for (int i = 0; i < 4; i++)
            {
                await Await.Within(log.ContainingAsync("The spool could not write"), "another failed commit");
            }
        }

        Assert.InRange(sink.Received.Count, 4, 5);
        Assert.InRange(worker.Unrecorded, 4, 5);

        faults.Heal(nameof(ISpool.CommitDeliveryAsync));
        clock.Advance(TimeSpan.FromMinutes(1));
        await gw.UntilAsync(async () => (await Task.WhenAll(ids.Select(id => gw.Spool.GetMessageAsync(id, default)))).All(m => m?.Status == MessageStatus.Sent),
            "every mail sent and recorded");

        Assert.Equal(ids, sink.Received.Select(m => m.Message.MessageId).Order(StringComparer.Ordinal));
    }

    // The smarthost holds the data (a slow server; the gateway allows it Relay:Timeout) while nothing else is due. The
    // worker used to wake every 50 ms for the whole attempt, each time reading the due mail again (on SQLite the body of
    // the mail under way, to drop it; on PostgreSQL an empty claim): here ten looks within the hold. Now it waits for
    // the attempt to end.
    [Fact]
    public async Task AttemptHeldBySlowServer_TheWorkerDoesNotLookForDueMailMeanwhile()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        FaultingSpool? faults = null;
        await using var gw = await TestGateway.StartAsync(c => Smarthost(c, sink.Port), s =>
            FaultingSpool.Add<DeliveryWorker>(s, f => faults = f));
        int holding = 0;
        int looks = 0;
        using var tenLooks = new ManualResetEventSlim();
        faults!.Called += method =>
        {
            if (method == nameof(ISpool.DueMessagesAsync) && Volatile.Read(ref holding) == 1 && Interlocked.Increment(ref looks) == 10)
            {
                tenLooks.Set();
            }
        };
        sink.OnData = _ =>
        {
            Volatile.Write(ref holding, 1);
            tenLooks.Wait(TimeSpan.FromSeconds(2)); // the slow server: two seconds, or until the worker looked ten times
            Volatile.Write(ref holding, 0);
            return SmtpReply.Ok;
        };

        await gw.Spool.QueueMailAsync(Relay("slow-1@gw.test"), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("slow-1@gw.test", default))?.Status == MessageStatus.Sent, "the mail sent");

        // At most the look that followed the attempt's start, if it came late.
        Assert.InRange(Volatile.Read(ref looks), 0, 1);
        Assert.Single(sink.Received);
    }

    /// <summary>
    /// Moves the worker's clock on a minute at each commit the worker asks of the spool, as if the spool took that long to
    /// answer: a commit tried again after a failure (at most a minute later) is due by the time the failure is known, and
    /// a recipient deferred for a minute by the time its result is committed, without the test sleeping.
    /// </summary>
    internal static Action<string> MinuteEachCommit(FakeTimeProvider clock) => method =>
    {
        if (method == nameof(ISpool.CommitDeliveryAsync))
        {
            clock.Advance(TimeSpan.FromMinutes(1));
        }
    };

    // A gateway with one delivery slot whose worker writes through a faulting spool and logs to the test.
    private static async Task<(TestGateway Gateway, FaultingSpool Faults)> OneSlotAsync(int port, FakeTimeProvider clock, ILoggerProvider log)
    {
        FaultingSpool? faults = null;
        var gw = await TestGateway.StartAsync(c => Smarthost(c, port, concurrency: 1), s =>
        {
            s.AddSingleton<TimeProvider>(clock);
            s.AddSingleton(log);
            FaultingSpool.Add<DeliveryWorker>(s, f => faults = f);
        });
        return (gw, faults!);
    }

    // The result is committed, and telling of it then fails (here a log sink that throws on the line saying the mail was
    // delivered, or on every line of the report). Before, that failure parked the mail: the park found it sent and
    // changed nothing, yet the device was kept a failed receipt and the operator told the mail was parked, of an alert
    // that was with its recipients. The device still has its relayed receipt: the receipts go before the log lines.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ReportingADeliveredResultFails_TheMailStaysSent_TheDeviceHasItsRelayedReceipt(bool theFailureIsNotLoggedEither)
    {
        await using var sink = await SmtpTestServer.StartAsync();
        var log = new DeliveryContainmentTests.WorkerLog();
        await using var gw = await TestGateway.StartAsync(c =>
        {
            Smarthost(c, sink.Port);
            c["Logging"] = new { LogLevel = new Dictionary<string, string> { ["Default"] = "Warning", [typeof(DeliveryWorker).FullName!] = "Information" } };
        }, s =>
        {
            s.AddSingleton<ILoggerProvider>(theFailureIsNotLoggedEither ? new ThrowingLog("Delivered <", "The result of the attempt on <") : new ThrowingLog("Delivered <"));
            s.AddSingleton<ILoggerProvider>(log);
        });
        gw.Logs.Expect(e => e.Message.StartsWith("The result of the attempt on <", StringComparison.Ordinal));
        using var device = new MqttClientFactory().CreateMqttClient();
        await device.ConnectAsync(gw.ClientOptions("dev-1"));
        var inbox = await ReceiptInbox.SubscribeAsync(device, "dev-1");

        var ack = await device.PublishAsync(new MqttApplicationMessageBuilder().WithTopic("edgemail/v1/dev-1/alert")
            .WithPayload(Alerts.Json("told-1")).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess);
        string id = (await sink.NextAsync()).Message.MessageId!;
        Assert.Contains($"<{id}> is recorded; telling of it", await Await.Within(log.ContainingAsync("is recorded; telling of it"), "the failed report logged"), StringComparison.Ordinal);
        await inbox.WaitForAsync("told-1", ReceiptState.Relayed);

        Assert.Equal(MessageStatus.Sent, (await gw.Spool.GetMessageAsync(id, default))!.Status);
        Assert.Equal(0, inbox.Count("told-1", ReceiptState.Failed));
        Assert.DoesNotContain(await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default), r => r.Receipt.State == ReceiptState.Failed);
        Assert.Single(sink.Received);
    }

    // The same for a deferral: before, the mail was parked, and waited for an operator instead of its next attempt.
    [Fact]
    public async Task ReportingADeferredResultFails_TheMailStaysQueuedForItsNextAttempt()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        sink.OnData = _ => new SmtpReply(451, "4.3.0 try again later");
        var log = new DeliveryContainmentTests.WorkerLog();
        await using var gw = await TestGateway.StartAsync(c => Smarthost(c, sink.Port), s =>
        {
            s.AddSingleton<ILoggerProvider>(new ThrowingLog("Deferred <"));
            s.AddSingleton<ILoggerProvider>(log);
        });
        gw.Logs.Expect(e => e.Message.StartsWith("The result of the attempt on <", StringComparison.Ordinal));

        await PublishAsync(gw, "dev-1", "later-1");
        string line = await Await.Within(log.ContainingAsync("is recorded; telling of it"), "the failed report logged");
        string id = line[(line.IndexOf('<', StringComparison.Ordinal) + 1)..line.IndexOf('>', StringComparison.Ordinal)];

        var state = (await gw.Spool.GetMessageAsync(id, default))!;
        Assert.Equal((MessageStatus.Queued, 1), (state.Status, state.Attempts));
        Assert.StartsWith("451 4.3.0 try again later", state.LastReply, StringComparison.Ordinal);
        Assert.Empty(await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default));
    }

    // The operator cancels a mail while an attempt is under way, and the attempt's result then cannot be recorded for a
    // reason of its own: the park finds the mail no longer queued and leaves it cancelled. Before, the device's failed
    // receipt said "parked" in place of the cancel's, and the operator was told the cancelled mail was parked.
    [Fact]
    public async Task MailCancelledDuringAnAttemptWhoseResultCannotBeRecorded_StaysCancelled_WithTheCancelsReceipt()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        var log = new DeliveryContainmentTests.WorkerLog();
        FaultingSpool? faults = null;
        await using var gw = await TestGateway.StartAsync(c => Smarthost(c, sink.Port), s =>
        {
            s.AddSingleton<ILoggerProvider>(log);
            FaultingSpool.Add<DeliveryWorker>(s, f => faults = f);
        });
        faults!.FailUnexpectedly(nameof(ISpool.CommitDeliveryAsync));
        sink.OnData = mail =>
        {
            var queued = gw.Spool.GetMessageAsync(mail.Message.MessageId!, default).GetAwaiter().GetResult()!;
            Assert.True(gw.Spool.CancelAsync(ParkedKinds.Message, queued.RowId, "withdrawn", 10, default).GetAwaiter().GetResult().Cancelled);
            return new SmtpReply(451, "4.3.0 try again later");
        };

        await PublishAsync(gw, "dev-1", "gone-1");
        string line = await Await.Within(log.ContainingAsync("was not parked"), "the park that found the mail cancelled");
        string id = line[(line.IndexOf('<', StringComparison.Ordinal) + 1)..line.IndexOf('>', StringComparison.Ordinal)];

        Assert.Equal(1, faults.Failed(nameof(ISpool.CommitDeliveryAsync)));
        Assert.Equal(MessageStatus.Cancelled, (await gw.Spool.GetMessageAsync(id, default))!.Status);
        var kept = Assert.Single(await gw.Spool.KeptReceiptsAsync("dev-1", 0, null, 10, default));
        Assert.Equal((ReceiptState.Failed, "cancelled by the operator: withdrawn"), (kept.Receipt.State, kept.Receipt.Detail));
    }

    // The database refuses one mail's result for its data (here a trigger, as a constraint would): written again it
    // would fail again. Before, it was written again for good, once a minute, the mail in flight and counted among the
    // results waiting (enough such mail paused delivery for everyone); now it is parked at once, and other mail goes on.
    [Fact]
    public async Task ResultTheSpoolRefusesForItsData_IsParkedAtOnce_AndOtherMailIsDelivered()
    {
        await using var sink = await SmtpTestServer.StartAsync();
        await using var gw = await TestGateway.StartAsync(c => Smarthost(c, sink.Port));
        gw.Logs.Expect(e => e.Message.StartsWith("Parked relay mail <poison-1@gw.test>", StringComparison.Ordinal));
        using (var db = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={Path.Combine(gw.DataDir, "spool.db")};Pooling=False"))
        {
            db.Open();
            using var trigger = db.CreateCommand();
            trigger.CommandText = RefuseTheResultOf("poison@example.com", postgres: false);
            trigger.ExecuteNonQuery();
        }

        await RefusedResultIsParkedAsync(gw, sink, "The spool refused the item's data: SQLite Error 19");
    }

    [PostgresFact]
    public async Task Postgres_ResultTheSpoolRefusesForItsData_IsParkedAtOnce_AndOtherMailIsDelivered()
    {
        await using var db = await TestPostgres.CreateDatabaseAsync();
        await using var sink = await SmtpTestServer.StartAsync();
        await using var gw = await TestGateway.StartAsync(c =>
        {
            Smarthost(c, sink.Port);
            c["Spool"] = new { Provider = "Postgres", db.ConnectionString };
        });
        gw.Logs.Expect(e => e.Message.StartsWith("Parked relay mail <poison-1@gw.test>", StringComparison.Ordinal));
        await db.ScalarAsync(RefuseTheResultOf("poison@example.com", postgres: true));

        await RefusedResultIsParkedAsync(gw, sink, "The PostgreSQL spool refused the item's data: 23514");
    }

    private static string RefuseTheResultOf(string address, bool postgres) => postgres
        ? $"""
          CREATE FUNCTION refuse_result() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
            IF NEW.results::text LIKE '%{address}%' THEN RAISE EXCEPTION 'the test refuses this result' USING ERRCODE = 'check_violation'; END IF;
            RETURN NEW;
          END $$;
          CREATE TRIGGER refuse_result BEFORE INSERT OR UPDATE ON attempts FOR EACH ROW EXECUTE FUNCTION refuse_result();
          """
        : $"CREATE TRIGGER refuse_result BEFORE INSERT ON attempts WHEN NEW.results LIKE '%{address}%' BEGIN SELECT RAISE(ABORT, 'the test refuses this result'); END";

    private static async Task RefusedResultIsParkedAsync(TestGateway gw, SmtpTestServer sink, string reason)
    {
        await gw.Spool.QueueMailAsync(Relay("poison-1@gw.test") with { Recipients = ["poison@example.com"] }, default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("poison-1@gw.test", default))?.Status == MessageStatus.Parked, "the mail parked");
        await gw.Spool.QueueMailAsync(Relay("fine-1@gw.test"), default);
        await gw.UntilAsync(async () => (await gw.Spool.GetMessageAsync("fine-1@gw.test", default))?.Status == MessageStatus.Sent, "the other mail sent");

        var parked = (await gw.Spool.GetMessageAsync("poison-1@gw.test", default))!;
        Assert.StartsWith(reason, parked.Reason, StringComparison.Ordinal);
        Assert.Contains("the test refuses this result", parked.Reason, StringComparison.Ordinal);
        Assert.Equal(["poison-1@gw.test", "fine-1@gw.test"], sink.Received.Select(m => m.Message.MessageId).Where(id => !id!.StartsWith("edgemail.notice.", StringComparison.Ordinal)));
    }

    /// <summary>A log sink that fails on the lines that start with one of <paramref name="prefixes"/>, as a broken one does.</summary>
    private sealed class ThrowingLog(params string[] prefixes) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new Throwing(prefixes);

        public void Dispose()
        {
        }

        private sealed class Throwing(string[] prefixes) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                string line = formatter(state, exception);
                if (prefixes.Any(p => line.StartsWith(p, StringComparison.Ordinal)))
                {
                    throw new IOException("the log sink's disk is gone (test fault)");
                }
            }
        }
    }

    private static void Smarthost(Dictionary<string, object> c, int port, int concurrency = 4, string timeout = "00:00:05")
    {
        c["Relay"] = new
        {
            Mode = "Smarthost", Host = "127.0.0.1", Port = port, Security = "None", Timeout = timeout, Backoff = new[] { "00:01:00" }, Concurrency = concurrency,
        };
        c["Routes"] = new object[] { new { Devices = "*", Codes = "*", MinSeverity = "info", To = new[] { "oncall" } } };
    }

    private static NewMessage Relay(string id) =>
        new("relay", "dev-1", null, id, "edgemail@gw.test", ["alice@example.com"], Encoding.ASCII.GetBytes($"Message-ID: <{id}>\r\nSubject: mains lost\r\n\r\nOn battery.\r\n"));

    private static async Task PublishAsync(TestGateway gw, string device, string alertId)
    {
        using var client = await gw.ConnectAsync(device);
        var ack = await client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic($"edgemail/v1/{device}/alert")
            .WithPayload(Alerts.Json(alertId)).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build());
        Assert.True(ack.IsSuccess);
    }
}
