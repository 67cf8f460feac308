using System.Buffers;
using System.Net;
using SmtpServer;
using SmtpServer.Authentication;
using SmtpServer.ComponentModel;
using SmtpServer.Net;
using SmtpServer.Protocol;
using SmtpServer.Storage;

namespace EdgeMail.Emulator.Fleet;

/// <summary>
/// <c>--embedded-broker</c> with <c>--uplink smtp</c>: an SMTP receiver (the SmtpServer package) in the emulator's process,
/// on a free loopback port, that offers AUTH PLAIN without TLS, accepts exactly the fleet's credentials, answers 250 to
/// every message and counts the alert parts. For running the emulator alone and for the fleet-scale benchmark; like the
/// embedded MQTT broker it is not the gateway (no spool, no de-duplication, no receipts).
/// </summary>
internal sealed class EmbeddedSmtpReceiver : IAsyncDisposable
{
    private static readonly byte[] AlertPart = "application/vnd.edgemail.alert+json"u8.ToArray();

    private readonly CancellationTokenSource _stop = new();
    private Task _run = Task.CompletedTask;
    private long _alerts;
    private long _messages;

    private EmbeddedSmtpReceiver()
    {
    }

    public int Port { get; private set; }

    /// <summary>Alert messages received (resends included).</summary>
    public long AlertsReceived => Interlocked.Read(ref _alerts);

    public long MessagesReceived => Interlocked.Read(ref _messages);

    public static async Task<EmbeddedSmtpReceiver> StartAsync(IReadOnlyDictionary<string, string> credentials)
    {
        var receiver = new EmbeddedSmtpReceiver();
        var started = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var listeners = new EndpointListenerFactory();
        listeners.EndpointStarted += (_, e) => started.TrySetResult(((IPEndPoint)e.LocalEndPoint).Port);
        ISmtpServerOptions options = new SmtpServerOptionsBuilder().ServerName("emulator.localhost").MaxMessageSize(64 * 1024)
            .Endpoint(b => b.Endpoint(new IPEndPoint(IPAddress.Loopback, 0)).AllowUnsecureAuthentication(true).AuthenticationRequired(true))
            .Build();
        var services = new ServiceProvider();
        services.Add(listeners);
        services.Add(new Store(receiver));
        services.Add(new Authenticator(credentials));
        receiver._run = new SmtpServer.SmtpServer(options, services).StartAsync(receiver._stop.Token);
        Task first = await Task.WhenAny(started.Task, receiver._run).WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        if (first == receiver._run)
        {
            await receiver._run.ConfigureAwait(false);
            throw new InvalidOperationException("The embedded SMTP receiver stopped while starting.");
        }

        receiver.Port = await started.Task.ConfigureAwait(false);
        return receiver;
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        try
        {
            await _run.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }

        _stop.Dispose();
    }

    private sealed class Store(EmbeddedSmtpReceiver receiver) : MessageStore
    {
        public override Task<SmtpResponse> SaveAsync(ISessionContext context, IMessageTransaction transaction, ReadOnlySequence<byte> buffer, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref receiver._messages);
            if (Contains(buffer, AlertPart))
            {
                Interlocked.Increment(ref receiver._alerts);
            }

            return Task.FromResult(SmtpResponse.Ok);
        }

        private static bool Contains(ReadOnlySequence<byte> buffer, byte[] needle)
        {
            var reader = new SequenceReader<byte>(buffer);
            return reader.TryReadTo(out ReadOnlySequence<byte> _, needle, advancePastDelimiter: false);
        }
    }

    private sealed class Authenticator(IReadOnlyDictionary<string, string> credentials) : UserAuthenticator
    {
        public override Task<bool> AuthenticateAsync(ISessionContext context, string user, string password, CancellationToken cancellationToken) =>
            Task.FromResult(credentials.TryGetValue(user, out string? secret) && secret == password);
    }
}
