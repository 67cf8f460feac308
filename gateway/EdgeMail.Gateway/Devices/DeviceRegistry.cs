using System.Security.Cryptography;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Operations;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Devices;

/// <summary>Where a device's definition comes from.</summary>
public enum DeviceSource
{
    /// <summary>The configuration file (<c>Devices</c>), unchanged.</summary>
    Configuration,

    /// <summary>The configuration file, with changes made at run time (disabled, secret rotated, renamed).</summary>
    ConfigurationChanged,

    /// <summary>Added at run time through the console or the CLI.</summary>
    Console,
}

/// <summary>A device as the gateway knows it now.</summary>
/// <param name="Id">Device id (MQTT client id and user name, SMTP AUTH user).</param>
/// <param name="SecretHash">PBKDF2 hash of its secret.</param>
/// <param name="Name">Display name (the id when none was given).</param>
/// <param name="Site">Site, possibly empty.</param>
/// <param name="Owners">Owner user or group ids.</param>
/// <param name="Disabled">Refused at connect and at AUTH.</param>
/// <param name="SilentAfter">Configured silence limit, or null for the default.</param>
/// <param name="Source">Where it comes from.</param>
public sealed record Device(string Id, string SecretHash, string Name, string Site, IReadOnlyList<string> Owners, bool Disabled, TimeSpan? SilentAfter, DeviceSource Source);

/// <summary>A change to a device, for listeners that hold per-device state (sessions, caches).</summary>
/// <param name="Id">Device id.</param>
/// <param name="CredentialsChanged">Its secret changed or it was disabled: open sessions must end.</param>
public readonly record struct DeviceChange(string Id, bool CredentialsChanged);

/// <summary>
/// The devices allowed to connect: those of the configuration file, and those added or changed at run time (kept
/// in the spool, so they survive restarts). Lookups read an immutable snapshot (no lock on the connect path); a
/// change is committed to the spool first, then the snapshot is replaced and <see cref="Changed"/> raised, so the
/// brokers can end the sessions of a disabled device — and only that device's — at once.
/// </summary>
public sealed partial class DeviceRegistry : IHostedService
{
    private static readonly System.Text.RegularExpressions.Regex IdPattern = GatewayOptionsValidator.DeviceIdRegex();

    private readonly GatewayOptions _options;
    private readonly ISpool _spool;
    private readonly TimeProvider _clock;
    private readonly ILogger<DeviceRegistry> _logger;
    private readonly SemaphoreSlim _writes = new(1, 1);
    private readonly CancellationTokenSource _stopping = new();
    private Dictionary<string, ManagedDevice> _managed = new(StringComparer.Ordinal);
    private Task _follow = Task.CompletedTask;
    private volatile Dictionary<string, Device> _devices;
    private readonly Lock _missLock = new();
    private Task? _missRefresh;
    private long _missRefreshedAt = long.MinValue;

    /// <summary>Creates the registry from the configuration; <see cref="StartAsync"/> adds what the spool holds.</summary>
    /// <param name="options">Configured devices.</param>
    /// <param name="spool">Where run-time changes are kept.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="logger">Logger.</param>
    public DeviceRegistry(IOptions<GatewayOptions> options, ISpool spool, TimeProvider clock, ILogger<DeviceRegistry> logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options.Value;
        _spool = spool;
        _clock = clock;
        _logger = logger;
        _devices = Build(_options, _managed);
    }

    /// <summary>Raised after a change is committed and visible.</summary>
    public event Action<DeviceChange>? Changed;

    /// <summary>Every device, enabled or not.</summary>
    public IReadOnlyCollection<Device> All => _devices.Values;

    /// <summary>How many devices may connect.</summary>
    public int EnabledCount => _devices.Values.Count(d => !d.Disabled);

    /// <summary>The device with this id, enabled or not.</summary>
    /// <param name="id">Device id.</param>
    /// <returns>The device, or null.</returns>
    public Device? Find(string id) => _devices.GetValueOrDefault(id);

    /// <summary>The enabled device with this id: the one that may connect, authenticate and send.</summary>
    /// <param name="id">Device id.</param>
    /// <returns>The device, or null when unknown or disabled.</returns>
    public Device? FindEnabled(string id) => _devices.GetValueOrDefault(id) is { Disabled: false } d ? d : null;

    /// <summary>When the device was last changed at run time (added, disabled, enabled, re-keyed), or null if never.</summary>
    /// <param name="id">Device id.</param>
    /// <returns>The time of its last change.</returns>
    public DateTimeOffset? ChangedAt(string id) => _managed.GetValueOrDefault(id)?.UpdatedAt;

