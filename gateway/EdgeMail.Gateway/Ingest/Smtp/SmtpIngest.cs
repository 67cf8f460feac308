using System.Net;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Security;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using SmtpServer;

namespace EdgeMail.Gateway.Ingest.Smtp;

/// <summary>
/// The SMTP submission listener (SmtpServer package) for devices that can only send mail. One server with the
/// configured endpoints: <c>StartTls</c> (AUTH only after STARTTLS), <c>Implicit</c> TLS, or <c>None</c> (plain,
/// allow-listed sources only). Start-up waits until every endpoint is bound — and fails with the reason when one
/// cannot be (SmtpServer's own start task only faults, silently, on a port conflict).
/// </summary>
public sealed partial class SmtpIngest : IHostedService, IDisposable
{
    private readonly GatewayOptions _options;
    private readonly SmtpIngestOptions _smtp;
    private readonly SubmissionPolicy _policy;
    private readonly SubmissionStore _store;
    private readonly Operations.GatewayLifetime _lifetime;
    private readonly TimeProvider _clock;
    private readonly ILogger<SmtpIngest> _logger;
    private readonly CancellationTokenSource _stop = new();
    private GuardedListenerFactory? _guard;
    private readonly List<IPEndPoint> _bound = [];
    private SmtpServer.SmtpServer? _server;
    private Task? _run;
    private X509Certificate2? _certificate;

    /// <summary>Creates the listener; it starts with the host.</summary>
    /// <param name="options">Gateway options.</param>
    /// <param name="smtp">SMTP options.</param>
    /// <param name="policy">AUTH, MAIL and RCPT policy.</param>
    /// <param name="store">Message store.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="logger">Logger.</param>
    /// <param name="lifetime">Stops the gateway (non-zero exit) when the listener dies while running.</param>
    public SmtpIngest(IOptions<GatewayOptions> options, IOptions<SmtpIngestOptions> smtp, SubmissionPolicy policy, SubmissionStore store, TimeProvider clock, ILogger<SmtpIngest> logger,
        Operations.GatewayLifetime lifetime)
    {
        _lifetime = lifetime;
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(smtp);
        _options = options.Value;
        _smtp = smtp.Value;
        _policy = policy;
        _store = store;
        _clock = clock;
        _logger = logger;
    }

    /// <summary>The bound endpoints, in configuration order (real ports when 0 was asked for); empty before start.</summary>
    public IReadOnlyList<IPEndPoint> Endpoints
    {
        get
        {
            lock (_bound)
            {
                return [.. _bound];
            }
        }
    }

    /// <summary>The TLS certificate in use, if any endpoint uses TLS.</summary>
    public X509Certificate2? Certificate => _certificate;

    /// <summary>Connections open now.</summary>
    public int OpenConnections => Limiter?.Open ?? 0;

    private ConnectionLimiter? Limiter { get; set; }

    /// <inheritdoc />
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (_smtp.Endpoints.Count == 0)
        {
            return;
        }

        if (_smtp.Endpoints.Any(e => !e.Tls.Equals("None", StringComparison.OrdinalIgnoreCase)))
        {
            _certificate = TlsCertificates.Load(_smtp.CertificatePath, _smtp.CertificatePassword, _options.DataPath(), _options.Sender.Hostname, _clock, out bool generated);
            if (generated)
            {
                LogGeneratedCertificate(Path.Combine(_options.DataPath(), TlsCertificates.GeneratedFileName), _certificate.Thumbprint);
            }

            TlsCertificates.WarnAboutDates(_logger, _certificate, _smtp.CertificatePath, _options.DataPath(), "SMTP", "Smtp:CertificatePath", _clock.GetUtcNow());
        }

        var builder = new SmtpServerOptionsBuilder()
            .ServerName(_options.Sender.Hostname)
            .MaxMessageSize(_smtp.MaxMessageBytes, MaxMessageSizeHandling.Strict)
            .MaxAuthenticationAttempts(3)
            .MaxRetryCount(5)
            .CommandWaitTimeout(Timeout.InfiniteTimeSpan) // the guarded pipe keeps both clocks (GuardedListener.cs)
            .CustomSmtpGreeting(_ => $"220 {_options.Sender.Hostname} ESMTP EdgeMail");
        var definitions = new List<IEndpointDefinition>();
        foreach (var e in _smtp.Endpoints)
        {
            var b = new EndpointDefinitionBuilder()
                .Endpoint(new IPEndPoint(IPAddress.Parse(e.BindAddress), e.Port))
                .SessionTimeout(Timeout.InfiniteTimeSpan)
                .SupportedSslProtocols(SslProtocols.Tls12 | SslProtocols.Tls13)
                .AllowUnsecureAuthentication(false);
            if (e.Tls.Equals("StartTls", StringComparison.OrdinalIgnoreCase))
            {
                b.Certificate(_certificate!);
            }
            else if (e.Tls.Equals("Implicit", StringComparison.OrdinalIgnoreCase))
            {
                b.Certificate(_certificate!).IsSecure(true);
            }

            var definition = b.Build();
            definitions.Add(definition);
            builder.Endpoint(definition);
        }

