namespace EdgeMail.Firmware.Uplink;

/// <summary>
/// The application's view of the gateway's receipts (<c>{"id","state","at","detail"}</c>): a <c>failed</c> receipt is
/// the gateway saying an alert will not reach its people, which an application may show or escalate locally.
/// Called on the forwarder's thread with the received bytes, which are only valid during the call.
/// </summary>
public interface IReceiptHandler
{
    /// <summary>One receipt arrived.</summary>
    /// <param name="buffer">The bytes holding the receipt JSON.</param>
    /// <param name="offset">Index of its first byte.</param>
    /// <param name="count">Its length.</param>
    void OnReceipt(byte[] buffer, int offset, int count);
}
