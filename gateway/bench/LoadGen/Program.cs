using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;
using SmtpServer;
using SmtpServer.Protocol;
using SmtpServer.Storage;

// Load generator for the gateway benchmarks (gateway/bench/gateway-bench.sh). Runs in its own process.
//   publish: DEVICES MQTT 3.1.1 clients, each with INFLIGHT concurrent QoS 1 publishes, MSGS alerts per device;
//            optional --rate (alerts/s over all devices, open loop) and --sink-port (an SMTP sink in this process that
//            times every mail from its PUBLISH to the sink's 250 by the X-EdgeMail-Alert header).
//   idle:    DEVICES connected clients that publish nothing; prints "connected" and waits for stdin to close.
//            --receipts 1: each as the firmware connects (persistent session, subscribed to its receipts).
// Prints one line of key=value results.
var opts = Options.Parse(args);
return opts.Command switch
{
    "publish" => await Publish.RunAsync(opts),
    "idle" => await Idle.RunAsync(opts),
    _ => Usage(),
};

static int Usage()
{
    Console.Error.WriteLine("usage: loadgen publish|idle --port P --devices N [--msgs M --inflight W --rate R --sink-port S] --secret S [--prefix bench-] [--first 1] [--tag run1] [--receipts 1]");
    return 2;
}

internal sealed class Options
{
    public string Command { get; private set; } = string.Empty;

    public string Host { get; private set; } = "127.0.0.1";

    public int Port { get; private set; } = 1883;

    public int Devices { get; private set; } = 20;

    public int First { get; private set; } = 1;

    public int Msgs { get; private set; } = 1000;

    public int InFlight { get; private set; } = 20;

    public double Rate { get; private set; }

    public int SinkPort { get; private set; }

    public string Secret { get; private set; } = "bench-secret";

    public string Prefix { get; private set; } = "bench-";

    public string Tag { get; private set; } = "r";

    public int ConnectParallel { get; private set; } = 32;

    // As the firmware connects: a persistent session, subscribed to the device's own receipts (QoS 1).
    public bool Receipts { get; private set; }

    public static Options Parse(string[] args)
    {
        var o = new Options { Command = args.Length > 0 ? args[0] : string.Empty };
        for (int i = 1; i + 1 < args.Length; i += 2)
        {
            string v = args[i + 1];
            switch (args[i])
            {
                case "--host": o.Host = v; break;
                case "--port": o.Port = Int(v); break;
                case "--devices": o.Devices = Int(v); break;
                case "--first": o.First = Int(v); break;
                case "--msgs": o.Msgs = Int(v); break;
                case "--inflight": o.InFlight = Int(v); break;
                case "--rate": o.Rate = double.Parse(v, CultureInfo.InvariantCulture); break;
                case "--sink-port": o.SinkPort = Int(v); break;
                case "--secret": o.Secret = v; break;
                case "--prefix": o.Prefix = v; break;
                case "--tag": o.Tag = v; break;
                case "--connect-parallel": o.ConnectParallel = Int(v); break;
                case "--receipts": o.Receipts = v == "1"; break;
                default: throw new ArgumentException("unknown option " + args[i]);
            }
        }

        return o;
    }

    private static int Int(string v) => int.Parse(v, CultureInfo.InvariantCulture);
}

