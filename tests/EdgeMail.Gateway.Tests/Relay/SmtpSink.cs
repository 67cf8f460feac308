using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography.X509Certificates;
using System.Threading.Channels;
using MimeKit;
using SmtpServer;
using SmtpServer.Mail;
using SmtpServer.Protocol;
using SmtpServer.Storage;

namespace EdgeMail.Gateway.Tests.Relay;

/// <summary>A real SMTP server (SmtpServer package) on loopback acting as smarthost or MX, with scripted replies.</summary>
public sealed class SmtpSink : IAsyncDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _run;

    /// <summary>Starts the sink.</summary>
    /// <param name="port">Port, or 0 for one the OS chooses.</param>
    /// <param name="certificate">Offer STARTTLS with this certificate (or implicit TLS with <paramref name="implicitTls"/>).</param>
    /// <param name="implicitTls">TLS from the first byte (port 465 style).</param>
    /// <param name="login">Require AUTH with this user and password (offered only once the connection is secure).</param>
    /// <param name="greeting">The text of the 220 greeting (e.g. with a date, as Exchange and sendmail send); null for the library's.</param>
    public SmtpSink(int port = 0, X509Certificate2? certificate = null, bool implicitTls = false, (string User, string Password)? login = null, Func<string>? greeting = null)
    {
        Port = port == 0 ? FreePort() : port;
        var builder = new SmtpServerOptionsBuilder().ServerName("sink.test");
        if (greeting is not null)
        {
            builder = builder.CustomSmtpGreeting(_ => greeting());
        }

        var options = builder
            .Endpoint(b =>
            {
                b.Endpoint(new IPEndPoint(IPAddress.Loopback, Port)).AllowUnsecureAuthentication(certificate is null);
                if (certificate is not null)
                {
                    b.Certificate(certificate).IsSecure(implicitTls);
                }

                if (login is not null)
                {
                    b.AuthenticationRequired(true);
                }
            })
            .Build();
        var services = new SmtpServer.ComponentModel.ServiceProvider();
        services.Add(new EdgeMail.Gateway.Ingest.Smtp.NoDelayListenerFactory());
        services.Add(new Store(this));
        services.Add(new Filter(this));
        if (login is { } l)
        {
            services.Add(new SmtpServer.Authentication.DelegatingUserAuthenticator((user, password) =>
            {
                bool ok = user == l.User && password == l.Password;
                AuthAttempts.Enqueue((user, ok));
                return ok;
            }));
        }

        var server = new SmtpServer.SmtpServer(options, services);
        server.SessionCreated += (_, e) => e.Context.CommandExecuting += (_, c) =>
        {
            if (c.Command is AuthCommand auth)
            {
                AuthMethods.Enqueue(auth.Method.ToString().ToUpperInvariant());
            }
        };
        _run = server.StartAsync(_stop.Token);
    }

    /// <summary>AUTH mechanisms clients used, in order (PLAIN, LOGIN).</summary>
    public ConcurrentQueue<string> AuthMethods { get; } = new();

    /// <summary>AUTH attempts: user and whether the password was right.</summary>
    public ConcurrentQueue<(string User, bool Ok)> AuthAttempts { get; } = new();

    /// <summary>For each accepted mail: whether the connection was TLS and who had authenticated.</summary>
    public ConcurrentQueue<(bool Secure, string? User)> Transports { get; } = new();

    public int Port { get; }

    /// <summary>Reply for DATA; default 250.</summary>
    public Func<MimeMessage, SmtpResponse> Reply { get; set; } = _ => new SmtpResponse(SmtpReplyCode.Ok, "2.0.0 queued as Q1");

    /// <summary>Recipients refused at RCPT with 550.</summary>
    public ConcurrentBag<string> Refuse { get; } = [];

    public Channel<(MimeMessage Message, IReadOnlyList<string> To)> Received { get; } = Channel.CreateUnbounded<(MimeMessage, IReadOnlyList<string>)>();

    public static int FreePort() => EdgeMail.Testing.Loopback.FreePort();

    public async Task<(MimeMessage Message, IReadOnlyList<string> To)> NextAsync() =>
        await Received.Reader.ReadAsync().AsTask().WaitAsync(EdgeMail.Testing.Await.DefaultTimeout);

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        try
        {
            await _run;
        }
        catch (OperationCanceledException)
        {
        }

        _stop.Dispose();
    }

    private sealed class Store(SmtpSink sink) : MessageStore
    {
        public override async Task<SmtpResponse> SaveAsync(ISessionContext context, IMessageTransaction transaction, ReadOnlySequence<byte> buffer, CancellationToken cancellationToken)
        {
            using var stream = new MemoryStream(buffer.ToArray());
            var message = await MimeMessage.LoadAsync(stream, cancellationToken);
            var reply = sink.Reply(message);
            sink.Transports.Enqueue((context.Pipe.IsSecure, context.Authentication.IsAuthenticated ? context.Authentication.User : null));
            if (reply.ReplyCode == SmtpReplyCode.Ok)
            {
                sink.Received.Writer.TryWrite((message, transaction.To.Select(t => t.User + "@" + t.Host).ToList()));
            }

            return reply;
        }
    }

    private sealed class Filter(SmtpSink sink) : IMailboxFilter
    {
        public Task<bool> CanAcceptFromAsync(ISessionContext context, IMailbox from, int size, CancellationToken cancellationToken) => Task.FromResult(true);

        public Task<bool> CanDeliverToAsync(ISessionContext context, IMailbox to, IMailbox from, CancellationToken cancellationToken) =>
            Task.FromResult(!sink.Refuse.Contains(to.User + "@" + to.Host));
    }
}
