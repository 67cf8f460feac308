using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Web.Api;
using Spectre.Console;

namespace EdgeMail.Gateway.Cli;

/// <summary>
/// Commands that act on the running gateway through its HTTP API (<c>/api/v1</c>): <c>devices</c>, <c>queue</c>,
/// <c>alerts</c> and <c>send-test</c>. Tables for people, <c>--json</c> (the API's own JSON) for scripts.
/// </summary>
public static class RemoteCommands
{
    private const string RemoteNote = "Talks to the running gateway's API: the console address from the configuration (--url overrides), the key in "
        + "DataDirectory/cli-api-key (--api-key-file overrides; readable by root and the gateway's user).\n"
        + "Exit codes: 0 done; 1 the gateway refused (e.g. no such id, not queued); 2 the configuration cannot be read; 3 the gateway cannot be reached or refused the key.";

    /// <summary>Adds the commands.</summary>
    /// <param name="root">The root command.</param>
    /// <param name="options">The shared options.</param>
    /// <param name="io">Standard streams.</param>
    public static void Add(Command root, CliOptions options, CliIO io)
    {
        ArgumentNullException.ThrowIfNull(root);
        var remote = new Remote(options, io);
        root.Subcommands.Add(Devices(remote));
        root.Subcommands.Add(Queue(remote));
        root.Subcommands.Add(Alerts(remote));

        var to = new Option<string>("--to") { Description = "The address", Required = true, HelpName = "ADDRESS" };
        root.Subcommands.Add(remote.Command("send-test", "Queue a test mail to an address through the gateway's relay; follow it with 'edgemail queue show MAIL'",
            [to], async (c, api, ct) =>
            {
                var result = await api.PostAsync("send-test", new SendTestRequest(c.Parse.GetValue(to)), ct).ConfigureAwait(false);
                var sent = result.Deserialize<SendTestResult>(GatewayClient.Json)!;
                return (result, string.Create(CultureInfo.InvariantCulture,
                    $"Test mail {sent.MessageId} queued as mail {sent.RowId} for {c.Parse.GetValue(to)}; follow it: edgemail queue show {sent.RowId}"));
            }));
    }

    private static Command Devices(Remote remote)
    {
        var devices = new Command("devices", "List devices, add one, disable, enable or give a new secret — at run time, without a restart");
        devices.Subcommands.Add(remote.Command("list", "Every device with its state and last contact", [], async (c, api, ct) =>
        {
            var json = await api.GetAsync("devices", ct).ConfigureAwait(false);
            var table = Table("DEVICE", "NAME", "SITE", "STATE", "LAST CONTACT", "OWNERS", "SOURCE");
            foreach (var d in json.Deserialize<List<DeviceView>>(GatewayClient.Json)!)
            {
                string state = d.Disabled ? "disabled" : d.Online ? "online" : d.Silent ? "SILENT" : d.LastContact is null ? "never seen" : "offline";
                Row(table, d.Id, d.Name, d.Site, state, At(d.LastContact), string.Join(", ", d.Owners), d.Source);
            }

            return (json, table);
        }));

        var id = DeviceId();
        var name = new Option<string?>("--name") { Description = "Display name (default: the id)" };
        var site = new Option<string?>("--site") { Description = "Site, e.g. 'Hall 3'" };
        var owners = new Option<string[]>("--owner") { Description = "Owner: a user or group id (repeat for more)", HelpName = "USER", AllowMultipleArgumentsPerToken = false };
        devices.Subcommands.Add(remote.Command("add", "Add a device; it can connect at once. Its secret is printed once", [id, name, site, owners], async (c, api, ct) =>
        {
            var json = await api.PostAsync("devices", new NewDeviceRequest(c.Parse.GetValue(id), c.Parse.GetValue(name), c.Parse.GetValue(site), c.Parse.GetValue(owners) ?? []), ct)
                .ConfigureAwait(false);
            var added = json.Deserialize<DeviceSecret>(GatewayClient.Json)!;
            return (json, $"Device {added.Device.Id} added; it can connect now.\nIts secret (shown once; the device's MQTT and SMTP AUTH password):\n  {added.Secret}");
        }));
        foreach (var (verb, help, done) in new[]
        {
            ("disable", "Disable a device: its connection ends, it can no longer connect or submit", "disabled: its connection is closed and it can no longer connect"),
            ("enable", "Enable a disabled device again", "enabled: it can connect again"),
        })
        {
            devices.Subcommands.Add(remote.Post(verb, help, DeviceId(), id => $"devices/{Uri.EscapeDataString(id)}/{verb}", id => $"Device {id} {done}"));
        }

        var rotated = DeviceId();
        devices.Subcommands.Add(remote.Command("rotate-secret", "Give a device a new secret, printed once; the old one stops working at once", [rotated], async (c, api, ct) =>
        {
            var json = await api.PostAsync($"devices/{Uri.EscapeDataString(c.Parse.GetValue(rotated)!)}/rotate-secret", null, ct).ConfigureAwait(false);
            var secret = json.Deserialize<DeviceSecret>(GatewayClient.Json)!;
            return (json, $"New secret for {secret.Device.Id} (shown once; the old one no longer works):\n  {secret.Secret}");
        }));
        return devices;
    }

