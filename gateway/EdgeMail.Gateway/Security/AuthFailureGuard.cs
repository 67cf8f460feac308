namespace EdgeMail.Gateway.Security;

/// <summary>
/// Wrong secrets counted twice: per device id from one address, and per address whatever the device id. Devices of a
/// site share its address (NAT, or one router in front of the gateway), so one device with a stale secret — re-keyed,
/// decommissioned, restored from an old image — retrying forever must lock out only itself, not its neighbours: it
/// reaches the per-device limit, after which its attempts are refused unverified (and counted no further). Guessing
/// across many device ids from one address reaches the per-address limit and locks the address out.
/// </summary>
public sealed class AuthFailureGuard
{
    // A client chooses the device id it presents: only this much of it becomes part of a key held in memory.
    private const int MaxAccountChars = 128;
    private readonly FailureThrottle _perSource;
    private readonly FailureThrottle _perAccount;

    /// <summary>Creates the guard.</summary>
    /// <param name="perSource">Wrong secrets from one address, any device ids, before the address is refused; 0 disables.</param>
    /// <param name="perAccount">Wrong secrets for one device id from one address before that pair is refused; 0 disables.</param>
    /// <param name="window">The window both count in.</param>
    /// <param name="clock">Clock.</param>
    public AuthFailureGuard(int perSource, int perAccount, TimeSpan window, TimeProvider clock)
    {
        _perSource = new FailureThrottle(perSource, window, clock);
        _perAccount = new FailureThrottle(perAccount, window, clock);
    }

    /// <summary>Why an attempt to authenticate as <paramref name="account"/> from <paramref name="source"/> is refused without a look at its secret; null when it is not.</summary>
    /// <param name="source">The client's address.</param>
    /// <param name="account">The device id it presents.</param>
    /// <returns>The reason, or null.</returns>
    public string? Refusal(string source, string account)
    {
        if (_perSource.IsBlocked(source))
        {
            return "too many wrong secrets from this address";
        }

        return _perAccount.IsBlocked(Key(source, account)) ? "too many wrong secrets for this device from this address" : null;
    }

    /// <summary>Counts a wrong secret (or an unknown device id).</summary>
    /// <param name="source">The client's address.</param>
    /// <param name="account">The device id it presented.</param>
    public void Failed(string source, string account)
    {
        _perSource.Fail(source);
        _perAccount.Fail(Key(source, account));
    }

    private static string Key(string source, string account) =>
        string.Concat(source, "\n", account.AsSpan(0, Math.Min(account.Length, MaxAccountChars)));
}
