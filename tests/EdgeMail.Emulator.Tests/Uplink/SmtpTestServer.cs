using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using SmtpServer;
using SmtpServer.Authentication;
using SmtpServer.Protocol;
using SmtpServer.Storage;

namespace EdgeMail.Emulator.Tests.Uplink;

/// <summary>The SmtpServer package on a loopback port the OS chose, with AUTH and scripted replies to DATA.</summary>
internal sealed class SmtpTestServer : IAsyncDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _run;

    public SmtpTestServer()
    {
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            Port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }

        var options = new SmtpServerOptionsBuilder().ServerName("gateway.test")
            .Endpoint(b => b.Endpoint(new IPEndPoint(IPAddress.Loopback, Port)).AllowUnsecureAuthentication(true).AuthenticationRequired(true))
            .Build();
        var services = new SmtpServer.ComponentModel.ServiceProvider();
        services.Add(new Store(this));
        services.Add(new Authenticator(this));
        _run = new SmtpServer.SmtpServer(options, services).StartAsync(_stop.Token);
    }

    public int Port { get; }

    public Dictionary<string, string> Users { get; } = new(StringComparer.Ordinal) { ["dev-1"] = "s3cret" };

    /// <summary>Reply to the end of DATA, by message number (1-based); default 250.</summary>
    public Func<int, SmtpResponse> Reply { get; set; } = _ => SmtpResponse.Ok;

    public ConcurrentQueue<(string User, string From, IReadOnlyList<string> To, byte[] Data)> Received { get; } = new();

    private int _messages;

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

    private sealed class Store(SmtpTestServer server) : MessageStore
    {
        public override Task<SmtpResponse> SaveAsync(ISessionContext context, IMessageTransaction transaction, ReadOnlySequence<byte> buffer, CancellationToken cancellationToken)
        {
            SmtpResponse reply = server.Reply(Interlocked.Increment(ref server._messages));
            if (reply.ReplyCode == SmtpReplyCode.Ok)
            {
                string user = context.Authentication.User ?? string.Empty;
                server.Received.Enqueue((user, transaction.From.User + "@" + transaction.From.Host,
                    transaction.To.Select(t => t.User + "@" + t.Host).ToList(), buffer.ToArray()));
            }

            return Task.FromResult(reply);
        }
    }

    private sealed class Authenticator(SmtpTestServer server) : UserAuthenticator
    {
        public override Task<bool> AuthenticateAsync(ISessionContext context, string user, string password, CancellationToken cancellationToken) =>
            Task.FromResult(server.Users.TryGetValue(user, out string? p) && p == password);
    }
}
