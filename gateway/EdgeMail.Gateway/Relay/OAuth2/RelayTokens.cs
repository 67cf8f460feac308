using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Operations;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Relay.OAuth2;

/// <summary>
/// The relay's access token over its life: one request at a time to the provider, the token cached and renewed
/// <c>Relay:OAuth2:RefreshBefore</c> ahead of expiry (a still-valid token is used while a renewal fails), renewed once
/// when the SMTP server refuses it, and — when the provider refuses the grant or the server refuses even a fresh token —
/// one operator notice per episode and fast failures (mail deferred, never lost) until <c>GrantRetryInterval</c> has
/// passed. Every message says what to fix; no token is ever logged.
/// </summary>
public sealed partial class RelayTokens : IDisposable
{
    private readonly ITokenGrant _grant;
    private readonly RelayOAuth2Options _options;
    private readonly TimeProvider _clock;
    private readonly ILogger _logger;
    private readonly Action<string, string>? _notify;
    private readonly GatewayMetrics? _metrics;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly Lock _state = new();
    private IDisposable? _owned;
    private volatile Cached? _cached;
    private TokenException? _failure;
    private DateTimeOffset _failureUntil;
    private bool _episode;

    /// <summary>Creates the cache.</summary>
    /// <param name="grant">Where tokens come from.</param>
    /// <param name="options">Refresh margin and retry interval.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="logger">Logger.</param>
    /// <param name="notify">Operator notice (topic, detail), once per episode of refusals.</param>
    /// <param name="metrics">Counters.</param>
    public RelayTokens(ITokenGrant grant, RelayOAuth2Options options, TimeProvider clock, ILogger logger, Action<string, string>? notify = null, GatewayMetrics? metrics = null)
    {
        _grant = grant ?? throw new ArgumentNullException(nameof(grant));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _clock = clock;
        _logger = logger;
        _notify = notify;
        _metrics = metrics;
    }

    /// <summary>What the grant is.</summary>
    public string Describe => _grant.Describe;

    /// <summary>Tokens obtained from the provider so far (tests, the doctor).</summary>
    public int Acquired => _acquired;

    private int _acquired;