    private static Command Queue(Remote remote)
    {
        var queue = new Command("queue", "The mail queue: list, show one mail, retry now, release a parked one, cancel");
        var state = new Option<string>("--state")
        {
            Description = "waiting (queued, deferred and parked), all, or one of queued, deferred, parked, failed, partial, sent, cancelled",
            DefaultValueFactory = _ => "waiting",
        };
        state.AcceptOnlyFromAmong("waiting", "all", "queued", "deferred", "parked", "failed", "partial", "sent", "cancelled");
        var device = new Option<string?>("--device") { Description = "Only mail about this device" };
        var limit = Limit();
        queue.Subcommands.Add(remote.Command("list", "Mail, newest first", [state, device, limit], async (c, api, ct) =>
        {
            string chosen = c.Parse.GetValue(state)!;
            string[] states = chosen switch { "waiting" => ["queued", "deferred", "parked"], "all" => [string.Empty], _ => [chosen] };
            var mail = new List<JsonElement>();
            foreach (string s in states)
            {
                string query = Query(("state", s), ("device", c.Parse.GetValue(device)), ("limit", c.Parse.GetValue(limit).ToString(CultureInfo.InvariantCulture)));
                mail.AddRange((await api.GetAsync("queue" + query, ct).ConfigureAwait(false)).EnumerateArray());
            }

            var sorted = mail.OrderByDescending(m => m.GetProperty("rowId").GetInt64()).Take(c.Parse.GetValue(limit)).ToList();
            var table = Table("MAIL", "STATUS", "KIND", "DEVICE", "ATTEMPTS", "QUEUED", "NEXT ATTEMPT", "LAST REPLY / REASON");
            foreach (var m in sorted.Select(e => e.Deserialize<MessageSummary>(GatewayClient.Json)!))
            {
                Row(table, Number(m.RowId), m.Status, m.Kind, m.Device ?? "-", Number(m.Attempts), At(m.CreatedAt),
                    m.Status == "queued" ? At(m.NextAttemptAt) : "-", m.Reason ?? m.LastReply ?? "-");
            }

            return (JsonSerializer.SerializeToElement(sorted, GatewayClient.Json), table);
        }));
        var shown = MailId();
        queue.Subcommands.Add(remote.Command("show", "One mail: its recipients and every delivery attempt with the remote reply", [shown], async (c, api, ct) =>
        {
            var json = await api.GetAsync($"queue/{c.Parse.GetValue(shown)}", ct).ConfigureAwait(false);
            return (json, Journey.Mail(json.Deserialize<MessageView>(GatewayClient.Json)!));
        }));
        foreach (var (verb, help, done) in new[]
        {
            ("retry", "Try a deferred (or parked) mail again now", "is due now: the next delivery attempt starts shortly"),
            ("release", "Release a parked mail: queued again, due now", "released: queued again, due now"),
        })
        {
            queue.Subcommands.Add(remote.Post(verb, help, MailId(), id => string.Create(CultureInfo.InvariantCulture, $"queue/{id}/{verb}"),
                id => string.Create(CultureInfo.InvariantCulture, $"Mail {id} {done}")));
        }

        var cancelled = MailId();
        var reason = new Option<string?>("--reason") { Description = "Why, for the record (default: cancelled with the CLI)" };
        queue.Subcommands.Add(remote.Command("cancel", "Give up a queued or parked mail: it is never tried again; its pending recipients are marked failed",
            [cancelled, reason], async (c, api, ct) =>
            {
                var json = await api.PostAsync($"queue/{c.Parse.GetValue(cancelled)}/cancel", new CancelRequest(c.Parse.GetValue(reason) ?? "cancelled with the CLI"), ct).ConfigureAwait(false);
                return (json, string.Create(CultureInfo.InvariantCulture, $"Mail {c.Parse.GetValue(cancelled)} cancelled: it will not be sent"));
            }));
        return queue;
    }

