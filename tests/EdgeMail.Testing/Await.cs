namespace EdgeMail.Testing;

/// <summary>Awaiting a condition with a deadline: the tests' replacement for sleeps.</summary>
public static class Await
{
    /// <summary>Default patience for conditions that should become true promptly.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(15);

    /// <summary>Waits for a task, failing with <paramref name="what"/> if it does not finish in time.</summary>
    /// <param name="task">The task.</param>
    /// <param name="what">What the test was waiting for, for the failure message.</param>
    /// <param name="timeout">Deadline; <see cref="DefaultTimeout"/> when null.</param>
    /// <returns>A task that ends with <paramref name="task"/>.</returns>
    public static Task Within(Task task, string what, TimeSpan? timeout = null) => Within(Done(task), what, timeout);

    /// <summary>Waits for a task, failing with <paramref name="what"/> if it does not finish in time.</summary>
    /// <typeparam name="T">Result type.</typeparam>
    /// <param name="task">The task.</param>
    /// <param name="what">What the test was waiting for, for the failure message.</param>
    /// <param name="timeout">Deadline; <see cref="DefaultTimeout"/> when null.</param>
    /// <returns>The task's result.</returns>
    public static async Task<T> Within<T>(Task<T> task, string what, TimeSpan? timeout = null)
    {
        try
        {
            return await task.WaitAsync(timeout ?? DefaultTimeout);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"Timed out after {(timeout ?? DefaultTimeout).TotalSeconds:0.#} s waiting for {what}.");
        }
    }

    private static async Task<bool> Done(Task task)
    {
        await task;
        return true;
    }
}