    /// <summary>A token to send now: the cached one while it is good for longer than the refresh margin.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The bearer token.</returns>
    /// <exception cref="TokenException">None can be had; <see cref="TokenException.Refused"/> tells whether an operator must act.</exception>
    public async Task<string> GetAsync(CancellationToken cancellationToken)
    {
        var cached = _cached;
        if (cached is not null && _clock.GetUtcNow() < cached.ExpiresAt - _options.RefreshBefore)
        {
            return cached.Value;
        }

        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            cached = _cached;
            var now = _clock.GetUtcNow();
            if (cached is not null && now < cached.ExpiresAt - _options.RefreshBefore)
            {
                return cached.Value;
            }

            ThrowIfFailing(now, cached);
            if (cached is not null && now < cached.ExpiresAt && Failing(now) is not null)
            {
                return cached.Value; // renewing failed a moment ago; the token still works, ask again after the interval
            }

            try
            {
                return await AcquireAsync(forceRefresh: cached is not null, cancellationToken).ConfigureAwait(false);
            }
            catch (TokenException) when (cached is not null && _clock.GetUtcNow() < cached.ExpiresAt)
            {
                // Renewing ahead of expiry failed; the token still works until it expires.
                return cached.Value;
            }
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>The SMTP server refused <paramref name="rejected"/>: a new token, unless another sender already renewed it.</summary>
    /// <param name="rejected">The token the server refused.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A different token.</returns>
    /// <exception cref="TokenException">None can be had.</exception>
    public async Task<string> RenewAsync(string rejected, CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var cached = _cached;
            if (cached is not null && cached.Value != rejected && _clock.GetUtcNow() < cached.ExpiresAt)
            {
                return cached.Value;
            }

            _cached = null;
            ThrowIfFailing(_clock.GetUtcNow(), null);
            return await AcquireAsync(forceRefresh: true, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>The server accepted a token: any episode of refusals is over.</summary>
    public void Accepted()
    {
        if (!_episode)
        {
            return;
        }

        lock (_state)
        {
            if (_episode)
            {
                _episode = false;
                LogRecovered(_grant.Describe);
            }
        }
    }

    /// <summary>The server refused even a freshly issued token: the grant is not the problem, the mailbox's rights are.</summary>
    /// <param name="reply">The server's reply, in its own words: kept as one clean line for the log and the notice.</param>
    /// <param name="fix">What to fix, after the reply (never cut with it).</param>
    public void Refused(string reply, string fix)
    {
        string explanation = $"{RemoteReply.Clean(reply)}. Fix: {fix}";
        _metrics?.RelayTokens.Add(1, new KeyValuePair<string, object?>("outcome", "refused_by_server"));
        lock (_state)
        {
            _cached = null;
            _failure = new TokenException(explanation, refused: true);
            _failureUntil = _clock.GetUtcNow() + _options.GrantRetryInterval;
        }

        Episode(explanation);
    }

    private void ThrowIfFailing(DateTimeOffset now, Cached? cached)
    {
        if ((cached is null || now >= cached.ExpiresAt) && Failing(now) is { } failure)
        {
            throw failure;
        }
    }

    private TokenException? Failing(DateTimeOffset now)
    {
        lock (_state)
        {
            return _failure is not null && now < _failureUntil ? _failure : null;
        }
    }

    // Under _gate.
    private async Task<string> AcquireAsync(bool forceRefresh, CancellationToken cancellationToken)
    {
        try
        {
            var token = await _grant.AcquireAsync(forceRefresh, cancellationToken).ConfigureAwait(false);
            var now = _clock.GetUtcNow();
            _cached = new Cached(token.Value, now + token.Lifetime);
            lock (_state)
            {
                _failure = null;
            }

            Interlocked.Increment(ref _acquired);
            _metrics?.RelayTokens.Add(1, new KeyValuePair<string, object?>("outcome", "acquired"));
            LogAcquired(_grant.Describe, token.Lifetime);
            return token.Value;
        }
        catch (TokenException ex)
        {
            lock (_state)
            {
                // An unreachable endpoint is asked again sooner than a refused grant, but not by every message.
                _failure = ex;
                _failureUntil = _clock.GetUtcNow() + (ex.Refused ? _options.GrantRetryInterval : TimeSpan.FromTicks(Math.Min(_options.GrantRetryInterval.Ticks, TimeSpan.FromSeconds(30).Ticks)));
            }

            _metrics?.RelayTokens.Add(1, new KeyValuePair<string, object?>("outcome", ex.Refused ? "refused" : "unavailable"));
            if (ex.Refused)
            {
                Episode(ex.Message);
            }
            else
            {
                LogUnavailable(ex.Message);
            }

            throw;
        }
    }

    private void Episode(string explanation)
    {
        bool first;
        lock (_state)
        {
            first = !_episode;
            _episode = true;
        }

        if (first)
        {
            LogRefused(explanation);
            _notify?.Invoke("the relay refuses the gateway's sign-in; mail is held", "Mail to the relay is deferred (kept in the spool, not failed) until this is fixed: " + explanation);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _gate.Dispose();
        _grant.Dispose();
        _owned?.Dispose();
    }

    /// <summary>The token cache for the configured <c>Relay:Auth</c> mode, or null for <c>Password</c>.</summary>
    /// <param name="options">Gateway options.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="logger">Logger.</param>
    /// <param name="notify">Operator notice (topic, detail).</param>
    /// <param name="metrics">Counters.</param>
    /// <returns>The cache, or null.</returns>
    public static RelayTokens? Create(GatewayOptions options, TimeProvider clock, ILogger logger, Action<string, string>? notify = null, GatewayMetrics? metrics = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var relay = options.Relay;
        if (!RelayAuthModes.IsOAuth2(relay.Auth))
        {
            return null;
        }

        var http = new RelayHttp(relay);
        try
        {
            ITokenGrant grant = relay.Auth.ToUpperInvariant() switch
            {
                "OAUTH2CLIENTCREDENTIALS" => new MsalClientCredentialsGrant(relay, http),
                "GOOGLESERVICEACCOUNT" => new GoogleServiceAccountGrant(relay, http, clock),
                _ when relay.OAuth2.IsGoogle(relay.Auth) => new GoogleRefreshTokenGrant(relay, http, TokenStore.For(options)),
                _ => new MsalDelegatedGrant(relay, http, TokenStore.For(options)),
            };
            return new RelayTokens(grant, relay.OAuth2, clock, logger, notify, metrics) { _owned = http };
        }
        catch
        {
            http.Dispose();
            throw;
        }
    }

    private sealed record Cached(string Value, DateTimeOffset ExpiresAt)
    {
        public override string ToString() => $"Cached(until {ExpiresAt:u})";
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Relay token obtained ({Grant}), valid for {Lifetime}")]
    private partial void LogAcquired(string grant, TimeSpan lifetime);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Relay token unavailable; mail is deferred: {Reason}")]
    private partial void LogUnavailable(string reason);

    [LoggerMessage(Level = LogLevel.Error, Message = "Relay sign-in refused; mail is deferred until it is fixed, the operator is told: {Reason}")]
    private partial void LogRefused(string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "Relay sign-in works again ({Grant}); deferred mail goes out on its next attempt")]
    private partial void LogRecovered(string grant);
}