internal static class Devices
{
    public static async Task<IMqttClient[]> ConnectAsync(Options o)
    {
        var factory = new MqttClientFactory();
        var clients = new IMqttClient[o.Devices];
        using var gate = new SemaphoreSlim(o.ConnectParallel);
        var tasks = new List<Task>();
        for (int d = 0; d < o.Devices; d++)
        {
            int index = d;
            await gate.WaitAsync();
            tasks.Add(Task.Run(async () =>
            {
                try
                {
                    string id = o.Prefix + (o.First + index).ToString(CultureInfo.InvariantCulture);
                    var client = factory.CreateMqttClient();
                    var options = factory.CreateClientOptionsBuilder()
                        .WithTcpServer(o.Host, o.Port)
                        .WithClientId(id)
                        .WithCredentials(id, o.Secret)
                        .WithProtocolVersion(MqttProtocolVersion.V311)
                        .WithCleanSession(!o.Receipts)
                        .WithKeepAlivePeriod(TimeSpan.FromMinutes(5))
                        .WithTimeout(TimeSpan.FromSeconds(60))
                        .Build();
                    for (int attempt = 1; ; attempt++)
                    {
                        try
                        {
                            var result = await client.ConnectAsync(options);
                            if (result.ResultCode != MqttClientConnectResultCode.Success)
                            {
                                throw new InvalidOperationException($"{id}: CONNACK {result.ResultCode}");
                            }

                            if (o.Receipts)
                            {
                                await client.SubscribeAsync("edgemail/v1/" + id + "/receipt", MqttQualityOfServiceLevel.AtLeastOnce);
                            }

                            break;
                        }
                        catch (Exception ex) when (attempt < 5 && ex is not InvalidOperationException)
                        {
                            await Task.Delay(200 * attempt);
                        }
                    }

                    clients[index] = client;
                }
                finally
                {
                    gate.Release();
                }
            }));
        }

        await Task.WhenAll(tasks);
        return clients;
    }
}

internal static class Idle
{
    public static async Task<int> RunAsync(Options o)
    {
        var sw = Stopwatch.StartNew();
        var clients = await Devices.ConnectAsync(o);
        Console.WriteLine($"connected devices={clients.Length} connect_s={sw.Elapsed.TotalSeconds:0.0}");
        await Console.In.ReadToEndAsync();
        foreach (var c in clients)
        {
            c.Dispose();
        }

        return 0;
    }
}

internal static class Publish
{
    public static async Task<int> RunAsync(Options o)
    {
        var sentAt = new ConcurrentDictionary<string, long>(StringComparer.Ordinal);
        long total = (long)o.Devices * o.Msgs;
        using var sink = o.SinkPort > 0 ? new LatencySink(o.SinkPort, sentAt, total) : null;
        var clients = await Devices.ConnectAsync(o);
        var ackLatencies = new long[total];
        long ackCount = 0;
        long scheduled = -1;
        long start = Stopwatch.GetTimestamp();
        var workers = new List<Task>();
        for (int d = 0; d < clients.Length; d++)
        {
            var client = clients[d];
            string device = o.Prefix + (o.First + d).ToString(CultureInfo.InvariantCulture);
            string topic = "edgemail/v1/" + device + "/alert";
            int next = 0;
            for (int w = 0; w < o.InFlight; w++)
            {
                workers.Add(Task.Run(async () =>
                {
                    while (true)
                    {
                        int seq = Interlocked.Increment(ref next);
                        if (seq > o.Msgs)
                        {
                            return;
                        }

                        if (o.Rate > 0)
                        {
                            long slot = Interlocked.Increment(ref scheduled);
                            var due = TimeSpan.FromSeconds(slot / o.Rate) - Stopwatch.GetElapsedTime(start);
                            if (due > TimeSpan.FromMilliseconds(1))
                            {
                                await Task.Delay(due);
                            }
                        }

                        string id = o.Tag + "-" + seq.ToString(CultureInfo.InvariantCulture);
                        byte[] payload = Encoding.UTF8.GetBytes(
                            $"{{\"v\":1,\"id\":\"{id}\",\"seq\":{seq},\"state\":\"raised\",\"sev\":\"warning\",\"code\":\"BENCH_LOAD\",\"text\":\"Benchmark alert number {seq} from device {device}\",\"values\":{{\"n\":{seq}}},\"boot\":1,\"count\":1}}");
                        var message = new MqttApplicationMessageBuilder().WithTopic(topic).WithPayload(payload)
                            .WithQualityOfServiceLevel(MqttQualityOfServiceLevel.AtLeastOnce).Build();
                        long t0 = Stopwatch.GetTimestamp();
                        if (sink is not null)
                        {
                            sentAt[device + "/" + id] = t0;
                        }

                        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(120));
                        var result = await client.PublishAsync(message, cts.Token);
                        if (!result.IsSuccess)
                        {
                            throw new InvalidOperationException($"{device} {id}: {result.ReasonCode}");
                        }

                        long i = Interlocked.Increment(ref ackCount) - 1;
                        ackLatencies[i] = Stopwatch.GetTimestamp() - t0;
                    }
                }));
            }
        }

