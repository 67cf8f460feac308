using EdgeMail.Testing;
using Xunit;

namespace EdgeMail.Gateway.Tests.Smtp;

/// <summary>Debian's swaks against the SMTP listener: STARTTLS and implicit TLS with AUTH, AUTH before TLS, wrong secrets, relay attempts, the bare postmaster, an alert part.</summary>
public sealed class SwaksPeerTests : IAsyncLifetime
{
    private TestGateway _gw = null!;

    public async Task InitializeAsync() => _gw = await SmtpGateway.StartAsync();

    public async Task DisposeAsync() => await _gw.DisposeAsync();

    private Task<(int ExitCode, string Output)> SwaksAsync(int port, params string[] args) =>
        PeerProcess.RunAsync("swaks", "swaks", ["--server", "127.0.0.1", "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--helo", "swaks.test", "--timeout", "10", .. args]);

    [PeerFact("swaks:swaks")]
    public async Task Swaks_StartTlsAndAuthPlain_IsQueuedAndDelivered()
    {
        var (code, output) = await SwaksAsync(_gw.StartTls().Port, "--tls", "--auth", "PLAIN", "--auth-user", "dev-1", "--auth-password", TestGateway.Secret,
            "--from", "dev-1@devices.test", "--to", "alice@example.com", "--header", "Subject: from swaks", "--body", "hello from swaks");

        Assert.True(code == 0, output);
        Assert.Contains("250 2.0.0 queued as", output);
        Assert.Single(await _gw.MailAsync(1));
    }

    [PeerFact("swaks:swaks")]
    public async Task Swaks_ImplicitTlsAndAuthLogin_IsQueued()
    {
        var (code, output) = await SwaksAsync(_gw.Implicit().Port, "--tls-on-connect", "--auth", "LOGIN", "--auth-user", "dev-2", "--auth-password", TestGateway.Secret,
            "--from", "dev-2@devices.test", "--to", "oncall@gw.test", "--body", "hello");

        Assert.True(code == 0, output);
        Assert.Contains("250 2.0.0 queued as", output);
    }

    [PeerFact("swaks:swaks")]
    public async Task Swaks_AuthWithoutTls_IsNotOffered()
    {
        var (code, output) = await SwaksAsync(_gw.StartTls().Port, "--auth", "PLAIN", "--auth-user", "dev-1", "--auth-password", TestGateway.Secret,
            "--from", "dev-1@devices.test", "--to", "alice@example.com");

        Assert.NotEqual(0, code);
        Assert.Contains("not advertise", output, StringComparison.OrdinalIgnoreCase);
        Assert.Equal(0, await Hostile.HostileKit.QueuedAsync(_gw));
    }

    [PeerFact("swaks:swaks")]
    public async Task Swaks_WrongSecret_Is535()
    {
        var (code, output) = await SwaksAsync(_gw.StartTls().Port, "--tls", "--auth", "PLAIN", "--auth-user", "dev-1", "--auth-password", "not-the-secret",
            "--from", "dev-1@devices.test", "--to", "alice@example.com");

        Assert.NotEqual(0, code);
        Assert.Contains("535", output);
        Assert.Equal(0, await Hostile.HostileKit.QueuedAsync(_gw));
    }

    [PeerFact("swaks:swaks")]
    public async Task Swaks_RelayAttempts_AreRefusedAtRcpt()
    {
        foreach (string victim in new[] { "victim@evil.example", "victim%evil.example@gw.test", "evil.example!victim@gw.test", "victim@[127.0.0.1]" })
        {
            var (code, output) = await SwaksAsync(_gw.StartTls().Port, "--tls", "--auth", "PLAIN", "--auth-user", "dev-1", "--auth-password", TestGateway.Secret,
                "--from", "dev-1@devices.test", "--to", victim);

            Assert.NotEqual(0, code);
            Assert.Contains("550 5.7.1", output);
        }

        var (plainCode, plainOutput) = await SwaksAsync(_gw.Plain().Port, "--from", "x@evil.example", "--to", "alice@example.com");
        Assert.NotEqual(0, plainCode);
        Assert.Contains("530", plainOutput); // not authenticated, not allow-listed
        Assert.Equal(0, await Hostile.HostileKit.QueuedAsync(_gw));
    }

    [PeerFact("swaks:swaks")]
    public async Task Swaks_ToBarePostmaster_IsAcceptedAndMailedToTheOperator()
    {
        var (code, output) = await SwaksAsync(_gw.StartTls().Port, "--tls", "--auth", "PLAIN", "--auth-user", "dev-1", "--auth-password", TestGateway.Secret,
            "--from", "dev-1@devices.test", "--to", "postmaster", "--header", "Subject: to the postmaster", "--body", "hello postmaster");

        Assert.True(code == 0, output);
        Assert.Contains("RCPT TO:<postmaster>", output); // swaks sent the bare form of RFC 5321 §4.5.1
        Assert.Contains("250 2.0.0 queued as", output);
        string envelope = File.ReadLines(Assert.Single(await _gw.MailAsync(1))).First();
        Assert.Equal("X-EdgeMail-Envelope-To: ops@example.com", envelope); // Sender:Operator
    }

    [PeerFact("swaks:swaks")]
    public async Task Swaks_AlertAttachment_IsIngestedAsAnAlert()
    {
        string file = Path.Combine(_gw.DataDir, "alert.json");
        await File.WriteAllTextAsync(file, Alerts.Json("swaks-1"));

        var (code, output) = await SwaksAsync(_gw.StartTls().Port, "--tls", "--auth", "PLAIN", "--auth-user", "dev-1", "--auth-password", TestGateway.Secret,
            "--from", "dev-1@devices.test", "--to", "edgemail@gw.test", "--attach-type", "application/vnd.edgemail.alert+json", "--attach", "@" + file);

        Assert.True(code == 0, output);
        Assert.Contains("250 2.0.0 alert stored (1 new", output);
        Assert.NotNull(await _gw.Spool.GetAlertAsync("dev-1", "swaks-1", default));
    }
}
