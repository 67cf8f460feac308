using System.Reflection;
using EdgeMail.Gateway.Spool;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace EdgeMail.Gateway.Web.Api;

/// <summary>Login, setup and session; the UI's pages and assets; then every API group.</summary>
public static class ConsoleEndpoints
{
    /// <summary>Pages of the UI (each <c>Web/Ui/NAME.html</c>), served at <c>/NAME</c> (the dashboard at <c>/</c>).</summary>
    public static readonly IReadOnlyList<string> Pages = ["devices", "device", "alerts", "alert", "queue", "mailbox", "rejected", "config"];

    // What an anonymous browser may load: the login and setup pages and what they need.
    private static readonly HashSet<string> PublicAssets = new(StringComparer.Ordinal) { "login.html", "setup.html", "login.js", "console.css" };

    /// <summary>Maps everything.</summary>
    /// <param name="app">The console's application.</param>
    public static void Map(WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.MapOpenApi("/api/v1/openapi.json");
        var api = app.MapGroup("/api/v1");
        MapSession(api);
        DashboardApi.Map(api);
        DeviceApi.Map(api);
        AlertApi.Map(api);
        QueueApi.Map(api);
        MailboxApi.Map(api);
        ConfigApi.Map(api);
        HealthApi.Map(app);

        app.MapGet("/", () => Asset("index.html")).ExcludeFromDescription();
        foreach (string page in Pages)
        {
            app.MapGet("/" + page, () => Asset(page + ".html")).ExcludeFromDescription();
        }

        app.MapGet("/login", () => Asset("login.html")).AllowAnonymous().ExcludeFromDescription();
        app.MapGet("/setup", () => Asset("setup.html")).AllowAnonymous().ExcludeFromDescription();
        app.MapGet("/ui/{file}", (string file, HttpContext context) =>
            PublicAssets.Contains(file) || context.User.Identity?.IsAuthenticated == true ? Asset(file) : Results.Unauthorized())
            .AllowAnonymous().ExcludeFromDescription();
    }

    private static void MapSession(RouteGroupBuilder api)
    {
        api.MapGet("/setup", async (ConsoleAuth auth, CancellationToken ct) => new SetupState(await auth.NeedsSetupAsync(ct).ConfigureAwait(false))).AllowAnonymous()
            .WithSummary("Whether the console still needs its admin password");
        api.MapPost("/setup", async (SetupRequest request, ConsoleAuth auth, HttpContext context, CancellationToken ct) =>
        {
            if (await auth.CompleteSetupAsync(request.Token ?? string.Empty, request.Password ?? string.Empty, ct).ConfigureAwait(false) is { } problem)
            {
                return Results.BadRequest(new ApiError(problem));
            }

            await SignInAsync(context, auth).ConfigureAwait(false);
            return Results.NoContent();
        }).AllowAnonymous().WithSummary("Sets the admin password with the one-time setup token");
        api.MapPost("/login", async (LoginRequest request, ConsoleAuth auth, HttpContext context, CancellationToken ct) =>
        {
            switch (await auth.LoginAsync(request.Password ?? string.Empty, Source(context), ct).ConfigureAwait(false))
            {
                case LoginResult.Success:
                    await SignInAsync(context, auth).ConfigureAwait(false);
                    return Results.NoContent();
                case LoginResult.Throttled:
                    return Throttled();
                case LoginResult.NotSetUp:
                    return Results.Json(new ApiError("no admin password is set yet: use the setup link the gateway printed, or run: edgemail admin set-password"), statusCode: StatusCodes.Status409Conflict);
                default:
                    return Results.Json(new ApiError("wrong password"), statusCode: StatusCodes.Status401Unauthorized);
            }
        }).AllowAnonymous().WithSummary("Logs in with the admin password (cookie session)");
        api.MapPost("/logout", async (HttpContext context, ConsoleAuth auth) =>
        {
            auth.EndSession(context.User);
            await context.SignOutAsync(CookieAuthenticationDefaults.AuthenticationScheme).ConfigureAwait(false);
            return Results.NoContent();
        }).WithSummary("Ends the cookie session");
        api.MapGet("/session", (HttpContext context, IAntiforgery antiforgery) =>
            new SessionInfo(context.User.Identity?.Name ?? string.Empty, antiforgery.GetAndStoreTokens(context).RequestToken ?? string.Empty))
            .WithSummary("Who is logged in, and the CSRF token the UI sends with changes");
        api.MapPost("/password", async (PasswordRequest request, ConsoleAuth auth, HttpContext context, CancellationToken ct) =>
        {
            string password = request.Password ?? string.Empty;
            if (ConsoleAuth.PasswordProblem(password) is { } problem)
            {
                return Results.BadRequest(new ApiError(problem));
            }

            // A session may have been left open, or taken: the password it changes must be known, and guesses count as
            // wrong logins. An admin key is a credential of its own (it can make more keys), and the local CLI's key is
            // how an operator who lost the password sets a new one (edgemail admin set-password), so a key needs none;
            // a read key never gets here (ScopeCheck).
            bool session = context.User.Identity?.AuthenticationType == CookieAuthenticationDefaults.AuthenticationScheme;
            if (session)
            {
                switch (await auth.LoginAsync(request.Current ?? string.Empty, Source(context), ct).ConfigureAwait(false))
                {
                    case LoginResult.Success:
                        break;
                    case LoginResult.Throttled:
                        return Throttled();
                    default:
                        return Results.BadRequest(new ApiError("current: that is not the current password"));
                }
            }

            if (await auth.SetPasswordAsync(password, ct).ConfigureAwait(false) is { } refused)
            {
                return Results.BadRequest(new ApiError(refused));
            }

            // Every session has ended, this one too: the cookie goes, and the console asks for the new password.
            if (session)
            {
                await context.SignOutAsync(CookieAuthenticationDefaults.AuthenticationScheme).ConfigureAwait(false);
            }

            return Results.NoContent();
        }).WithSummary("Changes the admin password and ends every console session; from a session, with the current password");

        api.MapGet("/api-keys", async (ConsoleAuth auth, CancellationToken ct) =>
            (await auth.ApiKeysAsync(ct)).Select(k => new ApiKeyInfo(k.Id, k.Name, k.CreatedAt, k.RevokedAt, ApiKeyScopes.Name(k.Scope))).ToList())
            .WithMetadata(AdminScopeOnly.Instance).WithSummary("API keys (never their secrets)");
        api.MapPost("/api-keys", async (ApiKeyRequest request, ConsoleAuth auth, CancellationToken ct) =>
        {
            if (string.IsNullOrWhiteSpace(request.Name) || request.Name.Length > 100)
            {
                return Results.BadRequest(new ApiError("name: say what the key is for, in 1 to 100 characters"));
            }

            // Chosen each time, never assumed: a key made without thinking about it should not be able to do everything.
            if (!ApiKeyScopes.TryParse(request.Scope, out var scope))
            {
                return Results.BadRequest(new ApiError($"scope: 'read' or 'admin' (read: GET requests, /metrics and /events; admin: everything), {(request.Scope is null ? "missing" : $"not '{request.Scope}'")}"));
            }

            var (record, key) = await auth.CreateApiKeyAsync(request.Name.Trim(), scope, ct).ConfigureAwait(false);
            return Results.Ok(new NewApiKey(record.Id, record.Name, key, ApiKeyScopes.Name(record.Scope)));
        }).WithSummary("Creates an API key with a scope, read or admin; its secret is shown once");
        api.MapDelete("/api-keys/{id}", async (string id, ConsoleAuth auth, CancellationToken ct) =>
            await auth.RevokeApiKeyAsync(id, ct).ConfigureAwait(false) ? Results.NoContent() : Results.NotFound(new ApiError($"no active API key '{id}'")))
            .WithSummary("Revokes an API key at once");
    }

