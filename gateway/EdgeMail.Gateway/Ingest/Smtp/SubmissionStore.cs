using System.Buffers;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;
using SmtpServer;
using SmtpServer.Protocol;
using SmtpServer.Storage;

namespace EdgeMail.Gateway.Ingest.Smtp;

/// <summary>
/// SmtpServer's message store: hands the DATA to <see cref="SubmissionHandler"/> and turns the outcome into the
/// reply. <c>250</c> only after the spool committed (a message whose handling failed is quarantined by the handler,
/// and taken once that is committed); anything else that goes wrong — the spool, the gateway stopping, quarantining
/// that fails — is answered <c>451</c>, never an exception, which SmtpServer would turn into a permanent <c>554</c>
/// and the device would drop its mail.
/// </summary>
public sealed partial class SubmissionStore : IMessageStore
{
    private readonly SubmissionHandler _handler;
    private readonly ILogger<SubmissionStore> _logger;

    /// <summary>Creates the store.</summary>
    /// <param name="handler">What to do with a message.</param>
    /// <param name="logger">Logger.</param>
    public SubmissionStore(SubmissionHandler handler, ILogger<SubmissionStore> logger)
    {
        _handler = handler;
        _logger = logger;
    }

    /// <inheritdoc />
    public async Task<SmtpResponse> SaveAsync(ISessionContext context, IMessageTransaction transaction, ReadOnlySequence<byte> buffer, CancellationToken cancellationToken)
    {
        try
        {
            ArgumentNullException.ThrowIfNull(context);
            ArgumentNullException.ThrowIfNull(transaction);
            if (!context.Properties.TryGetValue(SubmissionPolicy.DeviceKey, out object? d) || d is not string device)
            {
                return new SmtpResponse(SmtpReplyCode.BadSequence, "5.5.1 MAIL first");
            }

            var remote = SubmissionPolicy.Remote(context);
            var recipients = transaction.To.Select(t => (t.User ?? string.Empty, t.Host ?? string.Empty)).ToList();
            string envelopeFrom = transaction.From is { } f && !string.IsNullOrEmpty(f.User) ? f.User + "@" + f.Host : string.Empty;
            var result = await _handler.HandleAsync(device, remote, envelopeFrom, recipients, context.Authentication.IsAuthenticated, context.Pipe.IsSecure,
                context.SessionId.ToString("N")[..12], buffer.ToArray(), cancellationToken).ConfigureAwait(false);
            return new SmtpResponse((SmtpReplyCode)result.Code, result.Text);
        }
        catch (SpoolFullException ex)
        {
            LogNotStored(ex, ex.Message);
            return new SmtpResponse(SmtpReplyCode.InsufficientStorage, "4.3.1 insufficient system storage, nothing was accepted; try again later");
        }
        catch (Exception ex) when (ex is SpoolException or OperationCanceledException)
        {
            LogNotStored(ex, ex.Message);
            return new SmtpResponse(SmtpReplyCode.Aborted, "4.3.0 not stored, nothing was accepted; try again later");
        }
#pragma warning disable CA1031 // Any failure here must become a 4xx: SmtpServer answers an exception with a permanent 554.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            LogFailed(ex);
            return new SmtpResponse(SmtpReplyCode.Aborted, "4.3.0 local error, nothing was accepted; try again later");
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "SMTP message not stored (answered 451): {Reason}")]
    private partial void LogNotStored(Exception ex, string reason);

    [LoggerMessage(Level = LogLevel.Error, Message = "SMTP message handling failed (answered 451)")]
    private partial void LogFailed(Exception ex);
}
