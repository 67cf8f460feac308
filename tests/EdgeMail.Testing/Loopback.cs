using System.Net;
using System.Net.NetworkInformation;
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

    /// <summary>
    /// An IPv4 address of this machine that is not loopback: a server listening on it is reached over the loopback
    /// interface all the same, but looks like another host to a client that treats loopback relays apart.
    /// </summary>
    /// <returns>The address, or null when the machine has none.</returns>
    public static IPAddress? OwnNetworkAddress() =>
        NetworkInterface.GetAllNetworkInterfaces()
            .Where(n => n.OperationalStatus == OperationalStatus.Up && n.NetworkInterfaceType != NetworkInterfaceType.Loopback)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses)
            .Select(u => u.Address)
            .FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));

    /// <summary>
    /// A name other than <c>localhost</c> that resolves to this machine's loopback: its own host name where /etc/hosts
    /// maps it there (Debian puts it at 127.0.1.1), for a client that must tell a local server by the address it reached.
    /// </summary>
    /// <returns>The name and the address it resolves to first, or null when it does not resolve to loopback first.</returns>
    public static (string Name, IPAddress Address)? OwnLoopbackName()
    {
        string name = Dns.GetHostName();
        if (name.Equals("localhost", StringComparison.OrdinalIgnoreCase))
        {
            return null;
        }

        try
        {
            var addresses = Dns.GetHostAddresses(name);
            return addresses.Length > 0 && IPAddress.IsLoopback(addresses[0]) ? (name, addresses[0]) : null;
        }
        catch (SocketException)
        {
            return null;
        }
    }
}
