using System.Data.Common;
using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Ingest.Smtp;
using EdgeMail.Gateway.Routing;
using EdgeMail.Gateway.Security;
using EdgeMail.Gateway.Spool;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Web.Api;

/// <summary>The effective configuration and its check.</summary>
/// <param name="Configuration">Every section as the gateway uses it, secrets redacted.</param>
/// <param name="Problems">What validation found wrong (the gateway does not start with any).</param>
/// <param name="Warnings">Valid but worth a look.</param>
public sealed record ConfigView(JsonNode Configuration, IReadOnlyList<string> Problems, IReadOnlyList<string> Warnings);

/// <summary>A test mail to send.</summary>
/// <param name="To">The address.</param>
public sealed record SendTestRequest(string? To);

/// <summary>A queued test mail.</summary>
/// <param name="MessageId">Its Message-ID; follow it in the queue.</param>
/// <param name="RowId">Its queue entry.</param>
public sealed record SendTestResult(string MessageId, long RowId);

/// <summary>The effective configuration (secrets redacted) with its validation, and a test mail through the relay.</summary>
public static class ConfigApi
{
    private const string Redacted = "(redacted)";

    // Redaction goes by what a key's name says rather than by a list of known keys, so a secret option added later is
    // hidden without anyone remembering this class: any name with one of these words in it...
    private static readonly string[] SecretWords = ["password", "passwd", "pwd", "psw", "secret", "token", "privatekey", "credential", "apikey"];

    // ...unless it names where a secret is kept or fetched (ClientSecretFile, TokenStore, TokenEndpoint), which is not one.
    private static readonly string[] ReferenceSuffixes = ["file", "path", "store", "endpoint"];

    /// <summary>Maps the routes.</summary>
    /// <param name="api">The <c>/api/v1</c> group.</param>
    public static void Map(RouteGroupBuilder api)
    {
        api.MapGet("/config", (GatewayServices gateway) => Effective(gateway.Services))
            .WithSummary("The effective configuration, secrets redacted, with its validation result");
        api.MapPost("/send-test", async (SendTestRequest request, ConsoleContext c, MailComposer composer, CancellationToken ct) =>
        {
            if (!MimeKit.MailboxAddress.TryParse(request.To ?? string.Empty, out var to) || !to.Address.Contains('@', StringComparison.Ordinal))
            {
                return Results.BadRequest(new ApiError($"to: '{request.To}' is not a mail address"));
            }

            var now = c.Clock.GetUtcNow();
            string id = $"edgemail.test.{now.UtcDateTime:yyyyMMdd'T'HHmmss}.{Guid.NewGuid():N}@{c.Options.Sender.Hostname}";
            using var message = composer.ComposeOperatorNotice(id, "EdgeMail test mail",
                $"This is a test mail from the EdgeMail gateway {c.Options.Sender.Hostname}, sent at {now:u} from its console or CLI.\n" +
                "If you read it, the relay works for this address.\n", to, now);
            await c.Spool.QueueMailAsync(new NewMessage("notice", null, null, id, c.Options.Sender.Address, [to.Address], MailComposer.ToWire(message)), ct).ConfigureAwait(false);
            var state = await c.Spool.GetMessageAsync(id, ct).ConfigureAwait(false);
            return Results.Ok(new SendTestResult(id, state?.RowId ?? 0));
        }).WithSummary("Queues a test mail to an address; follow it in the queue");
    }

    /// <summary>The effective configuration of a running gateway.</summary>
    /// <param name="services">The gateway's services.</param>
    /// <returns>The view.</returns>
    public static ConfigView Effective(IServiceProvider services)
    {
        ArgumentNullException.ThrowIfNull(services);
        var gateway = services.GetRequiredService<IOptions<GatewayOptions>>().Value;
        var smtp = services.GetService<IOptions<SmtpIngestOptions>>()?.Value;
        var guard = services.GetService<IOptions<MqttGuardOptions>>()?.Value;
        var console = services.GetService<IOptions<ConsoleOptions>>()?.Value;
        var root = (JsonObject)JsonSerializer.SerializeToNode(gateway, DashboardApi.JsonOptions)!;
        root["smtp"] = smtp is null ? null : JsonSerializer.SerializeToNode(smtp, DashboardApi.JsonOptions);
        root["mqttGuard"] = guard is null ? null : JsonSerializer.SerializeToNode(guard, DashboardApi.JsonOptions);
        root["console"] = console is null ? null : JsonSerializer.SerializeToNode(console, DashboardApi.JsonOptions);
        Redact(root);
        var problems = GatewayOptionsValidator.Check(gateway);
        return new ConfigView(root, problems, Warnings(gateway, console));
    }

