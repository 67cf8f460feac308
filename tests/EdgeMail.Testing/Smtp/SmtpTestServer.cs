using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography.X509Certificates;
using System.Threading.Channels;
using SmtpServer;
using SmtpServer.Authentication;
using SmtpServer.Mail;
using SmtpServer.Protocol;
using SmtpServer.Storage;

namespace EdgeMail.Testing.Smtp;

/// <summary>How to start a <see cref="SmtpTestServer"/>.</summary>
public sealed class SmtpTestServerOptions
{
    /// <summary>Loopback port; 0 (the default) lets the OS choose. A fixed one only to come back on a port a test already holds.</summary>
    public int Port { get; init; }

    /// <summary>
    /// The loopback address to listen on, 127.0.0.1 by default. Another one (127.0.0.2) with the <see cref="Port"/> of a
    /// first server stands for a second host where the client has one port for all (direct MX's <c>Relay:MxPort</c>).
    /// </summary>
    public IPAddress Address { get; init; } = IPAddress.Loopback;

    /// <summary>The name in the greeting and the EHLO reply.</summary>
    public string ServerName { get; init; } = "sink.test";

    /// <summary>Offer STARTTLS with this certificate (or TLS from the first byte with <see cref="ImplicitTls"/>).</summary>
    public X509Certificate2? Certificate { get; init; }

    /// <summary>TLS from the first byte (port 465 style); needs <see cref="Certificate"/>.</summary>
    public bool ImplicitTls { get; init; }

    /// <summary>
    /// When set, AUTH is required before MAIL and these user names and passwords are accepted. AUTH is offered only
    /// under TLS when there is a <see cref="Certificate"/>, and on the plain connection when there is none.
    /// </summary>
    public IReadOnlyDictionary<string, string>? Users { get; init; }

    /// <summary>The whole greeting line (e.g. one with a date, as Sendmail's has), asked for at each connection; null for SmtpServer's own.</summary>
    public Func<string>? Greeting { get; init; }
}

/// <summary>
/// The SMTP server of every test that needs one: the SmtpServer package (the library the gateway's ingest uses) on a
/// loopback port the OS chose, with TLS and AUTH when asked for. It records every command, AUTH attempt and message
/// with its envelope, and a test scripts failures: a reply to any command (<see cref="OnCommand"/>), to one recipient
/// (<see cref="Recipients"/>), or to the end of a message (<see cref="OnData"/>) — a 4xx, a 5xx, or
/// <see cref="SmtpReply.Drop"/>, the connection closed with no answer (after DATA, the client cannot know whether
/// the message was taken), or, to the end of a message and to QUIT, <see cref="SmtpReply.Hang"/>. An exception thrown by a script is answered with 451 and thrown again at dispose, so a
/// failed assertion inside a script fails the test. (The firmware's byte-for-byte and allocation tests of its SMTP
/// client use EdgeMail.Simulation's <c>InMemorySmtpServer</c> instead: a synchronous peer behind the device's
/// transport interface, no socket, nothing allocated — the same peer the emulator's <c>bench</c> measures over.)
/// </summary>
public sealed class SmtpTestServer : IAsyncDisposable
{
    private const string ConnectionKey = "EdgeMail.Testing:Connection";
    private const string MechanismKey = "EdgeMail.Testing:Mechanism";

    private readonly CancellationTokenSource _stop = new();
    private readonly TaskCompletionSource<IPEndPoint> _bound = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Channel<ReceivedMail> _accepted = Channel.CreateUnbounded<ReceivedMail>();
    private readonly ConcurrentQueue<ReceivedMail> _messages = new();
    private readonly ConcurrentQueue<ReceivedMail> _acceptedSoFar = new();
    private readonly ConcurrentQueue<SmtpCommandSeen> _commands = new();
    private readonly ConcurrentQueue<SmtpAuthAttempt> _auth = new();
    private readonly ConcurrentQueue<Exception> _scriptFailures = new();
    private readonly ConcurrentQueue<Task> _lingering = new();
    private readonly IReadOnlyDictionary<string, string>? _users;
    private Task _run = Task.CompletedTask;
    private int _connections;
    private int _messageCount;
    private int _disposed;

    private SmtpTestServer(SmtpTestServerOptions options) => _users = options.Users;

    /// <summary>The loopback address and port the server listens on.</summary>
    public IPEndPoint EndPoint { get; private set; } = new(IPAddress.Loopback, 0);

    /// <summary>The port the server listens on.</summary>
    public int Port => EndPoint.Port;

    /// <summary>Connections accepted so far.</summary>
    public int Connections => Volatile.Read(ref _connections);

    /// <summary>Every command that passed SmtpServer's sequence check (one out of order is refused with a 501 and not listed), in order.</summary>
    public IReadOnlyList<SmtpCommandSeen> Commands => [.. _commands];

    /// <summary>Every AUTH exchange that reached the password check, in order.</summary>
    public IReadOnlyList<SmtpAuthAttempt> AuthAttempts => [.. _auth];

