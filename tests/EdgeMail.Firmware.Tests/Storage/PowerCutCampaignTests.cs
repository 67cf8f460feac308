using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Torture;
using FsCheck;
using FsCheck.Fluent;
using Xunit;
using Xunit.Abstractions;

namespace EdgeMail.Firmware.Tests.Storage;

public class PowerCutCampaignTests(ITestOutputHelper output)
{
    private const int Steps = 700;

    public static TheoryData<string, FullPolicy, int> Campaigns => new()
    {
        { "nor", FullPolicy.DropLowestPriority, 6 },
        { "strict", FullPolicy.DropLowestPriority, 6 },
        { "nor", FullPolicy.DropOldest, 2 },
        { "strict", FullPolicy.DropOldest, 2 },
        { "nor", FullPolicy.Reject, 2 },
        { "strict", FullPolicy.Reject, 2 },
    };

    [Theory]
    [MemberData(nameof(Campaigns))]
    public void EveryFlashOperation_CutBeforeInsideAndAfter_LosesNothingThatWasPromised(string mode, FullPolicy policy, int workloads)
    {
        var geometry = mode == "nor" ? FlashQueueTests.Nor : FlashQueueTests.Strict;
        long cuts = 0;
        long mutations = 0;
        long dropped = 0;
        var violations = new List<string>();
        for (int seed = 1; seed <= workloads; seed++)
        {
            var random = new Random(seed * 7919);
            var campaign = new PowerCutCampaign(geometry, policy, seed,
                _ => [0.0, 0.02 + (random.NextDouble() * 0.96), 1.0], weakBits: seed % 2 == 0);
            campaign.Run(PowerCutCampaign.Script(seed, Steps));
            cuts += campaign.CutPointsChecked;
            mutations += campaign.Mutations;
            dropped += campaign.DroppedReported;
            violations.AddRange(campaign.Violations);
        }

        output.WriteLine($"{mode} flash, policy {policy}: {workloads} workloads (seeds 1..{workloads}), {mutations} flash operations, {cuts} cut points checked, {dropped} entries reported dropped, {violations.Count} violations");
        Assert.True(policy == FullPolicy.Reject || dropped > 0, "the workload should fill the queue so the full policy runs");
        Assert.True(violations.Count == 0, string.Join(Environment.NewLine, violations.Take(20)));
    }

    [Fact]
    public void RandomWorkloads_CutAtARandomOperation_KeepInvariants()
    {
        var stepGen = Gen.Elements(Step.Append, Step.Append, Step.Append, Step.ReadBatch, Step.AckBatch, Step.LinkLost, Step.Reboot, Step.Maintain);
        var caseGen =
            from steps in Gen.ListOf(stepGen)
            from args in Gen.ArrayOf(Gen.Choose(0, int.MaxValue - 1), steps.Count)
            from cutSeed in Gen.Choose(0, 100_000)
            from policy in Gen.Elements(FullPolicy.DropLowestPriority, FullPolicy.DropOldest, FullPolicy.Reject)
            from strict in Gen.Elements(true, false)
            select (Script: steps.Zip(args, (s, a) => (s, a)).ToList(), CutSeed: cutSeed, Policy: policy, Strict: strict);
        var property = Prop.ForAll(caseGen.ToArbitrary(), c =>
        {
            var (script, cutSeed, policy, strict) = c;
            var random = new Random(cutSeed);
            var campaign = new PowerCutCampaign(strict ? FlashQueueTests.Strict : FlashQueueTests.Nor, policy, cutSeed,
                _ => random.Next(8) == 0 ? [random.NextDouble()] : [], weakBits: true);
            campaign.Run(script);
            foreach (string v in campaign.Violations.Take(5))
            {
                output.WriteLine($"policy {policy}, strict {strict}: {v}");
            }

            return campaign.Violations.Count == 0;
        });

        var config = Config.QuickThrowOnFailure.WithMaxTest(150).WithEndSize(400);
        output.WriteLine("FsCheck prints the seed (Replay) of any failing case; rerun it with Config.WithReplay.");
        Check.One(config, property);
    }
}
