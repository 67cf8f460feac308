using System.Globalization;
using System.Net;
using System.Text;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Security;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using SmtpServer;
using SmtpServer.Authentication;
using SmtpServer.Mail;
using SmtpServer.Net;
using SmtpServer.Protocol;
using SmtpServer.Storage;

namespace EdgeMail.Gateway.Ingest.Smtp;

/// <summary>
/// Who may submit what over SMTP. AUTH checks a device's secret (SmtpServer offers AUTH only after TLS), with
/// wrong passwords counted per device id and address and per address (<see cref="AuthFailureGuard"/>), so guessing
/// across reconnects ends in <c>421</c>. MAIL needs an authenticated device or an allow-listed source network
/// (mapped to its device), and is rate-limited per device and per source (<c>450</c>). RCPT accepts only the
/// gateway's own users, groups and aliases (<see cref="RecipientPolicy"/>), at most <c>MaxRecipients</c>
/// (<c>452</c>). A declared <c>SIZE</c> that is not 1 to 20 digits is <c>501</c>, one over the limit <c>552</c>. Every refusal is logged once with its reason and never with a secret.
/// </summary>
public sealed partial class SubmissionPolicy : IMailboxFilter, IUserAuthenticator
{
    /// <summary>Session property holding the device the session submits as.</summary>
    public const string DeviceKey = "edgemail.device";

    private const string RecipientCountKey = "edgemail.rcpt-count";
    private readonly GatewayOptions _options;
    private readonly SmtpIngestOptions _smtp;
    private readonly RecipientPolicy _recipients;
    private readonly SecretVerifier _secrets;
    private readonly Devices.DeviceRegistry _devices;
    private readonly AuthFailureGuard _authFailures;
    private readonly RateLimiter _perDevice;
    private readonly RateLimiter _perSource;
    private readonly List<(IPNetwork Network, string Device)> _allowed = [];
    private readonly ILogger<SubmissionPolicy> _logger;

    /// <summary>Creates the policy.</summary>
    /// <param name="options">Gateway options.</param>
    /// <param name="smtp">SMTP options.</param>
    /// <param name="secrets">Secret verifier.</param>
    /// <param name="clock">Clock for rate limits.</param>
    /// <param name="logger">Logger.</param>
    /// <param name="devices">Who may authenticate.</param>
    public SubmissionPolicy(IOptions<GatewayOptions> options, IOptions<SmtpIngestOptions> smtp, SecretVerifier secrets, TimeProvider clock, ILogger<SubmissionPolicy> logger,
        Devices.DeviceRegistry devices)
    {
        _devices = devices;
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(smtp);
        _options = options.Value;
        _smtp = smtp.Value;
        _recipients = new RecipientPolicy(_options, _smtp);
        _secrets = secrets;
        _authFailures = new AuthFailureGuard(_smtp.AuthFailuresPerSource, _smtp.AuthFailuresPerDevice, _smtp.AuthFailureWindow, clock);
        _perDevice = new RateLimiter(_smtp.MessagesPerMinutePerDevice, _smtp.MessagesPerMinutePerDevice, clock);
        _perSource = new RateLimiter(_smtp.MessagesPerMinutePerSource, _smtp.MessagesPerMinutePerSource, clock);
        foreach (var source in _smtp.AllowedSources)
        {
            if (SmtpIngestOptionsValidator.TryParseNetwork(source.Network, out var network))
            {
                _allowed.Add((network, source.Device));
            }
        }

        _logger = logger;
    }

    /// <summary>The recipient policy (also used when the message is stored).</summary>
    public RecipientPolicy Recipients => _recipients;

    /// <summary>The remote endpoint of a session.</summary>
    /// <param name="context">Session.</param>
    /// <returns>The endpoint, or <c>0.0.0.0:0</c> when unknown.</returns>
    public static IPEndPoint Remote(ISessionContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        return context.Properties.TryGetValue(EndpointListener.RemoteEndPointKey, out object? r) && r is IPEndPoint ip
            ? new IPEndPoint(ip.Address.IsIPv4MappedToIPv6 ? ip.Address.MapToIPv4() : ip.Address, ip.Port)
            : new IPEndPoint(IPAddress.Any, 0);
    }

    /// <summary>The device an allow-listed address stands for.</summary>
    /// <param name="address">Remote address.</param>
    /// <returns>The device id, or null.</returns>
    public string? AllowedDevice(IPAddress address)
    {
        ArgumentNullException.ThrowIfNull(address);
        foreach (var (network, device) in _allowed)
        {
            if (network.Contains(address))
            {
                return device;
            }
        }

        return null;
    }

    /// <inheritdoc />
    public Task<bool> AuthenticateAsync(ISessionContext context, string user, string password, CancellationToken cancellationToken)
    {
        var remote = Remote(context);
        string source = remote.Address.ToString();
        user ??= string.Empty;
        if (_authFailures.Refusal(source, user) is { } refusal)
        {
            LogAuthBlocked(MailComposer.Clean(user, 64), source, refusal);
            throw new SmtpResponseException(new SmtpResponse(SmtpReplyCode.ServiceUnavailable, $"4.7.0 {refusal}; try again later"), true);
        }

        if (_devices.FindEnabled(user) is { } device && _secrets.Verify(user, device.SecretHash, Encoding.UTF8.GetBytes(password ?? string.Empty)))
        {
            return Task.FromResult(true);
        }

        _authFailures.Failed(source, user);
        LogAuthFailed(MailComposer.Clean(user, 64), source);
        return Task.FromResult(false);
    }

