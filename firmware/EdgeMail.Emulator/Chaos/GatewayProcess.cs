using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;

namespace EdgeMail.Emulator.Chaos;

/// <summary>
/// The gateway under test as a child process (<c>dotnet EdgeMail.Gateway.dll --config FILE</c>) on its own data
/// folder: listeners on ports the OS chooses (read back from its log), killed with SIGKILL or stopped with SIGTERM,
/// started again on the same spool. Its output goes to a log file beside the configuration.
/// </summary>
internal sealed partial class GatewayProcess : IDisposable
{
    private readonly string _dll;
    private readonly string _configPath;
    private readonly StreamWriter _log;
    private readonly Lock _lock = new();
    private Process? _process;
    private TaskCompletionSource<bool> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile int _mqttPort;
    private volatile int _smtpPort;
    private int _generation;
    private bool _consoleUp;

    public GatewayProcess(string dll, string configPath, string logPath)
    {
        _dll = dll;
        _configPath = configPath;
        _log = new StreamWriter(logPath, append: true) { AutoFlush = true };
    }

    /// <summary>The MQTT port of the running gateway; null while it is down or starting.</summary>
    public int? MqttPort => _mqttPort > 0 ? _mqttPort : null;

    public int? SmtpPort => _smtpPort > 0 ? _smtpPort : null;

    /// <summary>SHA-1 of the self-signed TLS certificate the gateway generated at its first start (for pinning).</summary>
    public string? CertificateSha1 { get; private set; }

    public int Starts { get; private set; }

    /// <summary>Lines the gateway logged at Error or above (fail: / crit:), for the report.</summary>
    public List<string> Errors { get; } = [];

    /// <summary>The emulator's own build configuration, so a test run uses the gateway built with it, not a stale other one.</summary>
    private static string Configuration =>
        AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Release{Path.DirectorySeparatorChar}", StringComparison.Ordinal) ? "Release" : "Debug";

    /// <summary>Finds the gateway's build output: the given path (a .dll or a folder), or the newest build under gateway/.</summary>
    public static string Locate(string? given)
    {
        if (given is not null)
        {
            string candidate = Directory.Exists(given) ? Path.Combine(given, "EdgeMail.Gateway.dll") : given;
            return File.Exists(candidate) ? Path.GetFullPath(candidate)
                : throw new FileNotFoundException($"--gateway {given}: no EdgeMail.Gateway.dll there; build it with 'dotnet build -c Release gateway/EdgeMail.Gateway'.");
        }

        // Beside the emulator (a project that references the gateway copies it), then the repository's own builds.
        string beside = Path.Combine(AppContext.BaseDirectory, "EdgeMail.Gateway.dll");
        if (File.Exists(beside) && File.Exists(Path.Combine(AppContext.BaseDirectory, "EdgeMail.Gateway.runtimeconfig.json")))
        {
            return beside;
        }

        for (string? dir = AppContext.BaseDirectory; dir is not null; dir = Path.GetDirectoryName(dir))
        {
            string bin = Path.Combine(dir, "gateway", "EdgeMail.Gateway", "bin");
            if (Directory.Exists(bin))
            {
                string? newest = Directory.EnumerateFiles(bin, "EdgeMail.Gateway.dll", SearchOption.AllDirectories)
                    .Where(f => File.Exists(Path.ChangeExtension(f, ".runtimeconfig.json")))
                    .OrderByDescending(f => f.Contains(Configuration, StringComparison.Ordinal))
                    .ThenByDescending(File.GetLastWriteTimeUtc)
                    .FirstOrDefault();
                if (newest is not null)
                {
                    return newest;
                }
            }
        }

        throw new FileNotFoundException("No gateway build found: run 'dotnet build -c Release gateway/EdgeMail.Gateway' or pass --gateway PATH.");
    }

    /// <summary>Starts the gateway and waits until its listeners are up.</summary>
    public async Task StartAsync(TimeSpan timeout, CancellationToken cancel)
    {
        var info = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = Path.GetDirectoryName(_configPath)!,
        };
        info.ArgumentList.Add(_dll);
        info.ArgumentList.Add("--config");
        info.ArgumentList.Add(_configPath);
        info.Environment.Remove("NOTIFY_SOCKET"); // never talk to a systemd that started us
        info.Environment["DOTNET_gcServer"] = "0";
        info.Environment["Logging__Console__FormatterName"] = "simple";
        info.Environment["Logging__Console__FormatterOptions__SingleLine"] = "true";
        TaskCompletionSource<bool> ready;
        int generation;
        lock (_lock)
        {
            _mqttPort = 0;
            _smtpPort = 0;
            _consoleUp = false;
            ready = _ready = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            generation = ++_generation;
            _process = Process.Start(info) ?? throw new InvalidOperationException("dotnet did not start the gateway.");
            Starts++;
        }

