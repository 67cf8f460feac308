using System.Buffers;
using System.Collections.Concurrent;
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
/// growing a buffer. It keeps the session's clocks (<see cref="GuardedPipe"/>): a client that sends nothing for
/// <c>Smtp:CommandTimeout</c> while the server waits for it, and a session past <c>Smtp:SessionTimeout</c> at its next
/// transaction, are answered <c>421 4.4.2</c> and closed; at a stop, every session <c>421 4.3.2</c>
/// (<see cref="CloseAllAsync"/>). It also reports each bound endpoint (the real port when 0 was asked for) and each
/// endpoint that could not be bound, so start-up can wait for both. And it lets SmtpServer's parser take
/// <c>RCPT TO:&lt;Postmaster&gt;</c> (RFC 5321 §4.5.1), which it refuses for want of a domain: see
/// <see cref="PostmasterPath"/>.
/// </summary>
internal sealed partial class GuardedListenerFactory : IEndpointListenerFactory
{
    private readonly NoDelayListenerFactory _inner = new();
    private readonly ConnectionLimiter _limiter;
    private readonly int _maxLine;
    private readonly TimeSpan _commandTimeout;
    private readonly TimeSpan _sessionTimeout;
    private readonly TimeProvider _clock;
    private readonly string _hostname;
    private readonly ILogger _logger;
    private readonly Action<IEndpointDefinition, EndPoint> _started;
    private readonly Action<IEndpointDefinition, Exception> _failed;
    private readonly ConcurrentDictionary<GuardedPipe, bool> _open = new();
    private readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile bool _stopping;

    private const string Stopping = "the gateway is stopping";

