using EdgeMail.Gateway.Operations;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Web.Api;

/// <summary>A health answer.</summary>
/// <param name="Status"><c>ok</c> or <c>failing</c>.</param>
/// <param name="Checks">Each check and what it saw.</param>
public sealed record HealthReport(string Status, IReadOnlyList<HealthCheck> Checks);

/// <summary><c>/livez</c> and <c>/readyz</c> (anonymous, for load balancers and service managers) and <c>/metrics</c> (Prometheus).</summary>
public static class HealthApi
{
    /// <summary>Maps the routes.</summary>
    /// <param name="app">The console's application.</param>
    public static void Map(WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.MapGet("/livez", (PipelineProbe probe) => Report(probe.Liveness())).AllowAnonymous()
            .WithSummary("200 while the pipeline turns (the spool's writer and every loop answered within 35 s), else 503");
        app.MapGet("/readyz", (PipelineProbe probe) => Report(probe.Readiness())).AllowAnonymous()
            .WithSummary("200 when alive, listeners bound, disk above its floor and the relay not failing, else 503 with what is not");
        // The exporter's endpoint carries no authorization metadata of its own (the fallback policy does not reach it): say it.
        var metrics = app.MapPrometheusScrapingEndpoint("/metrics");
        if (app.Services.GetRequiredService<IOptions<ConsoleOptions>>().Value.MetricsAnonymous)
        {
            metrics.AllowAnonymous();
        }
        else
        {
            metrics.RequireAuthorization();
        }
    }

    private static IResult Report(IReadOnlyList<HealthCheck> checks)
    {
        bool ok = checks.All(c => c.Ok);
        return Results.Json(new HealthReport(ok ? "ok" : "failing", checks), statusCode: ok ? StatusCodes.Status200OK : StatusCodes.Status503ServiceUnavailable);
    }
}
