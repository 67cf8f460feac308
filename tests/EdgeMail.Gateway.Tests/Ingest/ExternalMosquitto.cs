using System.Diagnostics;
using System.Globalization;
using System.Text;
using EdgeMail.Gateway.Tests.Smtp;
using EdgeMail.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Ingest;

/// <summary>
/// Debian's mosquitto as the site's broker: started by the test on an OS-chosen loopback port with a generated
/// configuration — persistence on, a password file, and the ACL that docs/gateway.md recommends — and stopped by
/// its process id.
/// </summary>
public sealed class ExternalMosquitto : IAsyncDisposable
{
    public const string GatewayUser = "edgemail-gateway";
    public const string GatewayPassword = "gw-pass-for-tests";
    public const string DevicePassword = "device-pass-for-tests";

    /// <summary>The ACL of docs/gateway.md: the gateway reads alerts and status and writes receipts; each device only its own topics.</summary>
    public const string Acl = """
        user edgemail-gateway
        topic read edgemail/v1/+/alert
        topic read edgemail/v1/+/status
        topic write edgemail/v1/+/receipt

        pattern write edgemail/v1/%u/alert
        pattern write edgemail/v1/%u/status
        pattern read edgemail/v1/%u/receipt
        """;

    private readonly StringBuilder _log = new();
    private readonly string _confFile;
    private Process? _process;

    private ExternalMosquitto(string confFile, string directory, int port)
    {
        _confFile = confFile;
        Directory = directory;
        Port = port;
    }

    public string Directory { get; }

    public int Port { get; }

    public string Log
    {
        get
        {
            lock (_log)
            {
                return _log.ToString();
            }
        }
    }

    /// <summary>The user (and client id) of gateway instance <paramref name="instance"/> (from 1).</summary>
    public static string GatewayUserOf(int instance) => instance == 1 ? GatewayUser : $"{GatewayUser}-{instance}";

    /// <summary>Starts mosquitto with users for the gateway and the given devices (all with <see cref="DevicePassword"/>).</summary>
    /// <param name="devices">Device ids (user name = client id = device id).</param>
    /// <param name="tls">A PEM certificate and key: the listener speaks TLS only.</param>
    /// <param name="gateways">Gateway instances, each with its own user (<see cref="GatewayUserOf"/>) and the gateway's ACL.</param>
    public static async Task<ExternalMosquitto> StartAsync(IEnumerable<string> devices, (string CertFile, string KeyFile)? tls = null, int gateways = 1)
    {
        string dir = Path.Combine(Path.GetTempPath(), "edgemail-mosquitto-tests", Guid.NewGuid().ToString("N"));
        System.IO.Directory.CreateDirectory(dir);
        string passwd = Path.Combine(dir, "passwd");
        await PasswdAsync(passwd, GatewayUser, GatewayPassword, create: true);
        for (int g = 2; g <= gateways; g++)
        {
            await PasswdAsync(passwd, GatewayUserOf(g), GatewayPassword, create: false);
        }
        foreach (string device in devices)
        {
            await PasswdAsync(passwd, device, DevicePassword, create: false);
        }

        string acl = Acl + "\n";
        for (int g = 2; g <= gateways; g++)
        {
            acl += "\n" + Acl[..Acl.IndexOf("\n\n", StringComparison.Ordinal)].Replace($"user {GatewayUser}", $"user {GatewayUserOf(g)}", StringComparison.Ordinal) + "\n";
        }

        File.WriteAllText(Path.Combine(dir, "acl"), acl);
        int port = Loopback.FreePort();
        var conf = new StringBuilder();
        conf.AppendLine("user root"); // the tests run as root in CI; mosquitto would otherwise switch to its own user
        conf.AppendLine("per_listener_settings false");
        conf.AppendLine(CultureInfo.InvariantCulture, $"listener {port} 127.0.0.1");
        if (tls is { } t)
        {
            conf.AppendLine(CultureInfo.InvariantCulture, $"certfile {t.CertFile}");
            conf.AppendLine(CultureInfo.InvariantCulture, $"keyfile {t.KeyFile}");
        }

        conf.AppendLine("allow_anonymous false");
        conf.AppendLine(CultureInfo.InvariantCulture, $"password_file {passwd}");
        conf.AppendLine(CultureInfo.InvariantCulture, $"acl_file {Path.Combine(dir, "acl")}");
        conf.AppendLine("use_username_as_clientid true");
        conf.AppendLine("persistence true");
        conf.AppendLine(CultureInfo.InvariantCulture, $"persistence_location {dir}/");
        conf.AppendLine("max_queued_messages 0");
        conf.AppendLine("log_dest stderr");
        conf.AppendLine("log_type error");
        conf.AppendLine("log_type warning");
        conf.AppendLine("log_type notice");
        conf.AppendLine("log_type information");
        string confFile = Path.Combine(dir, "mosquitto.conf");
        File.WriteAllText(confFile, conf.ToString());

        var broker = new ExternalMosquitto(confFile, dir, port);
        await broker.RunAsync();
        return broker;
    }

    /// <summary>Stops mosquitto (SIGTERM: it saves its persistence file) and starts it again on the same port and state.</summary>
    public async Task RestartAsync()
    {
        await StopAsync(graceful: true);
        await RunAsync();
    }

    /// <summary>Stops mosquitto (SIGTERM: it saves its persistence file); <see cref="StartAgainAsync"/> brings it back.</summary>
    public Task StopAsync() => StopAsync(graceful: true);

    /// <summary>Starts mosquitto again after <see cref="StopAsync()"/>, on the same port and state.</summary>
    public Task StartAgainAsync() => RunAsync();

    private async Task StopAsync(bool graceful)
    {
        if (_process is { HasExited: false } p)
        {
            if (graceful)
            {
                // SIGTERM to its own process id: mosquitto saves its database (sessions, queued messages) and exits.
                var (code, output) = await PeerProcess.RunAsync("kill", "procps", ["-TERM", p.Id.ToString(CultureInfo.InvariantCulture)]);
                Assert.True(code == 0, output);
            }
            else
            {
                p.Kill();
            }

            await p.WaitForExitAsync();
        }

        _process?.Dispose();
        _process = null;
    }

    private async Task RunAsync()
    {
        string confFile = _confFile;
        var log = _log;
        var psi = new ProcessStartInfo(Peers.Require("mosquitto", "mosquitto"))
        {
            ArgumentList = { "-c", confFile },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        var process = Process.Start(psi)!;
        _process = process;
        var running = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnLine(object? sender, DataReceivedEventArgs e)
        {
            if (e.Data is null)
            {
                running.TrySetException(new InvalidOperationException("mosquitto exited: " + log));
                return;
            }

            lock (log)
            {
                log.AppendLine(e.Data);
            }

            if (e.Data.Contains(" running", StringComparison.Ordinal))
            {
                running.TrySetResult(true);
            }
        }

        process.ErrorDataReceived += OnLine;
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (log)
                {
                    log.AppendLine(e.Data);
                }
            }
        };
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        await Await.Within(running.Task, "mosquitto to run");
    }

    private static async Task PasswdAsync(string file, string user, string password, bool create)
    {
        string[] args = create ? ["-b", "-c", file, user, password] : ["-b", file, user, password];
        var (code, output) = await PeerProcess.RunAsync("mosquitto_passwd", "mosquitto", args);
        if (code != 0)
        {
            throw new InvalidOperationException("mosquitto_passwd failed: " + output);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(graceful: false);
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