    /// <summary>Every message read to its end, accepted or not, with the reply it got.</summary>
    public IReadOnlyList<ReceivedMail> Messages => [.. _messages];

    /// <summary>The messages the server accepted (answered 2xx), in order.</summary>
    public IReadOnlyList<ReceivedMail> Received => [.. _acceptedSoFar];

    /// <summary>The reply to the end of each message; <see cref="SmtpReply.Ok"/> by default.</summary>
    public Func<ReceivedMail, SmtpReply> OnData { get; set; } = _ => SmtpReply.Ok;

    /// <summary>
    /// A reply to any command instead of the server's own: a refusal (4xx, 5xx) or <see cref="SmtpReply.Drop"/>.
    /// Null, or a 2xx, lets the command through to the server. Asked before <see cref="Recipients"/>. SmtpServer
    /// adds ", N retry(ies) remaining." to a refusal's text and ends the session after five refusals in a row.
    /// </summary>
    public Func<SmtpCommandSeen, SmtpReply?>? OnCommand { get; set; }

    /// <summary>Replies to <c>RCPT TO</c> by address (any case): a refusal or a drop for that recipient only.</summary>
    public ConcurrentDictionary<string, SmtpReply> Recipients { get; } = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>Starts a server and returns once it listens.</summary>
    /// <param name="options">Port, TLS and AUTH; defaults to a plain server on a port the OS chooses.</param>
    /// <returns>The listening server.</returns>
    public static async Task<SmtpTestServer> StartAsync(SmtpTestServerOptions? options = null)
    {
        options ??= new SmtpTestServerOptions();
        var server = new SmtpTestServer(options);
        var builder = new SmtpServerOptionsBuilder().ServerName(options.ServerName);
        if (options.Greeting is { } greeting)
        {
            builder.CustomSmtpGreeting(_ => greeting()); // written as is: the reply code too
        }

        builder.Endpoint(e =>
        {
            e.Endpoint(new IPEndPoint(options.Address, options.Port)).AllowUnsecureAuthentication(options.Certificate is null)
                .AuthenticationRequired(options.Users is not null);
            if (options.Certificate is not null)
            {
                e.Certificate(options.Certificate).IsSecure(options.ImplicitTls);
            }
        });
        var services = new SmtpServer.ComponentModel.ServiceProvider();
        services.Add(new LoopbackListenerFactory(server._bound.SetResult, server._stop.Token, server._lingering.Enqueue));
        services.Add(new Store(server));
        if (options.Users is not null)
        {
            services.Add(new Authenticator(server));
        }

        var smtp = new SmtpServer.SmtpServer(builder.Build(), services);
        smtp.SessionCreated += server.OnSessionCreated;
        server._run = smtp.StartAsync(server._stop.Token);

        // A port that cannot be bound faults the run instead of binding.
        await Task.WhenAny(server._bound.Task, server._run).WaitAsync(Await.DefaultTimeout);
        if (!server._bound.Task.IsCompleted)
        {
            await server._run;
            throw new InvalidOperationException($"The SMTP test server stopped before it listened on {options.Address}:{options.Port}.");
        }

        server.EndPoint = server._bound.Task.Result;
        return server;
    }

    /// <summary>Waits for the next message the server accepts (in order; each is returned once).</summary>
    /// <param name="timeout">Deadline; <see cref="Await.DefaultTimeout"/> when null.</param>
    /// <returns>The message.</returns>
    public Task<ReceivedMail> NextAsync(TimeSpan? timeout = null) =>
        Await.Within(_accepted.Reader.ReadAsync().AsTask(), $"a message accepted by the SMTP test server on port {Port}", timeout);

    /// <summary>Takes the next accepted message if there is one, without waiting.</summary>
    /// <param name="mail">The message.</param>
    /// <returns>Whether there was one.</returns>
    public bool TryNext(out ReceivedMail mail) => _accepted.Reader.TryRead(out mail!);

    /// <summary>Stops listening and ends every connection (once; a test may stop the server early); throws what a test's script threw.</summary>
    /// <returns>A task.</returns>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }

        await _stop.CancelAsync();
        try
        {
            await _run;
        }
        catch (OperationCanceledException)
        {
        }

