using System.Text.Json;

namespace EdgeMail.Gateway.Web.Api;

/// <summary>What a device sent, as JSON the console can show: only when it is JSON that can be written out again.</summary>
internal static class DeviceJson
{
    /// <summary>The payload parsed; null when it is not JSON, is nested deeper than <paramref name="maxDepth"/>, or holds a string that is no Unicode text.</summary>
    /// <param name="payload">What the device sent.</param>
    /// <param name="maxDepth">Deepest nesting accepted.</param>
    /// <returns>The element, or null.</returns>
    public static JsonElement? Parse(byte[] payload, int maxDepth)
    {
        try
        {
            using var doc = JsonDocument.Parse(payload, new JsonDocumentOptions { MaxDepth = maxDepth });

            // The parser takes an unpaired surrogate escape ("\ud800") as the grammar allows, but writing the element
            // into a response then throws, and the whole response fails: try it here, where it can be left out.
            using var writer = new Utf8JsonWriter(Stream.Null);
            doc.RootElement.WriteTo(writer);
            return doc.RootElement.Clone();
        }
        catch (JsonException)
        {
            return null;
        }
        catch (InvalidOperationException)
        {
            return null;
        }
    }
}
