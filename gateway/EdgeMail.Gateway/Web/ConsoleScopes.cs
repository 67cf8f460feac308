using System.Security.Claims;
using EdgeMail.Gateway.Spool;
using Microsoft.AspNetCore.Http;

namespace EdgeMail.Gateway.Web;

/// <summary>
/// What a request needs and what its credential may do. A change (any method but GET, HEAD and OPTIONS) needs
/// <see cref="ApiKeyScope.Admin"/>, as does a route marked <see cref="AdminScopeOnly"/>; the rest needs
/// <see cref="ApiKeyScope.Read"/>. Going by the method, a route added later that changes something needs admin without
/// anyone remembering to say so. A console session is the admin's; an API key has the scope it was made with.
/// </summary>
public static class ConsoleScopes
{
    /// <summary>The OpenAPI extension that names each operation's scope.</summary>
    public const string OpenApiExtension = "x-edgemail-scope";

    /// <summary>The scope a request needs.</summary>
    /// <param name="method">Its HTTP method.</param>
    /// <param name="metadata">Its endpoint's metadata, if it has an endpoint.</param>
    /// <returns>The scope.</returns>
    public static ApiKeyScope Required(string method, IEnumerable<object>? metadata)
    {
        bool reading = HttpMethods.IsGet(method) || HttpMethods.IsHead(method) || HttpMethods.IsOptions(method);
        return reading && metadata?.OfType<AdminScopeOnly>().Any() != true ? ApiKeyScope.Read : ApiKeyScope.Admin;
    }

    /// <summary>What a request's credential may do.</summary>
    /// <param name="user">The request's user.</param>
    /// <returns>Admin for a console session; an API key's scope (read, unless it says admin); null when not authenticated.</returns>
    public static ApiKeyScope? Of(ClaimsPrincipal user)
    {
        if (user?.Identity?.IsAuthenticated != true)
        {
            return null;
        }

        if (user.FindFirst(ConsoleAuth.ApiKeyClaim) is null)
        {
            return ApiKeyScope.Admin;
        }

        return user.FindFirst(ConsoleAuth.ScopeClaim)?.Value == ApiKeyScopes.Admin ? ApiKeyScope.Admin : ApiKeyScope.Read;
    }
}

/// <summary>Endpoint metadata: this route needs <see cref="ApiKeyScope.Admin"/> although it only reads (the list of API keys).</summary>
public sealed class AdminScopeOnly
{
    /// <summary>The one instance.</summary>
    public static readonly AdminScopeOnly Instance = new();

    private AdminScopeOnly()
    {
    }
}

/// <summary>Refuses what a credential's scope does not allow: 403, with a problem (RFC 9457) that says which scope it needs.</summary>
internal sealed class ScopeCheck(RequestDelegate next)
{
    public Task InvokeAsync(HttpContext context)
    {
        var required = ConsoleScopes.Required(context.Request.Method, context.GetEndpoint()?.Metadata);
        if (ConsoleScopes.Of(context.User) is not { } scope || scope >= required)
        {
            return next(context); // a stranger on a public route, or a credential that may
        }

        string detail = $"this API key's scope '{ApiKeyScopes.Name(scope)}' allows reading only (GET requests, /metrics, /events): "
            + $"{context.Request.Method} {context.Request.Path} needs an API key with scope '{ApiKeyScopes.Name(required)}', or a console session";
        return Results.Problem(detail, statusCode: StatusCodes.Status403Forbidden, title: "The API key's scope does not allow this",
            extensions: new Dictionary<string, object?>
            {
                ["error"] = detail, // what the console and the CLI show
                ["scope"] = ApiKeyScopes.Name(scope),
                ["requiredScope"] = ApiKeyScopes.Name(required),
            }).ExecuteAsync(context);
    }
}
