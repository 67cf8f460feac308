using System.Globalization;
using System.Text;
using EdgeMail.Gateway.Composition;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Routing;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace EdgeMail.Gateway.Operations;

/// <summary>
/// Tells the operator (<c>Sender:Operator</c>) by mail about what the gateway did on its own: an item parked, the
/// disk running low. At most one notice per <c>Sender:OperatorNoticeInterval</c>: the first event goes out at once,
/// later ones are collected (the first 50 listed, the rest counted) into one notice at the end of the interval, so a
/// storm of faults is one mail, not thousands. Notices go through the spool like any mail (kind <c>notice</c>, null
/// envelope sender; a notice that fails never makes another).
/// </summary>
public sealed partial class OperatorNotices : IDisposable
{
    private const int MaxLines = 50;
    private readonly ISpool _spool;
    private readonly MailComposer _composer;
    private readonly GatewayOptions _options;
    private readonly TimeProvider _clock;
    private readonly ILogger<OperatorNotices> _logger;
    private readonly Lock _lock = new();
    private readonly List<string> _lines = [];
    private readonly List<Task> _sending = [];
    private string? _firstTopic;
    private int _count;
    private long? _lastSent; // a monotonic timestamp: a step of the wall clock neither holds a notice nor hurries one
    private ITimer? _timer;

    /// <summary>Creates the notifier.</summary>
    /// <param name="spool">Where notices are queued.</param>
    /// <param name="composer">Writes them.</param>
    /// <param name="options">The operator's address and the interval.</param>
    /// <param name="clock">Clock.</param>
    /// <param name="logger">Logger.</param>
    public OperatorNotices(ISpool spool, MailComposer composer, IOptions<GatewayOptions> options, TimeProvider clock, ILogger<OperatorNotices> logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        _spool = spool;
        _composer = composer;
        _options = options.Value;
        _clock = clock;
        _logger = logger;
    }

    /// <summary>Notices queued so far (tests and the console).</summary>
    public int Sent { get; private set; }

    /// <summary>Reports one event.</summary>
    /// <param name="topic">What happened, short (the subject when it is the only event).</param>
    /// <param name="detail">One line for the list.</param>
    public void Report(string topic, string detail)
    {
        lock (_lock)
        {
            _firstTopic ??= topic;
            _count++;
            if (_lines.Count < MaxLines)
            {
                _lines.Add(detail);
            }

            var wait = _lastSent is long last ? _options.Sender.OperatorNoticeInterval - _clock.GetElapsedTime(last) : TimeSpan.Zero;
            if (wait <= TimeSpan.Zero)
            {
                StartFlush();
            }
            else
            {
                _timer ??= _clock.CreateTimer(_ => { lock (_lock) { StartFlush(); } }, null, wait, Timeout.InfiniteTimeSpan);
            }
        }
    }

    /// <summary>Waits until every notice started so far is queued (or failed).</summary>
    /// <returns>A task.</returns>
    public Task FlushedAsync()
    {
        lock (_lock)
        {
            return Task.WhenAll(_sending);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        lock (_lock)
        {
            _timer?.Dispose();
            _timer = null;
        }
    }

    // Under the lock.
    private void StartFlush()
    {
        _timer?.Dispose();
        _timer = null;
        if (_count == 0)
        {
            return;
        }

        var now = _clock.GetUtcNow();
        string subject = _count == 1 ? "EdgeMail: " + _firstTopic : $"EdgeMail: {_count.ToString(CultureInfo.InvariantCulture)} events need your attention";
        var body = new StringBuilder();
        body.Append("The EdgeMail gateway ").Append(_options.Sender.Hostname).Append(" reports:\n\n");
        foreach (string line in _lines)
        {
            body.Append("  - ").Append(line).Append('\n');
        }

        if (_count > _lines.Count)
        {
            body.Append("  ... and ").Append((_count - _lines.Count).ToString("N0", CultureInfo.InvariantCulture)).Append(" more\n");
        }

        body.Append("\nParked items stay in the spool with their reason until you release or cancel them (docs/gateway.md, \"When something fails\").\n");
        _lines.Clear();
        _count = 0;
        _firstTopic = null;
        _lastSent = _clock.GetTimestamp();
        _sending.RemoveAll(t => t.IsCompleted);
        _sending.Add(QueueAsync(subject, body.ToString(), now));
    }

    private async Task QueueAsync(string subject, string body, DateTimeOffset now)
    {
        try
        {
            var router = new Router(_options);
            var mailbox = router.Resolve(_options.Sender.Operator.Length > 0 ? _options.Sender.Operator : _options.Sender.Address);
            if (mailbox is null)
            {
                LogNoOperator(_options.Sender.Operator);
                return;
            }

            string id = $"edgemail.notice.{now.UtcDateTime.ToString("yyyyMMdd'T'HHmmss", CultureInfo.InvariantCulture)}.{Guid.NewGuid():N}@{_options.Sender.Hostname}";
            using var message = _composer.ComposeOperatorNotice(id, subject, body, mailbox, now);
            await _spool.QueueMailAsync(new NewMessage("notice", null, null, id, string.Empty, [mailbox.Address], MailComposer.ToWire(message)), CancellationToken.None).ConfigureAwait(false);
            Sent++;
        }
#pragma warning disable CA1031 // A notice that cannot be queued must not take its caller down; the events are in the log.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            LogNotQueued(ex, subject);
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Operator notice '{Subject}' could not be queued; the events it reports are in this log")]
    private partial void LogNotQueued(Exception ex, string subject);

    [LoggerMessage(Level = LogLevel.Warning, Message = "No operator mailbox: Sender:Operator '{Operator}' is neither a user nor an address; notices are only logged")]
    private partial void LogNoOperator(string @operator);
}
