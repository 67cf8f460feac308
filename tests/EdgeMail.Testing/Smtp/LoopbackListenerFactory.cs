using System.IO.Pipelines;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using SmtpServer;
using SmtpServer.IO;
using SmtpServer.Net;

namespace EdgeMail.Testing.Smtp;

/// <summary>
/// SmtpServer's listener for <see cref="SmtpTestServer"/>. SmtpServer's own one cannot do what a test server needs:
/// it does not say which port the OS chose, it abandons its pending accept when stopped (the accept's exception then
/// goes unobserved, which fails any test host that checks for unobserved task exceptions), and its connections keep
/// Nagle's algorithm on, so each reply to a pipelining client waits for the client's delayed ACK. Disposing a
/// connection's pipe closes its socket: that is how the server drops a connection without a reply.
/// </summary>
/// <param name="bound">Told the address the listener bound (the real port when 0 was asked for).</param>
internal sealed class LoopbackListenerFactory(Action<IPEndPoint> bound) : IEndpointListenerFactory
{
    public IEndpointListener CreateListener(IEndpointDefinition endpointDefinition)
    {
        var tcp = new TcpListener(endpointDefinition.Endpoint);
        tcp.Start();
        bound((IPEndPoint)tcp.LocalEndpoint);
        return new Listener(tcp);
    }

    private sealed class Listener(TcpListener tcp) : IEndpointListener
    {
        public async Task<ISecurableDuplexPipe> GetPipeAsync(ISessionContext context, CancellationToken cancellationToken)
        {
            Socket socket = await tcp.AcceptSocketAsync(cancellationToken);
            socket.NoDelay = true;
            context.Properties[EndpointListener.LocalEndPointKey] = tcp.LocalEndpoint;
            context.Properties[EndpointListener.RemoteEndPointKey] = socket.RemoteEndPoint!;
            return new Connection(new NetworkStream(socket, ownsSocket: true));
        }

        public void Dispose() => tcp.Stop();
    }

    /// <summary>The socket's stream, and after STARTTLS (or at once for implicit TLS) the TLS stream over it.</summary>
    private sealed class Connection(NetworkStream network) : ISecurableDuplexPipe
    {
        private SslStream? _tls;

        public PipeReader Input { get; private set; } = PipeReader.Create(network);

        public PipeWriter Output { get; private set; } = PipeWriter.Create(network);

        public bool IsSecure => _tls is not null;

        public SslProtocols SslProtocol => _tls?.SslProtocol ?? SslProtocols.None;

        public async Task UpgradeAsync(X509Certificate certificate, SslProtocols protocols, CancellationToken cancellationToken = default)
        {
            var tls = new SslStream(network, leaveInnerStreamOpen: true);
            var options = new SslServerAuthenticationOptions { ServerCertificate = certificate, EnabledSslProtocols = protocols };
            try
            {
                await tls.AuthenticateAsServerAsync(options, cancellationToken);
            }
            catch
            {
                await tls.DisposeAsync();
                throw;
            }

            (_tls, Input, Output) = (tls, PipeReader.Create(tls), PipeWriter.Create(tls));
        }

        public void Dispose()
        {
            _tls?.Dispose();
            network.Dispose();
        }
    }
}
