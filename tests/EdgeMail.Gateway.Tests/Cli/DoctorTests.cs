using System.Diagnostics;
using System.Globalization;
using EdgeMail.Gateway.Cli;
using EdgeMail.Gateway.Tests.Relay;
using EdgeMail.Testing;
using MimeKit.Utils;
using Xunit;

namespace EdgeMail.Gateway.Tests.Cli;

/// <summary>
/// <c>edgemail doctor</c> against real parts: a running gateway holding a port, another program holding one, a real
/// SMTP server with STARTTLS and AUTH whose greeting carries its clock, and a real DNS server (dnsmasq).
/// </summary>
public sealed class DoctorTests : TempDirectory
{
    [Fact]
    public async Task Doctor_PortsFreeOrHeldByTheGateway_MailboxMode_AllGood()
    {
        await using var gw = await TestGateway.StartAsync();
        string config = TestGateway.WriteConfig(Dir);
        var doctor = await CliRun.RunAsync("doctor", "--config", config, "--Mqtt:Port=" + Port(Loopback.FreePort()), "--Console:Port=" + Port(gw.ConsoleAddress.Port));

        Assert.True(doctor.Code == ExitCodes.Ok, doctor.ToString());
        Assert.Contains($"MQTT 127.0.0.1:", doctor.Out, StringComparison.Ordinal);
        Assert.Contains(" free", doctor.Out, StringComparison.Ordinal);
        Assert.Contains($"console 127.0.0.1:{gw.ConsoleAddress.Port} in use by the gateway (pid {Environment.ProcessId})", doctor.Out, StringComparison.Ordinal);
        Assert.Contains("Relay:Mode is Mailbox", doctor.Out, StringComparison.Ordinal);
        Assert.Contains("MiB free on", doctor.Out, StringComparison.Ordinal);
        Assert.Contains("All checks passed", doctor.Out, StringComparison.Ordinal);
    }

