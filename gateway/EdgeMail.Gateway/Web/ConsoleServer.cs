using System.Net;
using System.Security.Claims;
using System.Text.Encodings.Web;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Devices;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Relay;
using EdgeMail.Gateway.Security;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Web.Api;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.DataProtection;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.HttpOverrides;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using OpenTelemetry.Metrics;

namespace EdgeMail.Gateway.Web;

/// <summary>
/// The operator's console, in the gateway process: a Kestrel server of its own (own routes and middleware) over the
/// gateway's services. Loopback by default; bound anywhere else it serves TLS only (the gateway's certificate unless
/// <c>Console:CertificatePath</c> names one). Every route needs a logged-in admin (cookie, with CSRF protection on
/// changes) or an API key (<c>Authorization: Bearer emk_...</c>) whose scope allows it (<see cref="ConsoleScopes"/>),
/// except login and setup, <c>/livez</c> and <c>/readyz</c>, and <c>/metrics</c> when <c>Console:MetricsAnonymous</c> is set.
/// </summary>
public sealed partial class ConsoleServer : IHostedService, IAsyncDisposable
{
    /// <summary>The header the UI sends its CSRF token in.</summary>
    public const string CsrfHeader = "X-CSRF-Token";

    private readonly IServiceProvider _gateway;
    private readonly ConsoleOptions _options;
    private readonly GatewayOptions _gatewayOptions;
    private readonly ConsoleAuth _auth;
    private readonly ILogger<ConsoleServer> _logger;
    private readonly List<Action<IServiceCollection>> _extraServices = [];
    private readonly List<Action<WebApplication>> _extraEndpoints = [];
    private WebApplication? _app;

    /// <summary>Creates the console; it listens once the host starts it.</summary>
    /// <param name="gateway">The gateway's services.</param>
    /// <param name="options">Console options.</param>
    /// <param name="gatewayOptions">Gateway options.</param>
    /// <param name="auth">Who may log in.</param>
    /// <param name="logger">Logger.</param>
    public ConsoleServer(IServiceProvider gateway, IOptions<ConsoleOptions> options, IOptions<GatewayOptions> gatewayOptions, ConsoleAuth auth, ILogger<ConsoleServer> logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(gatewayOptions);
        _gateway = gateway;
        _options = options.Value;
        _gatewayOptions = gatewayOptions.Value;
        _auth = auth;
        _logger = logger;
    }

    /// <summary>Where the console listens, once started (the real port when 0 was asked for).</summary>
    public Uri? Address { get; private set; }

    /// <summary>The console's own services (tests enumerate its routes).</summary>
    public IServiceProvider? Services => _app?.Services;

    /// <summary>Adds services to the console's container before it starts (features that register their own endpoints).</summary>
    /// <param name="configure">The registration.</param>
    public void AddServices(Action<IServiceCollection> configure) => _extraServices.Add(configure);

    /// <summary>Adds endpoints before the console starts.</summary>
    /// <param name="map">The mapping.</param>
    public void AddEndpoints(Action<WebApplication> map) => _extraEndpoints.Add(map);

    /// <inheritdoc />
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (!_options.Enabled)
        {
            return;
        }