    public GuardedListenerFactory(ConnectionLimiter limiter, int maxLine, TimeSpan commandTimeout, TimeSpan sessionTimeout, TimeProvider clock, string hostname,
        ILogger logger, Action<IEndpointDefinition, EndPoint> started, Action<IEndpointDefinition, Exception> failed)
    {
        _clock = clock;
        _limiter = limiter;
        _maxLine = maxLine;
        _commandTimeout = commandTimeout;
        _sessionTimeout = sessionTimeout;
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

    /// <summary>
    /// Ends every session where it stands with <c>421 4.3.2</c> (a session committing a message answers it first, then
    /// gets the 421 at its next read; new connections get it instead of a greeting) and waits until all are closed.
    /// SmtpServer's own shutdown cancels its sessions' token, and a session reading a message's data then answers
    /// <c>554</c>: a device would drop that alert because the gateway restarted.
    /// </summary>
    /// <param name="grace">Longest wait.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>True when every session had closed within it.</returns>
    public async Task<bool> CloseAllAsync(TimeSpan grace, CancellationToken cancellationToken)
    {
        _stopping = true;
        int open = 0;
        foreach (var pipe in _open.Keys)
        {
            pipe.ShutDown();
            open++;
        }

        if (_open.IsEmpty)
        {
            return true;
        }

        LogClosingAll(open);

        try
        {
            await _drained.Task.WaitAsync(grace, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP connection from {Peer} refused with 421: {Reason}")]
    private partial void LogRefused(IPAddress peer, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP session from {Peer} closed with 500: command line longer than {Limit} bytes")]
    private partial void LogLineTooLong(string peer, int limit);

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP command from {Peer} refused with {Code}: {Reason}")]
    private partial void LogParametersRefused(string peer, int code, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "The gateway is stopping: {Count} SMTP session(s) answered 421 4.3.2 where they stand")]
    private partial void LogClosingAll(int count);

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP session from {Peer}: closing it on its timeout failed")]
    private partial void LogExpireFailed(Exception ex, string peer);

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP session from {Peer} closed: {Reason}")]
    private partial void LogClosed(string peer, string reason);

    /// <summary>Whether the gateway itself closed this session (a timeout, logged then): SmtpServer reports it as faulted.</summary>
    /// <param name="context">The session.</param>
    /// <returns>True when closed here.</returns>
    public static bool ClosedByGuard(ISessionContext context) => context.Pipe is GuardedPipe { Closed: true };

    private sealed class GuardedListener(GuardedListenerFactory owner, IEndpointListener inner) : IEndpointListener
    {
        public async Task<ISecurableDuplexPipe> GetPipeAsync(ISessionContext context, CancellationToken cancellationToken)
        {
            while (true)
            {
                var pipe = await inner.GetPipeAsync(context, cancellationToken).ConfigureAwait(false);
                var remote = context.Properties.TryGetValue(EndpointListener.RemoteEndPointKey, out object? r) && r is IPEndPoint ip ? ip : new IPEndPoint(IPAddress.None, 0);
                bool stopping = owner._stopping;
                string reason = Stopping;
                var lease = stopping ? null : owner._limiter.TryOpen(remote.Address, out reason);
                if (lease is not null)
                {
                    var guarded = new GuardedPipe(owner, pipe, context, lease, remote);
                    if (owner._stopping)
                    {
                        guarded.ShutDown(); // CloseAllAsync may have looked before this one was in the list
                    }

                    return guarded;
                }

                owner.LogRefused(remote.Address, reason);
                try
                {
                    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
                    string code = stopping ? "4.3.2" : "4.7.0";
                    await pipe.Output.WriteAsync(Encoding.ASCII.GetBytes($"421 {code} {owner._hostname} {reason}; try again later\r\n"), timeout.Token).ConfigureAwait(false);
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

    /// <summary>
    /// The connection under a session, with its clocks. SmtpServer's own (a command wait, a whole-session token) are
    /// off: its whole-session token, firing while a message's data is read, made it answer a permanent
    /// <c>554</c> — a device drops an alert on a 5xx — and its command wait answered <c>221</c> and never covered
    /// message data. Here one timer per connection: armed for <c>Smtp:CommandTimeout</c> whenever the server waits for
    /// the client (a command, message data, a TLS handshake), else for the hard limit, twice
    /// <c>Smtp:SessionTimeout</c>. A client silent that long gets <c>421 4.4.2</c> (also in the middle of a message:
    /// then written here and the connection closed, so SmtpServer's <c>554</c> reaches no one); a session past
    /// <c>Smtp:SessionTimeout</c> finishes the transaction under way and gets <c>421</c> at its next <c>MAIL</c> (the
    /// device connects again and goes on); one still open at the hard limit — stuck in one message, or not reading
    /// its replies — is cut without a reply.
    /// </summary>
    private sealed class GuardedPipe : ISecurableDuplexPipe
    {
        private readonly GuardedListenerFactory _owner;
        private readonly ISecurableDuplexPipe _inner;
        private readonly IDisposable _lease;
        private readonly GuardedReader _reader;
        private readonly string _peer;
        private readonly ITimer _timer;
        private readonly long _opened;
        private readonly Lock _gate = new();
        private bool _waiting;
        private bool _disposed;
        private string? _expired;
        private string? _reply;
        private int _closed;

        public GuardedPipe(GuardedListenerFactory owner, ISecurableDuplexPipe inner, ISessionContext context, IDisposable lease, IPEndPoint remote)
        {
            _owner = owner;
            _inner = inner;
            _lease = lease;
            _peer = remote.ToString();
            _reader = new GuardedReader(owner, this, _peer);
            _opened = owner._clock.GetTimestamp();
            _timer = owner._clock.CreateTimer(static state => ((GuardedPipe)state!).Expire(stopping: false), this, HardLimit, Timeout.InfiniteTimeSpan);
            owner._open.TryAdd(this, true);
            context.CommandExecuting += (_, e) =>
            {
                _reader.InData = e.Command is DataCommand;
                _reader.Auth = e.Command is AuthCommand auth ? (auth.Method == AuthenticationMethod.Plain ? AuthStep.Plain : AuthStep.Login) : AuthStep.None;
                if (e.Command is MailCommand && Age >= owner._sessionTimeout)
                {
                    Close($"session longer than {owner._sessionTimeout} (Smtp:SessionTimeout), at MAIL");
                    throw new SmtpResponseException(new SmtpResponse(SmtpReplyCode.ServiceUnavailable,
                        $"4.4.2 {owner._hostname} session time limit reached; closing, connect again to go on"), true);
                }
            };
            context.CommandExecuted += (_, _) =>
            {
                _reader.InData = false;
                _reader.Auth = AuthStep.None;
            };
        }

        public PipeReader Input => _reader;

        public PipeWriter Output => _inner.Output;

        public bool IsSecure => _inner.IsSecure;

        public SslProtocols SslProtocol => _inner.SslProtocol;

        public PipeReader InnerInput => _inner.Input;

        public bool Closed => Volatile.Read(ref _closed) == 1;

        private TimeSpan Age => _owner._clock.GetElapsedTime(_opened);

        private TimeSpan HardLimit => _owner._sessionTimeout * 2;

        private static TimeSpan Grace => TimeSpan.FromSeconds(5);

        public async Task UpgradeAsync(X509Certificate certificate, SslProtocols protocols, CancellationToken cancellationToken = default)
        {
            using var limit = new CancellationTokenSource(_owner._commandTimeout, _owner._clock);
            using var handshake = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, limit.Token);
            try
            {
                await _inner.UpgradeAsync(certificate, protocols, handshake.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                string reason = $"no TLS handshake within {_owner._commandTimeout} (Smtp:CommandTimeout)";
                Close(reason);
                throw new IOException(reason);
            }
        }

        /// <summary>The server waits for the client from now on: the command timeout runs.</summary>
        /// <returns>Whether the session's clock ran out already: it is to be closed instead.</returns>
        public bool Waiting()
        {
            lock (_gate)
            {
                _waiting = true;
                Arm();
                return _expired is not null;
            }
        }

        /// <summary>The client's bytes (or the end) came.</summary>
        /// <returns>Whether the session's clock ran out meanwhile: it is to be closed.</returns>
        public bool Came()
        {
            lock (_gate)
            {
                _waiting = false;
                Arm();
                return _expired is not null;
            }
        }

        /// <summary>
        /// Answers <c>421</c> where the session stands and closes it. Between commands SmtpServer writes the reply (the
        /// exception asks it to, then to quit); in a message's data it would answer any exception with <c>554</c>, so the
        /// reply is written here and the connection closed first.
        /// </summary>
        public async Task<Exception> ExpiredAsync(bool inData)
        {
            string reason = _expired!;
            string text = _reply!;
            Close(reason);
            if (!inData)
            {
                return new SmtpResponseException(new SmtpResponse(SmtpReplyCode.ServiceUnavailable, text), true);
            }

            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
                await _inner.Output.WriteAsync(Encoding.ASCII.GetBytes("421 " + text + "\r\n"), timeout.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException or OperationCanceledException or InvalidOperationException or ObjectDisposedException)
            {
                // The client is gone or not reading; closing is all that is left.
            }

            _inner.Dispose();
            return new IOException("The gateway closed the session: " + reason);
        }

        public void Dispose()
        {
            lock (_gate)
            {
                _disposed = true;
            }

            _timer.Dispose();
            _inner.Dispose();
            _lease.Dispose();
            if (_owner._open.TryRemove(this, out _) && _owner._stopping && _owner._open.IsEmpty)
            {
                _owner._drained.TrySetResult();
            }
        }

        /// <summary>The gateway stops: this session is answered <c>421 4.3.2</c> where it waits for its client.</summary>
        public void ShutDown() => Expire(stopping: true);

        private void Arm()
        {
            if (_expired is not null)
            {
                // The session's own flow answers and closes it; the timer only cuts it if it does not come back.
                _timer.Change(Grace, Timeout.InfiniteTimeSpan);
                return;
            }

            var left = HardLimit - Age;
            if (left < TimeSpan.Zero)
            {
                left = TimeSpan.Zero;
            }

            _timer.Change(_waiting && _owner._commandTimeout < left ? _owner._commandTimeout : left, Timeout.InfiniteTimeSpan);
        }

        // On the timer's thread. A read under way is cancelled and the session's own flow answers (ExpiredAsync), as it
        // does at its next read when it was busy; one that does not come back to a read within the grace (writing to a
        // client that does not read its replies, say) is cut.
        private void Expire(bool stopping)
        {
            bool cut = false;
            bool cancel = false;
            lock (_gate)
            {
                if (_disposed)
                {
                    return;
                }

                if (_expired is not null)
                {
                    cut = !stopping;
                }
                else
                {
                    bool over = Age >= HardLimit;
                    if (!stopping && !_waiting && !over)
                    {
                        return; // the wait just ended; Came() armed the timer again
                    }

                    (_expired, _reply) = stopping ? (Stopping, "4.3.2 " + _owner._hostname + " shutting down; closing, try again later")
                        : over ? ($"session longer than {HardLimit} (twice Smtp:SessionTimeout)", "4.4.2 " + _owner._hostname + " session time limit reached; closing")
                        : ($"no input for {_owner._commandTimeout} (Smtp:CommandTimeout){(_reader.InData ? " in the middle of a message" : string.Empty)}",
                            "4.4.2 " + _owner._hostname + " timeout: no input; closing");
                    cancel = _waiting;
                    Arm();
                }
            }

            try
            {
                if (cut)
                {
                    Close(_expired!);
                    _inner.Dispose();
                }
                else if (cancel)
                {
                    _inner.Input.CancelPendingRead();
                }
            }
#pragma warning disable CA1031 // On a timer's thread an exception would end the process: this connection's trouble stays its own.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                _owner.LogExpireFailed(ex, _peer);
            }
        }

        private void Close(string reason)
        {
            if (Interlocked.Exchange(ref _closed, 1) == 0 && reason != Stopping)
            {
                _owner.LogClosed(_peer, reason); // a stop is logged once, with the number of sessions (CloseAllAsync)
            }
        }
    }

    // Reads from the pipe's current input (STARTTLS replaces it), refuses an over-long command line, and hands
    // SmtpServer a bare-postmaster RCPT line with the domain added, and a command line that spans buffer segments in one
    // piece (positions in such a line map back on AdvanceTo).
    private sealed class GuardedReader(GuardedListenerFactory owner, GuardedPipe pipe, string peer) : PipeReader
    {
        private ReadOnlySequence<byte> _substitute;
        private SequencePosition _innerStart;
        private SequencePosition _innerLineEnd;
        private bool _substituted;

        public bool InData { get; set; }

        /// <summary>Which AUTH exchange the lines read now answer (set while SmtpServer runs an AUTH command).</summary>
        public AuthStep Auth { get; set; }

        public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
        {
            if (_substituted)
            {
                _substituted = false;
                pipe.InnerInput.AdvanceTo(Map(consumed), Map(examined));
                return;
            }

            pipe.InnerInput.AdvanceTo(consumed, examined);
        }

        public override void CancelPendingRead() => pipe.InnerInput.CancelPendingRead();

        public override void Complete(Exception? exception = null) => pipe.InnerInput.Complete(exception);

        public override ValueTask CompleteAsync(Exception? exception = null) => pipe.InnerInput.CompleteAsync(exception);

        // Pooled: SmtpServer awaits each read once, and it is the one await of every command and data block.
        [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
        public override async ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            while (true)
            {
                if (pipe.Waiting())
                {
                    pipe.Came();
                    throw await pipe.ExpiredAsync(InData).ConfigureAwait(false);
                }

                ReadResult result;
                bool expired;
                try
                {
                    result = await pipe.InnerInput.ReadAsync(cancellationToken).ConfigureAwait(false);
                }
                finally
                {
                    expired = pipe.Came();
                }

                if (expired)
                {
                    throw await pipe.ExpiredAsync(InData).ConfigureAwait(false);
                }

                Check(result.Buffer);
                if (!InData && !result.IsCanceled && !result.IsCompleted && !new SequenceReader<byte>(result.Buffer).TryReadTo(out ReadOnlySequence<byte> _, "\r\n"u8))
                {
                    // Not a whole command line yet (SmtpServer ends one at CRLF). SmtpServer would read again for the rest and
                    // search on from where it stood in this read's buffer (BuffersExtension.TryFind keeps that position), which
                    // a line handed over in its place (Substitute) does not have. So the rest is waited for here.
                    pipe.InnerInput.AdvanceTo(result.Buffer.Start, result.Buffer.End);
                    continue;
                }

                CheckCommand(result.Buffer);
                return Substitute(result);
            }
        }

        public override bool TryRead(out ReadResult result)
        {
            if (!pipe.InnerInput.TryRead(out result))
            {
                return false;
            }

            Check(result.Buffer);
            CheckCommand(result.Buffer);
            result = Substitute(result);
            return true;
        }

        // SmtpServer consumes a command line whole (up to its CRLF) or not at all.
        private SequencePosition Map(SequencePosition position) =>
            _substitute.GetOffset(position) == 0 ? _innerStart : _innerLineEnd;

        private ReadResult Substitute(ReadResult result)
        {
            _substituted = false;
            if (InData || result.Buffer.PositionOf((byte)'\n') is not { } lf)
            {
                return result;
            }

            var line = result.Buffer.Slice(0, lf);
            if (line.Length <= PostmasterPath.MaxLine && PostmasterPath.TryAddDomain(line.IsSingleSegment ? line.FirstSpan : line.ToArray(), owner._hostname, out byte[] rewritten))
            {
                return Substitute(result, rewritten, result.Buffer.GetPosition(1, lf));
            }

            // SmtpServer's TokenReader reads MAIL's parameters only from one buffer segment: a command line across two (a
            // pipelined batch past the 4 KiB the reader fills at a time) threw NotImplementedException and ended the
            // session without a reply. Such a line, rare and at most Smtp:MaxCommandLineBytes, is handed over in one piece.
            var reader = new SequenceReader<byte>(result.Buffer);
            if (reader.TryReadTo(out ReadOnlySequence<byte> command, "\r\n"u8) && !command.IsSingleSegment)
            {
                return Substitute(result, result.Buffer.Slice(0, reader.Position).ToArray(), reader.Position);
            }

            return result;
        }

        private ReadResult Substitute(ReadResult result, byte[] line, SequencePosition innerLineEnd)
        {
            _substitute = new ReadOnlySequence<byte>(line);
            _innerStart = result.Buffer.Start;
            _innerLineEnd = innerLineEnd;
            _substituted = true;
            return new ReadResult(_substitute, result.IsCanceled, result.IsCompleted);
        }

        // SmtpServer ends a command line at CRLF only: bare LFs are inside the line it buffers, so they must not pass it.
        private void Check(ReadOnlySequence<byte> buffer)
        {
            if (InData || buffer.Length <= owner._maxLine || new SequenceReader<byte>(buffer.Slice(0, owner._maxLine)).TryReadTo(out ReadOnlySequence<byte> _, "\r\n"u8))
            {
                return;
            }

            owner.LogLineTooLong(peer, owner._maxLine);
            throw new SmtpResponseException(new SmtpResponse(SmtpReplyCode.CommandUnrecognized, "5.5.2 line too long; closing"), true);
        }

        // A command line SmtpServer could not take is answered 501 here, the line consumed, and the session goes on. The
        // line is what SmtpServer decodes: up to its CRLF, bare LFs included.
        private void CheckCommand(ReadOnlySequence<byte> buffer)
        {
            var reader = new SequenceReader<byte>(buffer);
            if (InData || !reader.TryReadTo(out ReadOnlySequence<byte> line, "\r\n"u8) || line.Length > PostmasterPath.MaxLine * 8)
            {
                return;
            }

            SmtpResponse? refusal = null;
            if (Auth != AuthStep.None || AuthResponses.IsAuthCommand(line))
            {
                if (AuthResponses.Refusal(line.ToArray(), Auth) is { } text)
                {
                    refusal = new SmtpResponse(SmtpReplyCode.SyntaxError, text);
                    Auth = AuthStep.None;
                }
            }
            else if ((refusal = Parameters(line)) is not null)
            {
                owner.LogParametersRefused(peer, (int)refusal.ReplyCode, refusal.Message);
            }

            if (refusal is not null)
            {
                pipe.InnerInput.AdvanceTo(reader.Position);
                throw new SmtpResponseException(refusal, false);
            }
        }

        // MAIL's and RCPT's parameters: see MailParameters. SmtpServer's dictionary threw on a keyword given twice at MAIL
        // (SIZE=1 SIZE=2) and closed the connection without a reply; RCPT's it does not read at all.
        private static SmtpResponse? Parameters(ReadOnlySequence<byte> line)
        {
            if (line.Length < 5)
            {
                return null;
            }

            Span<byte> verb = stackalloc byte[5];
            line.Slice(0, 5).CopyTo(verb);
            bool space = verb[4] is (byte)' ' or >= 9 and <= 13; // what SmtpServer skips after the verb
            if (space && System.Text.Ascii.EqualsIgnoreCase(verb[..4], "MAIL"u8))
            {
                return MailParameters.Refusal(line);
            }

            return space && System.Text.Ascii.EqualsIgnoreCase(verb[..4], "RCPT"u8) ? MailParameters.RcptRefusal(line) : null;
        }
    }
}

/// <summary>
/// RFC 5321 §4.5.1 requires <c>RCPT TO:&lt;Postmaster&gt;</c> — no domain — to be accepted. SmtpServer's parser
/// (sealed, created per command line) only takes <c>local@domain</c> and answers <c>502 Unrecognized command</c>,
/// and no command factory is asked before it refuses; so the command line is given the gateway's own host name
/// (<c>Sender:Hostname</c>, always one of its domains) before the parser sees it, and
/// <see cref="RecipientPolicy"/> takes postmaster at any of its domains. Only a command line read as such is
/// touched, never message data.
/// </summary>
internal static class PostmasterPath
{
    /// <summary>Longest line looked at; RFC 5321 command lines are at most 512 bytes.</summary>
    public const int MaxLine = 512;

    /// <summary>
    /// Rewrites <c>RCPT TO:&lt;postmaster&gt;</c> (any case, spaces as SmtpServer allows them, anything after the
    /// path kept) to <c>RCPT TO:&lt;postmaster@HOST&gt;</c>.
    /// </summary>
    /// <param name="line">A command line up to (not including) its LF; a CR before it is kept.</param>
    /// <param name="host">The gateway's host name.</param>
    /// <param name="rewritten">The rewritten line with CRLF, when true.</param>
    /// <returns>True when the line was a bare-postmaster RCPT.</returns>
    public static bool TryAddDomain(ReadOnlySpan<byte> line, string host, out byte[] rewritten)
    {
        rewritten = [];
        int i = 0;
        if (!Take(line, ref i, "RCPT"u8))
        {
            return false;
        }

        int spaces = Skip(line, ref i);
        if (spaces == 0 || !Take(line, ref i, "TO:"u8))
        {
            return false;
        }

        Skip(line, ref i);
        if (!Take(line, ref i, "<postmaster>"u8))
        {
            return false;
        }

        var rest = line[i..];
        if (rest.EndsWith("\r"u8))
        {
            rest = rest[..^1];
        }

        rewritten = [.. "RCPT TO:<postmaster@"u8, .. Encoding.ASCII.GetBytes(host), .. ">"u8, .. rest, .. "\r\n"u8];
        return true;
    }

    private static bool Take(ReadOnlySpan<byte> line, ref int i, ReadOnlySpan<byte> word)
    {
        if (line.Length - i < word.Length || !Ascii.EqualsIgnoreCase(line.Slice(i, word.Length), word))
        {
            return false;
        }

        i += word.Length;
        return true;
    }

    private static int Skip(ReadOnlySpan<byte> line, ref int i)
    {
        int start = i;
        while (i < line.Length && line[i] == (byte)' ')
        {
            i++;
        }

        return i - start;
    }
}
