using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.Versioning;
using System.Text;
using EdgeMail.Testing;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Gateway.Tests.Deployment;

/// <summary>
/// <c>Type=notify</c> for real: the built gateway (<c>dotnet EdgeMail.Gateway.dll</c>) on the appliance's template
/// configuration, started the way systemd starts a service: <c>NOTIFY_SOCKET</c> names a unix datagram socket (here the
/// test's) and <c>SYSTEMD_EXEC_PID</c> holds the service's own pid. Microsoft.Extensions.Hosting.Systemd 11.0
/// (SystemdHelpers) takes the process for a systemd service when <c>SYSTEMD_EXEC_PID</c> equals its pid, when it is
/// PID 1 with <c>NOTIFY_SOCKET</c> or <c>LISTEN_PID</c> set, or when its parent's <c>/proc/PPID/comm</c> is
/// <c>systemd</c>; it then logs in journald's format. It sends READY=1 and STOPPING=1 whenever <c>NOTIFY_SOCKET</c>
/// is set, and does nothing at all without either.
/// </summary>
[SupportedOSPlatform("linux")]
public sealed class SystemdNotifyTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Appliance.NewTempDirectory();

    public void Dispose() => Appliance.DeleteQuietly(_dir);

    [Fact]
    public async Task Gateway_StartedAsBySystemd_SendsReadyOnlyOnceListeningAndStoppingOnSigterm()
    {
        int port = Loopback.FreePort();
        using var notify = Bind(Path.Combine(_dir, "notify.sock"));

        using var gateway = StartGateway(port, notify.LocalEndPoint!.ToString()!);
        string ready = await Await.Within(ReceiveAsync(notify), "READY=1 from the gateway", TimeSpan.FromSeconds(60));
        // Checked on arrival of READY=1: the broker must already accept connections.
        bool listening = await IsListeningAsync(port);
        Assert.Equal("READY=1", ready);
        Assert.True(listening, $"READY=1 came before the broker listened on {port}");

        await SigtermAsync(gateway.Pid);
        string stopping = await Await.Within(ReceiveAsync(notify), "STOPPING=1 after SIGTERM");
        Assert.Equal("STOPPING=1", stopping);

        int exitCode = await Await.Within(gateway.ExitAsync(), "the gateway to exit after SIGTERM", TimeSpan.FromSeconds(45));
        output.WriteLine(gateway.Output);
        Assert.True(exitCode == 0, $"the gateway exited {exitCode} after SIGTERM; output:\n{gateway.Output}");
        Assert.False(await IsListeningAsync(port), "the broker still listens after the gateway exited");
        Assert.Equal(0, notify.Available);
        // Recognised as a systemd service, not only as a notify client: journald's <priority> prefixes.
        Assert.Contains("<6>", gateway.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Gateway_NotUnderSystemd_RunsAsBeforeAndStopsCleanlyOnSigterm()
    {
        int port = Loopback.FreePort();
        using var gateway = StartGateway(port, notifySocket: null);
        await Await.Within(gateway.Listening.Task, "the gateway to listen", TimeSpan.FromSeconds(60));
        Assert.True(await IsListeningAsync(port));

        await SigtermAsync(gateway.Pid);
        int exitCode = await Await.Within(gateway.ExitAsync(), "the gateway to exit after SIGTERM", TimeSpan.FromSeconds(45));
        Assert.True(exitCode == 0, $"the gateway exited {exitCode} after SIGTERM; output:\n{gateway.Output}");
        Assert.DoesNotContain("<6>", gateway.Output, StringComparison.Ordinal);
        Assert.False(await IsListeningAsync(port), "the broker still listens after the gateway exited");
    }

    [Fact]
    public async Task Gateway_UnderWatchdogSec_PingsWhileThePipelineTurns_StopsWhileTheSpoolCannotCommit_AndResumes()
    {
        int port = Loopback.FreePort();
        using var notify = Bind(Path.Combine(_dir, "notify.sock"));

        // WatchdogSec=2s as systemd passes it: the gateway proves its pipeline every second and pings after each proof.
        using var gateway = StartGateway(port, notify.LocalEndPoint!.ToString()!, ("WATCHDOG_USEC", "2000000"));
        var received = new List<string>();
        while (!received.Contains("READY=1"))
        {
            received.Add(await Await.Within(ReceiveAsync(notify), "READY=1 from the gateway", TimeSpan.FromSeconds(60)));
        }

        Assert.All(received, m => Assert.True(m is "READY=1" or "WATCHDOG=1", $"unexpected notification '{m}'"));
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal("WATCHDOG=1", await Await.Within(ReceiveAsync(notify), $"WATCHDOG=1 number {i + 1} after READY=1", TimeSpan.FromSeconds(10)));
        }

        // Another process holds the spool's write lock: the writer waits on it, nothing can be committed, and the probe's
        // round trip through the writer does not come back, so nothing may vouch for the gateway. A ping already on its
        // way when the lock is taken may still arrive; after it, none for far longer than WatchdogSec (systemd would have
        // restarted the service). A ping from a timer of its own, blind to the pipeline, fails here.
        string spool = Path.Combine(_dir, "data", "spool.db");
        var blocker = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={spool};Pooling=False");
        await blocker.OpenAsync();
        using (var begin = blocker.CreateCommand())
        {
            begin.CommandText = "BEGIN EXCLUSIVE";
            await begin.ExecuteNonQueryAsync();
        }

        // Counted over a window four times WatchdogSec: at most the one ping of a round that proved just before the lock.
        var quiet = TimeSpan.FromSeconds(8);
        var window = Stopwatch.StartNew();
        var late = new List<string>();
        Task<string> next = ReceiveAsync(notify);
        while (quiet - window.Elapsed is var left && left > TimeSpan.Zero)
        {
            try
            {
                late.Add(await next.WaitAsync(left));
                next = ReceiveAsync(notify);
            }
            catch (TimeoutException)
            {
                break;
            }
        }

        Assert.True(late.Count <= 1, $"{late.Count} × WATCHDOG=1 in {quiet.TotalSeconds} s while the spool could not commit; output:\n{gateway.Output}");

        // The lock released, the pipeline turns again and the pings come back.
        await blocker.DisposeAsync();
        Assert.Equal("WATCHDOG=1", await Await.Within(next, "WATCHDOG=1 once the spool commits again", TimeSpan.FromSeconds(30)));

        await SigtermAsync(gateway.Pid);
        Assert.Equal(0, await Await.Within(gateway.ExitAsync(), "the gateway to exit after SIGTERM", TimeSpan.FromSeconds(45)));
    }

    private static async Task SigtermAsync(int pid)
    {
        var (code, _, stderr) = await Appliance.RunAsync("kill", "-TERM", pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.True(code == 0, "kill -TERM failed: " + stderr);
    }

    private static Socket Bind(string path)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        socket.Bind(new UnixDomainSocketEndPoint(path));
        return socket;
    }

    private static async Task<string> ReceiveAsync(Socket socket)
    {
        byte[] buffer = new byte[4096];
        int n = await socket.ReceiveAsync(buffer, SocketFlags.None);
        return Encoding.UTF8.GetString(buffer, 0, n);
    }

    private static async Task<bool> IsListeningAsync(int port)
    {
        using var probe = new TcpClient();
        try
        {
            await probe.ConnectAsync(IPAddress.Loopback, port);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private GatewayUnderTest StartGateway(int port, string? notifySocket, params (string Name, string Value)[] environment)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "EdgeMail.Gateway.dll");
        // As systemd does: SYSTEMD_EXEC_PID is the pid of the process it executes (sh execs dotnet, keeping its pid).
        var psi = new ProcessStartInfo("/bin/sh")
        {
            ArgumentList =
            {
                "-c", notifySocket is null ? "exec \"$@\"" : "export SYSTEMD_EXEC_PID=$$; exec \"$@\"", "sh",
                "dotnet", dll, "--config", Appliance.Template, "--DataDirectory=" + Path.Combine(_dir, "data"), $"--Mqtt:TlsPort={port}",
                "--Logging:LogLevel:EdgeMail.Gateway.Ingest.EmbeddedBroker=Information",
                "--Console:Port=0", // not the template's 8088, which another gateway on the machine may hold
            },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string name in new[] { "NOTIFY_SOCKET", "SYSTEMD_EXEC_PID", "LISTEN_PID", "LISTEN_FDS", "WATCHDOG_USEC", "WATCHDOG_PID" })
        {
            psi.Environment.Remove(name);
        }

        if (notifySocket is not null)
        {
            psi.Environment["NOTIFY_SOCKET"] = notifySocket;
        }

        foreach (var (name, value) in environment)
        {
            psi.Environment[name] = value;
        }

        return new GatewayUnderTest(Process.Start(psi) ?? throw new InvalidOperationException("could not start the gateway"));
    }

    private sealed class GatewayUnderTest : IDisposable
    {
        private readonly Process _wrapper;
        private readonly StringBuilder _output = new();

        public GatewayUnderTest(Process wrapper)
        {
            _wrapper = wrapper;
            _wrapper.OutputDataReceived += (_, e) => OnLine(e.Data);
            _wrapper.ErrorDataReceived += (_, e) => OnLine(e.Data);
            _wrapper.BeginOutputReadLine();
            _wrapper.BeginErrorReadLine();
        }

        public int Pid => _wrapper.Id;

        public TaskCompletionSource<bool> Listening { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

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

        public async Task<int> ExitAsync()
        {
            await _wrapper.WaitForExitAsync();
            return _wrapper.ExitCode;
        }

        public void Dispose()
        {
            if (!_wrapper.HasExited)
            {
                _wrapper.Kill();
                _wrapper.WaitForExit();
            }

            _wrapper.Dispose();
        }

        private void OnLine(string? line)
        {
            if (line is null)
            {
                return;
            }

            lock (_output)
            {
                _output.AppendLine(line);
            }

            if (line.Contains("MQTT broker listening", StringComparison.Ordinal))
            {
                Listening.TrySetResult(true);
            }
        }
    }
}
