using EdgeMail.Gateway.Ingest.Smtp;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Spool;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;
using MimeKit;

namespace EdgeMail.Gateway.Web.Api;

/// <summary>The mail queue: lists by state, one mail, retry now, release, cancel; a mail's content.</summary>
public static class QueueApi
{
    private static readonly string[] States =
        ["queued", "deferred", MessageStatus.Parked, MessageStatus.Failed, MessageStatus.Partial, MessageStatus.Sent, MessageStatus.Cancelled];

    /// <summary>Maps the routes.</summary>
    /// <param name="api">The <c>/api/v1</c> group.</param>
    public static void Map(RouteGroupBuilder api)
    {
        api.MapGet("/queue", async Task<Results<Ok<IReadOnlyList<MessageSummary>>, BadRequest<ApiError>>> (string? state, string? device, long? before, int? limit,
            ConsoleContext c, CancellationToken ct) =>
        {
            // A state no mail can be in would match nothing, and an empty list would say there is nothing to see.
            if (state is { Length: > 0 } && !States.Contains(state))
            {
                return TypedResults.BadRequest(new ApiError($"state: {string.Join(", ", States)}, not '{state}'"));
            }

            return TypedResults.Ok(await c.Spool.QueryMessagesAsync(new MessageQuery(state, device, before, limit ?? 100), ct).ConfigureAwait(false));
        })
            .WithSummary("Mail, newest first; state = queued, deferred, parked, failed, partial, sent or cancelled");
        api.MapGet("/queue/{rowId:long}", async (long rowId, ConsoleContext c, CancellationToken ct) =>
            await c.Spool.MessageDetailAsync(rowId, ct).ConfigureAwait(false) is { } detail
                ? Results.Ok(MessageView.From(detail))
                : Results.NotFound(new ApiError($"no mail {rowId}")))
            .WithSummary("One mail: recipients and every attempt with the remote reply");
        api.MapPost("/queue/{rowId:long}/retry", async (long rowId, ConsoleContext c, SubmissionHandler smtp, CancellationToken ct) =>
        {
            if (await c.Spool.RetryNowAsync(rowId, ct).ConfigureAwait(false))
            {
                return Results.NoContent();
            }

            return await ReleaseAsync(rowId, c, smtp, ct).ConfigureAwait(false) ?? Results.Conflict(new ApiError($"mail {rowId} is neither queued nor parked"));
        }).WithSummary("Tries a deferred (or parked) mail again now");
        api.MapPost("/queue/{rowId:long}/release", async (long rowId, ConsoleContext c, SubmissionHandler smtp, CancellationToken ct) =>
            await ReleaseAsync(rowId, c, smtp, ct).ConfigureAwait(false) ?? Results.Conflict(new ApiError($"mail {rowId} is not parked")))
            .WithSummary("Releases a parked mail: queued again, due now; quarantined device mail is handled again (rewritten and checked as new mail)");
        api.MapPost("/queue/{rowId:long}/cancel", async (long rowId, CancelRequest? request, ConsoleContext c, ReceiptPublisher receipts, CancellationToken ct) =>
            await AlertApi.CancelAsync(ParkedKinds.Message, rowId, request, c, receipts, ct).ConfigureAwait(false)
                ? Results.NoContent()
                : Results.Conflict(new ApiError($"mail {rowId} is neither queued nor parked")))
            .WithSummary("Gives up a queued or parked mail: never tried again; its pending recipients fail, and the device of an alert (or of each alert of a digest) gets a 'failed' receipt naming the cancel (an attempt already under way that delivers it makes it sent)");

        api.MapGet("/messages/{rowId:long}/raw", async (long rowId, ConsoleContext c, CancellationToken ct) =>
            await c.Spool.MessageDetailAsync(rowId, ct).ConfigureAwait(false) is { } detail
                ? Results.File(detail.Mime, "message/rfc822", $"message-{rowId}.eml")
                : Results.NotFound(new ApiError($"no mail {rowId}")))
            .WithSummary("The mail as sent (.eml)");
        api.MapGet("/messages/{rowId:long}/text", async (long rowId, ConsoleContext c, CancellationToken ct) =>
            await c.Spool.MessageDetailAsync(rowId, ct).ConfigureAwait(false) is { } detail
                ? MailRendering.Text(detail.Mime)
                : Results.NotFound(new ApiError($"no mail {rowId}")))
            .WithSummary("The mail's text part");
        api.MapGet("/messages/{rowId:long}/html", async (long rowId, ConsoleContext c, CancellationToken ct) =>
            await c.Spool.MessageDetailAsync(rowId, ct).ConfigureAwait(false) is { } detail
                ? MailRendering.Html(detail.Mime)
                : Results.NotFound(new ApiError($"no mail {rowId}")))
            .WithSummary("The mail's HTML part, sandboxed (no scripts, no remote content)");
    }

    // Quarantined device mail is released by handling it again, never by queueing the data as it came (the spool's
    // ReleaseAsync leaves it alone); any other parked mail is queued again. Null when the row is not parked.
    private static async Task<IResult?> ReleaseAsync(long rowId, ConsoleContext c, SubmissionHandler smtp, CancellationToken ct)
    {
        var quarantined = await smtp.ReleaseQuarantinedAsync(rowId, ct).ConfigureAwait(false);
        return quarantined.Outcome switch
        {
            QuarantineReleaseOutcome.Released => Results.NoContent(),
            QuarantineReleaseOutcome.StillQuarantined => Results.Conflict(new ApiError($"mail {rowId} stays quarantined: {quarantined.Detail}")),
            _ => await c.Spool.ReleaseAsync(ParkedKinds.Message, rowId, ct).ConfigureAwait(false) ? Results.NoContent() : null,
        };
    }
}

/// <summary>Showing a mail: its text, or its HTML inside a sandbox that runs nothing and loads nothing from elsewhere.</summary>
public static class MailRendering
{
    /// <summary>The text part (or the HTML's text when it has none).</summary>
    /// <param name="mime">The message.</param>
    /// <returns>text/plain.</returns>
    public static IResult Text(byte[] mime)
    {
        using var message = Load(mime);
        return Results.Text(message?.TextBody ?? message?.HtmlBody ?? "(no text part)", "text/plain; charset=utf-8");
    }

    /// <summary>The HTML part, served with a sandboxing content policy (framed only by the console itself).</summary>
    /// <param name="mime">The message.</param>
    /// <returns>text/html.</returns>
    public static IResult Html(byte[] mime)
    {
        using var message = Load(mime);
        string html = message?.HtmlBody ?? "<pre>" + System.Net.WebUtility.HtmlEncode(message?.TextBody ?? "(no HTML part)") + "</pre>";
        return new SandboxedHtml(html);
    }

    /// <summary>Parses a message; null when it cannot be read.</summary>
    /// <param name="mime">The bytes.</param>
    /// <returns>The message, or null.</returns>
    public static MimeMessage? Load(byte[] mime)
    {
        try
        {
            using var stream = new MemoryStream(mime, writable: false);
            return MimeMessage.Load(stream);
        }
        catch (FormatException)
        {
            return null;
        }
    }

    private sealed class SandboxedHtml(string html) : IResult
    {
        public Task ExecuteAsync(HttpContext httpContext)
        {
            var headers = httpContext.Response.Headers;
            headers.ContentSecurityPolicy = "sandbox; default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'; frame-ancestors 'self'";
            headers.XFrameOptions = "SAMEORIGIN";
            httpContext.Response.ContentType = "text/html; charset=utf-8";
            return httpContext.Response.WriteAsync(html);
        }
    }
}
