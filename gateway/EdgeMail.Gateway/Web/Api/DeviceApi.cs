using System.Text.Json;
using EdgeMail.Gateway.Devices;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace EdgeMail.Gateway.Web.Api;

/// <summary>A device as the console shows it.</summary>
/// <param name="Id">Device id.</param>
/// <param name="Name">Display name.</param>
/// <param name="Site">Site.</param>
/// <param name="Owners">Owner user or group ids.</param>
/// <param name="Disabled">Refused at connect and AUTH.</param>
/// <param name="Source"><c>configuration</c>, <c>configuration-changed</c> or <c>console</c>.</param>
/// <param name="Online">Connected now (or, with an external broker, heard from within 15 minutes).</param>
/// <param name="LastContact">Last connect, alert or heartbeat.</param>
/// <param name="LastAlertAt">Last alert.</param>
/// <param name="LastHeartbeatAt">Last heartbeat.</param>
/// <param name="Heartbeat">That heartbeat's JSON (queue depth, dropped, battery, signal, firmware), when it was JSON.</param>
/// <param name="Silent">Quiet for longer than <see cref="SilentAfter"/>.</param>
/// <param name="SilentAfter">Its silence limit.</param>
public sealed record DeviceView(string Id, string Name, string Site, IReadOnlyList<string> Owners, bool Disabled, string Source, bool Online,
    DateTimeOffset? LastContact, DateTimeOffset? LastAlertAt, DateTimeOffset? LastHeartbeatAt, JsonElement? Heartbeat, bool Silent, TimeSpan SilentAfter);

/// <summary>One device with its recent history.</summary>
/// <param name="Device">The device.</param>
/// <param name="AlertsPerHour">Alerts per hour over the last 48 hours (hours with alerts).</param>
/// <param name="Heartbeats">Heartbeats over the last 48 hours (at most one every 5 minutes).</param>
public sealed record DeviceDetail(DeviceView Device, IReadOnlyList<HourCount> AlertsPerHour, IReadOnlyList<HeartbeatPoint> Heartbeats);

/// <summary>Alerts in one hour.</summary>
/// <param name="Hour">Start of the hour.</param>
/// <param name="Count">Alerts.</param>
public sealed record HourCount(DateTimeOffset Hour, long Count);

/// <summary>One recorded heartbeat.</summary>
/// <param name="At">When.</param>
/// <param name="Values">Its JSON.</param>
public sealed record HeartbeatPoint(DateTimeOffset At, JsonElement Values);

/// <summary>A device to add.</summary>
/// <param name="Id">Device id: 1 to 64 letters, digits, '-', '_' or '.' (not '.' or '..' alone).</param>
/// <param name="Name">Display name.</param>
/// <param name="Site">Site.</param>
/// <param name="Owners">Owner user or group ids.</param>
public sealed record NewDeviceRequest(string? Id, string? Name, string? Site, IReadOnlyList<string>? Owners);

/// <summary>A device's new secret, shown once.</summary>
/// <param name="Device">The device.</param>
/// <param name="Secret">The secret: the MQTT password and SMTP AUTH password of the device.</param>
public sealed record DeviceSecret(DeviceView Device, string Secret);

/// <summary>Devices: list, one device's history, add, disable, enable, rotate the secret — all without a restart.</summary>
public static class DeviceApi
{
    private static readonly TimeSpan ExternalOnlineWindow = TimeSpan.FromMinutes(15);

