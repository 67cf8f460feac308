using Microsoft.Extensions.Logging;

namespace EdgeMail.Gateway.Web;

/// <summary>
/// The credential behind a request that stays open (the live feed), watched: <see cref="Ended"/> is cancelled when
/// this gateway ends it, and when a look every few seconds finds it ended elsewhere. Made by <see cref="ConsoleAuth.Watch"/>.
/// </summary>
public sealed partial class CredentialWatch : IDisposable
{
    private readonly CancellationTokenSource _ended;
    private readonly Func<CancellationToken, Task<bool>> _stillValid;
    private readonly ILogger _logger;
    private readonly ITimer _timer;
    private int _looking;
    private int _disposed;

    internal CredentialWatch(CancellationToken endedHere, Func<CancellationToken, Task<bool>> stillValid, TimeSpan every, TimeProvider clock, ILogger logger)
    {
        _ended = CancellationTokenSource.CreateLinkedTokenSource(endedHere);
        Ended = _ended.Token;
        _stillValid = stillValid;
        _logger = logger;
        _timer = clock.CreateTimer(_ => _ = LookAsync(), null, every, every);
    }

    /// <summary>Cancelled when the credential has ended.</summary>
    public CancellationToken Ended { get; }

    /// <inheritdoc />
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _timer.Dispose();
            _ended.Dispose();
        }
    }

    private async Task LookAsync()
    {
        // One look at a time: a slow spool must not pile them up.
        if (Ended.IsCancellationRequested || Interlocked.Exchange(ref _looking, 1) == 1)
        {
            return;
        }

        try
        {
            if (!await _stillValid(Ended).ConfigureAwait(false) && Volatile.Read(ref _disposed) == 0)
            {
                _ended.Cancel();
            }
        }
        catch (OperationCanceledException) when (Ended.IsCancellationRequested)
        {
        }
        catch (ObjectDisposedException)
        {
            // The request ended meanwhile.
        }
        catch (Exception ex)
        {
            // The spool could not be asked: the credential stands until a look can tell.
            LogLookFailed(ex);
        }
        finally
        {
            Volatile.Write(ref _looking, 0);
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not check whether an open console stream's session or API key is still valid; trying again")]
    private partial void LogLookFailed(Exception ex);
}