        await _auth.InitializeAsync(_gatewayOptions.DataPath(), cancellationToken).ConfigureAwait(false);
        var address = IPAddress.Parse(_options.BindAddress);
        bool tls = !IPAddress.IsLoopback(address);
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ApplicationName = "EdgeMail.Gateway", ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(_gateway.GetRequiredService<ILoggerFactory>());
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Listen(address, _options.Port, listen =>
            {
                if (tls)
                {
                    listen.UseHttps(LoadCertificate());
                }
            });
        });
        ConfigureServices(builder.Services, tls);
        foreach (var configure in _extraServices)
        {
            configure(builder.Services);
        }

        var app = builder.Build();
        if (_options.TrustedProxies.Count > 0)
        {
            app.UseForwardedHeaders(ForwardedFrom(_options.TrustedProxies));
        }

        app.UseMiddleware<SecurityHeaders>();
        app.UseAuthentication();
        app.UseAuthorization();
        app.UseMiddleware<CsrfCheck>();
        app.UseMiddleware<ScopeCheck>();
        app.UseMiddleware<UnreadableRequest>();
        ConsoleEndpoints.Map(app);
        foreach (var map in _extraEndpoints)
        {
            map(app);
        }

        try
        {
            await app.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (IOException ex) when (ex.InnerException is Microsoft.AspNetCore.Connections.AddressInUseException)
        {
            // The run command prints this one line: the operator learns which key holds the port another process has.
            await app.DisposeAsync().ConfigureAwait(false);
            throw new InvalidOperationException(
                $"The console cannot listen on {_options.BindAddress}:{_options.Port} (Console:Port): {ex.Message.TrimEnd('.')}. Fix: free the port or change Console:Port (0 lets the OS choose).", ex);
        }

        _app = app;
        string bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        Address = new Uri(bound.Replace("[::]", "localhost", StringComparison.Ordinal) + "/");
        LogListening(Address);
        if (_auth.SetupToken is { } token)
        {
            string baseUrl = _options.PublicUrl.Length > 0 ? _options.PublicUrl.TrimEnd('/') + "/" : Address.ToString();
            LogSetup(baseUrl + "setup#" + token);
        }
    }

    /// <inheritdoc />
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_app is not null)
        {
            await _app.StopAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (_app is not null)
        {
            await _app.DisposeAsync().ConfigureAwait(false);
        }
    }

    private void ConfigureServices(IServiceCollection services, bool tls)
    {
        // The console's handlers get the gateway's own singletons.
        void Forward<T>()
            where T : class => services.AddSingleton(_ => _gateway.GetRequiredService<T>());
        Forward<ISpool>();
        Forward<DeviceRegistry>();
        Forward<GatewayMetrics>();
        Forward<TimeProvider>();
        Forward<DiskGuard>();
        Forward<RelayHealth>();
        Forward<ReceiptPublisher>();
        Forward<AlertIngest>();
        Forward<IMailTransport>();
        Forward<MailComposer>();
        Forward<ConsoleAuth>();
        Forward<IngestPressure>();
        Forward<Ingest.Smtp.SubmissionHandler>();
        Forward<DevicePresence>();
        Forward<FreeSpaceProbe>();
        Forward<SilenceWatch>();
        Forward<PipelineProbe>();
        services.AddSingleton<ConsoleContext>();
        services.AddSingleton(_ => _gateway.GetRequiredService<IOptions<GatewayOptions>>());
        services.AddSingleton(_ => _gateway.GetRequiredService<IOptions<ConsoleOptions>>());
        services.AddSingleton(new GatewayServices(_gateway));

        services.AddDataProtection()
            .SetApplicationName("edgemail-console")
            .PersistKeysToFileSystem(Directory.CreateDirectory(Path.Combine(_gatewayOptions.DataPath(), "console-keys")));
        services.AddAuthentication("console")
            .AddPolicyScheme("console", "cookie or API key", o => o.ForwardDefaultSelector = ctx =>
                ctx.Request.Headers.Authorization.ToString().StartsWith("Bearer ", StringComparison.Ordinal) ? ApiKeyAuthentication.SchemeName : CookieAuthenticationDefaults.AuthenticationScheme)
            .AddCookie(o =>
            {
                o.Cookie.Name = "edgemail_console";
                o.Cookie.HttpOnly = true;
                o.Cookie.SameSite = SameSiteMode.Strict;
                o.Cookie.SecurePolicy = tls ? CookieSecurePolicy.Always : CookieSecurePolicy.SameAsRequest;
                o.ExpireTimeSpan = ConsoleAuth.SessionIdleTimeout;
                o.SlidingExpiration = true;
                o.LoginPath = "/login";
                o.Events.OnValidatePrincipal = async ctx =>
                {
                    if (ctx.Principal is null || !await _auth.ValidateSessionAsync(ctx.Principal, ctx.HttpContext.RequestAborted).ConfigureAwait(false))
                    {
                        ctx.RejectPrincipal();
                    }
                };
                o.Events.OnRedirectToLogin = ctx => Refuse(ctx, StatusCodes.Status401Unauthorized);
                o.Events.OnRedirectToAccessDenied = ctx => Refuse(ctx, StatusCodes.Status403Forbidden);
            })
            .AddScheme<AuthenticationSchemeOptions, ApiKeyAuthentication>(ApiKeyAuthentication.SchemeName, null);
        services.Configure<Microsoft.AspNetCore.Routing.RouteHandlerOptions>(o => o.ThrowOnBadRequest = true); // for UnreadableRequest
        services.AddAuthorization(o => o.FallbackPolicy = new Microsoft.AspNetCore.Authorization.AuthorizationPolicyBuilder().RequireAuthenticatedUser().Build());
        services.AddAntiforgery(o =>
        {
            o.HeaderName = CsrfHeader;
            o.Cookie.Name = "edgemail_csrf";
            o.Cookie.SameSite = SameSiteMode.Strict;
            o.Cookie.SecurePolicy = tls ? CookieSecurePolicy.Always : CookieSecurePolicy.SameAsRequest;
        });
        services.AddOpenApi("v1", o => o.AddDocumentTransformer((document, _, _) =>
        {
            document.Info.Title = "EdgeMail gateway API";
            document.Info.Description = "Everything the operator's console shows and does. Authenticate with a console session or `Authorization: Bearer emk_...`. "
                + "An API key has a scope, chosen when it is made: `read` (GET requests, `/metrics`, `/events`) or `admin` (everything, as a console session). "
                + $"Each operation names the scope it needs in `{ConsoleScopes.OpenApiExtension}`; a read key asking for more gets 403 with a problem saying so.";
            return Task.CompletedTask;
        }).AddOperationTransformer((operation, context, _) =>
        {
            var metadata = context.Description.ActionDescriptor.EndpointMetadata;
            if (metadata.OfType<Microsoft.AspNetCore.Authorization.IAllowAnonymous>().Any())
            {
                return Task.CompletedTask; // login and setup: no credential to have a scope
            }

            string scope = ApiKeyScopes.Name(ConsoleScopes.Required(context.Description.HttpMethod ?? HttpMethods.Get, metadata));
            operation.Extensions ??= new Dictionary<string, Microsoft.OpenApi.IOpenApiExtension>();
            operation.Extensions[ConsoleScopes.OpenApiExtension] = new Microsoft.OpenApi.JsonNodeExtension(scope);
            operation.Description = (string.IsNullOrEmpty(operation.Description) ? string.Empty : operation.Description + "\n\n")
                + $"Needs a console session or an API key with scope `{scope}`.";
            return Task.CompletedTask;
        }).AddSchemaTransformer((schema, context, _) =>
        {
            if (context.JsonPropertyInfo?.Name == "scope" && context.JsonPropertyInfo.DeclaringType is var type
                && (type == typeof(ApiKeyRequest) || type == typeof(ApiKeyInfo) || type == typeof(NewApiKey)))
            {
                schema.Enum = [.. ApiKeyScopes.Names.Select(n => (System.Text.Json.Nodes.JsonNode)n)];
            }

            return Task.CompletedTask;
        }));
        services.ConfigureHttpJsonOptions(o => o.SerializerOptions.Encoder = JavaScriptEncoder.Default);

        // /metrics: the gateway's meter in Prometheus text format (OpenTelemetry's exporter).
        // Each metric stream allocates its points up front, 2,000 of them by default (~140 KB per instrument, 2.4 MB in
        // all); the gateway's tags are a handful of fixed words (transport, result, outcome, stage, limit), so 100 is
        // ample, and a combination past it is still counted, under OpenTelemetry's overflow point. The histogram keeps
        // the default stream: a view of its own would have to restate the buckets its instrument advises.
        services.AddOpenTelemetry().WithMetrics(metrics => metrics.AddMeter(GatewayMetrics.MeterName)
            .AddView(instrument => instrument is System.Diagnostics.Metrics.Histogram<double> ? null : new MetricStreamConfiguration { CardinalityLimit = 100 })
            .AddPrometheusExporter());
    }

    // Only the configured proxies: ASP.NET Core would otherwise believe any loopback peer, and a console on loopback
    // behind nothing would let a local client choose the address its wrong passwords count against. One hop: the
    // address the trusted proxy saw.
    private static ForwardedHeadersOptions ForwardedFrom(IEnumerable<string> proxies)
    {
        var options = new ForwardedHeadersOptions { ForwardedHeaders = ForwardedHeaders.XForwardedFor | ForwardedHeaders.XForwardedProto, ForwardLimit = 1 };
        options.KnownIPNetworks.Clear();
        options.KnownProxies.Clear();
        foreach (string proxy in proxies)
        {
            if (IPAddress.TryParse(proxy, out var address))
            {
                options.KnownProxies.Add(address);
            }
            else
            {
                options.KnownIPNetworks.Add(System.Net.IPNetwork.Parse(proxy));
            }
        }

        return options;
    }

    // A page opened without a session goes to the login page; everything else (the API, /metrics, assets) gets the
    // status code, so scripts and scrapers see 401 rather than a login form.
    private static Task Refuse(RedirectContext<CookieAuthenticationOptions> ctx, int status)
    {
        string path = ctx.Request.Path.Value ?? "/";
        if (HttpMethods.IsGet(ctx.Request.Method) && (path == "/" || ConsoleEndpoints.Pages.Contains(path.TrimStart('/'))))
        {
            ctx.Response.Redirect("/login");
            return Task.CompletedTask;
        }

        ctx.Response.StatusCode = status;
        return Task.CompletedTask;
    }

    private System.Security.Cryptography.X509Certificates.X509Certificate2 LoadCertificate()
    {
        string path = _options.CertificatePath.Length > 0 ? _options.CertificatePath : _gatewayOptions.Mqtt.CertificatePath;
        string password = _options.CertificatePath.Length > 0 ? _options.CertificatePassword : _gatewayOptions.Mqtt.CertificatePassword;
        var clock = _gateway.GetRequiredService<TimeProvider>();
        var certificate = TlsCertificates.Load(path, password, _gatewayOptions.DataPath(), _gatewayOptions.Sender.Hostname, clock, out _);
        TlsCertificates.WarnAboutDates(_logger, certificate, path, _gatewayOptions.DataPath(), "console", "Console:CertificatePath", clock.GetUtcNow());
        return certificate;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Console listening on {Address}")]
    private partial void LogListening(Uri address);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The console has no admin password yet. Set one at {SetupLink} (works once, until a password is set), or run: edgemail admin set-password")]
    private partial void LogSetup(string setupLink);
}

