using System.IO.Pipelines;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using SmtpServer;
using SmtpServer.IO;
using SmtpServer.Net;

namespace EdgeMail.Gateway.Ingest.Smtp;

/// <summary>
/// SmtpServer's TCP listener with Nagle's algorithm turned off on every accepted connection. SmtpServer flushes
/// each reply on its own; when a client pipelines (MAIL, RCPT and DATA in one packet, as MailKit and Postfix do),
/// the second and third replies would otherwise wait for the client's delayed ACK — about 40 ms on Linux — so a
/// session could not take more than a couple of dozen messages a second.
/// </summary>
public sealed class NoDelayListenerFactory : IEndpointListenerFactory
{
    /// <summary>Raised with the definition and the bound address (the real port when 0 was asked for).</summary>
    public event EventHandler<EndpointEventArgs>? EndpointStarted;

    /// <inheritdoc />
    public IEndpointListener CreateListener(IEndpointDefinition endpointDefinition)
    {
        ArgumentNullException.ThrowIfNull(endpointDefinition);
        var listener = new TcpListener(endpointDefinition.Endpoint);
        listener.Start();
        EndpointStarted?.Invoke(this, new EndpointEventArgs(endpointDefinition, listener.LocalEndpoint));
        return new Listener(listener);
    }

    private sealed class Listener(TcpListener listener) : IEndpointListener
    {
        public async Task<ISecurableDuplexPipe> GetPipeAsync(ISessionContext context, CancellationToken cancellationToken)
        {
            var socket = await listener.AcceptSocketAsync(cancellationToken).ConfigureAwait(false);
            socket.NoDelay = true;
            context.Properties[EndpointListener.LocalEndPointKey] = listener.LocalEndpoint;
            context.Properties[EndpointListener.RemoteEndPointKey] = socket.RemoteEndPoint ?? new IPEndPoint(IPAddress.None, 0);
            return new Pipe(socket);
        }

        public void Dispose() => listener.Stop();
    }

    private sealed class Pipe : ISecurableDuplexPipe
    {
        private readonly NetworkStream _network;
        private Stream _stream;

        public Pipe(Socket socket)
        {
            _network = new NetworkStream(socket, ownsSocket: true);
            _stream = _network;
            Input = PipeReader.Create(_stream);
            Output = PipeWriter.Create(_stream);
        }

        public PipeReader Input { get; private set; }

        public PipeWriter Output { get; private set; }

        public bool IsSecure => _stream is SslStream;

        public SslProtocols SslProtocol => (_stream as SslStream)?.SslProtocol ?? SslProtocols.None;

        public async Task UpgradeAsync(X509Certificate certificate, SslProtocols protocols, CancellationToken cancellationToken = default)
        {
            var tls = new SslStream(_stream, leaveInnerStreamOpen: true);
            try
            {
                await tls.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                {
                    ServerCertificate = certificate,
                    ClientCertificateRequired = false,
                    EnabledSslProtocols = protocols,
                }, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                await tls.DisposeAsync().ConfigureAwait(false);
                throw;
            }

            _stream = tls;
            Input = PipeReader.Create(tls);
            Output = PipeWriter.Create(tls);
        }

        public void Dispose()
        {
            _stream.Dispose();
            _network.Dispose();
        }
    }
}