    /// <summary>
    /// <see cref="Find"/>, and on a spool shared with other instances, when the device is not known here, once more after
    /// reading the spool's devices again: one added on another instance moments ago (its alerts may reach this instance
    /// before the next poll) is found. A miss reads the spool at most once a second, and concurrent misses share the read.
    /// </summary>
    /// <param name="id">Device id.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The device, or null.</returns>
    public async Task<Device?> FindFreshAsync(string id, CancellationToken cancellationToken)
    {
        var found = Find(id);
        if (found is not null || _spool.SharedPollInterval is null)
        {
            return found;
        }

        Task refresh;
        lock (_missLock)
        {
            if (_missRefresh is null || (_missRefresh.IsCompleted && _clock.GetElapsedTime(_missRefreshedAt) >= TimeSpan.FromSeconds(1)))
            {
                _missRefreshedAt = _clock.GetTimestamp();
                _missRefresh = RefreshAsync(_stopping.Token);
            }

            refresh = _missRefresh;
        }

        try
        {
            await refresh.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (SpoolException ex)
        {
            LogRefreshFailed(ex); // decided on what is known here
        }

        return Find(id);
    }

    /// <inheritdoc />
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var managed = await _spool.ManagedDevicesAsync(cancellationToken).ConfigureAwait(false);
        _managed = managed.ToDictionary(d => d.Id, StringComparer.Ordinal);
        _devices = Build(_options, _managed);
        if (_spool.SharedPollInterval is { } poll)
        {
            _follow = FollowAsync(poll, _stopping.Token);
        }
    }