        await Task.WhenAll(_lingering);
        _stop.Dispose();
        if (!_scriptFailures.IsEmpty)
        {
            throw new AggregateException("A script of the SMTP test server threw (answered with 451).", _scriptFailures);
        }
    }

    private static string Address(IMailbox mailbox) => mailbox.AsAddress() ?? string.Empty;

    private static SmtpCommandSeen Describe(int connection, SmtpCommand command) => command switch
    {
        MailCommand m => new(connection, m.Name, Address(m.Address)),
        RcptCommand r => new(connection, r.Name, Address(r.Address)),
        AuthCommand a => new(connection, a.Name, a.Method.ToString().ToUpperInvariant()),
        EhloCommand e => new(connection, e.Name, e.DomainOrAddress),
        HeloCommand h => new(connection, h.Name, h.DomainOrAddress),
        _ => new(connection, command.Name, string.Empty),
    };

    /// <summary>Closes the connection under the session: nothing more reaches the client, and SmtpServer's session ends faulted.</summary>
    private static IOException Dropped(ISessionContext context, string where)
    {
        context.Pipe.Dispose();
        return new IOException($"The SMTP test server dropped the connection {where}, as scripted.");
    }

    // Reads and discards what the client still sends until it closes the connection or the server stops.
    private async Task HangAsync(ISessionContext context, CancellationToken cancellationToken)
    {
        using var until = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _stop.Token);
        try
        {
            while (true)
            {
                var read = await context.Pipe.Input.ReadAsync(until.Token).ConfigureAwait(false);
                context.Pipe.Input.AdvanceTo(read.Buffer.End);
                if (read.IsCompleted)
                {
                    return;
                }
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException)
        {
        }
    }

    private static SmtpResponse Response(SmtpReply reply) => new((SmtpReplyCode)reply.Code, reply.Text);

    private SmtpReply Script<T>(Func<T, SmtpReply?> script, T argument)
    {
        try
        {
            return script(argument) ?? SmtpReply.Ok;
        }
#pragma warning disable CA1031 // Whatever the test's script throws is answered 451 and thrown again at dispose.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            _scriptFailures.Enqueue(ex);
            return new SmtpReply(451, "4.3.0 the test's script threw " + ex.GetType().Name);
        }
    }

    private void OnSessionCreated(object? sender, SessionEventArgs e)
    {
        int connection = Interlocked.Increment(ref _connections);
        e.Context.Properties[ConnectionKey] = connection;
        e.Context.CommandExecuting += (_, c) =>
        {
            SmtpCommandSeen seen = Describe(connection, c.Command);
            _commands.Enqueue(seen);
            if (c.Command is AuthCommand)
            {
                c.Context.Properties[MechanismKey] = seen.Argument;
            }

            SmtpReply reply = OnCommand is { } script ? Script(script, seen) : SmtpReply.Ok;
            if (reply.IsHang && seen.Verb == QuitCommand.Command && c.Context.Pipe is LoopbackListenerFactory.Connection pipe)
            {
                // The session ends as usual, but its 221 and its close never reach the client.
                pipe.Hang();
                reply = SmtpReply.Ok;
            }
            else if (reply.IsHang)
            {
                // A command's handler runs synchronously here: hanging it would hold a thread-pool thread.
                _scriptFailures.Enqueue(new NotSupportedException("SmtpReply.Hang is for OnData and QUIT only"));
                reply = new SmtpReply(451, "4.3.0 the test's script asked for a hang at " + seen.Verb);
            }

            if (reply.IsPositive && seen.Verb == RcptCommand.Command && Recipients.TryGetValue(seen.Argument, out SmtpReply? forRecipient))
            {
                reply = forRecipient;
            }

            if (reply.IsDrop)
            {
                throw Dropped(c.Context, "at " + seen.Verb);
            }

            if (!reply.IsPositive)
            {
                throw new SmtpResponseException(Response(reply), reply.Closes);
            }
        };
    }

    private sealed class Store(SmtpTestServer server) : MessageStore
    {
        public override async Task<SmtpResponse> SaveAsync(ISessionContext context, IMessageTransaction transaction, ReadOnlySequence<byte> buffer, CancellationToken cancellationToken)
        {
            var mail = new ReceivedMail(
                Interlocked.Increment(ref server._messageCount),
                (int)context.Properties[ConnectionKey],
                Address(transaction.From),
                [.. transaction.To.Select(Address)],
                buffer.ToArray(),
                context.Pipe.IsSecure,
                context.Authentication.IsAuthenticated ? context.Authentication.User : null);
            SmtpReply reply = server.Script(server.OnData, mail);
            mail.Reply = reply;
            server._messages.Enqueue(mail);
            if (reply.IsDrop)
            {
                throw Dropped(context, "after DATA");
            }

            if (reply.IsHang)
            {
                await server.HangAsync(context, cancellationToken).ConfigureAwait(false);
                throw Dropped(context, "after hanging at the end of DATA");
            }

            if (reply.IsPositive)
            {
                server._acceptedSoFar.Enqueue(mail);
                server._accepted.Writer.TryWrite(mail);
            }

            return Response(reply);
        }
    }

    private sealed class Authenticator(SmtpTestServer server) : UserAuthenticator
    {
        public override Task<bool> AuthenticateAsync(ISessionContext context, string user, string password, CancellationToken cancellationToken)
        {
            bool ok = server._users!.TryGetValue(user, out string? expected) && expected == password;
            string mechanism = context.Properties.TryGetValue(MechanismKey, out object? m) ? (string)m : string.Empty;
            server._auth.Enqueue(new SmtpAuthAttempt(user, mechanism, ok));
            return Task.FromResult(ok);
        }
    }
}
