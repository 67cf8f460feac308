using System.Collections.Concurrent;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;

namespace EdgeMail.Testing;

/// <summary>A logger that keeps every formatted line: for tests that check what a component said, or wait for it.</summary>
/// <typeparam name="T">The category, so that it can stand in for an injected <see cref="ILogger{T}"/>.</typeparam>
public sealed class LineLog<T> : ILogger<T>
{
    private readonly ConcurrentQueue<string> _lines = new();
    private readonly Channel<string> _next = Channel.CreateUnbounded<string>();

    /// <summary>Every line so far, in order.</summary>
    public IReadOnlyCollection<string> Lines => _lines;

    /// <summary>The next line not yet taken by this method, as it comes.</summary>
    /// <returns>The line.</returns>
    public Task<string> NextAsync() => _next.Reader.ReadAsync().AsTask();

    /// <inheritdoc />
    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    /// <inheritdoc />
    public bool IsEnabled(LogLevel logLevel) => true;

    /// <inheritdoc />
    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        ArgumentNullException.ThrowIfNull(formatter);
        string line = formatter(state, exception);
        _lines.Enqueue(line);
        _next.Writer.TryWrite(line);
    }
}