    private static Task SignInAsync(HttpContext context, ConsoleAuth auth) =>
        context.SignInAsync(CookieAuthenticationDefaults.AuthenticationScheme, auth.OpenSession(CookieAuthenticationDefaults.AuthenticationScheme));

    private static string Source(HttpContext context) => context.Connection.RemoteIpAddress?.ToString() ?? "?";

    private static IResult Throttled() =>
        Results.Json(new ApiError("too many wrong passwords from your address; try again in 15 minutes"), statusCode: StatusCodes.Status429TooManyRequests);

    private static IResult Asset(string file)
    {
        if (file.Contains('/', StringComparison.Ordinal) || file.Contains("..", StringComparison.Ordinal))
        {
            return Results.NotFound();
        }

        var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream("EdgeMail.Gateway.Ui." + file);
        if (stream is null)
        {
            return Results.NotFound();
        }

        string type = Path.GetExtension(file) switch
        {
            ".html" => "text/html; charset=utf-8",
            ".js" => "text/javascript; charset=utf-8",
            ".css" => "text/css; charset=utf-8",
            ".svg" => "image/svg+xml",
            ".png" => "image/png",
            _ => "application/octet-stream",
        };
        return Results.Stream(stream, type);
    }
}

/// <summary>An API error: what was wrong and what to do.</summary>
/// <param name="Error">The message.</param>
public sealed record ApiError(string Error);

/// <summary>Whether setup is still needed.</summary>
/// <param name="Needed">True until an admin password is set.</param>
public sealed record SetupState(bool Needed);

/// <summary>The setup form.</summary>
/// <param name="Token">The one-time token from the setup link.</param>
/// <param name="Password">The new admin password (at least 12 characters).</param>
public sealed record SetupRequest(string? Token, string? Password);

/// <summary>The login form.</summary>
/// <param name="Password">The admin password.</param>
public sealed record LoginRequest(string? Password);

/// <summary>A new admin password.</summary>
/// <param name="Password">At least 12 characters.</param>
/// <param name="Current">The current password: needed from a console session, not with an API key.</param>
public sealed record PasswordRequest(string? Password, string? Current = null);

/// <summary>The session.</summary>
/// <param name="User">Who is logged in.</param>
/// <param name="CsrfToken">Send it as <c>X-CSRF-Token</c> with every change.</param>
public sealed record SessionInfo(string User, string CsrfToken);

/// <summary>An API key without its secret.</summary>
/// <param name="Id">Key id.</param>
/// <param name="Name">What it is for.</param>
/// <param name="CreatedAt">Created.</param>
/// <param name="RevokedAt">Revoked.</param>
/// <param name="Scope"><c>read</c> (GET requests, <c>/metrics</c>, <c>/events</c>) or <c>admin</c> (everything).</param>
public sealed record ApiKeyInfo(string Id, string Name, DateTimeOffset CreatedAt, DateTimeOffset? RevokedAt, string Scope);

/// <summary>A request for an API key.</summary>
/// <param name="Name">What it is for.</param>
/// <param name="Scope">What it may do: <c>read</c> (GET requests, <c>/metrics</c>, <c>/events</c>) or <c>admin</c> (everything). Required.</param>
public sealed record ApiKeyRequest(string? Name, string? Scope);

/// <summary>A new API key, shown once.</summary>
/// <param name="Id">Key id.</param>
/// <param name="Name">What it is for.</param>
/// <param name="Key">The key: <c>Authorization: Bearer KEY</c>.</param>
/// <param name="Scope">What it may do.</param>
public sealed record NewApiKey(string Id, string Name, string Key, string Scope);
