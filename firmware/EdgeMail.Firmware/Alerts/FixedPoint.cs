using System;

namespace EdgeMail.Firmware.Alerts;

/// <summary>
/// Decimal fixed point for alert values: a number is <c>mantissa × 10^-scale</c> with a <see cref="long"/> mantissa
/// and a scale of 0..<see cref="MaxScale"/>. It is written to JSON digit for digit (−9.5 is mantissa −95, scale 1),
/// so what the device measured is what the gateway reads, with no binary-to-decimal surprises and no allocation.
/// </summary>
public static class FixedPoint
{
    /// <summary>The largest decimal scale (digits after the point).</summary>
    public const int MaxScale = 9;

    private static readonly double[] Powers =
    {
        1d, 10d, 100d, 1000d, 10000d, 100000d, 1000000d, 10000000d, 100000000d, 1000000000d,
    };

    /// <summary>
    /// Converts a <see cref="double"/> to a mantissa at the given scale, rounding half away from zero, without
    /// <c>Math</c>. Precision: the value is multiplied by the exact power 10^scale (one rounding, relative error
    /// at most 2^-53) and then rounded to an integer, so the result is the decimal you meant whenever that decimal
    /// has at most 15 significant digits (|mantissa| &lt; 10^15): <c>ToMantissa(-9.5, 1)</c> is −95,
    /// <c>ToMantissa(0.1, 3)</c> is 100. Larger mantissas are within one part in 4.5×10^15 of the double.
    /// A double that is not exactly a short decimal rounds as its exact binary value does: 1.005 at scale 2 is
    /// 100 (1.00499999999999989…), not 101.
    /// </summary>
    /// <param name="value">The number; finite.</param>
    /// <param name="scale">Digits after the point, 0..<see cref="MaxScale"/>.</param>
    /// <returns>The mantissa.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The scale is out of range, the value is NaN or infinite, or
    /// value × 10^scale does not fit a <see cref="long"/>.</exception>
    public static long ToMantissa(double value, int scale)
    {
        if (scale < 0 || scale > MaxScale)
        {
            throw new ArgumentOutOfRangeException(nameof(scale), "The scale must be 0..9 digits after the point.");
        }

        double x = value * Powers[scale];
#pragma warning disable CS1718 // NaN is the only value not equal to itself; double.IsNaN is not in every mscorlib.
        bool isNaN = x != x;
#pragma warning restore CS1718
        // 2^63 as a double; anything at or beyond it (or infinite) does not fit a long.
        if (isNaN || x >= 9223372036854775807d || x < -9223372036854775808d)
        {
            throw new ArgumentOutOfRangeException(nameof(value), "The value is NaN, infinite, or too large for a 64-bit mantissa at this scale.");
        }

        long whole = (long)x; // truncates toward zero
        double fraction = x - whole; // exact: both are within 2^63 and whole is x without its fraction
        if (fraction >= 0.5d)
        {
            whole++;
        }
        else if (fraction <= -0.5d)
        {
            whole--;
        }

        return whole;
    }

    /// <summary>Converts a mantissa and scale back to a <see cref="double"/> (for display and tests; may round).</summary>
    /// <param name="mantissa">The mantissa.</param>
    /// <param name="scale">Digits after the point, 0..<see cref="MaxScale"/>.</param>
    /// <returns>The nearest double to mantissa × 10^-scale.</returns>
    public static double ToDouble(long mantissa, int scale)
    {
        if (scale < 0 || scale > MaxScale)
        {
            throw new ArgumentOutOfRangeException(nameof(scale), "The scale must be 0..9 digits after the point.");
        }

        return mantissa / Powers[scale];
    }
}
