using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using EdgeMail.Testing;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>dnsmasq answering only from its command line: no upstream, no /etc/hosts, loopback only.</summary>
internal sealed class Dnsmasq : IDisposable
{
    private readonly Process _process;

    public Dnsmasq(params string[] records)
    {
        Port = FreeUdpPort();
        var start = new ProcessStartInfo(Peers.Require("dnsmasq", "dnsmasq-base"))
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        foreach (string arg in new[]
        {
            "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces",
            "--listen-address=127.0.0.1", "--port=" + Port.ToString(CultureInfo.InvariantCulture), "--pid-file=", "--log-facility=-",
            "--user=" + Environment.UserName, "--log-queries",
        })
        {
            start.ArgumentList.Add(arg);
        }

        foreach (string record in records)
        {
            start.ArgumentList.Add(record);
        }

        _process = Process.Start(start)!;
        Started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is { } line)
            {
                Log.Enqueue(line);
                if (line.Contains("started, version", StringComparison.Ordinal))
                {
                    Started.TrySetResult();
                }
            }
        };
        _process.Exited += (_, _) => Started.TrySetException(new InvalidOperationException("dnsmasq exited: " + string.Join(" | ", Log)));
        _process.EnableRaisingEvents = true;
        _process.BeginErrorReadLine();
        _process.BeginOutputReadLine();
    }

    public int Port { get; }

    public TaskCompletionSource Started { get; }

    public System.Collections.Concurrent.ConcurrentQueue<string> Log { get; } = new();

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.Kill();
            _process.WaitForExit();
        }

        _process.Dispose();
    }

    private static int FreeUdpPort()
    {
        using var udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        udp.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)udp.LocalEndPoint!).Port;
    }
}