    [PeerFact("python3:python3")]
    public async Task Doctor_APortHeldByAnotherProgram_FailsWithWhoAndTheFix()
    {
        var python = Process.Start(new ProcessStartInfo(Peers.Require("python3", "python3"),
            ["-c", "import socket,sys\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(s.getsockname()[1],flush=True)\nsys.stdin.read()"])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        })!;
        try
        {
            string port = (await Await.Within(python.StandardOutput.ReadLineAsync(), "python to listen"))!.Trim();
            var doctor = await CliRun.RunAsync("doctor", "--config", TestGateway.WriteConfig(Dir), "--Mqtt:Port=" + port, "--Console:Port=" + Port(Loopback.FreePort()));

            Assert.True(doctor.Code == ExitCodes.Failed, doctor.ToString());
            Assert.Contains($"FAIL  port         MQTT 127.0.0.1:{port} in use by pid {python.Id}: ", doctor.Out, StringComparison.Ordinal);
            Assert.Contains("choose another Mqtt:Port", doctor.Out, StringComparison.Ordinal);
            Assert.Contains("1 check(s) failed", doctor.Out, StringComparison.Ordinal);
        }
        finally
        {
            python.Kill();
            await python.WaitForExitAsync();
            python.Dispose();
        }
    }

    [Fact]
    public async Task Doctor_InvalidConfiguration_Exits2BeforeAnyCheck()
    {
        var doctor = await CliRun.RunAsync("doctor", "--config", TestGateway.WriteConfig(Dir), "--Relay:Mode=Smarthost");
        Assert.Equal(ExitCodes.InvalidConfiguration, doctor.Code);
        Assert.Contains("Relay:Host", doctor.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("port", doctor.Out, StringComparison.Ordinal);
    }

    [PeerFact("dnsmasq:dnsmasq-base")]
    public async Task Doctor_Smarthost_ChecksEhloStartTlsAuthDnsAndTheClock()
    {
        var skew = TimeSpan.Zero;
        await using var sink = await EdgeMail.Testing.Smtp.SmtpTestServer.StartAsync(new()
        {
            Certificate = SmarthostTlsTests.Certificate.Value,
            Users = new Dictionary<string, string> { ["gw"] = "relay-pass" },
            Greeting = () => "220 sink.test ESMTP Sendmail 8.17.1; " + DateUtils.FormatDate(TimeProvider.System.GetUtcNow() + skew),
        });
        using var dns = await Dnsmasq.StartAsync("--mx-host=gw.test,mx.gw.test,10", "--host-record=mx.gw.test,127.0.0.1", "--mx-host=nomail.gw.test,.,0", "--local=/gw.test/");
        string[] args =
        [
            "doctor", "--config", TestGateway.WriteConfig(Dir), "--Mqtt:Port=" + Port(Loopback.FreePort()), "--Console:Port=" + Port(Loopback.FreePort()),
            "--Relay:Mode=Smarthost", "--Relay:Host=127.0.0.1", "--Relay:Port=" + Port(sink.Port), "--Relay:Security=StartTls", "--Relay:AcceptAnyCertificate=true",
            "--Relay:User=gw", "--Relay:DnsServer=127.0.0.1:" + Port(dns.Port), "--Relay:Timeout=00:00:10",
        ];

        var good = await CliRun.RunAsync([.. args, "--Relay:Password=relay-pass"]);
        Assert.True(good.Code == ExitCodes.Ok, good.ToString());
        Assert.Contains($"127.0.0.1:{sink.Port}: EHLO answered, TLS", good.Out, StringComparison.Ordinal);
        Assert.Contains("authenticated as gw", good.Out, StringComparison.Ordinal);
        Assert.Contains("sender domain gw.test: MX mx.gw.test", good.Out, StringComparison.Ordinal);
        Assert.Contains("relay 127.0.0.1: 127.0.0.1", good.Out, StringComparison.Ordinal);
        Assert.Contains("of 127.0.0.1 (its SMTP greeting's date)", good.Out, StringComparison.Ordinal);
        Assert.Contains("ok    clock", good.Out, StringComparison.Ordinal);

        var wrong = await CliRun.RunAsync([.. args, "--Relay:Password=not-it"]);
        Assert.True(wrong.Code == ExitCodes.Failed, wrong.ToString());
        Assert.Contains("FAIL  relay AUTH", wrong.Out, StringComparison.Ordinal);
        Assert.Contains("check Relay:User and Relay:Password", wrong.Out, StringComparison.Ordinal);

        skew = TimeSpan.FromHours(-1); // the relay's clock an hour behind ours
        var late = await CliRun.RunAsync([.. args, "--Relay:Password=relay-pass"]);
        Assert.True(late.Code == ExitCodes.Failed, late.ToString());
        Assert.Contains("FAIL  clock", late.Out, StringComparison.Ordinal);
        Assert.Contains("ahead of 127.0.0.1", late.Out, StringComparison.Ordinal);
        Assert.Contains("timedatectl set-ntp true", late.Out, StringComparison.Ordinal);

        var nowhere = await CliRun.RunAsync([.. args, "--Relay:Password=relay-pass", "--Sender:Address=edgemail@nowhere.gw.test"]);
        Assert.Equal(ExitCodes.Failed, nowhere.Code);
        Assert.Contains("sender domain nowhere.gw.test", nowhere.Out, StringComparison.Ordinal);

        var nomail = await CliRun.RunAsync([.. args, "--Relay:Password=relay-pass", "--Sender:Address=edgemail@nomail.gw.test"]);
        Assert.Equal(ExitCodes.Failed, nomail.Code);
        Assert.Contains("sender domain nomail.gw.test: nomail.gw.test accepts no mail (null MX, RFC 7505)", nomail.Out, StringComparison.Ordinal);
        Assert.Contains("servers refuse mail from a null MX domain", nomail.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task DoctorRelay_SendTest_MailReachesTheSmarthostThroughTheCommandLine()
    {
        await using var sink = await EdgeMail.Testing.Smtp.SmtpTestServer.StartAsync(new() { Users = new Dictionary<string, string> { ["gw"] = "relay-pass" } });
        var doctor = await CliRun.RunAsync("doctor", "relay", "--send-test", "--to", "ops@example.com", "--config", TestGateway.WriteConfig(Dir),
            "--Relay:Mode=Smarthost", "--Relay:Host=127.0.0.1", "--Relay:Port=" + Port(sink.Port), "--Relay:Security=None", "--Relay:User=gw", "--Relay:Password=relay-pass");

        Assert.True(doctor.Code == ExitCodes.Ok, doctor.ToString());
        var (_, to) = await sink.NextAsync();
        Assert.Equal(["ops@example.com"], to);
        Assert.DoesNotContain("relay-pass", doctor.Out + doctor.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RelayLogin_PasswordMode_RefusesWithWhatToSet()
    {
        var login = await CliRun.RunAsync("relay", "login", "--config", TestGateway.WriteConfig(Dir), "--Relay:Mode=Smarthost", "--Relay:Host=127.0.0.1", "--Relay:User=gw");

        Assert.NotEqual(ExitCodes.Ok, login.Code);
        Assert.Contains("OAuth2RefreshToken", login.Out + login.Error, StringComparison.Ordinal);
    }

    private static string Port(int port) => port.ToString(CultureInfo.InvariantCulture);
}
