using System.Text;
using System.Text.Json;
using EdgeMail.Gateway.Ingest;
using EdgeMail.Gateway.Receipts;
using EdgeMail.Gateway.Spool;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Routing;

namespace EdgeMail.Gateway.Web.Api;

/// <summary>One alert's whole journey: from the device, through routing, to each recipient's server.</summary>
/// <param name="Alert">The alert as received (via, peer, time, status, reason).</param>
/// <param name="Payload">Its payload exactly as sent (UTF-8 text; invalid bytes shown as U+FFFD).</param>
/// <param name="Json">The payload as JSON, when it is JSON.</param>
/// <param name="Route">Which routes matched and whom they named.</param>
/// <param name="DigestMessageId">The digest it went out in, when storm control held it.</param>
/// <param name="Receipts">Receipts the gateway gave the device (remembered in memory for the most recent ones).</param>
/// <param name="Messages">Each mail made from it, with its recipients and every attempt's replies.</param>
public sealed record AlertJourneyView(AlertSummary Alert, string Payload, JsonElement? Json, string? Route, string? DigestMessageId, IReadOnlyList<SentReceipt> Receipts,
    IReadOnlyList<MessageView> Messages);

/// <summary>A mail with its recipients and attempts (its content is at <c>/api/v1/messages/{rowId}/raw|text|html</c>).</summary>
/// <param name="Summary">The mail.</param>
/// <param name="Subject">Its subject.</param>
/// <param name="EnvelopeFrom">Envelope sender.</param>
/// <param name="ExpiresAt">When it is given up.</param>
/// <param name="FinishedAt">When it finished.</param>
/// <param name="Recipients">Recipients and where each stands.</param>
/// <param name="Attempts">Every attempt and every reply.</param>
public sealed record MessageView(MessageSummary Summary, string Subject, string EnvelopeFrom, DateTimeOffset ExpiresAt, DateTimeOffset? FinishedAt,
    IReadOnlyList<RecipientState> Recipients, IReadOnlyList<AttemptRecord> Attempts)
{
    /// <summary>The view of a mail's detail.</summary>
    /// <param name="detail">The detail.</param>
    /// <returns>The view.</returns>
    public static MessageView From(MessageDetail detail)
    {
        ArgumentNullException.ThrowIfNull(detail);
        string subject = string.Empty;
        try
        {
            using var stream = new MemoryStream(detail.Mime, writable: false);
            subject = MimeKit.HeaderList.Load(stream)[MimeKit.HeaderId.Subject] ?? string.Empty;
        }
        catch (FormatException)
        {
            // Relayed device mail may be malformed; it still has a journey.
        }

        return new MessageView(detail.Summary, subject, detail.EnvelopeFrom, detail.ExpiresAt, detail.FinishedAt, detail.Recipients, detail.Attempts);
    }
}

/// <summary>Why an item is given up.</summary>
/// <param name="Reason">For the record.</param>
public sealed record CancelRequest(string? Reason);

/// <summary>A rejected alert retried: new again, to be routed.</summary>
/// <param name="RowId">The alert.</param>
/// <param name="AlertId">Its id now: the payload's own (it may have been kept under its digest).</param>
/// <param name="Message">What happened.</param>
public sealed record RetriedAlert(long RowId, string AlertId, string Message);

/// <summary>A refused payload as the operator sees it.</summary>
/// <param name="Alert">The alert row (reason included).</param>
/// <param name="Payload">The first 1 KiB of what the device sent, as text.</param>
public sealed record RejectedView(AlertSummary Alert, string Payload);

/// <summary>Alerts: filtered lists, one alert's journey, release and cancel of parked ones, retry of rejected ones, rejected payloads.</summary>
public static class AlertApi
{
    private static readonly string[] Statuses =
        [AlertStatus.New, AlertStatus.Routed, AlertStatus.Unrouted, AlertStatus.Held, AlertStatus.Digested, AlertStatus.Parked, AlertStatus.Rejected, AlertStatus.Cancelled];