    /// <summary>Maps the routes.</summary>
    /// <param name="api">The <c>/api/v1</c> group.</param>
    public static void Map(RouteGroupBuilder api)
    {
        api.MapGet("/devices", (ConsoleContext c, CancellationToken ct) => ViewsAsync(c, ct)).WithSummary("Every device with its last contact and heartbeat");
        api.MapGet("/devices/{id}", async (string id, ConsoleContext c, CancellationToken ct) =>
        {
            var view = (await ViewsAsync(c, ct).ConfigureAwait(false)).FirstOrDefault(v => v.Id == id);
            if (view is null)
            {
                return Results.NotFound(new ApiError($"no device '{id}'"));
            }

            var since = c.Clock.GetUtcNow() - TimeSpan.FromHours(48);
            var hours = (await c.Spool.AlertsPerHourAsync(id, since, ct).ConfigureAwait(false)).Select(h => new HourCount(h.Hour, h.Count)).ToList();
            var beats = (await c.Spool.HeartbeatsAsync(id, since, ct).ConfigureAwait(false))
                .Select(b => Heartbeat(b.Payload) is { } json ? new HeartbeatPoint(b.At, json) : null).OfType<HeartbeatPoint>().ToList();
            return Results.Ok(new DeviceDetail(view, hours, beats));
        }).WithSummary("One device, its alerts per hour and its heartbeats over 48 hours");
        api.MapPost("/devices", async (NewDeviceRequest request, ConsoleContext c, CancellationToken ct) =>
        {
            try
            {
                var (device, secret) = await c.Devices.AddAsync(request.Id ?? string.Empty, request.Name ?? string.Empty, request.Site ?? string.Empty,
                    request.Owners ?? [], ct).ConfigureAwait(false);
                return Results.Created($"/api/v1/devices/{Uri.EscapeDataString(device.Id)}", new DeviceSecret(await ViewAsync(c, device.Id, ct).ConfigureAwait(false), secret));
            }
            catch (DeviceException ex)
            {
                return Results.BadRequest(new ApiError(ex.Message));
            }
        }).WithSummary("Adds a device; it can connect at once. Its secret is shown once.");
        api.MapPost("/devices/{id}/disable", (string id, ConsoleContext c, CancellationToken ct) => ChangeAsync(c, id, () => c.Devices.SetDisabledAsync(id, true, ct), ct))
            .WithSummary("Disables a device: its connection ends, it can no longer connect or submit");
        api.MapPost("/devices/{id}/enable", (string id, ConsoleContext c, CancellationToken ct) => ChangeAsync(c, id, () => c.Devices.SetDisabledAsync(id, false, ct), ct))
            .WithSummary("Enables a device again");
        api.MapPost("/devices/{id}/rotate-secret", async (string id, ConsoleContext c, CancellationToken ct) =>
        {
            try
            {
                string secret = await c.Devices.RotateSecretAsync(id, ct).ConfigureAwait(false);
                return Results.Ok(new DeviceSecret(await ViewAsync(c, id, ct).ConfigureAwait(false), secret));
            }
            catch (DeviceException ex)
            {
                return Results.NotFound(new ApiError(ex.Message));
            }
        }).WithSummary("Gives a device a new secret (shown once); the old one stops working at once");
    }

    private static async Task<IResult> ChangeAsync(ConsoleContext c, string id, Func<Task<Device>> change, CancellationToken ct)
    {
        try
        {
            await change().ConfigureAwait(false);
            return Results.Ok(await ViewAsync(c, id, ct).ConfigureAwait(false));
        }
        catch (DeviceException ex)
        {
            return Results.NotFound(new ApiError(ex.Message));
        }
    }

    private static async Task<DeviceView> ViewAsync(ConsoleContext c, string id, CancellationToken ct) =>
        (await ViewsAsync(c, ct).ConfigureAwait(false)).First(v => v.Id == id);

    /// <summary>Every device as the console shows it.</summary>
    /// <param name="c">The console's services.</param>
    /// <param name="ct">Cancellation.</param>
    /// <returns>The devices, by id.</returns>
    public static async Task<IReadOnlyList<DeviceView>> ViewsAsync(ConsoleContext c, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(c);
        var activity = (await c.Spool.DeviceActivityAsync(ct).ConfigureAwait(false)).ToDictionary(a => a.Device, StringComparer.Ordinal);
        var now = c.Clock.GetUtcNow();
        bool external = c.Options.Mqtt.IsExternal();
        var views = new List<DeviceView>();
        foreach (var d in c.Devices.All.OrderBy(d => d.Id, StringComparer.Ordinal))
        {
            var a = activity.GetValueOrDefault(d.Id);
            var contact = Latest(c.Presence.LastSeen(d.Id), a?.LastAlertAt, a?.LastStatusAt);
            bool online = c.Presence.IsConnected(d.Id) || (external && contact is { } seen && now - seen < ExternalOnlineWindow);
            var limit = c.Silence.LimitFor(d);
            bool silent = c.Silence.IsSilent(d.Id);
            string source = d.Source switch { DeviceSource.Console => "console", DeviceSource.ConfigurationChanged => "configuration-changed", _ => "configuration" };
            views.Add(new DeviceView(d.Id, d.Name, d.Site, d.Owners, d.Disabled, source, online, contact, a?.LastAlertAt, a?.LastStatusAt,
                a?.LastStatus is { } status ? Heartbeat(status) : null, silent, limit));
        }

        return views;
    }

    // A heartbeat is device input: show it when it is a JSON object, never fail on it.
    private static JsonElement? Heartbeat(byte[] payload) => DeviceJson.Parse(payload, 8) is { ValueKind: JsonValueKind.Object } json ? json : null;

    private static DateTimeOffset? Latest(params DateTimeOffset?[] times) => times.Where(t => t is not null).Max();
}
