namespace EdgeMail.Firmware.Uplink;

/// <summary>
/// The gateway's rule for device ids, checked when an uplink is created so that a device with an id the gateway would
/// refuse fails at once on the bench, not by never getting an alert through in the field.
/// </summary>
public static class DeviceIds
{
    /// <summary>The rule, worded for an error message after the id.</summary>
    public const string Rule = "must be 1 to 64 ASCII letters, digits, '-', '_' or '.' (not '.' or '..' alone), as the gateway's device ids are.";

    /// <summary>Whether the gateway accepts <paramref name="id"/> as a device id.</summary>
    /// <param name="id">The id.</param>
    /// <returns>True when it follows <see cref="Rule"/>.</returns>
    public static bool IsValid(string id)
    {
        if (id.Length == 0 || id.Length > 64 || id == "." || id == "..")
        {
            return false;
        }

        for (int i = 0; i < id.Length; i++)
        {
            char c = id[i];
            if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            {
                return false;
            }
        }

        return true;
    }
}