    /// <inheritdoc />
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _stopping.CancelAsync().ConfigureAwait(false);
        await _follow.ConfigureAwait(false);
    }

    // On a shared spool another instance may add, disable or re-key a device: take its changes within a poll interval
    // (and end the sessions of a device disabled or re-keyed there, as if it had been done here).
    private async Task FollowAsync(TimeSpan poll, CancellationToken stop)
    {
        using var timer = new PeriodicTimer(poll, _clock);
        try
        {
            while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false))
            {
                try
                {
                    await RefreshAsync(stop).ConfigureAwait(false);
                }
                catch (SpoolException ex)
                {
                    LogRefreshFailed(ex); // the last snapshot stays; the next tick tries again
                }
                catch (Exception ex) when (ParkingLot.Contains(ex, stop))
                {
                    LogRefreshBroke(ex); // a surprise in one refresh must not end the following for good
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }

    /// <summary>Reads the run-time changes again and publishes those made elsewhere (instances sharing the spool).</summary>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task.</returns>
    internal async Task RefreshAsync(CancellationToken cancellationToken)
    {
        var changes = new List<DeviceChange>();
        await _writes.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var fresh = (await _spool.ManagedDevicesAsync(cancellationToken).ConfigureAwait(false)).ToDictionary(d => d.Id, StringComparer.Ordinal);
            foreach (var (id, now) in fresh)
            {
                var before = _managed.GetValueOrDefault(id);
                if (before is null || before.UpdatedAt != now.UpdatedAt || before.SecretHash != now.SecretHash || before.Disabled != now.Disabled)
                {
                    changes.Add(new DeviceChange(id, before is not null && (before.SecretHash != now.SecretHash || (now.Disabled && !before.Disabled))));
                }
            }

            if (changes.Count == 0)
            {
                return;
            }

            _managed = fresh;
            _devices = Build(_options, fresh);
        }
        finally
        {
            _writes.Release();
        }

        foreach (var change in changes)
        {
            Changed?.Invoke(change);
        }
    }

    /// <summary>Adds a device with a newly generated secret.</summary>
    /// <param name="id">Its id.</param>
    /// <param name="name">Display name (empty: the id).</param>
    /// <param name="site">Site.</param>
    /// <param name="owners">Owner user or group ids.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The device and its secret — shown once, stored only as a hash.</returns>
    /// <exception cref="DeviceException">The id is invalid or taken, the name or site cannot be taken (<see cref="DeviceText"/>), or an owner is unknown.</exception>
    public async Task<(Device Device, string Secret)> AddAsync(string id, string name, string site, IReadOnlyList<string> owners, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(id);
        ArgumentNullException.ThrowIfNull(owners);
        if (!IdPattern.IsMatch(id))
        {
            throw new DeviceException($"'{id}' is not a valid device id: use 1 to 64 letters, digits, '-', '_' or '.' (not '.' or '..' alone)");
        }

        foreach (var (field, value) in new[] { ("name", name), ("site", site) })
        {
            if (DeviceText.Problem(value) is { } problem)
            {
                throw new DeviceException($"{field}: {problem.Problem}; {problem.Fix}");
            }
        }

        if (owners.Any(string.IsNullOrEmpty))
        {
            throw new DeviceException("owners: an owner is null or empty; give user or group ids of the configuration");
        }

        if (owners.FirstOrDefault(o => !_options.Users.ContainsKey(o) && !_options.Groups.ContainsKey(o)) is { } unknown)
        {
            throw new DeviceException($"owner '{unknown}' is neither a user nor a group of the configuration");
        }

        string secret = NewSecret();
        var device = await ChangeAsync(id, existing =>
        {
            if (existing is not null || _options.Devices.ContainsKey(id))
            {
                throw new DeviceException($"a device '{id}' exists already; rotate its secret or enable it instead");
            }

            return new ManagedDevice(id, SecretHash.Create(secret), name, site, owners, false, null, _clock.GetUtcNow());
        }, credentialsChanged: false, cancellationToken).ConfigureAwait(false);
        LogAdded(id);
        return (device, secret);
    }

    /// <summary>Disables or enables a device; disabling ends its open sessions.</summary>
    /// <param name="id">Device id.</param>
    /// <param name="disabled">True to disable.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The device.</returns>
    /// <exception cref="DeviceException">No such device.</exception>
    public async Task<Device> SetDisabledAsync(string id, bool disabled, CancellationToken cancellationToken)
    {
        var device = await ChangeAsync(id, existing => Managed(id, existing) with { Disabled = disabled, UpdatedAt = _clock.GetUtcNow() },
            credentialsChanged: disabled, cancellationToken).ConfigureAwait(false);
        LogDisabled(id, disabled);
        return device;
    }

    /// <summary>Gives a device a new secret; its open sessions end and the old secret stops working at once.</summary>
    /// <param name="id">Device id.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>The new secret — shown once, stored only as a hash.</returns>
    /// <exception cref="DeviceException">No such device.</exception>
    public async Task<string> RotateSecretAsync(string id, CancellationToken cancellationToken)
    {
        string secret = NewSecret();
        await ChangeAsync(id, existing => Managed(id, existing) with { SecretHash = SecretHash.Create(secret), UpdatedAt = _clock.GetUtcNow() },
            credentialsChanged: true, cancellationToken).ConfigureAwait(false);
        LogRotated(id);
        return secret;
    }

    private ManagedDevice Managed(string id, ManagedDevice? existing)
    {
        if (existing is not null)
        {
            return existing;
        }

        if (!_options.Devices.ContainsKey(id))
        {
            throw new DeviceException($"no device '{id}'");
        }

        return new ManagedDevice(id, null, null, null, null, false, null, _clock.GetUtcNow());
    }

    // Serialised: read the current state, commit the change, then publish the new snapshot.
    private async Task<Device> ChangeAsync(string id, Func<ManagedDevice?, ManagedDevice> change, bool credentialsChanged, CancellationToken cancellationToken)
    {
        await _writes.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var updated = change(_managed.GetValueOrDefault(id));
            await _spool.SaveDeviceAsync(updated, cancellationToken).ConfigureAwait(false);
            var managed = new Dictionary<string, ManagedDevice>(_managed, StringComparer.Ordinal) { [id] = updated };
            _managed = managed;
            _devices = Build(_options, managed);
        }
        finally
        {
            _writes.Release();
        }

        Changed?.Invoke(new DeviceChange(id, credentialsChanged));
        return _devices[id];
    }

    private static Dictionary<string, Device> Build(GatewayOptions options, Dictionary<string, ManagedDevice> managed)
    {
        var devices = new Dictionary<string, Device>(StringComparer.Ordinal);
        foreach (var (id, d) in options.Devices)
        {
            devices[id] = new Device(id, d.Secret, d.Name.Length > 0 ? d.Name : id, d.Site, d.Owners, false, d.SilentAfter, DeviceSource.Configuration);
        }

        foreach (var (id, m) in managed)
        {
            var configured = devices.GetValueOrDefault(id);
            string name = m.Name is { Length: > 0 } n ? n : configured?.Name ?? id;
            devices[id] = new Device(id, m.SecretHash ?? configured?.SecretHash ?? string.Empty, name, m.Site ?? configured?.Site ?? string.Empty,
                m.Owners ?? configured?.Owners ?? [], m.Disabled, m.SilentAfter ?? configured?.SilentAfter,
                configured is null ? DeviceSource.Console : DeviceSource.ConfigurationChanged);
        }

        return devices;
    }

    private static string NewSecret() => Convert.ToBase64String(RandomNumberGenerator.GetBytes(24)).Replace('+', '-').Replace('/', '_');

    [LoggerMessage(Level = LogLevel.Warning, Message = "Cannot read device changes made by other gateway instances; trying again")]
    private partial void LogRefreshFailed(Exception ex);

    [LoggerMessage(Level = LogLevel.Error, Message = "Taking up device changes made by other gateway instances failed unexpectedly; trying again")]
    private partial void LogRefreshBroke(Exception ex);

    [LoggerMessage(Level = LogLevel.Information, Message = "Device {Device} added")]
    private partial void LogAdded(string device);

    [LoggerMessage(Level = LogLevel.Information, Message = "Device {Device} disabled: {Disabled}")]
    private partial void LogDisabled(string device, bool disabled);

    [LoggerMessage(Level = LogLevel.Information, Message = "Device {Device} has a new secret; its sessions end")]
    private partial void LogRotated(string device);
}

/// <summary>A device change that cannot be made; the message says why.</summary>
public sealed class DeviceException : Exception
{
    /// <summary>Creates the exception.</summary>
    public DeviceException()
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">Why.</param>
    public DeviceException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    /// <param name="message">Why.</param>
    /// <param name="inner">The cause.</param>
    public DeviceException(string message, Exception inner)
        : base(message, inner)
    {
    }
}
