using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Testing;

/// <summary>One captured log entry.</summary>
/// <param name="Category">Logger category.</param>
/// <param name="Level">Level.</param>
/// <param name="Message">Formatted message.</param>
/// <param name="Exception">Attached exception, if any.</param>
public sealed record LogEntry(string Category, LogLevel Level, string Message, Exception? Exception)
{
    /// <inheritdoc />
    public override string ToString() => $"{Level} {Category}: {Message}{(Exception is null ? string.Empty : Environment.NewLine + Exception)}";
}

/// <summary>
/// A logger provider that keeps every Error and Critical entry, so a test host can fail on errors the test did not
/// expect (a fault that was only logged is still a fault), and unobserved task exceptions seen meanwhile; and every
/// Warning, for tests of what the operator is warned about.
/// </summary>
public sealed class LogCapture : ILoggerProvider
{
    private static readonly ConcurrentQueue<Exception> Unobserved = new();
    private readonly ConcurrentQueue<LogEntry> _errors = new();
    private readonly ConcurrentQueue<LogEntry> _warnings = new();
    private readonly List<Func<LogEntry, bool>> _expected = [];

    static LogCapture()
    {
        TaskScheduler.UnobservedTaskException += (_, e) =>
        {
            if (!IsMqttNetSendToGoneClient(e.Exception))
            {
                Unobserved.Enqueue(e.Exception);
            }
        };
    }

    // MQTTnet's server fails the queued packet's own task when a send to a client whose socket is already gone fails
    // (MqttConnectedClient.SendPacketsLoop), and nobody can await that task: not the gateway, which handed the message
    // to the broker. A broken pipe to a departed client is no fault of the host; anything else still fails the test.
    private static bool IsMqttNetSendToGoneClient(AggregateException ex) =>
        ex.InnerExceptions.All(inner => inner.GetType().FullName == "MQTTnet.Exceptions.MqttCommunicationException"
            && inner.InnerException is System.Net.Sockets.SocketException or IOException or ObjectDisposedException
            && (inner.StackTrace ?? string.Empty).Contains("MQTTnet.Server.Internal.MqttConnectedClient.SendPacketsLoop", StringComparison.Ordinal));

    /// <summary>Every Error or Critical entry so far.</summary>
    public IReadOnlyCollection<LogEntry> Errors => _errors;

    /// <summary>Every Warning entry so far (the host's log filter permitting).</summary>
    public IReadOnlyCollection<LogEntry> Warnings => _warnings;

    /// <summary>Declares errors the test provokes on purpose.</summary>
    /// <param name="match">Which entries are expected.</param>
    public void Expect(Func<LogEntry, bool> match)
    {
        lock (_expected)
        {
            _expected.Add(match);
        }
    }

    /// <summary>Throws when an error was logged that no <see cref="Expect"/> matched, or a task exception went unobserved.</summary>
    public void AssertNoUnexpectedErrors()
    {
        // Faulted tasks nobody awaited are reported when they are collected.
        GC.Collect();
        GC.WaitForPendingFinalizers();
        List<LogEntry> unexpected;
        lock (_expected)
        {
            unexpected = _errors.Where(e => !_expected.Any(m => m(e))).ToList();
        }

        var unobserved = new List<Exception>();
        while (Unobserved.TryDequeue(out var ex))
        {
            unobserved.Add(ex);
        }

        if (unexpected.Count > 0 || unobserved.Count > 0)
        {
            throw new Xunit.Sdk.XunitException(
                "The host logged errors the test did not expect, or left task exceptions unobserved:" + Environment.NewLine
                + string.Join(Environment.NewLine, unexpected.Select(e => "  " + e).Concat(unobserved.Select(e => "  unobserved: " + e))));
        }
    }

    /// <inheritdoc />
    public ILogger CreateLogger(string categoryName) => new Logger(categoryName, this);

    /// <inheritdoc />
    public void Dispose()
    {
    }

    private sealed class Logger(string category, LogCapture owner) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel))
            {
                (logLevel == LogLevel.Warning ? owner._warnings : owner._errors).Enqueue(new LogEntry(category, logLevel, formatter(state, exception), exception));
            }
        }
    }
}
