using System.Globalization;

namespace EdgeMail.Simulation.Flash;

/// <summary>How far the program or erase that a power cut strikes got.</summary>
public enum CutMode
{
    /// <summary>Power failed before the operation was issued: nothing changed and nothing was touched.</summary>
    BeforeStart,

    /// <summary>
    /// The operation started but no bit changed yet. Nothing is visible, yet every unit it was programming holds
    /// some charge (a program) or its sector is half-erased (an erase): programming them again with other bytes
    /// corrupts them on encrypted and ECC flash.
    /// </summary>
    NothingVisible,

    /// <summary>Every bit the operation was changing changed with probability <see cref="PowerCut.Fraction"/>.</summary>
    RandomBits,

    /// <summary>Every byte the operation was changing was completed with probability <see cref="PowerCut.Fraction"/>, the others untouched.</summary>
    RandomBytes,

    /// <summary>The first <see cref="PowerCut.Fraction"/> of the bytes are done, the rest untouched (erase in address order).</summary>
    Prefix,

    /// <summary>The operation completed, but power failed before it returned.</summary>
    Complete,
}

/// <summary>What happens later to the cells a cut operation left half-programmed or half-erased.</summary>
public enum WeakCells
{
    /// <summary>They keep the value they were left with.</summary>
    None,

    /// <summary>A quarter of the bits the cut changed read at random on every read from the boot after the next.</summary>
    Noisy,

    /// <summary>Every bit the cut changed reads its old value again from the boot after the next (the cut operation fades away).</summary>
    Fade,
}

/// <summary>One power cut: where inside the operation it strikes and what it leaves.</summary>
/// <param name="Mode">How far the operation got.</param>
/// <param name="Fraction">For the partial modes, how much of it was done (0 to 1).</param>
/// <param name="Weak">What later happens to the cells it changed.</param>
public readonly record struct PowerCut(CutMode Mode, double Fraction = 0.5, WeakCells Weak = WeakCells.None)
{
    /// <summary>The cut in the form the old API took it: 0 before the operation, 1 after it, else that fraction of its bits.</summary>
    /// <param name="fraction">How far the operation got, 0 to 1.</param>
    /// <param name="weakBits">Whether some changed bits are left weak (<see cref="WeakCells.Noisy"/>).</param>
    /// <returns>The cut.</returns>
    public static PowerCut FromFraction(double fraction, bool weakBits = false)
    {
        WeakCells weak = weakBits ? WeakCells.Noisy : WeakCells.None;
        return fraction <= 0 ? new PowerCut(CutMode.BeforeStart)
            : fraction >= 1 ? new PowerCut(CutMode.Complete, 1, weak)
            : new PowerCut(CutMode.RandomBits, fraction, weak);
    }

    /// <inheritdoc />
    public override string ToString() => Mode switch
    {
        CutMode.BeforeStart or CutMode.NothingVisible => Mode.ToString(),
        _ => string.Create(CultureInfo.InvariantCulture, $"{Mode}({Fraction:0.###}{(Weak == WeakCells.None ? string.Empty : ", weak " + Weak)})"),
    };
}
