using EdgeMail.Firmware.Alerts;
using FsCheck.Xunit;
using Xunit;

namespace EdgeMail.Firmware.Tests.Alerts;

// FsCheck prints the seed ("Replay: ...") of any falsified property; pass it to [Property(Replay = "...")] to rerun.
public class FixedPointTests
{
    [Theory]
    [InlineData(-9.5, 1, -95L)]
    [InlineData(0.1, 3, 100L)]
    [InlineData(412.5, 1, 4125L)]
    [InlineData(2.5, 0, 3L)] // half away from zero
    [InlineData(-2.5, 0, -3L)]
    [InlineData(0.49999999999999994, 0, 0L)] // the largest double below 0.5 must not round up
    [InlineData(1.005, 2, 100L)] // 1.005 is really 1.00499999999999989...
    [InlineData(-15.0, 0, -15L)]
    public void ToMantissa_KnownValues_RoundHalfAwayFromZero(double value, int scale, long mantissa) =>
        Assert.Equal(mantissa, FixedPoint.ToMantissa(value, scale));

    [Property(MaxTest = 5000)]
    public bool ToMantissa_DecimalsWithAtMost15SignificantDigits_AreExact(long seed, byte scaleSeed)
    {
        int scale = scaleSeed % 10;
        long mantissa = seed % 1_000_000_000_000_000L; // |mantissa| < 10^15
        double value = (double)(mantissa / (decimal)Math.Pow(10, scale)); // the double nearest the decimal
        return FixedPoint.ToMantissa(value, scale) == mantissa;
    }

    [Theory]
    [InlineData(double.NaN, 0)]
    [InlineData(double.PositiveInfinity, 0)]
    [InlineData(1e19, 0)]
    [InlineData(1e10, 9)]
    public void ToMantissa_UnrepresentableValues_Throw(double value, int scale) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => FixedPoint.ToMantissa(value, scale));

    [Fact]
    public void ToMantissa_ScaleOutOfRange_Throws()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => FixedPoint.ToMantissa(1, 10));
        Assert.Throws<ArgumentOutOfRangeException>(() => FixedPoint.ToMantissa(1, -1));
    }

    [Fact]
    public void ToDouble_IsTheInverseForShortDecimals() => Assert.Equal(-9.5, FixedPoint.ToDouble(-95, 1));
}
