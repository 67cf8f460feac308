using System.Threading.Channels;

namespace EdgeMail.Gateway.Spool;

/// <summary>A wake-up flag: many <see cref="Set"/> calls before a wait collapse into one wake-up.</summary>
public sealed class Signal
{
    private readonly Channel<bool> _channel = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });

    /// <summary>Wakes the waiter (or the next one).</summary>
    public void Set() => _channel.Writer.TryWrite(true);

    /// <summary>Waits until set or until <paramref name="timeout"/> has passed on <paramref name="clock"/>.</summary>
    /// <param name="timeout">Longest wait; <see cref="Timeout.InfiniteTimeSpan"/> for none.</param>
    /// <param name="clock">Clock for the timeout.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task completing on the first of set, timeout, cancellation.</returns>
    public Task WaitAsync(TimeSpan timeout, TimeProvider clock, CancellationToken cancellationToken) =>
        WaitAsync(timeout, clock.GetUtcNow(), clock, cancellationToken);

    /// <summary>
    /// Waits until set or until <paramref name="timeout"/> after <paramref name="from"/>, the reading of
    /// <paramref name="clock"/> the caller worked the timeout out from. A clock that moved on between that reading and the
    /// wait's timer (a test's clock advanced meanwhile, to the time something falls due) ends the wait then, not a whole
    /// timeout later.
    /// </summary>
    /// <param name="timeout">Longest wait; <see cref="Timeout.InfiniteTimeSpan"/> for none.</param>
    /// <param name="from">When the timeout counts from.</param>
    /// <param name="clock">Clock for the timeout.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    /// <returns>A task completing on the first of set, timeout, cancellation.</returns>
    public async Task WaitAsync(TimeSpan timeout, DateTimeOffset from, TimeProvider clock, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(clock);
        if (_channel.Reader.TryRead(out _))
        {
            return;
        }

        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var read = _channel.Reader.ReadAsync(linked.Token).AsTask();
        if (timeout == Timeout.InfiniteTimeSpan)
        {
            await read.ConfigureAwait(false);
            return;
        }

        var deadline = timeout < TimeSpan.Zero ? from : timeout >= DateTimeOffset.MaxValue - from ? DateTimeOffset.MaxValue : from + timeout;
        var left = deadline - clock.GetUtcNow();
        var delay = Task.Delay(left < TimeSpan.Zero ? TimeSpan.Zero : left, clock, linked.Token);

        // Looked at once the timer exists: a clock moved past the deadline before it did would never fire it.
        var first = clock.GetUtcNow() >= deadline ? delay : await Task.WhenAny(read, delay).ConfigureAwait(false);
        await linked.CancelAsync().ConfigureAwait(false);
        cancellationToken.ThrowIfCancellationRequested();
        if (first == read && read.IsCompletedSuccessfully)
        {
            return;
        }

        try
        {
            await read.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Timed out; a set that races with the cancel is kept by the channel.
        }
    }
}
