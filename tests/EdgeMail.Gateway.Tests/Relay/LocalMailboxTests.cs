using EdgeMail.Gateway.Relay;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Xunit;

namespace EdgeMail.Gateway.Tests.Relay;

public sealed class LocalMailboxTests
{
    [Theory]
    [InlineData("a+b@x", "a=b@x")]
    [InlineData("a_2Bb@x", "a+b@x")]
    [InlineData("a%2Bb@x", "a+b@x")]
    [InlineData("ups/1@lan", "ups_1@lan")]
    public void FileName_DistinctIds_NeverShareAFile(string one, string other) =>
        Assert.NotEqual(LocalMailbox.FileName(one), LocalMailbox.FileName(other));

    [Property(MaxTest = 500)]
    public Property FileName_IsInjectiveSafeAndShort() =>
        Prop.ForAll(Arb.From(Gen.Two(ArbMap.Default.GeneratorFor<string>().Where(s => s is not null))), pair =>
        {
            var (a, b) = pair;
            string fa = LocalMailbox.FileName(a), fb = LocalMailbox.FileName(b);
            bool safe = System.Text.Encoding.UTF8.GetByteCount(fa) <= 255 && fa[0] != '.'
                && fa.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '-' or '_' or '@' or '%');
            return safe && (a == b) == (fa == fb);
        });

    [Fact]
    public void FileName_VeryLongIds_StayUnderTheLimitAndApart()
    {
        string a = new string('a', 600) + "@x", b = new string('a', 600) + "@y";
        Assert.True(LocalMailbox.FileName(a).Length <= 255);
        Assert.NotEqual(LocalMailbox.FileName(a), LocalMailbox.FileName(b));
    }

    [Fact]
    public void Prune_RemovesByAgeThenTheOldestPastTheSizeLimit()
    {
        string root = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", "mbx-" + Guid.NewGuid().ToString("N"));
        var mailbox = new LocalMailbox(root);
        var now = DateTime.UtcNow;
        try
        {
            for (int i = 0; i < 6; i++)
            {
                string file = Path.Combine(mailbox.NewDirectory, $"m{i}.eml");
                File.WriteAllBytes(file, new byte[1000]);
                File.SetLastWriteTimeUtc(file, now - TimeSpan.FromDays(40 - (i * 5))); // 40, 35, ..., 15 days old
            }

            Assert.Equal(2, mailbox.Prune(now - TimeSpan.FromDays(30), maxBytes: 0)); // 40 and 35 days old
            Assert.Equal(2, mailbox.Prune(now - TimeSpan.FromDays(30), maxBytes: 2500)); // then the oldest until <= 2,500 bytes
            Assert.Equal(["m4.eml", "m5.eml"], Directory.GetFiles(mailbox.NewDirectory).Select(Path.GetFileName).Order());
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public void Prune_AFileGoneBetweenTheListingAndItsSize_IsSkipped_AndThePassGoesOn()
    {
        string root = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", "mbx-" + Guid.NewGuid().ToString("N"));
        var mailbox = new LocalMailbox(root);
        var now = DateTime.UtcNow;
        try
        {
            var listed = new List<FileInfo>();
            for (int i = 0; i < 3; i++)
            {
                string file = Path.Combine(mailbox.NewDirectory, $"m{i}.eml");
                File.WriteAllBytes(file, new byte[1000]);
                File.SetLastWriteTimeUtc(file, now - TimeSpan.FromDays(40));
                listed.Add(new FileInfo(file)); // read lazily, as the listing's entries are
            }

            File.Delete(listed[1].FullName); // a mail reader took it meanwhile

            Assert.Equal(2, LocalMailbox.Prune(listed, now - TimeSpan.FromDays(30), maxBytes: 0));
            Assert.Empty(Directory.GetFiles(mailbox.NewDirectory));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }
}
