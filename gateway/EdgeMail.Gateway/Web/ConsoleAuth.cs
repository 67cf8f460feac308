using System.Collections.Concurrent;
using System.Security.Claims;
using System.Security.Cryptography;
using System.Text;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Security;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Web;

/// <summary>What a login attempt came to.</summary>
public enum LoginResult
{
    /// <summary>The password is right.</summary>
    Success,

    /// <summary>Wrong password (counted against the source).</summary>
    WrongPassword,

    /// <summary>Too many wrong passwords from this source lately: refused without checking.</summary>
    Throttled,

    /// <summary>No admin password is set yet: use the setup link or <c>edgemail admin set-password</c>.</summary>
    NotSetUp,
}

/// <summary>
/// Who may use the console and the API. There is no default password: until one is set, the console offers only the
/// setup page, opened with a one-time token the gateway prints at start (or the password is set with
/// <c>edgemail admin set-password</c>). The admin password is stored as a PBKDF2 hash (600,000 iterations); wrong
/// passwords from one source are throttled. API keys (<c>emk_ID.SECRET</c>) are random, shown once and stored as the
/// SHA-256 of their secret; each has a scope (<see cref="ApiKeyScope"/>) chosen when it is made; one, with scope admin,
/// for the local CLI, is written at first start to a file only the service's user can read. Console sessions are kept
/// in the gateway's memory: logging out ends one at once, a new password ends them all (on every instance sharing the
/// spool within <see cref="StoredHashFreshness"/>), and a restart ends them all. What a request keeps open (the live
/// feed) ends with the session or key it came with (<see cref="Watch"/>).
/// </summary>
public sealed partial class ConsoleAuth
{
    /// <summary>File (in the data directory) holding the local CLI's API key.</summary>
    public const string CliKeyFileName = "cli-api-key";

    /// <summary>Shortest admin password accepted.</summary>
    public const int MinPasswordLength = 12;

    /// <summary>A console session ends after this long without use.</summary>
    public static readonly TimeSpan SessionIdleTimeout = TimeSpan.FromHours(8);

    // The cookie is a self-contained ticket, valid until it expires whatever happens on the server: these claims tie
    // it to a session this gateway still holds and to the password it was opened with.
    internal const string SessionClaim = "edgemail_session";
    internal const string PasswordClaim = "edgemail_password";

    // An API key's principal: the key's id and its scope's name.
    internal const string ApiKeyClaim = "api_key";
    internal const string ScopeClaim = "edgemail_scope";

    private const string KeyPrefix = "emk_";
    private const int PasswordIterations = 600_000;

    // A session is checked against the admin hash the spool holds, read again at most this often: another instance
    // on a shared spool, or edgemail admin set-password writing it directly, may have changed the password.
    private static readonly TimeSpan StoredHashFreshness = TimeSpan.FromSeconds(5);
    private readonly ISpool _spool;
    private readonly TimeProvider _clock;
    private readonly ILogger<ConsoleAuth> _logger;
    private readonly FailureThrottle _loginFailures;
    private readonly SemaphoreSlim _writes = new(1, 1);
    private readonly SemaphoreSlim _verifications = new(Math.Max(1, Environment.ProcessorCount / 2));
    private volatile string? _adminHash;
    private volatile string? _setupToken;
    private volatile Dictionary<string, ApiKeyRecord> _keys = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, Session> _sessions = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, Ending> _keyEnds = new(StringComparer.Ordinal); // keys watched, by id
    private long _hashReadAt; // UTC ticks of the last read of the stored hash

    /// <summary>Creates the authority; <see cref="InitializeAsync"/> loads what the spool holds.</summary>
    /// <param name="spool">Where the hashes live.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="logger">Logger.</param>
    public ConsoleAuth(ISpool spool, TimeProvider clock, ILogger<ConsoleAuth> logger)
    {
        _spool = spool;
        _clock = clock;
        _logger = logger;
        _loginFailures = new FailureThrottle(5, TimeSpan.FromMinutes(15), clock);
    }

    /// <summary>True until an admin password is set.</summary>
    public bool NeedsSetup => _adminHash is null;

    /// <summary>The one-time setup token, while no password is set.</summary>
    public string? SetupToken => _setupToken;

