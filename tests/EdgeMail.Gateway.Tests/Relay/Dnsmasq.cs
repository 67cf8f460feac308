using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using EdgeMail.Testing;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>
/// dnsmasq answering only from its command line: no upstream, no /etc/hosts, loopback only, a name's addresses in the
/// order its records were given (not rotated from one answer to the next). It listens on one port for
/// UDP and TCP, so a port found free for one may be taken for the other by the time it binds: it then exits with
/// "Address already in use", and <see cref="StartAsync"/> starts it again on another port.
/// </summary>
internal sealed class Dnsmasq : IDisposable
{
    private readonly Process _process;
    private readonly TaskCompletionSource _started = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private Dnsmasq(int port, string[] records)
    {
        Port = port;
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
            "--no-round-robin", // a name's addresses always in the order given: a test knows which one comes first
        })
        {
            start.ArgumentList.Add(arg);
        }

        foreach (string record in records)
        {
            start.ArgumentList.Add(record);
        }

        _process = Process.Start(start)!;
        _process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is { } line)
            {
                Log.Enqueue(line);
                if (line.Contains("started, version", StringComparison.Ordinal))
                {
                    _started.TrySetResult();
                }
            }
        };
        _process.Exited += (_, _) =>
        {
            if (!_started.Task.IsCompleted)
            {
                _process.WaitForExit(); // its last lines read, so that the log says why
                _started.TrySetException(new InvalidOperationException("dnsmasq exited: " + string.Join(" | ", Log)));
            }
        };
        _process.EnableRaisingEvents = true;
        _process.BeginErrorReadLine();
        _process.BeginOutputReadLine();
    }

    /// <summary>Starts dnsmasq with <paramref name="records"/> and waits until it answers.</summary>
    /// <param name="records">Its record options (<c>--mx-host=…</c>, <c>--host-record=…</c>, <c>--local=…</c>).</param>
    /// <returns>The running server.</returns>
    public static async Task<Dnsmasq> StartAsync(params string[] records)
    {
        for (int attempt = 1; ; attempt++)
        {
            var dns = new Dnsmasq(FreeUdpPort(), records);
            try
            {
                // Faulted when dnsmasq exited: the exception (with its log) is rethrown here.
                await Await.Within(dns._started.Task.ContinueWith(t => { t.GetAwaiter().GetResult(); return true; }, TaskScheduler.Default), "dnsmasq to start");
                return dns;
            }
            catch (InvalidOperationException) when (attempt < 5 && dns.Log.Any(l => l.Contains("Address already in use", StringComparison.Ordinal)))
            {
                dns.Dispose();
            }
            catch
            {
                dns.Dispose();
                throw;
            }
        }
    }

    public int Port { get; }

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
