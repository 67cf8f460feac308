using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
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

    public SmtpSink(int port = 0)
    {
        Port = port == 0 ? FreePort() : port;
        var options = new SmtpServerOptionsBuilder().ServerName("sink.test")
            .Endpoint(b => b.Endpoint(new IPEndPoint(IPAddress.Loopback, Port)).AllowUnsecureAuthentication(true))
            .Build();
        var services = new SmtpServer.ComponentModel.ServiceProvider();
        services.Add(new Store(this));
        services.Add(new Filter(this));
        _run = new SmtpServer.SmtpServer(options, services).StartAsync(_stop.Token);
    }

    public int Port { get; }

    /// <summary>Reply for DATA; default 250.</summary>
    public Func<MimeMessage, SmtpResponse> Reply { get; set; } = _ => new SmtpResponse(SmtpReplyCode.Ok, "2.0.0 queued as Q1");

    /// <summary>Recipients refused at RCPT with 550.</summary>
    public ConcurrentBag<string> Refuse { get; } = [];

    public Channel<(MimeMessage Message, IReadOnlyList<string> To)> Received { get; } = Channel.CreateUnbounded<(MimeMessage, IReadOnlyList<string>)>();

    public static int FreePort()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

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