        await Task.WhenAll(workers);
        double ingest = Stopwatch.GetElapsedTime(start).TotalSeconds;
        var line = new StringBuilder();
        line.Append(CultureInfo.InvariantCulture, $"devices={o.Devices} inflight={o.InFlight} alerts={total} ingest_s={ingest:0.000} ingest_rate={total / ingest:0}");
        line.Append(CultureInfo.InvariantCulture, $" puback_p50_ms={Ms(ackLatencies, 0.50):0.0} puback_p99_ms={Ms(ackLatencies, 0.99):0.0}");
        if (sink is not null)
        {
            await sink.AllReceived.Task.WaitAsync(TimeSpan.FromMinutes(10));
            double e2e = Stopwatch.GetElapsedTime(start).TotalSeconds;
            var lat = sink.Latencies.ToArray();
            line.Append(CultureInfo.InvariantCulture, $" e2e_s={e2e:0.000} e2e_rate={total / e2e:0} mail_p50_ms={Ms(lat, 0.50):0.0} mail_p99_ms={Ms(lat, 0.99):0.0} mail_max_ms={Ms(lat, 1.0):0.0} mails={lat.Length}");
        }

        Console.WriteLine(line.ToString());
        foreach (var c in clients)
        {
            await c.DisconnectAsync();
            c.Dispose();
        }

        return 0;
    }

    private static double Ms(long[] ticks, double q)
    {
        if (ticks.Length == 0)
        {
            return double.NaN;
        }

        Array.Sort(ticks);
        long t = ticks[Math.Min(ticks.Length - 1, (int)(q * ticks.Length))];
        return t * 1000.0 / Stopwatch.Frequency;
    }
}

/// <summary>An SMTP sink that answers 250 and times each mail from its PUBLISH (X-EdgeMail-Device/-Alert headers).</summary>
internal sealed class LatencySink : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentDictionary<string, long> _sentAt;
    private readonly long _expect;
    private long _received;

    public LatencySink(int port, ConcurrentDictionary<string, long> sentAt, long expect)
    {
        _sentAt = sentAt;
        _expect = expect;
        var options = new SmtpServerOptionsBuilder().ServerName("sink.bench")
            .Endpoint(b => b.Endpoint(new IPEndPoint(IPAddress.Loopback, port)))
            .Build();
        var services = new SmtpServer.ComponentModel.ServiceProvider();
        services.Add(new Store(this));
        services.Add(new EdgeMail.Gateway.Ingest.Smtp.NoDelayListenerFactory());
        _ = new SmtpServer.SmtpServer(options, services).StartAsync(_stop.Token);
    }

    public ConcurrentBag<long> Latencies { get; } = [];

    public TaskCompletionSource AllReceived { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Dispose()
    {
        _stop.Cancel();
        _stop.Dispose();
    }

    private void Received(ReadOnlySequence<byte> buffer)
    {
        long now = Stopwatch.GetTimestamp();
        string head = Encoding.ASCII.GetString(buffer.Length > 8192 ? buffer.Slice(0, 8192) : buffer);
        string? device = Header(head, "X-EdgeMail-Device: ");
        string? alert = Header(head, "X-EdgeMail-Alert: ");
        if (device is not null && alert is not null && _sentAt.TryRemove(device + "/" + alert, out long t0))
        {
            Latencies.Add(now - t0);
        }

        if (Interlocked.Increment(ref _received) >= _expect)
        {
            AllReceived.TrySetResult();
        }
    }

    private static string? Header(string head, string name)
    {
        int i = head.IndexOf("\r\n" + name, StringComparison.OrdinalIgnoreCase);
        if (i < 0)
        {
            return null;
        }

        i += 2 + name.Length;
        int end = head.IndexOf("\r\n", i, StringComparison.Ordinal);
        return end < 0 ? null : head[i..end].Trim();
    }

    private sealed class Store(LatencySink sink) : MessageStore
    {
        public override Task<SmtpResponse> SaveAsync(ISessionContext context, IMessageTransaction transaction, ReadOnlySequence<byte> buffer, CancellationToken cancellationToken)
        {
            sink.Received(buffer);
            return Task.FromResult(SmtpResponse.Ok);
        }
    }
}
