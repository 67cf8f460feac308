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
    public async Task WaitAsync(TimeSpan timeout, TimeProvider clock, CancellationToken cancellationToken)
    {
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

        var delay = Task.Delay(timeout < TimeSpan.Zero ? TimeSpan.Zero : timeout, clock, linked.Token);
        var first = await Task.WhenAny(read, delay).ConfigureAwait(false);
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
