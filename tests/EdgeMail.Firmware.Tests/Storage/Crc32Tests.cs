using System.Text;
using EdgeMail.Firmware.Storage;
using FsCheck.Xunit;
using Xunit;

namespace EdgeMail.Firmware.Tests.Storage;

public class Crc32Tests
{
    [Theory]
    [InlineData("", 0x00000000u)]
    [InlineData("a", 0xE8B7BE43u)]
    [InlineData("123456789", 0xCBF43926u)] // the standard check value of CRC-32/ISO-HDLC
    [InlineData("The quick brown fox jumps over the lazy dog", 0x414FA339u)]
    public void Compute_MatchesPublishedCheckValues(string text, uint expected)
    {
        byte[] data = Encoding.ASCII.GetBytes(text);
        Assert.Equal(expected, Crc32.Compute(data, 0, data.Length));
    }

    [Property]
    public bool Update_InPieces_EqualsOneShot(byte[] data, byte split)
    {
        int cut = data.Length == 0 ? 0 : split % (data.Length + 1);
        uint state = Crc32.Update(Crc32.Seed, data, 0, cut);
        state = Crc32.Update(state, data, cut, data.Length - cut);
        return Crc32.Finish(state) == Crc32.Compute(data, 0, data.Length);
    }

    [Property]
    public bool Compute_DetectsAnySingleBitFlip(byte[] data, int bit)
    {
        if (data.Length == 0)
        {
            return true;
        }

        uint before = Crc32.Compute(data, 0, data.Length);
        int index = (int)((uint)bit % (uint)(data.Length * 8));
        data[index / 8] ^= (byte)(1 << (index % 8));
        return Crc32.Compute(data, 0, data.Length) != before;
    }
}
