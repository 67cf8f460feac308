using System.Net.Sockets;
using System.Text;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using MimeKit;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using Xunit;

namespace EdgeMail.Gateway.Tests.Hostile;

public sealed class MqttHostileFixture : IAsyncLifetime
{
    public TestGateway Gw { get; private set; } = null!;

    public async Task InitializeAsync() => Gw = await TestGateway.StartAsync();

    public async Task DisposeAsync() => await Gw.DisposeAsync();
}

public sealed class MqttHostileTests(MqttHostileFixture fixture) : IClassFixture<MqttHostileFixture>
{
    private static int _goodAlerts;

    private TestGateway Gw => fixture.Gw;

    private static MqttApplicationMessage Message(string topic, byte[] payload) =>
        new MqttApplicationMessageBuilder().WithTopic(topic).WithPayload(payload).WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build();

    /// <summary>A well-behaved device still gets a PUBACK for a valid alert, and no mail left for strangers.</summary>
    private async Task AfterwardsAsync()
    {
        using var good = await Gw.ConnectAsync("dev-3");
        string id = "good-" + Interlocked.Increment(ref _goodAlerts);
        var ack = await good.PublishAsync(Message("edgemail/v1/dev-3/alert", Encoding.UTF8.GetBytes(Alerts.Json(id))), new CancellationTokenSource(Await.DefaultTimeout).Token);
        Assert.True(ack.IsSuccess);
        Assert.Equal("new", (await Gw.Spool.GetAlertAsync("dev-3", id, default))?.Status is "new" or "routed" ? "new" : "missing");
        HostileKit.AssertNoMailForStrangers(Gw);
    }

