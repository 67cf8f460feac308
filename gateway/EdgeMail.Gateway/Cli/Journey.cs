using System.Globalization;
using System.Text;
using EdgeMail.Gateway.Web.Api;

namespace EdgeMail.Gateway.Cli;

/// <summary>An alert's journey and a mail's delivery as text: what happened, in order, with every remote reply.</summary>
public static class Journey
{
    /// <summary>One alert from the device to each recipient's server.</summary>
    /// <param name="view">The API's journey.</param>
    /// <returns>The text.</returns>
    public static string Alert(AlertJourneyView view)
    {
        ArgumentNullException.ThrowIfNull(view);
        var a = view.Alert;
        var text = new StringBuilder();
        Line(text, $"Alert {a.RowId}: {a.Device} alert {a.AlertId}, {a.Code ?? "(no code)"} ({a.Severity ?? "no severity"}), status {a.Status}");
        Field(text, "received", $"{RemoteCommands.At(a.ReceivedAt)} via {a.Via}{(a.Peer is null ? string.Empty : " from " + a.Peer)}");
        if (a.Reason is not null)
        {
            Field(text, "reason", a.Reason);
        }

        Field(text, "payload", view.Payload.ReplaceLineEndings(" "));
        foreach (var receipt in view.Receipts)
        {
            Field(text, "receipt", $"{RemoteCommands.At(receipt.At)} {receipt.State}{(receipt.Detail.Length > 0 ? ": " + receipt.Detail : string.Empty)}{(receipt.Published ? string.Empty : " (not delivered to the device)")}");
        }

        Field(text, "routed", view.Route ?? "not yet");
        if (view.DigestMessageId is not null)
        {
            Field(text, "digest", $"held by storm control, sent in the digest {view.DigestMessageId}");
        }

        if (view.Messages.Count == 0)
        {
            Field(text, "mail", "none");
        }

        foreach (var message in view.Messages)
        {
            text.Append(Mail(message));
        }

        return text.ToString().TrimEnd();
    }

    /// <summary>One mail: its recipients and every attempt.</summary>
    /// <param name="view">The API's mail.</param>
    /// <returns>The text.</returns>
    public static string Mail(MessageView view)
    {
        ArgumentNullException.ThrowIfNull(view);
        var m = view.Summary;
        var text = new StringBuilder();
        Line(text, $"Mail {m.RowId} ({m.Kind}) <{m.MessageId}>: {m.Status} after {m.Attempts} attempt(s)");
        Field(text, "subject", view.Subject);
        Field(text, "from", view.EnvelopeFrom.Length > 0 ? view.EnvelopeFrom : "<> (null sender)");
        Field(text, "queued", RemoteCommands.At(m.CreatedAt));
        if (m.Status == "queued")
        {
            Field(text, "next try", RemoteCommands.At(m.NextAttemptAt));
        }

        Field(text, "expires", RemoteCommands.At(view.ExpiresAt));
        if (view.FinishedAt is { } finished)
        {
            Field(text, "finished", RemoteCommands.At(finished));
        }

        if (m.Reason is not null)
        {
            Field(text, "reason", m.Reason);
        }

        foreach (var r in view.Recipients)
        {
            Field(text, "to", $"{r.Address}: {r.Status}{(r.Reply is null ? string.Empty : " (" + r.Reply + ")")}");
        }

        foreach (var attempt in view.Attempts)
        {
            foreach (var result in attempt.Results)
            {
                Field(text, string.Create(CultureInfo.InvariantCulture, $"attempt {attempt.Attempt}"), $"{RemoteCommands.At(attempt.At)} {result.Address} {result.Outcome}: {result.Reply}");
            }
        }

        return text.ToString();
    }

    private static void Line(StringBuilder text, string line) => text.Append(line).Append('\n');

    private static void Field(StringBuilder text, string name, string value) => text.Append("  ").Append(name.PadRight(10)).Append(' ').Append(value).Append('\n');
}
