using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Boards;
using EdgeMail.Simulation.Flash;
using Xunit;

namespace EdgeMail.Firmware.Tests.Flash;

public class NorFlashSimulatorTests
{
    private static readonly FlashGeometry Small = new(sizeBytes: 4 * 1024, sectorBytes: 1024, pageBytes: 64, programUnit: 1, allowsReprogram: true, encrypted: false);

    [Fact]
    public void NewFlash_ReadsErased()
    {
        using var flash = new NorFlashSimulator(Small);
        var buf = new byte[Small.SizeBytes];
        flash.Read(0, buf, 0, buf.Length);
        Assert.All(buf, b => Assert.Equal(0xFF, b));
    }

    [Fact]
    public void Program_CanOnlyClearBits_ResultIsTheAnd()
    {
        using var flash = new NorFlashSimulator(Small);
        flash.Program(10, [0b1100_1010], 0, 1);
        flash.Program(10, [0b1010_0111], 0, 1);
        var b = new byte[1];
        flash.Read(10, b, 0, 1);
        Assert.Equal(0b1000_0010, b[0]);
    }

    [Fact]
    public void Erase_SetsTheWholeSectorTo0xFF_AndCountsIt()
    {
        using var flash = new NorFlashSimulator(Small);
        flash.Program(1024, new byte[64], 0, 64);
        flash.EraseSector(1);
        var buf = new byte[1024];
        flash.Read(1024, buf, 0, 1024);
        Assert.All(buf, b => Assert.Equal(0xFF, b));
        Assert.Equal(1, flash.EraseCount(1));
        Assert.Equal(0, flash.EraseCount(0));
    }

