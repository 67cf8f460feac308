using System.Text.Json;
using EdgeMail.Testing;
using MQTTnet;
using MQTTnet.Protocol;

namespace EdgeMail.Gateway.Tests;

/// <summary>A device's receipts as they arrive on <c>edgemail/v1/{id}/receipt</c>.</summary>
public sealed class ReceiptInbox
{
    private readonly List<JsonElement> _receipts = [];
    private TaskCompletionSource _arrived = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private ReceiptInbox()
    {
    }

    /// <summary>Subscribes <paramref name="client"/> (connected as <paramref name="device"/>) to its receipts.</summary>
    public static async Task<ReceiptInbox> SubscribeAsync(IMqttClient client, string device, MqttQualityOfServiceLevel qos = MqttQualityOfServiceLevel.AtLeastOnce)
    {
        var inbox = new ReceiptInbox();
        client.ApplicationMessageReceivedAsync += e =>
        {
            using var json = JsonDocument.Parse(e.ApplicationMessage.ConvertPayloadToString());
            lock (inbox._receipts)
            {
                inbox._receipts.Add(json.RootElement.Clone());
                inbox._arrived.TrySetResult();
                inbox._arrived = new(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            return Task.CompletedTask;
        };
        await client.SubscribeAsync($"edgemail/v1/{device}/receipt", qos);
        return inbox;
    }

    /// <summary>Waits for a receipt for <paramref name="alertId"/> in <paramref name="state"/> (with <paramref name="detail"/>, when given) and returns it.</summary>
    public async Task<JsonElement> WaitForAsync(string alertId, string state, string? detail = null)
    {
        var deadline = TimeProvider.System.GetUtcNow() + Await.DefaultTimeout;
        while (true)
        {
            Task arrived;
            lock (_receipts)
            {
                foreach (var r in _receipts)
                {
                    if (r.GetProperty("id").GetString() == alertId && r.GetProperty("state").GetString() == state
                        && (detail is null || r.GetProperty("detail").GetString() == detail))
                    {
                        return r;
                    }
                }

                arrived = _arrived.Task;
            }

            var left = deadline - TimeProvider.System.GetUtcNow();
            if (left <= TimeSpan.Zero)
            {
                throw new TimeoutException($"Timed out waiting for a '{state}' receipt for {alertId}{(detail is null ? string.Empty : $" saying '{detail}'")}; have: {string.Join(", ", Snapshot())}");
            }

            try
            {
                await arrived.WaitAsync(left);
            }
            catch (TimeoutException)
            {
                // Checked once more above, then reported.
            }
        }
    }

    /// <summary>How many receipts for <paramref name="alertId"/> in <paramref name="state"/> arrived so far.</summary>
    public int Count(string alertId, string state)
    {
        lock (_receipts)
        {
            return _receipts.Count(r => r.GetProperty("id").GetString() == alertId && r.GetProperty("state").GetString() == state);
        }
    }

    private List<string> Snapshot()
    {
        lock (_receipts)
        {
            return _receipts.Select(r => r.GetRawText()).ToList();
        }
    }
}