/// <summary>The gateway's service provider, for console handlers that need a service the console does not forward.</summary>
/// <param name="Services">The gateway's services.</param>
public sealed record GatewayServices(IServiceProvider Services);

/// <summary>Authenticates <c>Authorization: Bearer emk_ID.SECRET</c> against the stored API key hashes.</summary>
internal sealed class ApiKeyAuthentication(IOptionsMonitor<AuthenticationSchemeOptions> options, ILoggerFactory logger, UrlEncoder encoder, ConsoleAuth auth)
    : AuthenticationHandler<AuthenticationSchemeOptions>(options, logger, encoder)
{
    public const string SchemeName = "api-key";

    protected override async Task<AuthenticateResult> HandleAuthenticateAsync()
    {
        string header = Request.Headers.Authorization.ToString();
        if (!header.StartsWith("Bearer ", StringComparison.Ordinal))
        {
            return AuthenticateResult.NoResult();
        }

        if (await auth.VerifyApiKeyAsync(header["Bearer ".Length..].Trim(), Context.RequestAborted) is not { } key)
        {
            return AuthenticateResult.Fail("unknown, wrong or revoked API key");
        }

        var identity = new ClaimsIdentity(
            [new Claim(ClaimTypes.Name, "api-key:" + key.Id), new Claim(ConsoleAuth.ApiKeyClaim, key.Id), new Claim(ConsoleAuth.ScopeClaim, ApiKeyScopes.Name(key.Scope))],
            SchemeName);
        return AuthenticateResult.Success(new AuthenticationTicket(new ClaimsPrincipal(identity), SchemeName));
    }
}

