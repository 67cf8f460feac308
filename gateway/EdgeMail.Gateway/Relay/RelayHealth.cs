namespace EdgeMail.Gateway.Relay;

/// <summary>How the last delivery attempts went, for the console, metrics and <c>/readyz</c>.</summary>
public sealed class RelayHealth
{
    private readonly Lock _lock = new();
    private DateTimeOffset? _lastSuccess;
    private DateTimeOffset? _lastAnswer;
    private DateTimeOffset? _lastDown;
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

    /// <summary>
    /// Whether the relay works as far as the gateway knows: it answered the last attempt with an outcome (accepting or
    /// refusing recipients), or it was never found down.
    /// </summary>
    public bool Up
    {
        get
        {
            lock (_lock)
            {
                return _lastDown is null || (_lastAnswer is { } answer && answer >= _lastDown);
            }
        }
    }

    /// <summary>Records one attempt's outcome.</summary>
    /// <param name="at">When.</param>
    /// <param name="succeeded">At least one recipient was accepted.</param>
    /// <param name="answered">The relay answered (accepted or refused a recipient); false when it could not be reached or refused the gateway itself.</param>
    /// <param name="reply">The reply of a failure.</param>
    public void Record(DateTimeOffset at, bool succeeded, bool answered, string? reply)
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

            if (answered || succeeded)
            {
                _lastAnswer = at;
            }
            else
            {
                _lastDown = at;
            }
        }
    }
}
