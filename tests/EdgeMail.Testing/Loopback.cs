using System.Net;
using System.Net.Sockets;

namespace EdgeMail.Testing;

/// <summary>Loopback ports for servers that cannot report the port the OS chose (MQTTnet, mosquitto, a gateway in a child process).</summary>
public static class Loopback
{
    /// <summary>Asks the OS for a free loopback port and releases it for the server under test to bind.</summary>
    /// <returns>The port.</returns>
    public static int FreePort()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }
}