/// <summary>Security headers on every response: no framing, no sniffing, no referrer, a strict content policy.</summary>
/// <summary>
/// A request the endpoint cannot bind (a body that is not JSON, a value of the wrong type, text that is not Unicode, no
/// body where one is needed, another media type) gets the API's error object saying what was wrong, with the status the
/// binder chose (400, 415), instead of ASP.NET Core's empty response in production.
/// </summary>
internal sealed class UnreadableRequest(RequestDelegate next)
{
    public async Task InvokeAsync(HttpContext context)
    {
        string? problem;
        try
        {
            await next(context).ConfigureAwait(false);
            // The binder answers a body of another media type with a bare 415, even when told to throw.
            problem = context.Response is { HasStarted: false, StatusCode: StatusCodes.Status415UnsupportedMediaType }
                ? $"the body must be JSON (Content-Type: application/json), not '{context.Request.ContentType}'"
                : null;
        }
        catch (BadHttpRequestException ex) when (!context.Response.HasStarted)
        {
            context.Response.StatusCode = ex.StatusCode;
            problem = Problem(ex);
        }

        if (problem is not null)
        {
            await context.Response.WriteAsJsonAsync(new ApiError(problem), context.RequestAborted).ConfigureAwait(false);
        }
    }

    // System.Text.Json says where the input went wrong (path, line, byte) and what it expected, never the value it read;
    // why a value could not be taken (a lone surrogate, a number for a string) is its inner exception's.
    private static string Problem(BadHttpRequestException ex) => ex.InnerException switch
    {
        System.Text.Json.JsonException { InnerException: { } cause } json when cause is not System.Text.Json.JsonException => $"the body is not the JSON this request takes: {json.Message} ({cause.Message})",
        System.Text.Json.JsonException json => $"the body is not the JSON this request takes: {json.Message}",
        _ when ex.Message.Contains("no body was provided", StringComparison.Ordinal) => "this request needs a JSON body",
        _ => ex.Message,
    };
}