    [Fact]
    public void MisreadAsErased_GivesOnesInTheRangeForThatManyReads_ThenExactReads_CellsUntouched()
    {
        using var flash = new NorFlashSimulator(Small);
        flash.Program(0, [1, 2, 3, 4, 5, 6, 7, 8], 0, 8);
        flash.MisreadAsErased(2, 4, reads: 2);
        var buf = new byte[8];
        flash.Read(6, buf, 0, 2); // outside the range: not a misread
        Assert.Equal(new byte[] { 7, 8 }, buf[..2]);
        flash.Read(0, buf, 0, 8);
        Assert.Equal(new byte[] { 1, 2, 0xFF, 0xFF, 0xFF, 0xFF, 7, 8 }, buf);
        flash.Read(4, buf, 0, 4); // overlaps the range's end
        Assert.Equal(new byte[] { 0xFF, 0xFF, 7, 8 }, buf[..4]);
        Assert.Equal(0, flash.MisreadsLeft);
        flash.Read(0, buf, 0, 8);
        Assert.Equal(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 }, buf);
    }

    [Fact]
    public void Program_RunningPastThePageEnd_IsRefused_AndTheChipWouldWrap()
    {
        using var flash = new NorFlashSimulator(Small);
        // A page program longer than the page buffer is refused outright.
        Assert.Throws<FlashViolationException>(() => flash.Program(0, new byte[65], 0, 65));

        // Within the buffer but starting mid-page, the bytes past the page end land at the page start.
        flash.Program(60, [1, 2, 3, 4, 5, 6], 0, 6);
        var page = new byte[64];
        flash.Read(0, page, 0, 64);
        Assert.Equal(new byte[] { 5, 6 }, page[..2]);
        Assert.Equal(new byte[] { 1, 2, 3, 4 }, page[60..]);
        var next = new byte[1];
        flash.Read(64, next, 0, 1);
        Assert.Equal(0xFF, next[0]);
    }

    [Fact]
    public void FlashWriter_SplitsAtPageBoundaries_SoNothingWraps()
    {
        using var flash = new NorFlashSimulator(Small);
        var data = Enumerable.Range(0, 200).Select(i => (byte)i).ToArray();
        FlashWriter.Program(flash, 50, data, 0, data.Length);
        var back = new byte[200];
        flash.Read(50, back, 0, 200);
        Assert.Equal(data, back);
        Assert.Equal(4, flash.ProgramOps); // 50..63, 64..127, 128..191, 192..249
    }

    [Fact]
    public void StrictMode_RefusesToProgramAUnitTwiceBetweenErases()
    {
        var g = new FlashGeometry(4096, 1024, 64, 16, allowsReprogram: false, encrypted: true);
        using var flash = new NorFlashSimulator(g);
        flash.Program(32, new byte[16], 0, 16);
        var ex = Assert.Throws<FlashViolationException>(() => flash.Program(32, new byte[16], 0, 16));
        Assert.Contains("twice", ex.Message, StringComparison.Ordinal);

        flash.EraseSector(0);
        flash.Program(32, new byte[16], 0, 16); // allowed again after the erase
    }

    [Fact]
    public void StrictMode_RefusesMisalignedPrograms()
    {
        var g = new FlashGeometry(4096, 1024, 64, 16, allowsReprogram: false, encrypted: true);
        using var flash = new NorFlashSimulator(g);
        Assert.Throws<FlashViolationException>(() => flash.Program(8, new byte[16], 0, 16));
        Assert.Throws<FlashViolationException>(() => flash.Program(0, new byte[8], 0, 8));
    }

    [Fact]
    public void EncryptedFlash_ProgrammingOverNonErasedCells_GarblesTheBlock()
    {
        var g = new FlashGeometry(4096, 1024, 64, 16, allowsReprogram: true, encrypted: true);
        using var flash = new NorFlashSimulator(g, seed: 7);
        var first = Enumerable.Repeat((byte)0xF0, 16).ToArray();
        flash.Program(0, first, 0, 16);
        flash.Program(0, first, 0, 16); // same value again: plain NOR would keep it; ciphertext does not
        var back = new byte[16];
        flash.Read(0, back, 0, 16);
        Assert.NotEqual(first, back);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void PowerCutInsideProgram_ClearsOnlySomeOfTheIntendedBits(int seed)
    {
        using var flash = new NorFlashSimulator(Small, seed: seed);
        flash.ScheduleCut(0, 0.5);
        var zeros = new byte[64];
        Assert.Throws<PowerLossException>(() => flash.Program(0, zeros, 0, 64));
        Assert.True(flash.IsPoweredOff);
        Assert.Throws<PowerLossException>(() => flash.Read(0, new byte[1], 0, 1));

        flash.PowerOn();
        var back = new byte[64];
        flash.Read(0, back, 0, 64);
        int cleared = back.Sum(b => 8 - System.Numerics.BitOperations.PopCount(b));
        Assert.InRange(cleared, 1, (64 * 8) - 1); // torn: neither nothing nor everything
    }

    [Fact]
    public void PowerCutInsideErase_LeavesAMixOfOldAndErasedBits()
    {
        using var flash = new NorFlashSimulator(Small, seed: 5);
        FlashWriter.Program(flash, 0, new byte[1024], 0, 1024);
        flash.ScheduleCut(0, 0.5);
        Assert.Throws<PowerLossException>(() => flash.EraseSector(0));
        flash.PowerOn();
        var back = new byte[1024];
        flash.Read(0, back, 0, 1024);
        int ones = back.Sum(b => System.Numerics.BitOperations.PopCount(b));
        Assert.InRange(ones, 1, (1024 * 8) - 1);
    }

    [Fact]
    public void PowerCutAtFractionZero_ChangesNothing_AndOne_CompletesTheOperation()
    {
        using var flash = new NorFlashSimulator(Small, seed: 5);
        flash.ScheduleCut(0, 0.0);
        Assert.Throws<PowerLossException>(() => flash.Program(0, new byte[8], 0, 8));
        flash.PowerOn();
        var back = new byte[8];
        flash.Read(0, back, 0, 8);
        Assert.All(back, b => Assert.Equal(0xFF, b));

        flash.ScheduleCut(0, 1.0);
        Assert.Throws<PowerLossException>(() => flash.Program(0, new byte[8], 0, 8));
        flash.PowerOn();
        flash.Read(0, back, 0, 8);
        Assert.All(back, b => Assert.Equal(0x00, b));
    }

    [Fact]
    public void WeakBitsFromATornProgram_PassTheFirstCheck_ThenDriftOnLaterBoots()
    {
        using var flash = new NorFlashSimulator(Small, seed: 11);
        flash.ScheduleCut(0, 0.5, weakBits: true);
        Assert.Throws<PowerLossException>(() => flash.Program(0, new byte[64], 0, 64));
        flash.PowerOn();
        var a = new byte[64];
        var b = new byte[64];
        flash.Read(0, a, 0, 64);
        flash.Read(0, b, 0, 64);
        Assert.Equal(a, b); // the boot right after the cut sees what the torn program left

        flash.PowerOn();
        bool differed = false;
        for (int i = 0; i < 20 && !differed; i++)
        {
            flash.Read(0, a, 0, 64);
            flash.Read(0, b, 0, 64);
            differed = !a.SequenceEqual(b);
        }

        Assert.True(differed, "weak cells should not read the same every time");
        flash.EraseSector(0);
        flash.Read(0, a, 0, 64);
        flash.Read(0, b, 0, 64);
        Assert.Equal(a, b); // an erase settles them
    }

    [Fact]
    public void StrictMode_ACutBeforeTheProgramStarted_LeavesItsUnitsProgrammable()
    {
        var g = new FlashGeometry(4096, 1024, 64, 16, allowsReprogram: false, encrypted: false);
        using var flash = new NorFlashSimulator(g, seed: 3);
        flash.ScheduleCut(0, new PowerCut(CutMode.BeforeStart));
        Assert.Throws<PowerLossException>(() => flash.Program(0, new byte[64], 0, 64));
        flash.PowerOn();
        flash.Program(0, new byte[64], 0, 64); // the program was never issued: this is the first
    }

    [Theory]
    [InlineData(CutMode.NothingVisible, 0.5)]
    [InlineData(CutMode.RandomBits, 0.001)]
    [InlineData(CutMode.RandomBits, 0.9)]
    [InlineData(CutMode.Prefix, 0.3)]
    [InlineData(CutMode.RandomBytes, 0.3)]
    [InlineData(CutMode.Complete, 1)] // completed as power failed: the firmware never saw it return, and may write it again
    public void StrictMode_EveryUnitOfACutProgramCountsAsTouched_EvenWhereNothingVisiblyChanged(CutMode mode, double fraction)
    {
        var g = new FlashGeometry(4096, 1024, 64, 16, allowsReprogram: false, encrypted: true);
        using var flash = new NorFlashSimulator(g, seed: 3);
        var data = Enumerable.Range(0, 64).Select(i => (byte)(i * 37)).ToArray();
        flash.ScheduleCut(0, new PowerCut(mode, fraction));
        Assert.Throws<PowerLossException>(() => flash.Program(0, data, 0, 64));
        flash.PowerOn();

        for (int unit = 0; unit < 64; unit += 16)
        {
            // Other bytes over a touched unit: refused, whatever the cells read.
            var other = Enumerable.Repeat((byte)0x5A, 16).ToArray();
            var ex = Assert.Throws<FlashViolationException>(() => flash.Program(unit, other, 0, 16));
            Assert.Contains("cut program may have touched it", ex.Message, StringComparison.Ordinal);
        }

        // The very bytes the cut program was writing complete it (the cells only get the charge they lacked).
        flash.Program(0, data, 0, 64);
        var back = new byte[64];
        flash.Read(0, back, 0, 64);
        Assert.Equal(data, back);
        Assert.Throws<FlashViolationException>(() => flash.Program(0, data, 0, 16)); // and then it is programmed
    }

    [Fact]
    public void EncryptedFlash_OtherBytesOverAUnitACutProgramTouched_DecryptToNoise()
    {
        var g = new FlashGeometry(4096, 1024, 64, 16, allowsReprogram: true, encrypted: true);
        using var flash = new NorFlashSimulator(g, seed: 9);
        flash.ScheduleCut(0, new PowerCut(CutMode.NothingVisible));
        Assert.Throws<PowerLossException>(() => flash.Program(0, new byte[16], 0, 16));
        flash.PowerOn();
        var zeroes = new byte[16];
        flash.Read(0, zeroes, 0, 16);
        Assert.All(zeroes, b => Assert.Equal(0xFF, b)); // nothing visible

        var data = Enumerable.Range(1, 16).Select(i => (byte)i).ToArray();
        flash.Program(0, data, 0, 16);
        var back = new byte[16];
        flash.Read(0, back, 0, 16);
        Assert.NotEqual(data, back);
        Assert.Equal(1, flash.Reprograms);
    }

    [Fact]
    public void NorFlash_OtherBytesOverAUnitACutProgramTouched_LeaveCellsThatDriftOnLaterBoots()
    {
        using var flash = new NorFlashSimulator(Small, seed: 13);
        flash.ScheduleCut(0, new PowerCut(CutMode.NothingVisible));
        Assert.Throws<PowerLossException>(() => flash.Program(0, new byte[64], 0, 64)); // was clearing every bit
        flash.PowerOn();
        var ones = Enumerable.Repeat((byte)0xFF, 64).ToArray();
        ones[0] = 0x00;
        flash.Program(0, ones, 0, 64); // leaves the half-charged cells alone
        flash.PowerOn();
        flash.PowerOn();
        var a = new byte[64];
        var b = new byte[64];
        bool drifted = false;
        for (int i = 0; i < 10 && !drifted; i++)
        {
            flash.Read(0, a, 0, 64);
            flash.Read(0, b, 0, 64);
            drifted = !a.SequenceEqual(b) || !a.SequenceEqual(ones);
        }

        Assert.True(drifted, "cells charged by the cut program and left alone should not read reliably");
    }

    [Fact]
    public void CutErase_Prefix_ErasesTheStartOfTheSectorOnly_AndTheSectorTakesNoProgramUntilErased()
    {
        var g = new FlashGeometry(4096, 1024, 64, 16, allowsReprogram: false, encrypted: false);
        using var flash = new NorFlashSimulator(g, seed: 5);
        FlashWriter.Program(flash, 1024, new byte[1024], 0, 1024);
        flash.ScheduleCut(0, new PowerCut(CutMode.Prefix, 0.25));
        Assert.Throws<PowerLossException>(() => flash.EraseSector(1));
        flash.PowerOn();
        var back = new byte[1024];
        flash.Read(1024, back, 0, 1024);
        Assert.All(back[..256], b => Assert.Equal(0xFF, b));
        Assert.All(back[256..], b => Assert.Equal(0x00, b));

        var ex = Assert.Throws<FlashViolationException>(() => flash.Program(1024, new byte[16], 0, 16)); // reads erased, is not
        Assert.Contains("erase of its sector was cut", ex.Message, StringComparison.Ordinal);
        flash.EraseSector(1);
        flash.Program(1024, new byte[16], 0, 16);
    }

    [Fact]
    public void CutErase_RandomBytes_LeavesEachByteOldOrErased()
    {
        using var flash = new NorFlashSimulator(Small, seed: 6);
        FlashWriter.Program(flash, 0, Enumerable.Repeat((byte)0x3C, 1024).ToArray(), 0, 1024);
        flash.ScheduleCut(0, new PowerCut(CutMode.RandomBytes, 0.5));
        Assert.Throws<PowerLossException>(() => flash.EraseSector(0));
        flash.PowerOn();
        var back = new byte[1024];
        flash.Read(0, back, 0, 1024);
        Assert.All(back, b => Assert.True(b is 0x3C or 0xFF));
        Assert.InRange(back.Count(b => b == 0xFF), 300, 724);
    }

    [Fact]
    public void CutErase_NothingVisible_ChangesNoByte_ButStillCountsAsAnErase()
    {
        using var flash = new NorFlashSimulator(Small, seed: 6, strict: true);
        FlashWriter.Program(flash, 0, new byte[64], 0, 64);
        flash.ScheduleCut(0, new PowerCut(CutMode.NothingVisible));
        Assert.Throws<PowerLossException>(() => flash.EraseSector(0));
        flash.PowerOn();
        var back = new byte[128];
        flash.Read(0, back, 0, 128);
        Assert.All(back[..64], b => Assert.Equal(0x00, b));
        Assert.All(back[64..], b => Assert.Equal(0xFF, b));
        Assert.Equal(1, flash.EraseCount(0));
        Assert.Throws<FlashViolationException>(() => flash.Program(64, new byte[64], 0, 64));
    }

    [Fact]
    public void FadingCells_ReadAsTheCutLeftThem_ThenSettleBackOnTheBootAfter()
    {
        using var flash = new NorFlashSimulator(Small, seed: 8);
        flash.ScheduleCut(0, new PowerCut(CutMode.RandomBits, 0.7, WeakCells.Fade));
        Assert.Throws<PowerLossException>(() => flash.Program(0, new byte[64], 0, 64));
        flash.PowerOn();
        var torn = new byte[64];
        flash.Read(0, torn, 0, 64);
        Assert.Contains(torn, b => b != 0xFF); // the boot right after the cut sees the torn write

        flash.PowerOn();
        var later = new byte[64];
        flash.Read(0, later, 0, 64);
        Assert.All(later, b => Assert.Equal(0xFF, b)); // then it is gone, as if never written
    }

    [Fact]
    public void ImageFile_KeepsTheCellsAcrossRestarts()
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory("edgemail-flash-").FullName, "dev.img");
        using (var flash = new NorFlashSimulator(Small, imagePath: path))
        {
            flash.Program(100, [1, 2, 3], 0, 3);
        }

        using var again = new NorFlashSimulator(Small, imagePath: path, strict: true);
        var back = new byte[3];
        again.Read(100, back, 0, 3);
        Assert.Equal(new byte[] { 1, 2, 3 }, back);
        // Units programmed before the restart still count as programmed in strict mode.
        Assert.Throws<FlashViolationException>(() => again.Program(100, [0], 0, 1));
    }

    [Fact]
    public void Timing_FollowsTheBoardProfile()
    {
        var board = BoardProfile.LoadById(BoardProfile.FindBoardsDirectory(AppContext.BaseDirectory), "w25q128jv");
        using var flash = NorFlashSimulator.FromProfile(board);
        FlashWriter.Program(flash, 0, new byte[256], 0, 256);
        Assert.Equal(board.Flash.Timing.PageProgramUs, flash.SimulatedMicros, precision: 6);
        flash.ResetCounters();
        flash.EraseSector(1);
        Assert.Equal(board.Flash.Timing.SectorEraseUs, flash.SimulatedMicros, precision: 6);
    }
}