    private async Task<Socket> RawConnectAsync()
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(Gw.Broker.Endpoint!);
        return socket;
    }

    // True once the broker has closed the connection (FIN or reset); fails when it still holds it after the default wait.
    internal static async Task<bool> ClosedByPeerAsync(Socket socket)
    {
        var buffer = new byte[256];
        using var timeout = new CancellationTokenSource(Await.DefaultTimeout);
        try
        {
            while (await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token) > 0)
            {
            }

            return true;
        }
        catch (SocketException)
        {
            return true;
        }
    }

    // Everything the broker sent until it closed the connection (a reset ends it too).
    private static async Task<byte[]> ReadUntilClosedAsync(Socket socket)
    {
        var received = new List<byte>();
        var buffer = new byte[256];
        using var timeout = new CancellationTokenSource(Await.DefaultTimeout);
        try
        {
            int n;
            while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token)) > 0)
            {
                received.AddRange(buffer.AsSpan(0, n));
            }
        }
        catch (SocketException)
        {
        }

        return [.. received];
    }

    internal static byte[] Connect311(string clientId, string user, string password, bool cleanSession = true) =>
        Connect([0, 4, (byte)'M', (byte)'Q', (byte)'T', (byte)'T', 4, (byte)(cleanSession ? 0xC2 : 0xC0), 0, 60], clientId, user, password);

    private static byte[] Connect5(string clientId, string user, string password) =>
        Connect([0, 4, (byte)'M', (byte)'Q', (byte)'T', (byte)'T', 5, 0xC2, 0, 60, 0], clientId, user, password); // no properties

    // CONNECT with the variable header given (protocol name, level, flags, keep-alive, MQTT 5's properties) and the three strings.
    private static byte[] Connect(List<byte> body, string clientId, string user, string password)
    {
        foreach (string s in new[] { clientId, user, password })
        {
            byte[] b = Encoding.UTF8.GetBytes(s);
            body.Add((byte)(b.Length >> 8));
            body.Add((byte)b.Length);
            body.AddRange(b);
        }

        return [0x10, (byte)body.Count, .. body];
    }

    [Theory]
    [InlineData(new byte[] { 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F })]               // remaining length over 4 bytes
    [InlineData(new byte[] { 0x10, 0xFF, 0xFF, 0xFF, 0x7F })]                     // claims 256 MB, sends nothing
    [InlineData(new byte[] { 0x10, 0xA0, 0x8D, 0x06, 0x00, 0x04 })]               // a 100,000-byte CONNECT: over the limit before authentication
    [InlineData(new byte[] { 0x10, 0x02, 0x00, 0x04 })]                           // truncated protocol name
    [InlineData(new byte[] { 0x10, 0x0C, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x63, 0x02, 0x00, 0x3C, 0x00, 0x00 })] // protocol level 99
    [InlineData(new byte[] { 0x30, 0x05, 0x00, 0x09, 0x61, 0x62, 0x63 })]         // PUBLISH before CONNECT, topic longer than the packet
    [InlineData(new byte[] { 0xF0, 0x00 })]                                       // reserved packet type
    [InlineData(new byte[] { 0x00, 0x00, 0x00, 0x00 })]
    public async Task Connect_MalformedPacket_ClosesThatConnectionOnly(byte[] packet)
    {
        using (var socket = await RawConnectAsync())
        {
            await socket.SendAsync(packet);
            if (packet[1] is 0xFF && packet.Length == 5)
            {
                socket.Shutdown(SocketShutdown.Send); // a liar that stops sending: the broker must not wait on it forever
            }

            Assert.True(await ClosedByPeerAsync(socket));
        }

        await AfterwardsAsync();
    }

    [Fact]
    public async Task Publish_PacketWhoseTopicLengthExceedsTheRemainingLength_ClosesTheConnection()
    {
        using (var socket = await RawConnectAsync())
        {
            await socket.SendAsync(Connect311("dev-1", "dev-1", TestGateway.Secret));
            var connack = new byte[4];
            Assert.Equal(4, await socket.ReceiveAsync(connack));
            Assert.Equal(0, connack[3]);
            await socket.SendAsync(new byte[] { 0x32, 0x06, 0x00, 0x40, (byte)'e', (byte)'d', 0x00, 0x01 });

            Assert.True(await ClosedByPeerAsync(socket));
        }

        await AfterwardsAsync();
    }

    [Theory]
    [InlineData("edgemail/v1/dev-2/alert")]      // another device's id
    [InlineData("edgemail/v1/dev-1/receipt")]    // a gateway-to-device topic
    [InlineData("edgemail/v1/dev-1/alert/x")]
    [InlineData("edgemail/v1/dev-10/alert")]     // id prefix trick
    [InlineData("edgemail/v1/dev-1")]
    [InlineData("$SYS/broker")]
    [InlineData("edgemail/v1/dev-1/../dev-2/alert")]
    public async Task Publish_WrongTopic_ClosesTheConnectionAndStoresNothing(string topic)
    {
        var before = await Gw.Spool.CountsAsync(default);
        using (var client = await Gw.ConnectAsync("dev-1"))
        {
            var disconnected = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            client.DisconnectedAsync += _ =>
            {
                disconnected.TrySetResult();
                return Task.CompletedTask;
            };

            _ = client.PublishAsync(Message(topic, Encoding.UTF8.GetBytes(Alerts.Json("wrong-" + topic.GetHashCode(StringComparison.Ordinal)))), new CancellationTokenSource(Await.DefaultTimeout).Token)
                .ContinueWith(t => _ = t.Exception, TaskScheduler.Default); // expected to fail: the broker closes the connection
            await Await.Within(disconnected.Task.ContinueWith(_ => true, TaskScheduler.Default), "the broker to close the connection");
        }

        var after = await Gw.Spool.CountsAsync(default);
        Assert.Equal(before.Alerts.Values.Sum(), after.Alerts.Values.Sum());
        await AfterwardsAsync();
    }

    // MQTT 5 can refuse one message: the device learns why, keeps its connection, and its own alerts go on.
    [Theory]
    [InlineData("edgemail/v1/dev-2/alert")]
    [InlineData("edgemail/v1/dev-1/receipt")]
    [InlineData("$SYS/broker")]
    public async Task Publish_WrongTopicOverMqtt5_IsRefusedWithPubackNotAuthorizedAndTheConnectionStays(string topic)
    {
        string run = Guid.NewGuid().ToString("N")[..8];
        using var client = await Gw.ConnectAsync("dev-1", version: MqttProtocolVersion.V500);
        using var timeout = new CancellationTokenSource(Await.DefaultTimeout);

        var refused = await client.PublishAsync(Message(topic, Encoding.UTF8.GetBytes(Alerts.Json($"wrong-{run}"))), timeout.Token);
        var own = await client.PublishAsync(Message("edgemail/v1/dev-1/alert", Encoding.UTF8.GetBytes(Alerts.Json($"own-{run}"))), timeout.Token);

        Assert.Equal(MqttClientPublishReasonCode.NotAuthorized, refused.ReasonCode);
        Assert.Contains("edgemail/v1/dev-1/alert", refused.ReasonString, StringComparison.Ordinal);
        Assert.True(own.IsSuccess, own.ReasonCode.ToString());
        Assert.True(client.IsConnected);
        Assert.NotNull(await Gw.Spool.GetAlertAsync("dev-1", $"own-{run}", default));
        Assert.Null(await Gw.Spool.GetAlertAsync("dev-1", $"wrong-{run}", default));
        Assert.Null(await Gw.Spool.GetAlertAsync("dev-2", $"wrong-{run}", default));
        await AfterwardsAsync();
    }

    // The Received trace names the address the alert came from: after the device reconnects from another address and
    // resumes its persistent session, the new one, not the one that made the session.
    [Fact]
    public async Task Publish_AfterResumingAPersistentSessionFromAnotherAddress_TheMailNamesTheNewAddress()
    {
        string run = Guid.NewGuid().ToString("N")[..8];
        for (ushort i = 1; i <= 2; i++)
        {
            using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
            socket.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Parse($"127.0.0.{i + 10}"), 0));
            await socket.ConnectAsync(Gw.Broker.Endpoint!);
            await socket.SendAsync(Connect311("dev-1", "dev-1", TestGateway.Secret, cleanSession: false));
            var connack = new byte[4];
            await ReceiveExactlyAsync(socket, connack);
            Assert.Equal((i == 2 ? 1 : 0, 0), (connack[2], connack[3])); // the second resumes the session
            await socket.SendAsync(Publish311("edgemail/v1/dev-1/alert", i, Alerts.Json($"peer-{run}-{i}")));
            var puback = new byte[4];
            await ReceiveExactlyAsync(socket, puback);
            Assert.Equal(new byte[] { 0x40, 0x02, 0, (byte)i }, puback);
            socket.Shutdown(SocketShutdown.Both);
        }

        foreach (int i in new[] { 1, 2 })
        {
            string? mail = null;
            await Gw.UntilAsync(() => Task.FromResult((mail = MailOf($"peer-{run}-{i}")) is not null), $"the mail of alert {i}");
            var received = MimeMessage.Load(new MemoryStream(Encoding.UTF8.GetBytes(mail!))).Headers[HeaderId.Received];
            Assert.Contains($"([127.0.0.{i + 10}])", received, StringComparison.Ordinal);
        }

        await AfterwardsAsync();
    }

    private string? MailOf(string alertId) => !Directory.Exists(Gw.MailboxNew) ? null
        : Directory.GetFiles(Gw.MailboxNew).Select(File.ReadAllText).FirstOrDefault(m => m.Contains(alertId, StringComparison.Ordinal));

    // The protocol belongs to the connection, not to the persistent session it resumes: a device that moves from MQTT 5
    // to 3.1.1 with the same session is refused the 3.1.1 way (closed), never with a PUBACK 3.1.1 would read as success.
    [Fact]
    public async Task Publish_WrongTopicOverMqtt311_AfterResumingASessionMadeOverMqtt5_ClosesTheConnection()
    {
        string run = Guid.NewGuid().ToString("N")[..8];
        var persistent = (MqttProtocolVersion version) => new MqttClientOptionsBuilder()
            .WithTcpServer(Gw.Broker.Endpoint!.Address.ToString(), Gw.Broker.Endpoint.Port)
            .WithClientId("dev-1").WithCredentials("dev-1", TestGateway.Secret).WithProtocolVersion(version)
            .WithCleanSession(false).WithSessionExpiryInterval(600).Build();
        using (var v5 = new MqttClientFactory().CreateMqttClient())
        {
            await v5.ConnectAsync(persistent(MqttProtocolVersion.V500));
            await v5.DisconnectAsync();
        }

        using var v311 = new MqttClientFactory().CreateMqttClient();
        var connected = await v311.ConnectAsync(persistent(MqttProtocolVersion.V311));
        Assert.True(connected.IsSessionPresent);
        var disconnected = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        v311.DisconnectedAsync += _ =>
        {
            disconnected.TrySetResult();
            return Task.CompletedTask;
        };

        _ = v311.PublishAsync(Message("edgemail/v1/dev-2/alert", Encoding.UTF8.GetBytes(Alerts.Json($"wrong-{run}"))), new CancellationTokenSource(Await.DefaultTimeout).Token)
            .ContinueWith(t => _ = t.Exception, TaskScheduler.Default); // expected to fail: the broker closes the connection
        await Await.Within(disconnected.Task.ContinueWith(_ => true, TaskScheduler.Default), "the broker to close the connection");
        Assert.Null(await Gw.Spool.GetAlertAsync("dev-2", $"wrong-{run}", default));
        await AfterwardsAsync();
    }

    [Theory]
    [InlineData("#")]
    [InlineData("edgemail/v1/+/receipt")]
    [InlineData("edgemail/v1/dev-2/receipt")]
    [InlineData("edgemail/v1/dev-1/#")]
    public async Task Subscribe_BeyondItsOwnReceipts_IsRefused(string filter)
    {
        using (var client = await Gw.ConnectAsync("dev-1", version: MqttProtocolVersion.V500))
        {
            var result = await client.SubscribeAsync(filter, MqttQualityOfServiceLevel.AtLeastOnce);
            Assert.Equal(MqttClientSubscribeResultCode.NotAuthorized, Assert.Single(result.Items).ResultCode);
        }

        await AfterwardsAsync();
    }

    public static TheoryData<string, byte[], string> BadPayloads() => new()
    {
        { "oversized", Encoding.UTF8.GetBytes("{\"v\":1,\"id\":\"big\",\"text\":\"" + new string('x', 1 << 20) + "\"}"), "larger than 4 KiB" },
        { "not-utf8", [0x7B, 0x22, 0x76, 0x22, 0x3A, 0x31, 0x2C, 0x22, 0x69, 0x64, 0x22, 0x3A, 0x22, 0xC3, 0x28, 0xFF, 0x22, 0x7D], "UTF-8" },
        { "deep", Encoding.UTF8.GetBytes("{\"v\":1,\"id\":\"deep\",\"values\":" + new string('[', 2000) + new string(']', 2000) + "}"), "" },
        { "huge-number", Encoding.UTF8.GetBytes("{\"v\":1,\"id\":\"huge\",\"seq\":1e400,\"state\":\"raised\",\"sev\":\"critical\",\"code\":\"X\",\"text\":\"t\",\"values\":{\"a\":1e400}}"), "" },
        { "huge-int", Encoding.UTF8.GetBytes("{\"v\":1,\"id\":\"hugeint\",\"seq\":123456789012345678901234567890,\"state\":\"raised\",\"sev\":\"critical\",\"code\":\"X\",\"text\":\"t\"}"), "" },
        { "duplicate-keys", Encoding.UTF8.GetBytes("{\"v\":1,\"id\":\"dup\",\"id\":\"dup2\",\"seq\":1,\"state\":\"raised\",\"sev\":\"critical\",\"code\":\"X\",\"text\":\"t\"}"), "" },
        { "array", Encoding.UTF8.GetBytes("[1,2,3]"), "" },
        { "empty", [], "" },
        { "nul", Encoding.UTF8.GetBytes("{\"v\":1,\"id\":\"nul\0\",\"seq\":1}"), "" },
    };

    [Theory]
    [MemberData(nameof(BadPayloads))]
    public async Task Publish_HostilePayload_IsAcknowledgedKeptRejectedAndNeverMailed(string name, byte[] payload, string reasonContains)
    {
        using (var client = await Gw.ConnectAsync("dev-1"))
        {
            var ack = await client.PublishAsync(Message("edgemail/v1/dev-1/alert", payload), new CancellationTokenSource(Await.DefaultTimeout).Token);
            Assert.True(ack.IsSuccess, name);
        }

        string key = EdgeMail.Gateway.Ingest.AlertParser.Parse(payload).Id ?? "rejected-" + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(payload).AsSpan(0, 16));
        var row = await Gw.Spool.GetAlertAsync("dev-1", key, default);
        Assert.NotNull(row);
        Assert.Equal("rejected", row.Value.Status); // kept with its reason, never routed, so never mailed
        Assert.Contains(reasonContains, row.Value.Reason, StringComparison.Ordinal);
        await AfterwardsAsync();
    }

    [Fact]
    public async Task Publish_MalformedPayloadOfOneMebibyte_IsKeptRejectedWithItsFirst4KiBAndItsSize()
    {
        byte[] payload = Encoding.UTF8.GetBytes("{\"v\":1,\"id\":\"huge-junk\",\"junk\":\"" + new string('y', 1 << 20)); // and no closing brace
        using (var client = await Gw.ConnectAsync("dev-2"))
        {
            var ack = await client.PublishAsync(Message("edgemail/v1/dev-2/alert", payload), new CancellationTokenSource(Await.DefaultTimeout).Token);
            Assert.True(ack.IsSuccess);
        }

        string key = "rejected-" + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(payload).AsSpan(0, 16));
        var row = Assert.Single(await Gw.Spool.QueryAlertsAsync(new EdgeMail.Gateway.Spool.AlertQuery("dev-2", Status: "rejected"), default), a => a.AlertId == key);
        var journey = await Gw.Spool.AlertJourneyAsync(row.RowId, default);
        Assert.Equal(4096, journey!.Payload.Length); // what a device sends cannot fill the disk one megabyte at a time
        Assert.Equal(payload.AsSpan(0, 4096).ToArray(), journey.Payload);
        var stored = await Gw.Spool.GetAlertAsync("dev-2", key, default);
        Assert.Equal($"payload is larger than 4 KiB ({payload.Length} bytes; only the first 4096 are kept)", stored?.Reason);
        await AfterwardsAsync();
    }

    [Fact]
    public async Task Publish_HeaderInjectionInEveryField_AddsNoHeaderAndNoRecipient()
    {
        string json = "{\"v\":1,\"id\":\"inj-1\\r\\nBcc: v1@evil.example\",\"seq\":1,\"state\":\"raised\",\"sev\":\"critical\",\"code\":\"INJ\","
            + "\"text\":\"hot\\r\\nBcc: v2@evil.example\\r\\n\\r\\nbody\",\"values\":{\"t\\r\\nBcc: v3@evil.example\":1}}";
        using (var client = await Gw.ConnectAsync("dev-1"))
        {
            Assert.True((await client.PublishAsync(Message("edgemail/v1/dev-1/alert", Encoding.UTF8.GetBytes(json)), new CancellationTokenSource(Await.DefaultTimeout).Token)).IsSuccess);
        }

        var stored = await Gw.Spool.GetAlertAsync("dev-1", "inj-1\r\nBcc: v1@evil.example", default);
        Assert.NotNull(stored);
        if (stored.Value.Status != "rejected")
        {
            var files = await Gw.MailAsync(1);
            foreach (string file in files)
            {
                using var stream = File.OpenRead(file);
                var mail = MimeMessage.Load(stream);
                Assert.Null(mail.Headers[HeaderId.Bcc]);
                Assert.Empty(mail.Bcc);
                Assert.All(mail.To.Mailboxes, m => Assert.Contains(m.Address, HostileKit.OurPeople));
            }
        }

        await AfterwardsAsync();
    }

    private static byte[] Publish311(string topic, ushort packetId, string payload)
    {
        byte[] t = Encoding.UTF8.GetBytes(topic);
        byte[] p = Encoding.UTF8.GetBytes(payload);
        var body = new List<byte> { (byte)(t.Length >> 8), (byte)t.Length };
        body.AddRange(t);
        body.Add((byte)(packetId >> 8));
        body.Add((byte)packetId);
        body.AddRange(p);
        return [0x32, .. RemainingLength(body.Count), .. body];
    }

    // MQTT's variable-length encoding: seven bits a byte, the high bit set while more follow.
    private static List<byte> RemainingLength(int n)
    {
        var bytes = new List<byte>();
        do
        {
            bytes.Add((byte)((n % 128) | (n >= 128 ? 0x80 : 0)));
            n /= 128;
        }
        while (n > 0);
        return bytes;
    }

    private static async Task ConnectAsDev1Async(Socket socket)
    {
        await socket.SendAsync(Connect311("dev-1", "dev-1", TestGateway.Secret));
        var connack = new byte[4];
        await ReceiveExactlyAsync(socket, connack);
        Assert.Equal(0, connack[3]);
    }

    private static async Task ReceiveExactlyAsync(Socket socket, byte[] buffer)
    {
        using var timeout = new CancellationTokenSource(Await.DefaultTimeout);
        for (int got = 0; got < buffer.Length;)
        {
            int n = await socket.ReceiveAsync(buffer.AsMemory(got), SocketFlags.None, timeout.Token);
            Assert.True(n > 0, "the broker closed the connection");
            got += n;
        }
    }

    // The broker reads a connection's packets ahead of its one-at-a-time handling (to store a device's alerts in flight
    // together): a burst of PUBLISHes in one write still gets one PUBACK each, in order, each only once its alert is in
    // the spool.
    [Fact]
    public async Task Publish_BurstInOneWrite_PubAcksInOrderEachAfterItsAlertIsStored()
    {
        string run = Guid.NewGuid().ToString("N")[..8];
        using (var socket = await RawConnectAsync())
        {
            await ConnectAsDev1Async(socket);

            const int Burst = 12;
            var burst = new List<byte>();
            for (int i = 1; i <= Burst; i++)
            {
                burst.AddRange(Publish311("edgemail/v1/dev-1/alert", (ushort)i, Alerts.Json($"burst-{run}-{i}")));
            }

            await socket.SendAsync(burst.ToArray());
            for (int i = 1; i <= Burst; i++)
            {
                var puback = new byte[4];
                await ReceiveExactlyAsync(socket, puback);
                Assert.Equal(new byte[] { 0x40, 0x02, (byte)(i >> 8), (byte)i }, puback);
                Assert.NotNull(await Gw.Spool.GetAlertAsync("dev-1", $"burst-{run}-{i}", default));
            }
        }

        await AfterwardsAsync();
    }

    // Nothing is read ahead, let alone stored, before the device has authenticated: PUBLISHes sent right behind a
    // CONNECT with a wrong secret are never stored.
    [Fact]
    public async Task Publish_PipelinedBehindAConnectWithAWrongSecret_StoresNothing()
    {
        string run = Guid.NewGuid().ToString("N")[..8];
        using (var socket = await RawConnectAsync())
        {
            var packets = new List<byte>(Connect311("dev-2", "dev-2", "not-the-secret"));
            for (int i = 1; i <= 5; i++)
            {
                packets.AddRange(Publish311("edgemail/v1/dev-2/alert", (ushort)i, Alerts.Json($"unauth-{run}-{i}")));
            }

            await socket.SendAsync(packets.ToArray());
            Assert.True(await ClosedByPeerAsync(socket));
        }

        for (int i = 1; i <= 5; i++)
        {
            Assert.Null(await Gw.Spool.GetAlertAsync("dev-2", $"unauth-{run}-{i}", default));
        }

        await AfterwardsAsync();
    }

    // A PUBLISH to another device's topic inside a burst: read ahead like the rest, never stored, and the connection
    // ends without its PUBACK or any after it; the alerts before it are stored. Their PUBACKs are sent, but the close may
    // reach the client as a reset (data it sent was still unread) that discards them unread: then the device sends
    // those alerts again and they are answered as duplicates, so only what was read is checked, never more.
    [Fact]
    public async Task Publish_SpoofInsideABurst_IsNeverStoredAndEndsTheConnection()
    {
        string run = Guid.NewGuid().ToString("N")[..8];
        using (var socket = await RawConnectAsync())
        {
            await ConnectAsDev1Async(socket);

            var burst = new List<byte>();
            burst.AddRange(Publish311("edgemail/v1/dev-1/alert", 1, Alerts.Json($"own-{run}-1")));
            burst.AddRange(Publish311("edgemail/v1/dev-1/alert", 2, Alerts.Json($"own-{run}-2")));
            burst.AddRange(Publish311("edgemail/v1/dev-2/alert", 3, Alerts.Json($"spoof-{run}")));
            burst.AddRange(Publish311("edgemail/v1/dev-1/alert", 4, Alerts.Json($"own-{run}-4")));
            await socket.SendAsync(burst.ToArray());

            byte[] received = await ReadUntilClosedAsync(socket);
            byte[] expected = [0x40, 0x02, 0, 1, 0x40, 0x02, 0, 2];
            Assert.True(received.Length <= expected.Length, $"the broker sent {received.Length} bytes: {Convert.ToHexString(received)}");
            Assert.Equal(expected[..received.Length], received); // PUBACKs of 1 and 2 at most, in order: none for the spoof or after it
        }

        Assert.NotNull(await Gw.Spool.GetAlertAsync("dev-1", $"own-{run}-1", default));
        Assert.NotNull(await Gw.Spool.GetAlertAsync("dev-1", $"own-{run}-2", default));
        Assert.Null(await Gw.Spool.GetAlertAsync("dev-2", $"spoof-{run}", default));
        Assert.Null(await Gw.Spool.GetAlertAsync("dev-1", $"spoof-{run}", default));
        await AfterwardsAsync();
    }

    // TCP may split a packet anywhere: a device whose packets arrive a byte at a time is framed as one that sends them
    // whole, and gets its CONNACK and each PUBACK after its alert is stored.
    [Fact]
    public async Task Publish_ArrivingOneByteAtATime_IsFramedAndAcknowledged()
    {
        string run = Guid.NewGuid().ToString("N")[..8];
        using (var socket = await RawConnectAsync())
        {
            socket.NoDelay = true;
            foreach (byte b in Connect311("dev-1", "dev-1", TestGateway.Secret))
            {
                await socket.SendAsync(new[] { b });
            }

            var connack = new byte[4];
            await ReceiveExactlyAsync(socket, connack);
            Assert.Equal(0, connack[3]);
            for (int i = 1; i <= 3; i++)
            {
                foreach (byte b in Publish311("edgemail/v1/dev-1/alert", (ushort)i, Alerts.Json($"trickle-{run}-{i}")))
                {
                    await socket.SendAsync(new[] { b });
                }

                var puback = new byte[4];
                await ReceiveExactlyAsync(socket, puback);
                Assert.Equal(new byte[] { 0x40, 0x02, 0, (byte)i }, puback);
                Assert.NotNull(await Gw.Spool.GetAlertAsync("dev-1", $"trickle-{run}-{i}", default));
            }
        }

        await AfterwardsAsync();
    }

    // A packet's size is known from its header: one over the limit ends the connection there, before its body is read
    // or any memory is set aside for it, even from an authenticated device.
    [Fact]
    public async Task Publish_PacketOverTheSizeLimit_ClosesTheConnectionWithoutWaitingForItsBody()
    {
        using (var socket = await RawConnectAsync())
        {
            await ConnectAsDev1Async(socket);
            int claimed = EdgeMail.Gateway.Ingest.DeviceChannel.MaxPacket; // remaining length: header + this is one over the limit
            await socket.SendAsync((byte[])[0x32, .. RemainingLength(claimed), 0x00, 0x17]);
            Assert.True(await ClosedByPeerAsync(socket));
        }

        await AfterwardsAsync();
    }

    // QoS 3 exists in no MQTT version (3.1.1 and 5, section 3.3.1.2): the PUBLISH is malformed and the connection is
    // closed. MQTTnet decodes it anyway and runs the publish check, which stored the alert, before it fails on the QoS.
    // On its own gateway: the warning is read from the broker's log.
    [Fact]
    public async Task Publish_WithQoS3_IsNeverStored_EndsTheConnectionWithTheReasonLogged_AndAnotherDeviceGoesOn()
    {
        var log = new LineLog<EmbeddedBroker>();
        await using var gw = await TestGateway.StartAsync(null, s => s.AddSingleton<ILogger<EmbeddedBroker>>(log));
        using var other = await gw.ConnectAsync("dev-2");
        using (var socket = new Socket(SocketType.Stream, ProtocolType.Tcp))
        {
            await socket.ConnectAsync(gw.Broker.Endpoint!);
            await ConnectAsDev1Async(socket);
            byte[] publish = Publish311("edgemail/v1/dev-1/alert", 1, Alerts.Json("qos-3"));
            publish[0] |= 0x06; // 0x36: PUBLISH, QoS bits 11
            await socket.SendAsync(publish);

            Assert.Empty(await ReadUntilClosedAsync(socket)); // no PUBACK, nor anything else
        }

        Assert.Null(await gw.Spool.GetAlertAsync("dev-1", "qos-3", default));
        Assert.Contains(log.Lines, l => l.Contains("dev-1", StringComparison.Ordinal) && l.Contains("QoS 3", StringComparison.Ordinal));
        var ack = await other.PublishAsync(Message("edgemail/v1/dev-2/alert", Encoding.UTF8.GetBytes(Alerts.Json("after-qos-3"))), new CancellationTokenSource(Await.DefaultTimeout).Token);
        Assert.True(ack.IsSuccess);
        Assert.NotNull(await gw.Spool.GetAlertAsync("dev-2", "after-qos-3", default));
    }

    // Packets MQTT 3.1.1 and 5 call malformed or a protocol error, on which the connection is to be closed (3.1.1:
    // sections 2.2.2, 3.3.1.1, 3.1; 5: 2.1.3, 3.3.1.1, 3.1). MQTTnet checks no fixed-header flags: it stored the QoS 0
    // alert with DUP set, answered the SUBSCRIBE, UNSUBSCRIBE and PUBREL with wrong flags and the PINGREQ with flags,
    // and closed on a second CONNECT, a server's packet or one it could not decode with no line in the gateway's log.
    public static TheoryData<string, byte[], string> Violations()
    {
        byte[] topic = Encoding.UTF8.GetBytes("edgemail/v1/dev-1/alert");
        byte[] publish = [0x00, (byte)topic.Length, .. topic, .. Encoding.UTF8.GetBytes(Alerts.Json("dup-qos-0"))]; // QoS 0: no packet id
        byte[] receipt = Encoding.UTF8.GetBytes("edgemail/v1/dev-1/receipt");
        byte[] subscribe = [0x00, 0x01, 0x00, (byte)receipt.Length, .. receipt, 0x01];
        byte[] unsubscribe = [0x00, 0x02, 0x00, (byte)receipt.Length, .. receipt];
        return new()
        {
            { "PUBLISH QoS 0 with DUP", [0x38, .. RemainingLength(publish.Length), .. publish], "a QoS 0 PUBLISH with the DUP flag set" },
            { "SUBSCRIBE with flags 0000", [0x80, (byte)subscribe.Length, .. subscribe], "a SUBSCRIBE whose fixed-header flags are not 0010" },
            { "UNSUBSCRIBE with flags 0011", [0xA3, (byte)unsubscribe.Length, .. unsubscribe], "an UNSUBSCRIBE whose fixed-header flags are not 0010" },
            { "PUBREL with flags 0000", [0x60, 0x02, 0x00, 0x01], "a PUBREL whose fixed-header flags are not 0010" },
            { "PINGREQ with flags 0001", [0xC1, 0x00], "a PINGREQ whose fixed-header flags are not 0000" },
            { "second CONNECT", Connect311("dev-1", "dev-1", TestGateway.Secret), "a second CONNECT" },
            { "PINGRESP, a server's packet", [0xD0, 0x00], "a PINGRESP, which only a server sends" },
            { "PUBLISH whose topic overruns it", [0x32, 0x06, 0x00, 0x40, (byte)'e', (byte)'d', 0x00, 0x01], "a malformed PUBLISH (" }, // MQTTnet's decoder refuses it
        };
    }

    [Theory]
    [MemberData(nameof(Violations))]
    public async Task Packet_MalformedOrAProtocolError_IsNotHandled_EndsTheConnectionWithTheReasonLogged_AndNothingIsStored(string name, byte[] packet, string reason)
    {
        var log = new LineLog<EmbeddedBroker>();
        await using var gw = await TestGateway.StartAsync(null, s => s.AddSingleton<ILogger<EmbeddedBroker>>(log));
        using (var socket = new Socket(SocketType.Stream, ProtocolType.Tcp))
        {
            await socket.ConnectAsync(gw.Broker.Endpoint!);
            await ConnectAsDev1Async(socket);
            await socket.SendAsync(packet);

            Assert.Empty(await ReadUntilClosedAsync(socket)); // no SUBACK, PUBCOMP, PINGRESP
        }

        Assert.Single(log.Lines, l => l.Contains("dev-1", StringComparison.Ordinal) && l.Contains(reason, StringComparison.Ordinal));
        Assert.False(gw.Broker.IsListening("dev-1"), name); // the SUBSCRIBE was not taken either
        using var other = await gw.ConnectAsync("dev-2");
        var ack = await other.PublishAsync(Message("edgemail/v1/dev-2/alert", Encoding.UTF8.GetBytes(Alerts.Json("after-violation"))), new CancellationTokenSource(Await.DefaultTimeout).Token);
        Assert.True(ack.IsSuccess);
        await gw.MailAsync(1);
        Assert.Null(await gw.Spool.GetAlertAsync("dev-1", "dup-qos-0", default));
        Assert.Single(Directory.GetFiles(gw.MailboxNew)); // dev-2's alert only
    }

    // A device that sends a malformed packet at every connection must not flood the log: one line a minute for it,
    // with the count of the ones left out.
    [Fact]
    public async Task Packet_MalformedAtEveryConnection_IsLoggedOnceAMinutePerDevice_WithTheCountLeftOut()
    {
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var log = new LineLog<EmbeddedBroker>();
        await using var gw = await TestGateway.StartAsync(null, s => s.AddSingleton<ILogger<EmbeddedBroker>>(log).AddSingleton<TimeProvider>(clock));

        for (int i = 0; i < 4; i++)
        {
            if (i == 3)
            {
                clock.Advance(TimeSpan.FromMinutes(1));
            }

            using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
            await socket.ConnectAsync(gw.Broker.Endpoint!);
            await ConnectAsDev1Async(socket);
            await socket.SendAsync(new byte[] { 0x60, 0x02, 0x00, 0x01 });
            Assert.True(await ClosedByPeerAsync(socket));
        }

        var lines = log.Lines.Where(l => l.Contains("PUBREL", StringComparison.Ordinal)).ToList();
        Assert.Equal(2, lines.Count);
        Assert.Contains("0 more since the last", lines[0], StringComparison.Ordinal);
        Assert.Contains("2 more since the last", lines[1], StringComparison.Ordinal);
    }

    // MQTT 5 lets the server say why it closes: DISCONNECT with reason code 0x81 (malformed packet) and the reason
    // string, before the close.
    [Fact]
    public async Task Packet_MalformedOverMqtt5_IsAnsweredWithDisconnectMalformedPacketBeforeTheClose()
    {
        using (var socket = await RawConnectAsync())
        {
            await socket.SendAsync(Connect5("dev-1", "dev-1", TestGateway.Secret));
            var header = new byte[2];
            await ReceiveExactlyAsync(socket, header);
            Assert.Equal(0x20, header[0]);
            var connack = new byte[header[1]];
            await ReceiveExactlyAsync(socket, connack);
            Assert.Equal(0, connack[1]); // success
            await socket.SendAsync(new byte[] { 0x60, 0x02, 0x00, 0x01 });

            byte[] disconnect = await ReadUntilClosedAsync(socket);

            Assert.True(disconnect.Length >= 3, "no DISCONNECT");
            int reasonCode = 1;
            while ((disconnect[reasonCode++] & 0x80) != 0)
            {
            }

            Assert.Equal((0xE0, 0x81), (disconnect[0], disconnect[reasonCode]));
            Assert.Contains("PUBREL", Encoding.UTF8.GetString(disconnect), StringComparison.Ordinal); // the reason string
        }

        await AfterwardsAsync();
    }
}
