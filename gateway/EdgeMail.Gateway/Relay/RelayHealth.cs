namespace EdgeMail.Gateway.Relay;

/// <summary>How the last delivery attempts went, for the console, metrics and <c>/readyz</c>.</summary>
public sealed class RelayHealth
{
    private readonly Lock _lock = new();
    private DateTimeOffset? _lastSuccess;
    private DateTimeOffset? _lastError;
    private string? _lastErrorText;

    /// <summary>When a recipient was last accepted by the next hop.</summary>
    public DateTimeOffset? LastSuccess
    {
        get
        {
            lock (_lock)
            {
                return _lastSuccess;
            }
        }
    }

    /// <summary>When an attempt last failed (deferred or failed), and the reply.</summary>
    public (DateTimeOffset At, string Reply)? LastError
    {
        get
        {
            lock (_lock)
            {
                return _lastError is { } at ? (at, _lastErrorText!) : null;
            }
        }
    }

    /// <summary>Whether the relay works as far as the gateway knows: the last attempt with an outcome succeeded, or nothing failed yet.</summary>
    public bool Up
    {
        get
        {
            lock (_lock)
            {
                return _lastError is null || (_lastSuccess is { } ok && ok >= _lastError);
            }
        }
    }

    /// <summary>Records one attempt's outcome.</summary>
    /// <param name="at">When.</param>
    /// <param name="succeeded">At least one recipient was accepted.</param>
    /// <param name="reply">The reply of a failure.</param>
    public void Record(DateTimeOffset at, bool succeeded, string? reply)
    {
        lock (_lock)
        {
            if (succeeded)
            {
                _lastSuccess = at;
            }
            else
            {
                _lastError = at;
                _lastErrorText = reply ?? string.Empty;
            }
        }
    }
}