    private static Command Alerts(Remote remote)
    {
        var alerts = new Command("alerts", "Alerts the gateway received, one alert's whole journey, and retrying a rejected one whose handling failed");
        var device = new Option<string?>("--device") { Description = "Only this device" };
        var code = new Option<string?>("--code") { Description = "Only this code" };
        var severity = new Option<string?>("--severity") { Description = "Only this severity: info, warning or critical" };
        var status = new Option<string?>("--status") { Description = "Only this status: new, routed, unrouted, held, digested, parked, rejected or cancelled" };
        var limit = Limit();
        alerts.Subcommands.Add(remote.Command("list", "Alerts, newest first; the first column is what 'alerts show' takes", [device, code, severity, status, limit], async (c, api, ct) =>
        {
            string query = Query(("device", c.Parse.GetValue(device)), ("code", c.Parse.GetValue(code)), ("severity", c.Parse.GetValue(severity)),
                ("status", c.Parse.GetValue(status)), ("limit", c.Parse.GetValue(limit).ToString(CultureInfo.InvariantCulture)));
            var json = await api.GetAsync("alerts" + query, ct).ConfigureAwait(false);
            var table = Table("ALERT", "RECEIVED", "DEVICE", "ALERT ID", "CODE", "SEVERITY", "STATUS", "VIA", "REASON");
            foreach (var a in json.Deserialize<List<AlertSummary>>(GatewayClient.Json)!)
            {
                Row(table, Number(a.RowId), At(a.ReceivedAt), a.Device, a.AlertId, a.Code ?? "-", a.Severity ?? "-", a.Status, a.Via, a.Reason ?? "-");
            }

            return (json, table);
        }));
        var id = new Argument<long>("ID") { Description = "The alert's number (first column of 'alerts list', or the console's)" };
        alerts.Subcommands.Add(remote.Command("show", "One alert's journey: received (via, peer), receipts, routed to whom and why, its mail, each delivery attempt with the remote reply",
            [id], async (c, api, ct) =>
            {
                var json = await api.GetAsync($"alerts/{c.Parse.GetValue(id)}", ct).ConfigureAwait(false);
                return (json, Journey.Alert(json.Deserialize<AlertJourneyView>(GatewayClient.Json)!));
            }));
        var retried = new Argument<long>("ID") { Description = "The rejected alert's number (first column of 'alerts list --status rejected')" };
        alerts.Subcommands.Add(remote.Command("retry",
            "Retry a rejected alert whose handling failed (reason 'handling failed: ...'), once the fault is fixed: its payload is parsed again and, valid now, it is routed and mailed",
            [retried], async (c, api, ct) =>
            {
                var json = await api.PostAsync($"alerts/{c.Parse.GetValue(retried)}/retry", null, ct).ConfigureAwait(false);
                var done = json.Deserialize<RetriedAlert>(GatewayClient.Json)!;
                return (json, string.Create(CultureInfo.InvariantCulture, $"Alert {done.RowId} retried: new again as {done.AlertId}, to be routed and mailed"));
            }));
        return alerts;
    }

