using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using EdgeMail.Gateway.Security;
using Microsoft.Extensions.Logging;
using SmtpServer;
using SmtpServer.IO;
using SmtpServer.Net;
using SmtpServer.Protocol;

namespace EdgeMail.Gateway.Ingest.Smtp;

/// <summary>
/// Wraps SmtpServer's TCP listeners with the gateway's connection guard: a connection over the total or
/// per-source limit is answered <c>421 4.7.0</c> and closed before a session starts; a command line longer
/// than the limit (a client that never sends CRLF) closes the session with <c>500 5.5.2</c> instead of
/// growing a buffer. It also reports each bound endpoint (the real port when 0 was asked for) and each
/// endpoint that could not be bound, so start-up can wait for both.
/// </summary>
internal sealed partial class GuardedListenerFactory : IEndpointListenerFactory
{
    private readonly NoDelayListenerFactory _inner = new();
    private readonly ConnectionLimiter _limiter;
    private readonly int _maxLine;
    private readonly string _hostname;
    private readonly ILogger _logger;
    private readonly Action<IEndpointDefinition, EndPoint> _started;
    private readonly Action<IEndpointDefinition, Exception> _failed;

    public GuardedListenerFactory(ConnectionLimiter limiter, int maxLine, string hostname, ILogger logger,
        Action<IEndpointDefinition, EndPoint> started, Action<IEndpointDefinition, Exception> failed)
    {
        _limiter = limiter;
        _maxLine = maxLine;
        _hostname = hostname;
        _logger = logger;
        _started = started;
        _failed = failed;
        _inner.EndpointStarted += (_, e) => _started(e.EndpointDefinition, e.LocalEndPoint);
    }

    public IEndpointListener CreateListener(IEndpointDefinition endpointDefinition)
    {
        try
        {
            return new GuardedListener(this, _inner.CreateListener(endpointDefinition));
        }
        catch (Exception ex)
        {
            _failed(endpointDefinition, ex);
            throw;
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP connection from {Peer} refused with 421: {Reason}")]
    private partial void LogRefused(IPAddress peer, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP session from {Peer} closed with 500: command line longer than {Limit} bytes")]
    private partial void LogLineTooLong(string peer, int limit);

    private sealed class GuardedListener(GuardedListenerFactory owner, IEndpointListener inner) : IEndpointListener
    {
        public async Task<ISecurableDuplexPipe> GetPipeAsync(ISessionContext context, CancellationToken cancellationToken)
        {
            while (true)
            {
                var pipe = await inner.GetPipeAsync(context, cancellationToken).ConfigureAwait(false);
                var remote = context.Properties.TryGetValue(EndpointListener.RemoteEndPointKey, out object? r) && r is IPEndPoint ip ? ip : new IPEndPoint(IPAddress.None, 0);
                var lease = owner._limiter.TryOpen(remote.Address, out string reason);
                if (lease is not null)
                {
                    return new GuardedPipe(owner, pipe, context, lease, remote);
                }

                owner.LogRefused(remote.Address, reason);
                try
                {
                    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
                    await pipe.Output.WriteAsync(Encoding.ASCII.GetBytes($"421 4.7.0 {owner._hostname} {reason}; try again later\r\n"), timeout.Token).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is IOException or OperationCanceledException or InvalidOperationException)
                {
                    // The client is gone or not reading; closing is all that is left.
                }

                pipe.Dispose();
                context.Properties.Remove(EndpointListener.LocalEndPointKey);
                context.Properties.Remove(EndpointListener.RemoteEndPointKey);
            }
        }

        public void Dispose() => inner.Dispose();
    }

    private sealed class GuardedPipe : ISecurableDuplexPipe
    {
        private readonly ISecurableDuplexPipe _inner;
        private readonly IDisposable _lease;
        private readonly GuardedReader _reader;

        public GuardedPipe(GuardedListenerFactory owner, ISecurableDuplexPipe inner, ISessionContext context, IDisposable lease, IPEndPoint remote)
        {
            _inner = inner;
            _lease = lease;
            _reader = new GuardedReader(owner, this, remote.ToString());
            context.CommandExecuting += (_, e) => _reader.InData = e.Command is DataCommand;
            context.CommandExecuted += (_, _) => _reader.InData = false;
        }

        public PipeReader Input => _reader;

        public PipeWriter Output => _inner.Output;

        public bool IsSecure => _inner.IsSecure;

        public SslProtocols SslProtocol => _inner.SslProtocol;

        public PipeReader InnerInput => _inner.Input;

        public Task UpgradeAsync(X509Certificate certificate, SslProtocols protocols, CancellationToken cancellationToken = default) =>
            _inner.UpgradeAsync(certificate, protocols, cancellationToken);

        public void Dispose()
        {
            _inner.Dispose();
            _lease.Dispose();
        }
    }

    // Reads from the pipe's current input (STARTTLS replaces it) and refuses an over-long command line.
    private sealed class GuardedReader(GuardedListenerFactory owner, GuardedPipe pipe, string peer) : PipeReader
    {
        public bool InData { get; set; }

        public override void AdvanceTo(SequencePosition consumed) => pipe.InnerInput.AdvanceTo(consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined) => pipe.InnerInput.AdvanceTo(consumed, examined);

        public override void CancelPendingRead() => pipe.InnerInput.CancelPendingRead();

        public override void Complete(Exception? exception = null) => pipe.InnerInput.Complete(exception);

        public override ValueTask CompleteAsync(Exception? exception = null) => pipe.InnerInput.CompleteAsync(exception);

        public override async ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            var result = await pipe.InnerInput.ReadAsync(cancellationToken).ConfigureAwait(false);
            Check(result.Buffer);
            return result;
        }

        public override bool TryRead(out ReadResult result)
        {
            if (!pipe.InnerInput.TryRead(out result))
            {
                return false;
            }

            Check(result.Buffer);
            return true;
        }

        private void Check(ReadOnlySequence<byte> buffer)
        {
            if (InData || buffer.Length <= owner._maxLine || buffer.Slice(0, owner._maxLine).PositionOf((byte)'\n') is not null)
            {
                return;
            }

            owner.LogLineTooLong(peer, owner._maxLine);
            throw new SmtpResponseException(new SmtpResponse(SmtpReplyCode.CommandUnrecognized, "5.5.2 line too long; closing"), true);
        }
    }
}