internal sealed class SecurityHeaders(RequestDelegate next)
{
    public Task InvokeAsync(HttpContext context)
    {
        context.Response.OnStarting(() =>
        {
            var headers = context.Response.Headers;
            headers.XContentTypeOptions = "nosniff";
            headers["Referrer-Policy"] = "no-referrer";
            if (!headers.ContainsKey("Content-Security-Policy"))
            {
                headers.ContentSecurityPolicy = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";
                headers.XFrameOptions = "DENY";
            }

            if (context.Request.IsHttps)
            {
                headers.StrictTransportSecurity = "max-age=31536000";
            }

            if (context.Request.Path.StartsWithSegments("/api", StringComparison.Ordinal))
            {
                headers.CacheControl = "no-store";
            }

            return Task.CompletedTask;
        });
        return next(context);
    }
}

/// <summary>A change made with a console session (cookie) must carry the session's CSRF token; API keys are not sent by browsers, so they need none.</summary>
/// <remarks>
/// The antiforgery service (a singleton) comes in through the constructor: an <c>InvokeAsync</c> with parameters besides
/// the context makes ASP.NET Core compile an expression for it, which loads System.Linq.Expressions and its compiler
/// (with the endpoints' generated request delegates, kept out of the process: ~5 MiB resident; see the project file).
/// </remarks>
internal sealed class CsrfCheck(RequestDelegate next, IAntiforgery antiforgery)
{
    public async Task InvokeAsync(HttpContext context)
    {
        string method = context.Request.Method;
        bool unsafeMethod = !(HttpMethods.IsGet(method) || HttpMethods.IsHead(method) || HttpMethods.IsOptions(method));
        bool cookieSession = context.User.Identity?.AuthenticationType == CookieAuthenticationDefaults.AuthenticationScheme;
        if (unsafeMethod && cookieSession && !await antiforgery.IsRequestValidAsync(context).ConfigureAwait(false))
        {
            context.Response.StatusCode = StatusCodes.Status400BadRequest;
            await context.Response.WriteAsJsonAsync(new { error = $"missing or wrong {ConsoleServer.CsrfHeader}: reload the page" }).ConfigureAwait(false);
            return;
        }

        await next(context).ConfigureAwait(false);
    }
}