    private static Argument<string> DeviceId() => new("ID") { Description = "Device id" };

    private static Argument<long> MailId() => new("MAIL") { Description = "The mail's number (first column of 'queue list')" };

    private static Option<int> Limit()
    {
        var limit = new Option<int>("--limit") { Description = "Most to list", DefaultValueFactory = _ => 50 };
        limit.Validators.Add(r =>
        {
            if (r.GetValue(limit) is < 1 or > 1000)
            {
                r.AddError("--limit must be between 1 and 1000");
            }
        });
        return limit;
    }

    private static string Query(params (string Key, string? Value)[] parameters)
    {
        var given = parameters.Where(p => !string.IsNullOrEmpty(p.Value)).Select(p => p.Key + "=" + Uri.EscapeDataString(p.Value!)).ToList();
        return given.Count == 0 ? string.Empty : "?" + string.Join('&', given);
    }

    internal static Table Table(params string[] columns)
    {
        var table = new Table().Border(TableBorder.Simple);
        foreach (string column in columns)
        {
            table.AddColumn(new TableColumn(new Text(column)));
        }

        return table;
    }

    // Cells are text, never markup: device names and replies come from outside.
    internal static void Row(Table table, params string?[] cells) => table.AddRow(cells.Select(c => (Spectre.Console.Rendering.IRenderable)new Text(c ?? "-")).ToArray());

    internal static string At(DateTimeOffset? at) => at is { } t ? t.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss'Z'", CultureInfo.InvariantCulture) : "-";

    internal static string Number(long n) => n.ToString(CultureInfo.InvariantCulture);

    /// <summary>Makes commands that call the API and print a table, a text or (<c>--json</c>) the JSON.</summary>
    private sealed class Remote(CliOptions options, CliIO io)
    {
        public Command Command(string name, string description, Symbol[] symbols, Func<CliContext, GatewayClient, CancellationToken, Task<(JsonElement Json, object Human)>> call)
        {
            var command = new Command(name, description) { TreatUnmatchedTokensAsErrors = false }.Note(RemoteNote);
            foreach (var symbol in symbols)
            {
                if (symbol is Argument argument)
                {
                    command.Arguments.Add(argument);
                }
                else
                {
                    command.Options.Add((Option)symbol);
                }
            }

            command.Options.Add(options.Json);
            command.Options.Add(options.Url);
            command.Options.Add(options.ApiKeyFile);
            CliCommand.SetAction(command, options, io, async (c, ct) =>
            {
                using var api = GatewayClient.Create(c);
                var (json, human) = await call(c, api, ct).ConfigureAwait(false);
                if (c.Json)
                {
                    await c.Io.Out.WriteLineAsync(json.ValueKind == JsonValueKind.Undefined ? "{}" : JsonSerializer.Serialize(json, Indented)).ConfigureAwait(false);
                }
                else if (human is string text)
                {
                    await c.Io.Out.WriteLineAsync(text).ConfigureAwait(false);
                }
                else
                {
                    c.Io.Ansi().Write((Spectre.Console.Rendering.IRenderable)human);
                }

                return ExitCodes.Ok;
            });
            return command;
        }

        /// <summary>A command that POSTs to the path its one argument names, and says what happened.</summary>
        public Command Post<T>(string name, string description, Argument<T> target, Func<T, string> path, Func<T, string> done) =>
            Command(name, description, [target], async (c, api, ct) =>
            {
                var value = c.Parse.GetValue(target)!;
                return (await api.PostAsync(path(value), null, ct).ConfigureAwait(false), done(value));
            });

        private static readonly JsonSerializerOptions Indented = new(GatewayClient.Json) { WriteIndented = true };
    }
}