    /// <inheritdoc />
    public Task<bool> CanAcceptFromAsync(ISessionContext context, IMailbox from, int size, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(context);
        var remote = Remote(context);
        string? device = context.Authentication.IsAuthenticated ? context.Authentication.User : AllowedDevice(remote.Address);
        if (device is null)
        {
            LogRefused(remote.Address.ToString(), "MAIL", "not authenticated and not from an allow-listed source");
            throw new SmtpResponseException(new SmtpResponse(SmtpReplyCode.AuthenticationRequired,
                context.Pipe.IsSecure || context.EndpointDefinition.CertificateFactory is null
                    ? "5.7.0 authentication required (AUTH as the device), or submit from an allow-listed address"
                    : "5.7.0 authentication required: STARTTLS, then AUTH as the device"));
        }

        if (!_perDevice.TryAcquire(device) || !_perSource.TryAcquire(remote.Address.ToString()))
        {
            LogRefused(remote.Address.ToString(), "MAIL", $"rate limit reached for device {device}");
            throw new SmtpResponseException(new SmtpResponse(SmtpReplyCode.Unavailable, "4.7.1 too many messages; slow down and try again later"));
        }

        context.Properties[DeviceKey] = device;
        context.Properties[RecipientCountKey] = 0;
        return Task.FromResult(true);
    }

    /// <summary>
    /// Refuses a <c>MAIL</c> whose declared <c>SIZE</c> is not 1 to 20 digits (<c>501 5.5.4</c>) or is over
    /// <c>Smtp:MaxMessageBytes</c> (<c>552 5.3.4</c>), as RFC 1870 asks. Called as the command starts (SmtpIngest), before
    /// SmtpServer's own check, which reads SIZE with int.TryParse and takes a value that fails as no SIZE at all:
    /// <c>SIZE=99999999999999999999999</c>, <c>3000000000</c>, <c>abc</c> or <c>-1</c> got 250.
    /// </summary>
    /// <param name="context">The session.</param>
    /// <param name="parameters">The MAIL command's parameters (keys in any case).</param>
    /// <exception cref="SmtpResponseException">The refusal; the session goes on.</exception>
    public void CheckDeclaredSize(ISessionContext context, IReadOnlyDictionary<string, string> parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (!parameters.TryGetValue("SIZE", out string? value))
        {
            return;
        }

        if (value is not { Length: > 0 and <= 20 } || !value.All(char.IsAsciiDigit))
        {
            LogRefused(Remote(context).Address.ToString(), "MAIL", MailComposer.Clean($"SIZE={value} is not a size", 80));
            throw new SmtpResponseException(new SmtpResponse(SmtpReplyCode.SyntaxError, "5.5.4 SIZE must be the message's size in bytes: 1 to 20 digits (RFC 1870)"));
        }

        // 20 digits can be past long: still a size, and over any limit.
        if (!long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out long size) || size > _smtp.MaxMessageBytes)
        {
            LogRefused(Remote(context).Address.ToString(), "MAIL", $"declared SIZE={value}, over the limit of {_smtp.MaxMessageBytes} bytes");
            throw new SmtpResponseException(new SmtpResponse(SmtpReplyCode.SizeLimitExceeded,
                $"5.3.4 message size exceeds the limit of {_smtp.MaxMessageBytes.ToString(CultureInfo.InvariantCulture)} bytes"));
        }
    }

    /// <inheritdoc />
    public Task<bool> CanDeliverToAsync(ISessionContext context, IMailbox to, IMailbox from, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(to);
        var remote = Remote(context);
        int count = context.Properties.TryGetValue(RecipientCountKey, out object? c) && c is int n ? n : 0;
        if (count >= _smtp.MaxRecipients)
        {
            LogRefused(remote.Address.ToString(), "RCPT", $"more than {_smtp.MaxRecipients} recipients");
            throw new SmtpResponseException(new SmtpResponse(SmtpReplyCode.InsufficientStorage, "4.5.3 too many recipients; send the rest in another message"));
        }

        if (!_recipients.TryResolve(to.User, to.Host, out _, out string reason))
        {
            LogRefused(remote.Address.ToString(), "RCPT", MailComposer.Clean($"<{to.User}@{to.Host}>: {reason}", 300));
            throw new SmtpResponseException(new SmtpResponse(SmtpReplyCode.MailboxUnavailable, "5.7.1 relay access denied: not a user, group or alias of this gateway"));
        }

        context.Properties[RecipientCountKey] = count + 1;
        return Task.FromResult(true);
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP AUTH failed for user '{User}' from {Source}")]
    private partial void LogAuthFailed(string user, string source);

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP AUTH as '{User}' from {Source} refused with 421: {Reason}")]
    private partial void LogAuthBlocked(string user, string source, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP {Command} from {Source} refused: {Reason}")]
    private partial void LogRefused(string source, string command, string reason);
}
