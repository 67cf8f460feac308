using System.Collections.Concurrent;
using System.Reflection;
using System.Runtime.ExceptionServices;
using EdgeMail.Gateway.Spool;
using Microsoft.Extensions.DependencyInjection;

namespace EdgeMail.Gateway.Tests.Spool;

/// <summary>
/// A real spool as one component sees it, whose armed calls (of methods returning a task) fail the way a spool that
/// cannot write does (a faulted task with a <see cref="SpoolException"/>), each as many times as armed, or stall until
/// cancelled; every other call goes through to the real spool. Give it to one component (<c>ActivatorUtilities.CreateInstance</c>): the test and the rest of the host keep
/// the real spool, and wait on its commits as usual.
/// </summary>
public class FaultingSpool : DispatchProxy
{
    /// <summary>The message a faulted call carries.</summary>
    public const string Message = "disk I/O error (test fault)";

    private readonly ConcurrentDictionary<string, int> _armed = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int> _failed = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int> _unexpected = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int> _calls = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, bool> _stalled = new(StringComparer.Ordinal);
    private ISpool _inner = null!;

    /// <summary>Wraps <paramref name="inner"/>.</summary>
    /// <param name="inner">The real spool.</param>
    /// <returns>The spool to give the component, and this wrapper to arm.</returns>
    public static FaultingSpool Wrap(ISpool inner)
    {
        var proxy = Create<ISpool, FaultingSpool>();
        var faults = (FaultingSpool)(object)proxy;
        faults._inner = inner;
        return faults;
    }

    /// <summary>
    /// Registers the host's <typeparamref name="TComponent"/> on a faulting spool over the host's own, handed to
    /// <paramref name="created"/> when the host builds the component.
    /// </summary>
    public static void Add<TComponent>(IServiceCollection services, Action<FaultingSpool> created)
        where TComponent : class =>
        services.AddSingleton(sp =>
        {
            var faults = Wrap(sp.GetRequiredService<ISpool>());
            created(faults);
            return ActivatorUtilities.CreateInstance<TComponent>(sp, faults.Spool);
        });

    /// <summary>The spool to give the component.</summary>
    public ISpool Spool => (ISpool)(object)this;

    /// <summary>Makes the next <paramref name="times"/> calls of <paramref name="method"/> fail.</summary>
    /// <param name="method">An <see cref="ISpool"/> method's name (<c>nameof(ISpool.CommitDeliveryAsync)</c>).</param>
    /// <param name="times">How many calls.</param>
    public void Fail(string method, int times = 1)
    {
        if (typeof(ISpool).GetMethods().All(m => m.Name != method))
        {
            throw new ArgumentException($"ISpool has no method {method}", nameof(method));
        }

        _armed.AddOrUpdate(method, times, (_, n) => n + times);
    }

    /// <summary>
    /// Makes every call of <paramref name="method"/> wait until the caller's (last) cancellation token is cancelled, and
    /// end cancelled: a spool that has stopped answering. It wins over <see cref="Fail"/>, is not counted by
    /// <see cref="Failed"/>, and <see cref="Heal"/> lets later calls through, not those already waiting.
    /// </summary>
    /// <param name="method">An <see cref="ISpool"/> method's name that takes a cancellation token.</param>
    public void Stall(string method)
    {
        if (!typeof(ISpool).GetMethods().Any(m => m.Name == method && m.GetParameters().Any(p => p.ParameterType == typeof(CancellationToken))))
        {
            throw new ArgumentException($"ISpool has no method {method} that takes a cancellation token", nameof(method));
        }

        _stalled[method] = true;
    }

    /// <summary>Lets every call of <paramref name="method"/> through again, however many were armed to fail.</summary>
    /// <param name="method">The method's name.</param>
    public void Heal(string method)
    {
        _armed.TryRemove(method, out _);
        _unexpected.TryRemove(method, out _);
        _stalled.TryRemove(method, out _);
    }

    /// <summary>
    /// Makes the next <paramref name="times"/> calls of <paramref name="method"/> fail as nothing should: an
    /// <see cref="InvalidOperationException"/>, not the spool's own <see cref="SpoolException"/>.
    /// </summary>
    /// <param name="method">An <see cref="ISpool"/> method's name.</param>
    /// <param name="times">How many calls.</param>
    public void FailUnexpectedly(string method, int times = 1)
    {
        Fail(method, times);
        _unexpected.AddOrUpdate(method, times, (_, n) => n + times);
    }

    /// <summary>How many armed calls of <paramref name="method"/> have failed so far.</summary>
    /// <param name="method">The method's name.</param>
    /// <returns>The count.</returns>
    public int Failed(string method) => _failed.GetValueOrDefault(method);

    /// <summary>Raised with the method's name at each call the component makes, before it fails or goes through.</summary>
    public event Action<string>? Called;

    /// <summary>How many calls of <paramref name="method"/> the component has made so far, failed or not.</summary>
    /// <param name="method">The method's name.</param>
    /// <returns>The count.</returns>
    public int Calls(string method) => _calls.GetValueOrDefault(method);

    /// <inheritdoc />
    protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
    {
        ArgumentNullException.ThrowIfNull(targetMethod);
        _calls.AddOrUpdate(targetMethod.Name, 1, (_, n) => n + 1);
        Called?.Invoke(targetMethod.Name);
        bool task = targetMethod.ReturnType == typeof(Task);
        bool taskOf = targetMethod.ReturnType.IsGenericType && targetMethod.ReturnType.GetGenericTypeDefinition() == typeof(Task<>);
        Task? instead = null;
        if ((task || taskOf) && _stalled.ContainsKey(targetMethod.Name))
        {
            instead = Task.Delay(Timeout.Infinite, args!.OfType<CancellationToken>().Last());
        }
        else if ((task || taskOf) && TryTake(_armed, targetMethod.Name))
        {
            Exception fault = TryTake(_unexpected, targetMethod.Name) ? new InvalidOperationException(Message) : new SpoolException(Message);
            _failed.AddOrUpdate(targetMethod.Name, 1, (_, n) => n + 1);
            instead = Task.FromException(fault);
        }

        if (instead is not null)
        {
            return task
                ? instead
                : typeof(FaultingSpool).GetMethod(nameof(EndsAs), BindingFlags.NonPublic | BindingFlags.Static)!
                    .MakeGenericMethod(targetMethod.ReturnType.GetGenericArguments()[0]).Invoke(null, [instead]);
        }

        try
        {
            return targetMethod.Invoke(_inner, args);
        }
        catch (TargetInvocationException ex) when (ex.InnerException is not null)
        {
            ExceptionDispatchInfo.Capture(ex.InnerException).Throw();
            throw;
        }
    }

    // A Task<T> that ends as `ended` does (faulted, or cancelled): ended never succeeds.
    private static async Task<T> EndsAs<T>(Task ended)
    {
        await ended;
        throw new InvalidOperationException("unreachable: a stalled or faulted call ended well");
    }

    private static bool TryTake(ConcurrentDictionary<string, int> armed, string method)
    {
        while (armed.TryGetValue(method, out int left) && left > 0)
        {
            if (armed.TryUpdate(method, left - 1, left))
            {
                return true;
            }
        }

        return false;
    }
}