    private static List<string> Warnings(GatewayOptions o, ConsoleOptions? console)
    {
        var warnings = new List<string>();
        if (o.Mqtt.PlainEnabled && IPAddress.TryParse(o.Mqtt.BindAddress, out var mqtt) && !IPAddress.IsLoopback(mqtt))
        {
            warnings.Add($"Mqtt:PlainEnabled: devices send their secrets in clear text on {o.Mqtt.BindAddress}; prefer Mqtt:TlsEnabled with PlainEnabled false");
        }

        if (o.Relay.AcceptAnyCertificate)
        {
            warnings.Add("Relay:AcceptAnyCertificate: the smarthost's certificate is not checked; for tests only");
        }

        if (o.Relay.Mode.Equals("Mailbox", StringComparison.OrdinalIgnoreCase))
        {
            warnings.Add("Relay:Mode is Mailbox: mail stays on this machine (configure a smarthost or DirectMx to reach people)");
        }

        if (!o.Spool.Fsync)
        {
            warnings.Add("Spool:Fsync is false: a power cut may lose acknowledged alerts; for benchmarks only");
        }

        if (new Router(o).Resolve(o.Sender.Operator.Length > 0 ? o.Sender.Operator : o.Sender.Address) is null)
        {
            warnings.Add("Sender:Operator names no user or address: failure notices cannot be sent");
        }

        if (console is { MetricsAnonymous: true } && IPAddress.TryParse(console.BindAddress, out var bind) && !IPAddress.IsLoopback(bind))
        {
            warnings.Add("Console:MetricsAnonymous: /metrics is readable without a key on " + console.BindAddress);
        }

        return warnings;
    }

    private static void Redact(JsonNode? node)
    {
        switch (node)
        {
            case JsonObject obj:
                foreach (var (key, value) in obj.ToList())
                {
                    if (value is JsonValue v && v.TryGetValue(out string? s) && !string.IsNullOrEmpty(s) && (IsSecretName(key) || IsConnectionString(key)))
                    {
                        obj[key] = IsSecretName(key) ? Redacted : RedactConnectionString(s);
                    }
                    else
                    {
                        Redact(value);
                    }
                }

                break;
            case JsonArray array:
                foreach (var item in array)
                {
                    Redact(item);
                }

                break;
        }
    }

    /// <summary>Whether an option (or connection string keyword) of this name holds a secret.</summary>
    /// <param name="name">The key, in any case, with or without spaces (<c>SSL Password</c>).</param>
    /// <returns>True when its value must not be shown.</returns>
    internal static bool IsSecretName(string name)
    {
        string n = name.Replace(" ", string.Empty, StringComparison.Ordinal).Replace("_", string.Empty, StringComparison.Ordinal);
        return SecretWords.Any(w => n.Contains(w, StringComparison.OrdinalIgnoreCase))
            && !ReferenceSuffixes.Any(r => n.EndsWith(r, StringComparison.OrdinalIgnoreCase));
    }

    private static bool IsConnectionString(string name) => name.EndsWith("ConnectionString", StringComparison.OrdinalIgnoreCase);

    // A connection string stays readable (host, database, user) with every secret keyword's value replaced; one that
    // does not parse is hidden whole, since where its password sits cannot be told.
    private static string RedactConnectionString(string connectionString)
    {
        var builder = new DbConnectionStringBuilder();
        try
        {
            builder.ConnectionString = connectionString;
        }
        catch (ArgumentException)
        {
            return Redacted;
        }

        foreach (string keyword in builder.Keys.Cast<string>().ToList())
        {
            if (IsSecretName(keyword))
            {
                builder[keyword] = Redacted;
            }
        }

        return builder.ConnectionString;
    }
}
