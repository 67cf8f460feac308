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
/// connection's pipe closes its socket: that is how the server drops a connection without a reply. A connection told
/// to <see cref="Connection.Hang"/> lets nothing more reach the client and stays open after its session ended, until the
/// client closes it or the server stops.
/// </summary>
/// <param name="bound">Told the address the listener bound (the real port when 0 was asked for).</param>
/// <param name="stop">The server's stop: a hung connection is closed then.</param>
/// <param name="lingering">Told each hung connection's wait for the client to close, for the server to await at dispose.</param>
internal sealed class LoopbackListenerFactory(Action<IPEndPoint> bound, CancellationToken stop, Action<Task> lingering) : IEndpointListenerFactory
{
    public IEndpointListener CreateListener(IEndpointDefinition endpointDefinition)
    {
        var tcp = new TcpListener(endpointDefinition.Endpoint);
        tcp.Start();
        bound((IPEndPoint)tcp.LocalEndpoint);
        return new Listener(tcp, stop, lingering);
    }

    private sealed class Listener(TcpListener tcp, CancellationToken stop, Action<Task> lingering) : IEndpointListener
    {
        public async Task<ISecurableDuplexPipe> GetPipeAsync(ISessionContext context, CancellationToken cancellationToken)
        {
            Socket socket = await tcp.AcceptSocketAsync(cancellationToken);
            socket.NoDelay = true;
            context.Properties[EndpointListener.LocalEndPointKey] = tcp.LocalEndpoint;
            context.Properties[EndpointListener.RemoteEndPointKey] = socket.RemoteEndPoint!;
            return new Connection(new NetworkStream(socket, ownsSocket: true), stop, lingering);
        }

        public void Dispose() => tcp.Stop();
    }

    /// <summary>The socket's stream, and after STARTTLS (or at once for implicit TLS) the TLS stream over it.</summary>
    internal sealed class Connection(NetworkStream network, CancellationToken stop, Action<Task> lingering) : ISecurableDuplexPipe
    {
        private SslStream? _tls;
        private bool _hung;

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

        /// <summary>
        /// A server that stops answering: what the session writes from now on goes nowhere, and when it ends the
        /// connection stays open, its input read and thrown away, until the client closes it or the server stops.
        /// </summary>
        public void Hang()
        {
            _hung = true;
            (Input, Output) = (PipeReader.Create(Stream.Null), PipeWriter.Create(Stream.Null));
        }

        public void Dispose()
        {
            if (_hung)
            {
                lingering(LingerAsync());
                return;
            }

            _tls?.Dispose();
            network.Dispose();
        }

        private async Task LingerAsync()
        {
            var buffer = new byte[4096];
            try
            {
                while (await network.ReadAsync(buffer, stop) > 0)
                {
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or IOException)
            {
            }
            finally
            {
                _tls?.Dispose();
                await network.DisposeAsync();
            }
        }
    }
}
