namespace EdgeMail.Gateway.Ingest;

/// <summary>
/// Contract 1's topics as seen by a gateway subscribed to an external broker: the filters it subscribes to, and the
/// device id read back from the topic of each message. The topic is the only place the device id comes from — the
/// broker authenticated the device, and its ACL must keep every device on its own topics.
/// </summary>
public static class ExternalTopics
{
    /// <summary>The filter for every device's alerts.</summary>
    public const string AlertFilter = "edgemail/v1/+/alert";

    /// <summary>The filter for every device's status heartbeats.</summary>
    public const string StatusFilter = "edgemail/v1/+/status";

    private const string Prefix = "edgemail/v1/";

    /// <summary>Reads the device id and kind from a topic the gateway received a message on.</summary>
    /// <param name="topic">The message's topic.</param>
    /// <param name="deviceId">The device id (the third level), or empty when the topic is not one of Contract 1's.</param>
    /// <returns>Alert or status; <see cref="TopicKind.None"/> when the topic is not <c>edgemail/v1/{id}/alert|status</c>.</returns>
    public static TopicKind Parse(string topic, out string deviceId)
    {
        ArgumentNullException.ThrowIfNull(topic);
        deviceId = string.Empty;
        if (!topic.StartsWith(Prefix, StringComparison.Ordinal))
        {
            return TopicKind.None;
        }

        var rest = topic.AsSpan(Prefix.Length);
        int slash = rest.IndexOf('/');
        if (slash < 1)
        {
            return TopicKind.None;
        }

        string id = rest[..slash].ToString();
        var kind = Topics.Classify(topic, id);
        if (kind != TopicKind.None)
        {
            deviceId = id;
        }

        return kind;
    }
}