        var started = new Dictionary<IEndpointDefinition, IPEndPoint>();
        var allStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Limiter = new ConnectionLimiter(_smtp.MaxConnections, _smtp.MaxConnectionsPerSource);
        var factory = _guard = new GuardedListenerFactory(Limiter, _smtp.MaxCommandLineBytes, _smtp.CommandTimeout, _smtp.SessionTimeout, _clock, _options.Sender.Hostname, _logger,
            (definition, local) =>
            {
                lock (started)
                {
                    started[definition] = (IPEndPoint)local;
                    if (started.Count == definitions.Count)
                    {
                        allStarted.TrySetResult();
                    }
                }
            },
            (definition, ex) => allStarted.TrySetException(new InvalidOperationException(
                $"The SMTP listener cannot listen on {definition.Endpoint}: {ex.Message}. Fix: free the port or change Smtp:Endpoints (Port 0 lets the OS choose).", ex)));
        var services = new SmtpServer.ComponentModel.ServiceProvider();
        services.Add((SmtpServer.Storage.IMailboxFilter)_policy);
        services.Add((SmtpServer.Authentication.IUserAuthenticator)_policy);
        services.Add(_store);
        services.Add(factory);
        _server = new SmtpServer.SmtpServer(builder.Build(), services);
        // The mailbox filter is not given MAIL's parameters, only SmtpServer's reading of SIZE (0 for one it cannot read).
        _server.SessionCreated += (_, e) => e.Context.CommandExecuting += (_, c) =>
        {
            if (c.Command is SmtpServer.Protocol.MailCommand mail)
            {
                _policy.CheckDeclaredSize(e.Context, mail.Parameters);
            }
        };
        _server.SessionFaulted += (_, e) =>
        {
            if (!GuardedListenerFactory.ClosedByGuard(e.Context))
            {
                LogSessionFaulted(SubmissionPolicy.Remote(e.Context).ToString(), e.Exception.GetType().Name, e.Exception.Message);
            }
        };
        _run = _server.StartAsync(_stop.Token);
        var first = await Task.WhenAny(allStarted.Task, _run).WaitAsync(TimeSpan.FromSeconds(30), cancellationToken).ConfigureAwait(false);
        if (first == _run || allStarted.Task.IsFaulted)
        {
            _stop.Cancel();
            if (allStarted.Task.IsFaulted)
            {
                await allStarted.Task.ConfigureAwait(false);
            }

            await _run.ConfigureAwait(false);
            throw new InvalidOperationException("The SMTP listener stopped while starting.");
        }

        // SmtpServer contains each session's faults; if the server itself ends with one, no device can submit any more.
        // That is a gateway that cannot do its job: stop with a failure code so the service manager restarts it.
        _ = _run.ContinueWith(t => _lifetime.Fail("the SMTP listener stopped: " + t.Exception!.GetBaseException().Message, t.Exception),
            CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
        lock (_bound)
        {
            _bound.AddRange(definitions.Select(d => started[d]));
        }

        for (int i = 0; i < definitions.Count; i++)
        {
            LogListening(_bound[i], _smtp.Endpoints[i].Tls, _smtp.AllowedSources.Count);
        }
    }

    /// <inheritdoc />
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_server is null || _run is null)
        {
            return;
        }

        // The sessions first, each answered 421 where it stands (a message being committed is answered first): SmtpServer's
        // shutdown cancels them, and a session reading a message's data would answer that with a permanent 554.
        await _guard!.CloseAllAsync(TimeSpan.FromSeconds(5), cancellationToken).ConfigureAwait(false);
        _server.Shutdown();
        await _stop.CancelAsync().ConfigureAwait(false);
        try
        {
            await _run.WaitAsync(TimeSpan.FromSeconds(5), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is OperationCanceledException or TimeoutException)
        {
            // Sessions still open are cut off with the process.
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _stop.Dispose();
        _certificate?.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "SMTP submission listening on {Endpoint} (TLS: {Tls}); {Sources} allow-listed source network(s)")]
    private partial void LogListening(IPEndPoint endpoint, string tls, int sources);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Generated a self-signed TLS certificate {File} (SHA-1 {Thumbprint}); configure Smtp:CertificatePath for a real one")]
    private partial void LogGeneratedCertificate(string file, string thumbprint);

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP session from {Peer} ended by an error: {Type}: {Reason}")]
    private partial void LogSessionFaulted(string peer, string type, string reason);

}

/// <summary>Registers SMTP ingest with the host.</summary>
public static class SmtpIngestRegistration
{
    /// <summary>Adds the <c>Smtp</c> options, their validation, the policy, the store and the listener.</summary>
    /// <param name="services">Services.</param>
    /// <param name="configuration">Configuration root.</param>
    /// <returns>The services.</returns>
    public static IServiceCollection AddSmtpIngest(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddSingleton<IValidateOptions<SmtpIngestOptions>, SmtpIngestOptionsValidator>();
        services.AddOptions<SmtpIngestOptions>().Bind(configuration.GetSection(SmtpIngestOptions.Section)).ValidateOnStart();
        services.AddSingleton<SubmissionPolicy>();
        services.AddSingleton<SubmissionHandler>();
        services.AddSingleton<SubmissionStore>();
        services.AddSingleton<SmtpIngest>();
        services.AddHostedService(sp => sp.GetRequiredService<SmtpIngest>());
        return services;
    }
}