    /// <summary>Loads the admin hash and the API keys; makes a setup token when no password is set; writes the local CLI key file when missing.</summary>
    /// <param name="dataDirectory">Where the CLI key file goes.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task.</returns>
    public async Task InitializeAsync(string dataDirectory, CancellationToken cancellationToken)
    {
        _adminHash = await _spool.AdminPasswordHashAsync(cancellationToken).ConfigureAwait(false);
        _keys = (await _spool.ApiKeysAsync(cancellationToken).ConfigureAwait(false)).ToDictionary(k => k.Id, StringComparer.Ordinal);
        if (_adminHash is null)
        {
            _setupToken = Base64Url(RandomNumberGenerator.GetBytes(24));
        }

        string file = Path.Combine(dataDirectory, CliKeyFileName);
        if (!File.Exists(file) || VerifyApiKey(File.ReadAllText(file).Trim()) is null)
        {
            var (_, key) = await CreateApiKeyAsync("local CLI (" + file + ")", ApiKeyScope.Admin, cancellationToken).ConfigureAwait(false);
            PrivateFile.Write(file, Encoding.UTF8.GetBytes(key + "\n"));
        }
    }

    /// <summary>Sets the admin password with the one-time setup token.</summary>
    /// <param name="token">The token from the setup link.</param>
    /// <param name="password">The new password.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Null on success, else what is wrong.</returns>
    public async Task<string?> CompleteSetupAsync(string token, string password, CancellationToken cancellationToken)
    {
        const string invalid = "the setup link is not valid (it works once, until a password is set; restarting the gateway prints a new one)";
        string? expected = _setupToken;
        if (expected is null || !FixedTimeEquals(expected, token))
        {
            return invalid;
        }

        if (PasswordProblem(password) is { } problem)
        {
            return problem;
        }

        // Once only, also when two requests bring the token at the same time.
        if (Interlocked.CompareExchange(ref _setupToken, null, expected) != expected)
        {
            return invalid;
        }

        // Another instance on a shared spool, or edgemail admin set-password on the spool, may have set one since.
        if (!await NeedsSetupAsync(cancellationToken).ConfigureAwait(false))
        {
            return "a password has been set meanwhile (by another gateway on the spool or edgemail admin set-password): log in with it";
        }

        return await SetPasswordAsync(password, cancellationToken).ConfigureAwait(false);
    }

    /// <summary><see cref="NeedsSetup"/> as the spool holds it now: a password may have been set elsewhere.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>True until an admin password is set.</returns>
    public async Task<bool> NeedsSetupAsync(CancellationToken cancellationToken)
    {
        if (await _spool.AdminPasswordHashAsync(cancellationToken).ConfigureAwait(false) is { } stored)
        {
            _adminHash = stored;
            _setupToken = null;
        }

        return NeedsSetup;
    }

    /// <summary>Sets (or changes) the admin password.</summary>
    /// <param name="password">The new password.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>Null on success, else what is wrong with the password.</returns>
    public async Task<string?> SetPasswordAsync(string password, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(password);
        if (PasswordProblem(password) is { } problem)
        {
            return problem;
        }

        string hash = SecretHash.Create(password, PasswordIterations);
        await _spool.SetAdminPasswordHashAsync(hash, cancellationToken).ConfigureAwait(false);
        _adminHash = hash;
        _setupToken = null;
        Interlocked.Exchange(ref _hashReadAt, _clock.GetUtcNow().UtcTicks);
        foreach (string session in _sessions.Keys)
        {
            EndSession(session); // whoever knew the old password, or holds a session opened with it, is out
        }

        LogPasswordSet();
        return null;
    }

    /// <summary>Opens a console session (after a login or the setup): the principal to put in the cookie.</summary>
    /// <param name="authenticationType">The cookie scheme.</param>
    /// <returns>The admin, with the session's id and the stamp of the password it was opened with.</returns>
    public ClaimsPrincipal OpenSession(string authenticationType)
    {
        long now = _clock.GetUtcNow().UtcTicks;
        foreach (var (id, open) in _sessions)
        {
            if (now - Interlocked.Read(ref open.LastUse) > SessionIdleTimeout.Ticks)
            {
                EndSession(id);
            }
        }

        string session = Base64Url(RandomNumberGenerator.GetBytes(18));
        _sessions[session] = new Session(now);
        return new ClaimsPrincipal(new ClaimsIdentity(
            [new Claim(ClaimTypes.Name, "admin"), new Claim(SessionClaim, session), new Claim(PasswordClaim, PasswordStamp(_adminHash))],
            authenticationType));
    }

