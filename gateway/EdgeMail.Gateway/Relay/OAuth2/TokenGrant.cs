namespace EdgeMail.Gateway.Relay.OAuth2;

/// <summary>An access token and how long it is good for, as the provider said when it was issued.</summary>
/// <param name="Value">The bearer token (a secret: never logged).</param>
/// <param name="Lifetime">Time from issue to expiry.</param>
public sealed record AccessToken(string Value, TimeSpan Lifetime)
{
    /// <inheritdoc />
    public override string ToString() => $"AccessToken(valid {Lifetime})"; // never the value
}

/// <summary>One way of getting a token from a provider: client credentials, a stored refresh token, a service account.</summary>
public interface ITokenGrant : IDisposable
{
    /// <summary>What the grant is, for messages (e.g. "client credentials of app 1234... in tenant contoso").</summary>
    string Describe { get; }

    /// <summary>Asks the provider for a token.</summary>
    /// <param name="forceRefresh">Skip any token the grant's own cache holds (the server refused it, or it is about to expire).</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A token.</returns>
    /// <exception cref="TokenException">The provider refused, or could not be reached.</exception>
    Task<AccessToken> AcquireAsync(bool forceRefresh, CancellationToken cancellationToken);
}

/// <summary>Why no token could be had. <see cref="Exception.Message"/> says what to fix and never holds a secret.</summary>
public sealed class TokenException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What happened and what to do.</param>
    /// <param name="refused">True when the provider refused the grant (revoked, misconfigured): an operator must act. False for a transient failure (unreachable, 5xx, timeout).</param>
    /// <param name="inner">The underlying exception.</param>
    public TokenException(string message, bool refused, Exception? inner = null)
        : base(message, inner) => Refused = refused;

    /// <summary>Creates a transient failure.</summary>
    public TokenException()
        : this("no token", false)
    {
    }

    /// <summary>Creates a transient failure.</summary>
    /// <param name="message">What happened.</param>
    public TokenException(string message)
        : this(message, false)
    {
    }

    /// <summary>Creates a transient failure.</summary>
    /// <param name="message">What happened.</param>
    /// <param name="inner">Cause.</param>
    public TokenException(string message, Exception inner)
        : this(message, false, inner)
    {
    }

    /// <summary>True when an operator must fix something; false when trying later may help by itself.</summary>
    public bool Refused { get; }
}
