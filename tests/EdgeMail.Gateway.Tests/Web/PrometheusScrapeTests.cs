using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using EdgeMail.Gateway.Tests.Operations;
using EdgeMail.Gateway.Web;
using EdgeMail.Testing;
using Microsoft.Extensions.DependencyInjection;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Gateway.Tests.Web;

/// <summary>
/// <c>/metrics</c> as an operator's monitoring sees it: a real Prometheus server (Debian's <c>prometheus</c>) scraping a
/// running gateway's console every second with an API key, its data in a temp directory, asked through its HTTP API.
/// </summary>
/// <summary>
/// A real Prometheus scraping the gateway. Alone in its collection: OpenTelemetry's meter listener takes every meter
/// of the gateway's name in the process, so other tests' gateways running beside it would add to the counted values.
/// </summary>
[Collection(nameof(MetricsCollection))]
public sealed class PrometheusScrapeTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "edgemail-prometheus-tests", Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    [PeerFact("prometheus:prometheus", "promtool:prometheus")]
    public async Task RealPrometheus_ScrapesWithAnApiKey_AndSeesAlertsAndDeliveriesMove()
    {
        await using var gw = await TestGateway.StartAsync();
        var (_, key) = await gw.Host.Services.GetRequiredService<ConsoleAuth>().CreateApiKeyAsync("prometheus", EdgeMail.Gateway.Spool.ApiKeyScope.Read, default);
        Directory.CreateDirectory(_dir);
        string keyFile = Path.Combine(_dir, "edgemail.key");
        await File.WriteAllTextAsync(keyFile, key);
        string config = Path.Combine(_dir, "prometheus.yml");
        await File.WriteAllTextAsync(config, $"""
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
            scrape_configs:
              - job_name: edgemail
                authorization:
                  type: Bearer
                  credentials_file: {keyFile}
                static_configs:
                  - targets: ['{gw.ConsoleAddress.Authority}']
            """);
        var (checkCode, checkOutput) = await RunAsync(Peers.Require("promtool", "prometheus"), "check", "config", config);
        Assert.True(checkCode == 0, "promtool check config: " + checkOutput);

        int port = Loopback.FreePort();
        using var prometheus = StartPrometheus(config, port);
        using var query = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}") };
        try
        {
            await Await.Within(prometheus.Ready.Task, "Prometheus to start", TimeSpan.FromSeconds(60));

            // The target is up: Prometheus reached /metrics with the key, and the text parsed.
            await UntilAsync(query, "up{job=\"edgemail\"}", v => v == 1, "Prometheus to scrape the gateway (up == 1)");

            using var device = await gw.ConnectAsync("dev-1");
            await ContainmentTests.PublishAsync(device, "dev-1", Alerts.Json("prom-1"));
            await gw.MailAsync(1);
            await UntilAsync(query, "sum(max_over_time(edgemail_alerts_received_total{transport=\"mqtt\",result=\"stored\"}[1m]))", v => v == 1, "one stored alert in Prometheus");
            await UntilAsync(query, "sum(max_over_time(edgemail_mail_recipients_total{outcome=\"sent\"}[1m]))", v => v == 1, "one delivered recipient in Prometheus");

            // And they move with the next alerts, scrape after scrape. (Asked as the highest value of the last minute: a
            // scrape that times out on a busy machine marks the series stale, and an instant query then sees nothing.)
            await ContainmentTests.PublishAsync(device, "dev-1", Alerts.Json("prom-2"));
            await ContainmentTests.PublishAsync(device, "dev-1", Alerts.Json("prom-3", code: "DOOR_OPEN", sev: "warning"));
            await gw.MailAsync(3);
            await UntilAsync(query, "sum(max_over_time(edgemail_alerts_received_total{transport=\"mqtt\",result=\"stored\"}[1m]))", v => v == 3, "three stored alerts in Prometheus");
            await UntilAsync(query, "sum(max_over_time(edgemail_mail_recipients_total{outcome=\"sent\"}[1m]))", v => v == 3, "three delivered recipients in Prometheus");
            await UntilAsync(query, "max_over_time(edgemail_devices_connected[1m])", v => v == 1, "one connected device in Prometheus");
            await UntilAsync(query, "max_over_time(edgemail_relay_up[1m])", v => v == 1, "the relay up in Prometheus");
            await UntilAsync(query, "sum(max_over_time(edgemail_spool_commit_duration_seconds_count[1m]))", v => v > 0, "spool commits in the latency histogram");

            // The text it scraped, now with every series filled in, passes Prometheus's own linter.
            using var api = new HttpClient { BaseAddress = gw.ConsoleAddress };
            api.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", key);
            var (lintCode, lintOutput) = await ConsoleApiTests.PromtoolAsync(Peers.Require("promtool", "prometheus"), await api.GetStringAsync("/metrics"));
            Assert.True(lintCode == 0, "promtool check metrics: " + lintOutput);
        }
        catch
        {
            output.WriteLine(prometheus.Output);
            throw;
        }
    }

    private static async Task UntilAsync(HttpClient prometheus, string promQl, Func<double, bool> wanted, string what)
    {
        // Prometheus learns on its own scrape schedule, so its answer is polled (a few times a second) until it holds.
        var deadline = TimeProvider.System.GetUtcNow() + TimeSpan.FromSeconds(30);
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(250));
        string last = "no answer";
        do
        {
            var answer = await prometheus.GetFromJsonAsync<JsonElement>("/api/v1/query?query=" + Uri.EscapeDataString(promQl));
            var result = answer.GetProperty("data").GetProperty("result");
            last = result.ToString();
            if (result.GetArrayLength() == 1
                && double.Parse(result[0].GetProperty("value")[1].GetString()!, CultureInfo.InvariantCulture) is var value && wanted(value))
            {
                return;
            }
        }
        while (TimeProvider.System.GetUtcNow() < deadline && await tick.WaitForNextTickAsync());

        var targets = await prometheus.GetFromJsonAsync<JsonElement>("/api/v1/targets");
        throw new TimeoutException($"Timed out waiting for {what}: {promQl} gave {last}; targets: {targets.GetProperty("data").GetProperty("activeTargets")}");
    }

    private PrometheusProcess StartPrometheus(string config, int port)
    {
        var psi = new ProcessStartInfo(Peers.Require("prometheus", "prometheus"))
        {
            ArgumentList =
            {
                "--config.file=" + config, "--storage.tsdb.path=" + Path.Combine(_dir, "data"), $"--web.listen-address=127.0.0.1:{port}",
                "--log.level=info",
            },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        return new PrometheusProcess(Process.Start(psi) ?? throw new InvalidOperationException("could not start prometheus"));
    }

    private static async Task<(int Code, string Output)> RunAsync(string program, params string[] args)
    {
        var psi = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in args)
        {
            psi.ArgumentList.Add(arg);
        }

        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        return (p.ExitCode, await stdout + await stderr);
    }

    private sealed class PrometheusProcess : IDisposable
    {
        private readonly Process _process;
        private readonly StringBuilder _output = new();

        public PrometheusProcess(Process process)
        {
            _process = process;
            _process.OutputDataReceived += (_, e) => Append(e.Data);
            _process.ErrorDataReceived += (_, e) => Append(e.Data);
            _process.BeginOutputReadLine();
            _process.BeginErrorReadLine();
        }

        /// <summary>Set when Prometheus logs that its web server takes requests.</summary>
        public TaskCompletionSource<bool> Ready { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public string Output
        {
            get
            {
                lock (_output)
                {
                    return _output.ToString();
                }
            }
        }

        public void Dispose()
        {
            if (!_process.HasExited)
            {
                _process.Kill();
                _process.WaitForExit();
            }

            _process.Dispose();
        }

        private void Append(string? line)
        {
            if (line is not null)
            {
                if (line.Contains("Server is ready to receive web requests", StringComparison.Ordinal))
                {
                    Ready.TrySetResult(true);
                }

                lock (_output)
                {
                    _output.AppendLine(line);
                }
            }
        }
    }
}

/// <summary>Tests that read the process's metric values run alone, after the parallel ones.</summary>
[CollectionDefinition(nameof(MetricsCollection), DisableParallelization = true)]
public sealed class MetricsCollection;