    /// <summary>Ends the session a principal holds (logout); its cookie is refused from now on.</summary>
    /// <param name="user">The request's user.</param>
    public void EndSession(ClaimsPrincipal user)
    {
        if (user?.FindFirst(SessionClaim)?.Value is { } session)
        {
            EndSession(session);
        }
    }

    private void EndSession(string session)
    {
        if (_sessions.TryRemove(session, out var ended))
        {
            ended.Ended.End();
        }
    }

    /// <summary>
    /// Whether a cookie's principal is a session this gateway opened, not ended nor idle too long, opened with the
    /// admin password the spool holds now; counts as a use of it.
    /// </summary>
    /// <param name="user">The principal the cookie carries.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>True when the session may go on.</returns>
    public Task<bool> ValidateSessionAsync(ClaimsPrincipal user, CancellationToken cancellationToken) => CheckSessionAsync(user, use: true, cancellationToken);

    private async Task<bool> CheckSessionAsync(ClaimsPrincipal user, bool use, CancellationToken cancellationToken)
    {
        if (user?.FindFirst(SessionClaim)?.Value is not { } session || user.FindFirst(PasswordClaim)?.Value is not { } stamp)
        {
            return false;
        }

        long now = _clock.GetUtcNow().UtcTicks;
        if (!_sessions.TryGetValue(session, out var open) || now - Interlocked.Read(ref open.LastUse) > SessionIdleTimeout.Ticks)
        {
            EndSession(session);
            return false;
        }

        if (now - Interlocked.Read(ref _hashReadAt) >= StoredHashFreshness.Ticks)
        {
            if (await _spool.AdminPasswordHashAsync(cancellationToken).ConfigureAwait(false) is { } stored)
            {
                _adminHash = stored;
            }

            Interlocked.Exchange(ref _hashReadAt, now);
        }

        if (!FixedTimeEquals(PasswordStamp(_adminHash), stamp))
        {
            EndSession(session);
            return false;
        }

        if (use)
        {
            Interlocked.Exchange(ref open.LastUse, now); // one ended meanwhile is out of the table: a logout stays a logout
        }

        return true;
    }

    /// <summary>
    /// Watches the credential a request came with, for a request that stays open (the live feed): its token is
    /// cancelled when that console session ends (logout, a new password, idle too long) or that API key is revoked.
    /// What this gateway does ends it at once; a password set or a key revoked by another instance sharing the spool,
    /// or by <c>edgemail admin set-password</c> on the spool, within <see cref="StoredHashFreshness"/> (the watch looks
    /// again that often). Keeping a request open is not a use: it does not keep a session from going idle.
    /// </summary>
    /// <param name="user">The request's user.</param>
    /// <returns>The watch; dispose it with the request.</returns>
    public CredentialWatch Watch(ClaimsPrincipal user)
    {
        ArgumentNullException.ThrowIfNull(user);
        CancellationToken ended;
        if (user.FindFirst(SessionClaim)?.Value is { } session)
        {
            ended = _sessions.TryGetValue(session, out var open) ? open.Ended.Token : new CancellationToken(true);
        }
        else if (user.FindFirst(ApiKeyClaim)?.Value is { } key)
        {
            ended = _keyEnds.GetOrAdd(key, _ => new Ending()).Token;
            if (!_keys.TryGetValue(key, out var record) || record.RevokedAt is not null)
            {
                EndKey(key); // revoked between its check and now
            }
        }
        else
        {
            ended = CancellationToken.None; // no credential (anonymous /metrics): nothing to end
        }

        return new CredentialWatch(ended, ct => StillValidAsync(user, ct), StoredHashFreshness, _clock, _logger);
    }