        Process p = _process;
        p.OutputDataReceived += (_, e) => OnLine(e.Data, generation);
        p.ErrorDataReceived += (_, e) => OnLine(e.Data, generation);
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        p.EnableRaisingEvents = true;
        p.Exited += (_, _) => ready.TrySetException(new InvalidOperationException(
            string.Create(CultureInfo.InvariantCulture, $"The gateway exited with code {p.ExitCode} while starting; see its log.")));
        if (p.HasExited)
        {
            // Exited before the handler was attached: no Exited event comes.
            ready.TrySetException(new InvalidOperationException(string.Create(CultureInfo.InvariantCulture, $"The gateway exited with code {p.ExitCode} while starting; see its log.")));
        }

        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        limit.CancelAfter(timeout);
        await ready.Task.WaitAsync(limit.Token).ConfigureAwait(false);
    }

    /// <summary>SIGKILL: no shutdown code runs.</summary>
    public void Kill()
    {
        Process? p;
        lock (_lock)
        {
            _mqttPort = 0;
            _smtpPort = 0;
            _generation++; // its last lines no longer count as this gateway's
            p = _process;
        }

        // Not under the lock: WaitForExit also waits for the output readers, whose callbacks take it (a deadlock seen in CI).
        if (p is { HasExited: false })
        {
            p.Kill(entireProcessTree: false);
            p.WaitForExit();
        }
    }

    /// <summary>SIGTERM, then waits for the gateway to stop by itself; returns its exit code.</summary>
    public async Task<int> StopAsync(TimeSpan timeout)
    {
        Process? p;
        lock (_lock)
        {
            p = _process;
            _mqttPort = 0;
            _smtpPort = 0;
            _generation++;
        }

        if (p is null || p.HasExited)
        {
            return p?.ExitCode ?? 0;
        }

        // SIGTERM, as systemd stops it; .NET's Process only sends SIGKILL.
        using (Process? term = Process.Start(new ProcessStartInfo("kill") { ArgumentList = { "-TERM", p.Id.ToString(CultureInfo.InvariantCulture) }, UseShellExecute = false }))
        {
            if (term is null)
            {
                p.Kill();
            }
            else
            {
                await term.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
            }
        }

        using var limit = new CancellationTokenSource(timeout);
        try
        {
            await p.WaitForExitAsync(limit.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            p.Kill();
            await p.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
        }

        return p.ExitCode;
    }

    public void Dispose()
    {
        Kill();
        _process?.Dispose();
        _log.Dispose();
    }

    private void OnLine(string? line, int generation)
    {
        if (line is null)
        {
            return;
        }

        lock (_lock)
        {
            _log.WriteLine(line);
            if (generation != _generation)
            {
                return;
            }

            if (line.StartsWith("fail:", StringComparison.Ordinal) || line.StartsWith("crit:", StringComparison.Ordinal))
            {
                Errors.Add(line);
            }

            if (MqttListening().Match(line) is { Success: true } m)
            {
                _mqttPort = int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
            }
            else if (SmtpListening().Match(line) is { Success: true } s)
            {
                _smtpPort = int.Parse(s.Groups[1].Value, CultureInfo.InvariantCulture);
            }
            else if (Certificate().Match(line) is { Success: true } c)
            {
                CertificateSha1 = c.Groups[1].Value;
            }
            else if (line.Contains("Console listening on", StringComparison.Ordinal))
            {
                _consoleUp = true;
            }

            // Ready when every listener is up (a SIGTERM before the console bound would be a failed start, not a stop).
            if (_mqttPort > 0 && _smtpPort > 0 && _consoleUp)
            {
                _ready.TrySetResult(true);
            }
        }
    }

    [GeneratedRegex(@"MQTT broker listening on 127\.0\.0\.1:(\d+)")]
    private static partial Regex MqttListening();

    [GeneratedRegex(@"SMTP submission listening on 127\.0\.0\.1:(\d+)")]
    private static partial Regex SmtpListening();

    [GeneratedRegex(@"self-signed TLS certificate .* \(SHA-1 ([0-9A-Fa-f]{40})\)")]
    private static partial Regex Certificate();
}