    /// <summary>Maps the routes.</summary>
    /// <param name="api">The <c>/api/v1</c> group.</param>
    public static void Map(RouteGroupBuilder api)
    {
        api.MapGet("/alerts", async Task<Results<Ok<IReadOnlyList<AlertSummary>>, BadRequest<ApiError>>> (string? device, string? code, string? severity, string? status,
                DateTimeOffset? from, DateTimeOffset? to, long? before, int? limit, ConsoleContext c, CancellationToken ct) =>
        {
            // A value no alert can have would match nothing, and an empty list would say there is nothing to see.
            Severity parsed = default;
            if (severity is { Length: > 0 } && !Severities.TryParse(severity, out parsed))
            {
                return TypedResults.BadRequest(new ApiError($"severity: info, warning or critical, not '{severity}'"));
            }

            if (status is { Length: > 0 } && !Statuses.Contains(status))
            {
                return TypedResults.BadRequest(new ApiError($"status: {string.Join(", ", Statuses)}, not '{status}'"));
            }

            var query = new AlertQuery(device, code, severity is { Length: > 0 } ? Severities.Name(parsed) : null, status, from, to, before, limit ?? 100);
            return TypedResults.Ok(await c.Spool.QueryAlertsAsync(query, ct).ConfigureAwait(false));
        })
            .WithSummary("Alerts, newest first, filtered by device, code, severity, status and time; page with 'before'");
        api.MapGet("/alerts/{rowId:long}", async (long rowId, ConsoleContext c, ReceiptPublisher receipts, CancellationToken ct) =>
        {
            if (await c.Spool.AlertJourneyAsync(rowId, ct).ConfigureAwait(false) is not { } journey)
            {
                return Results.NotFound(new ApiError($"no alert {rowId}"));
            }

            var view = new AlertJourneyView(journey.Alert, Text(journey.Payload, int.MaxValue), DeviceJson.Parse(journey.Payload, 16), journey.Route, journey.DigestMessageId,
                receipts.RecentFor(journey.Alert.Device, journey.Alert.AlertId), journey.Messages.Select(MessageView.From).ToList());
            return Results.Ok(view);
        }).WithSummary("One alert's journey: received (via, peer), receipts, routed to whom and why, its mail, each delivery attempt with the remote reply");
        api.MapPost("/alerts/{rowId:long}/release", async (long rowId, ConsoleContext c, CancellationToken ct) =>
            await c.Spool.ReleaseAsync(ParkedKinds.Alert, rowId, ct).ConfigureAwait(false) ? Results.NoContent() : Results.Conflict(new ApiError($"alert {rowId} is not parked")))
            .WithSummary("Releases a parked alert: it is routed again");
        api.MapPost("/alerts/{rowId:long}/retry", async (long rowId, AlertIngest ingest, CancellationToken ct) =>
        {
            var report = await ingest.RetryRejectedAsync(rowId, ct).ConfigureAwait(false);
            return report.Verdict switch
            {
                RetryVerdict.Retried => Results.Ok(new RetriedAlert(rowId, report.AlertId!, report.Message)),
                RetryVerdict.NotFound => Results.NotFound(new ApiError(report.Message)),
                RetryVerdict.StillRejected => Results.UnprocessableEntity(new ApiError(report.Message)),
                _ => Results.Conflict(new ApiError(report.Message)),
            };
        }).WithSummary("Retries a rejected alert whose handling failed (reason 'handling failed: ...'), once the fault is fixed: its payload is parsed again; "
            + "valid now, the alert is new again under the payload's own id and routed, and the device gets an 'accepted' receipt")
            .WithDescription("409: not rejected, rejected for its payload (it would be again), its payload was cut when kept, or another alert of the device has its id. "
                + "422: parsed again and still invalid; it stays rejected with the new reason.");
        api.MapPost("/alerts/{rowId:long}/cancel", async (long rowId, CancelRequest? request, ConsoleContext c, ReceiptPublisher receipts, CancellationToken ct) =>
            await CancelAsync(ParkedKinds.Alert, rowId, request, c, receipts, ct).ConfigureAwait(false)
                ? Results.NoContent()
                : Results.Conflict(new ApiError($"alert {rowId} is not parked")))
            .WithSummary("Gives up a parked alert; its device gets a 'failed' receipt naming the cancel");
        api.MapGet("/rejected", async (string? device, long? before, int? limit, ConsoleContext c, CancellationToken ct) =>
        {
            var rejected = await c.Spool.QueryAlertsAsync(new AlertQuery(device, Status: AlertStatus.Rejected, BeforeRowId: before, Limit: limit ?? 100), ct).ConfigureAwait(false);
            var views = new List<RejectedView>(rejected.Count);
            foreach (var alert in rejected)
            {
                var journey = await c.Spool.AlertJourneyAsync(alert.RowId, ct).ConfigureAwait(false);
                views.Add(new RejectedView(alert, journey is null ? string.Empty : Text(journey.Payload, 1024)));
            }

            return views;
        }).WithSummary("Payloads devices sent that were refused, with the reason");
        api.MapGet("/parked", (ConsoleContext c, CancellationToken ct) => c.Spool.ParkedAsync(500, ct))
            .WithSummary("Alerts and mail parked because handling them failed, with the reason");
    }

    /// <summary>
    /// Cancels a parked alert or a queued or parked mail, then publishes the <c>failed</c> receipts the spool kept with the
    /// cancel (committed with it, so a device away now gets them when it subscribes again, after a restart too).
    /// </summary>
    internal static async Task<bool> CancelAsync(string kind, long rowId, CancelRequest? request, ConsoleContext c, ReceiptPublisher receipts, CancellationToken ct)
    {
        var result = await c.Spool.CancelAsync(kind, rowId, request?.Reason ?? "cancelled in the console", receipts.MaxPerDevice, ct).ConfigureAwait(false);
        foreach (var receipt in result.Receipts)
        {
            await receipts.PublishKeptAsync(receipt, ct).ConfigureAwait(false);
        }

        return result.Cancelled;
    }

    internal static string Text(byte[] payload, int max)
    {
        string text = Encoding.UTF8.GetString(payload, 0, Math.Min(payload.Length, max));
        return payload.Length > max ? text + "…" : text;
    }
}