    private async Task<bool> StillValidAsync(ClaimsPrincipal user, CancellationToken cancellationToken)
    {
        if (user.FindFirst(SessionClaim) is not null)
        {
            return await CheckSessionAsync(user, use: false, cancellationToken).ConfigureAwait(false);
        }

        if (user.FindFirst(ApiKeyClaim)?.Value is { } key)
        {
            await ReloadIfSharedAsync(cancellationToken).ConfigureAwait(false);
            return _keys.TryGetValue(key, out var record) && record.RevokedAt is null;
        }

        return true;
    }

    private void EndKey(string id)
    {
        if (_keyEnds.TryRemove(id, out var ended))
        {
            ended.End();
        }
    }

    // Names the password without revealing anything about it (the hash of its salted hash).
    private static string PasswordStamp(string? hash) =>
        hash is null ? string.Empty : Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(hash)))[..32];

    /// <summary>Why a password is not good enough, or null.</summary>
    /// <param name="password">The candidate.</param>
    /// <returns>The problem, or null.</returns>
    public static string? PasswordProblem(string password) =>
        password is null || password.Length < MinPasswordLength ? $"the password must have at least {MinPasswordLength} characters" : null;

    /// <summary>
    /// Checks the admin password for a login from <paramref name="source"/> against the hash the spool holds now, so a
    /// password set by <c>edgemail admin set-password</c> on the spool, or by another instance sharing it, counts at once.
    /// </summary>
    /// <param name="password">What was typed.</param>
    /// <param name="source">The client's address (throttling).</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The result.</returns>
    public async Task<LoginResult> LoginAsync(string password, string source, CancellationToken cancellationToken)
    {
        if (await _spool.AdminPasswordHashAsync(cancellationToken).ConfigureAwait(false) is { } stored)
        {
            _adminHash = stored;
            _setupToken = null;
        }

        if (_adminHash is not { } hash)
        {
            return LoginResult.NotSetUp;
        }

        // The attempt counts before the check, which takes a core for a good fraction of a second, and is given back
        // if it was right: counted after it, a burst of guesses sent in parallel all passed the limit and were all
        // checked. Checks wait their turn for a few cores, so that guesses from many addresses cannot take them all.
        if (!_loginFailures.TryReserve(source))
        {
            LogThrottled(source);
            return LoginResult.Throttled;
        }

        bool right;
        await _verifications.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            right = SecretHash.Verify(hash, Encoding.UTF8.GetBytes(password ?? string.Empty));
        }
        finally
        {
            _verifications.Release();
        }

        if (right)
        {
            _loginFailures.Return(source);
            return LoginResult.Success;
        }

        LogLoginFailed(source);
        return LoginResult.WrongPassword;
    }

    /// <summary>The key record for a presented API key, or null when unknown, wrong or revoked.</summary>
    /// <param name="presented"><c>emk_ID.SECRET</c>.</param>
    /// <returns>The key, or null.</returns>
    public ApiKeyRecord? VerifyApiKey(string presented)
    {
        if (presented is null || !presented.StartsWith(KeyPrefix, StringComparison.Ordinal))
        {
            return null;
        }

        int dot = presented.IndexOf('.', StringComparison.Ordinal);
        if (dot < 0 || !_keys.TryGetValue(presented[KeyPrefix.Length..dot], out var key) || key.RevokedAt is not null)
        {
            return null;
        }

        return FixedTimeEquals(key.Hash, HashSecret(presented[(dot + 1)..])) ? key : null;
    }

    /// <summary>
    /// <see cref="VerifyApiKey"/> on the keys as the spool holds them now: on a shared spool another instance may have
    /// created or revoked one, and a revocation must hold on every instance at once.
    /// </summary>
    /// <param name="presented"><c>emk_ID.SECRET</c>.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The key, or null.</returns>
    public async Task<ApiKeyRecord?> VerifyApiKeyAsync(string presented, CancellationToken cancellationToken)
    {
        await ReloadIfSharedAsync(cancellationToken).ConfigureAwait(false);
        return VerifyApiKey(presented);
    }

    /// <summary>Every API key (without secrets), as the spool holds them now.</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The keys.</returns>
    public async Task<IReadOnlyCollection<ApiKeyRecord>> ApiKeysAsync(CancellationToken cancellationToken)
    {
        await ReloadIfSharedAsync(cancellationToken).ConfigureAwait(false);
        return _keys.Values;
    }

    // A single gateway is the only writer of its keys, so its cache is the truth; on a shared spool it is re-read.
    private async Task ReloadIfSharedAsync(CancellationToken cancellationToken)
    {
        if (_spool.SharedPollInterval is not null)
        {
            _keys = (await _spool.ApiKeysAsync(cancellationToken).ConfigureAwait(false)).ToDictionary(k => k.Id, StringComparer.Ordinal);
            foreach (string watched in _keyEnds.Keys)
            {
                if (!_keys.TryGetValue(watched, out var key) || key.RevokedAt is not null)
                {
                    EndKey(watched); // revoked on another instance
                }
            }
        }
    }

    /// <summary>Creates an API key.</summary>
    /// <param name="name">What it is for.</param>
    /// <param name="scope">What it may do.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The record and the key — shown once.</returns>
    public async Task<(ApiKeyRecord Record, string Key)> CreateApiKeyAsync(string name, ApiKeyScope scope, CancellationToken cancellationToken)
    {
        string id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
        string secret = Base64Url(RandomNumberGenerator.GetBytes(32));
        var record = new ApiKeyRecord(id, name, HashSecret(secret), _clock.GetUtcNow(), null, scope);
        await SaveAsync(record, cancellationToken).ConfigureAwait(false);
        LogKeyCreated(id, name, ApiKeyScopes.Name(scope));
        return (record, $"{KeyPrefix}{id}.{secret}");
    }

    /// <summary>Revokes an API key at once.</summary>
    /// <param name="id">Its id.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>True when it existed and was active.</returns>
    public async Task<bool> RevokeApiKeyAsync(string id, CancellationToken cancellationToken)
    {
        await ReloadIfSharedAsync(cancellationToken).ConfigureAwait(false);
        if (!_keys.TryGetValue(id, out var key) || key.RevokedAt is not null)
        {
            return false;
        }

        await SaveAsync(key with { RevokedAt = _clock.GetUtcNow() }, cancellationToken).ConfigureAwait(false);
        EndKey(id);
        LogKeyRevoked(id);
        return true;
    }

    private async Task SaveAsync(ApiKeyRecord record, CancellationToken cancellationToken)
    {
        await _writes.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _spool.SaveApiKeyAsync(record, cancellationToken).ConfigureAwait(false);
            _keys = new Dictionary<string, ApiKeyRecord>(_keys, StringComparer.Ordinal) { [record.Id] = record };
        }
        finally
        {
            _writes.Release();
        }
    }

    private static string HashSecret(string secret) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(secret)));

    private static bool FixedTimeEquals(string a, string b) =>
        CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(a), Encoding.UTF8.GetBytes(b ?? string.Empty));

    private static string Base64Url(byte[] bytes) => Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    [LoggerMessage(Level = LogLevel.Information, Message = "Console admin password set")]
    private partial void LogPasswordSet();

    [LoggerMessage(Level = LogLevel.Warning, Message = "Console login failed from {Source}")]
    private partial void LogLoginFailed(string source);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Console logins from {Source} refused for a while: too many wrong passwords")]
    private partial void LogThrottled(string source);

    [LoggerMessage(Level = LogLevel.Information, Message = "API key {KeyId} created ({Name}), scope {Scope}")]
    private partial void LogKeyCreated(string keyId, string name, string scope);

    [LoggerMessage(Level = LogLevel.Information, Message = "API key {KeyId} revoked")]
    private partial void LogKeyRevoked(string keyId);

    // A console session: when it was last used, and what ends with it.
    private sealed class Session(long lastUse)
    {
        public long LastUse = lastUse; // UTC ticks

        public Ending Ended { get; } = new();
    }

    // Cancelled once, when what it stands for ends; a token taken from it after that is cancelled already. The
    // streams waiting on it go on from the thread pool, not from inside the logout or password change that ended it.
    private sealed class Ending
    {
        private readonly CancellationTokenSource _source = new();

        public CancellationToken Token => _source.Token;

        public void End() => _ = _source.CancelAsync();
    }
}
