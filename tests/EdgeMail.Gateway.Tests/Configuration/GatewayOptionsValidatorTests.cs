using System.Globalization;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using EdgeMail.Gateway.Cli;
using EdgeMail.Gateway.Configuration;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Configuration;
using Xunit;

namespace EdgeMail.Gateway.Tests.Configuration;

public sealed class GatewayOptionsValidatorTests
{
    private static GatewayOptions Valid() => new()
    {
        Users = new(StringComparer.OrdinalIgnoreCase) { ["alice"] = new UserOptions { Name = "Alice", Email = "alice@example.com" } },
        Devices = new(StringComparer.Ordinal) { ["dev-1"] = new DeviceOptions { Secret = SecretHash.Create("x", 1000), Owners = ["alice"] } },
        Routes = [new RouteOptions { To = ["owners"] }],
    };

    [Fact]
    public void Check_ValidOptions_HasNoErrors()
    {
        Assert.Empty(GatewayOptionsValidator.Check(Valid()));
    }

    [Theory]
    [InlineData("smtp.example.com", "None", true)]
    [InlineData("192.0.2.25", "None", true)]
    [InlineData("127.0.0.1", "None", false)]
    [InlineData("127.8.9.10", "None", false)]
    [InlineData("::1", "None", false)]
    [InlineData("localhost", "None", false)]
    [InlineData("smtp.example.com", "StartTlsWhenAvailable", false)] // decided at connect, from the server's EHLO reply
    [InlineData("smtp.example.com", "StartTls", false)]
    public void Check_PasswordWithoutTls_IsRefusedUnlessTheRelayIsOnThisMachine(string host, string security, bool refused)
    {
        var o = Valid();
        o.Relay.Mode = "Smarthost";
        o.Relay.Host = host;
        o.Relay.Security = security;
        o.Relay.User = "gw";
        o.Relay.Password = "secret-pw";
        var anonymous = Valid();
        anonymous.Relay.Mode = "Smarthost";
        anonymous.Relay.Host = host;
        anonymous.Relay.Security = security;

        var errors = GatewayOptionsValidator.Check(o);

        if (refused)
        {
            string error = Assert.Single(errors);
            Assert.StartsWith($"Relay:Security: is None, which would send the password in clear text to {host}", error, StringComparison.Ordinal);
            Assert.Contains("Fix: use StartTls (port 587) or Tls (port 465)", error, StringComparison.Ordinal);
            Assert.DoesNotContain("secret-pw", error, StringComparison.Ordinal);
        }
        else
        {
            Assert.Empty(errors);
        }

        Assert.Empty(GatewayOptionsValidator.Check(anonymous));
    }

    // What the session reached decides, not how Relay:Host is spelt: "localhost" that reached another machine gets nothing.
    [Theory]
    [InlineData("smtp.example.com", "192.0.2.25", false, true)]
    [InlineData("smtp.example.com", "192.0.2.25", true, false)]
    [InlineData("127.0.0.1", "127.0.0.1", false, false)]
    [InlineData("relay.lan", "127.0.1.1", false, false)]
    [InlineData("localhost", "::ffff:127.0.0.1", false, false)]
    [InlineData("[::1]", "::1", false, false)]
    [InlineData("localhost", "192.0.2.25", false, true)]
    public void SignInSecurity_WithholdsCredentialsOnlyOnAnUnencryptedSessionToAnotherHost(string host, string reached, bool encrypted, bool withheld)
    {
        var relay = new RelayOptions { Mode = "Smarthost", Host = host, Security = "StartTlsWhenAvailable", User = "gw", Password = "secret-pw" };

        Assert.Equal(withheld, Gateway.Relay.SignInSecurity.Withheld(relay, host, 587, System.Net.IPAddress.Parse(reached), encrypted) is not null);
    }

    [Fact]
    public void Check_SharedGroup_NeedsExternalModeAndAUsableName()
    {
        var embedded = Valid();
        embedded.Mqtt.External.SharedGroup = "edgemail";
        Assert.StartsWith("Mqtt:External:SharedGroup: is set but Mqtt:Mode is embedded", Assert.Single(GatewayOptionsValidator.Check(embedded)), StringComparison.Ordinal);

        var external = Valid();
        external.Mqtt.Mode = MqttModes.External;
        external.Mqtt.External.Host = "mqtt.example.com";
        external.Mqtt.External.SharedGroup = "edgemail";
        Assert.Empty(GatewayOptionsValidator.Check(external));

        external.Mqtt.External.SharedGroup = "a/b";
        Assert.StartsWith("Mqtt:External:SharedGroup: 'a/b' is not a usable share name", Assert.Single(GatewayOptionsValidator.Check(external)), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("Alice\r\nBcc: victim@evil.example")]
    [InlineData("Alice\tOps")]
    public void Check_NameWithALineBreakOrTab_IsRefusedForUsersAndTheSender(string name)
    {
        var user = Valid();
        user.Users["alice"].Name = name;
        var sender = Valid();
        sender.Sender.DisplayName = name;

        Assert.StartsWith("Users:alice:Name: contains a line break", Assert.Single(GatewayOptionsValidator.Check(user)), StringComparison.Ordinal);
        Assert.StartsWith("Sender:DisplayName: contains a line break", Assert.Single(GatewayOptionsValidator.Check(sender)), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("pump-7\n")] // '$' matched before a final line feed
    [InlineData(".")] // an id no URL can name: '.' and '..' are dropped from paths
    [InlineData("..")]
    public void Check_DeviceIdEndingInALineFeedOrOnlyDots_IsRefused(string id)
    {
        var o = Valid();
        o.Devices[id] = o.Devices["dev-1"];

        Assert.StartsWith($"Devices:{id}: the device id must", Assert.Single(GatewayOptionsValidator.Check(o)), StringComparison.Ordinal);
    }

    [Fact]
    public void Check_DeviceNameOrSiteTheConsoleWouldRefuse_IsRefusedNamingTheKey_ByTheSameRule()
    {
        string Problem(string key, string value)
        {
            var o = Valid();
            if (key == "Name")
            {
                o.Devices["dev-1"].Name = value;
            }
            else
            {
                o.Devices["dev-1"].Site = value;
            }

            return Assert.Single(GatewayOptionsValidator.Check(o));
        }

        Assert.StartsWith("Devices:dev-1:Name: is 201 characters long, over the limit of 200. Fix: shorten it", Problem("Name", new string('n', 201)), StringComparison.Ordinal);
        Assert.StartsWith("Devices:dev-1:Site: contains a line break or another control character (U+000A at character 5)", Problem("Site", "Hall\n3"), StringComparison.Ordinal);
        Assert.StartsWith("Devices:dev-1:Name: contains half of a surrogate pair (U+D800 at character 6)", Problem("Name", "Pump \ud800 7"), StringComparison.Ordinal);
        Assert.StartsWith("Devices:dev-1:Name: contains half of a surrogate pair (U+DC00 at character 6)", Problem("Name", "Pump \udc00\ud800"), StringComparison.Ordinal);
        Assert.StartsWith("Devices:dev-1:Site: contains half of a surrogate pair (U+D83D at character 5)", Problem("Site", "Hall\ud83d"), StringComparison.Ordinal);

        var o = Valid();
        o.Devices["dev-1"].Name = new string('n', 198) + "\ud83d\ude80"; // 200 code units, a pair at the end
        o.Devices["dev-1"].Site = "Halle 3 – Süd";
        Assert.Empty(GatewayOptionsValidator.Check(o));
    }

    [Fact]
    public void Check_HostnameEndingInALineFeed_IsRefused()
    {
        var o = Valid();
        o.Sender.Hostname = "gw.example.com\n";

        Assert.StartsWith("Sender:Hostname:", Assert.Single(GatewayOptionsValidator.Check(o)), StringComparison.Ordinal);
    }

    [Fact]
    public void Check_PlainSecret_NamesTheKeyAndTheFix()
    {
        var o = Valid();
        o.Devices["dev-1"].Secret = "hunter2";

        string error = Assert.Single(GatewayOptionsValidator.Check(o));

        Assert.StartsWith("Devices:dev-1:Secret:", error, StringComparison.Ordinal);
        Assert.Contains("hash-secret", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Check_SeveralProblems_ReportsEach()
    {
        var o = Valid();
        o.Routes[0].MinSeverity = "loud";
        o.Routes[0].To.Add("nobody");
        o.Relay.Mode = "Pigeon";
        o.Users["alice"].Email = "not an address";

        var errors = GatewayOptionsValidator.Check(o);

        Assert.Contains(errors, e => e.StartsWith("Routes:0:MinSeverity:", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Routes:0:To:1:", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Relay:Mode:", StringComparison.Ordinal) && e.Contains("Fix: use Mailbox, Smarthost or DirectMx", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Users:alice:Email:", StringComparison.Ordinal));
    }

    [Fact]
    public void Check_DataDirectoryThatIsAFileOrBelowOne_NamesTheKeyAndTheFile()
    {
        string file = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path.GetDirectoryName(file)!);
        File.WriteAllText(file, "not a directory");
        var o = Valid();

        o.DataDirectory = file;
        Assert.Equal($"DataDirectory: '{file}' is a file, not a directory. Fix: give a directory (it is made if it does not exist), e.g. \"/var/lib/edgemail\".",
            Assert.Single(GatewayOptionsValidator.Check(o)));
        o.DataDirectory = Path.Combine(file, "data");
        Assert.StartsWith($"DataDirectory: '{o.DataDirectory}' lies below '{file}', which is a file.", Assert.Single(GatewayOptionsValidator.Check(o)), StringComparison.Ordinal);
        o.DataDirectory = Path.Combine(Path.GetDirectoryName(file)!, "not-yet", "data");
        Assert.Empty(GatewayOptionsValidator.Check(o));
    }

    [Theory]
    [InlineData("00:00:00", "Relay:Backoff:1: is zero, so a deferred mail would be tried again at once, over and over. Fix: use e.g. 00:05:00.")]
    [InlineData("-00:01:00", "Relay:Backoff:1: is negative. Fix: use e.g. 00:05:00.")]
    public void Check_BackoffStepZeroOrNegative_NamesTheStep(string step, string message)
    {
        var o = Valid();
        o.Relay.Backoff = [TimeSpan.FromMinutes(1), TimeSpan.Parse(step, System.Globalization.CultureInfo.InvariantCulture)];

        Assert.Equal(message, Assert.Single(GatewayOptionsValidator.Check(o)));
    }

    // The last step repeats: 1 h then 1 min asked a relay that was down once a minute for ever after the first hour.
    [Fact]
    public void Check_BackoffStepsOutOfOrder_NameTheStepThatIsShorterThanTheOneBefore()
    {
        var o = Valid();
        o.Relay.Backoff = [TimeSpan.FromMinutes(5), TimeSpan.FromHours(1), TimeSpan.FromMinutes(1)];

        Assert.Equal("Relay:Backoff:2: 00:01:00 is shorter than the step before it (Relay:Backoff:1, 01:00:00); the last step repeats, "
            + "so a mail deferred that far would be tried ever more often. Fix: list the steps from shortest to longest, e.g. 00:01:00, 00:05:00, 00:15:00, 00:30:00, 01:06:00.",
            Assert.Single(GatewayOptionsValidator.Check(o)));

        o.Relay.Backoff = [TimeSpan.FromMinutes(5), TimeSpan.FromMinutes(5), TimeSpan.FromHours(1)];
        Assert.Empty(GatewayOptionsValidator.Check(o));
    }

    [Theory]
    [InlineData(0, "0 is below 1")]
    [InlineData(5, "5 is above Relay:Concurrency (4)")]
    public void Check_DomainConcurrencyOutsideOneToConcurrency_NamesTheKeyAndTheFix(int perDomain, string problem)
    {
        var o = Valid();
        o.Relay.DomainConcurrency = perDomain;

        string error = Assert.Single(GatewayOptionsValidator.Check(o));
        Assert.StartsWith($"Relay:DomainConcurrency: {problem}. Fix: use e.g. 3 (the default, one less than Relay:Concurrency)", error, StringComparison.Ordinal);
        o.Relay.DomainConcurrency = 4;
        Assert.Empty(GatewayOptionsValidator.Check(o));
    }

    [Theory]
    [InlineData(0, "0 is below 1")]
    [InlineData(101, "101 is above 100")]
    [InlineData(100_000, "100000 is above 100")]
    public void Check_ConcurrencyOutsideOneToAHundred_NamesTheKeyAndTheFix(int concurrency, string problem)
    {
        var o = Valid();
        o.Relay.Concurrency = concurrency;

        Assert.StartsWith($"Relay:Concurrency: {problem}", Assert.Single(GatewayOptionsValidator.Check(o)), StringComparison.Ordinal);
        Assert.Contains(". Fix: use e.g. 4", Assert.Single(GatewayOptionsValidator.Check(o)), StringComparison.Ordinal);
        o.Relay.Concurrency = 100;
        Assert.Empty(GatewayOptionsValidator.Check(o));
    }

    [Theory]
    [InlineData("00:00:01", null, "Relay:MaxAge: 00:00:01 is shorter than ten minutes, so a relay that restarts or a network that drops for a few minutes would bounce mail")]
    [InlineData("00:00:00", null, "Relay:MaxAge: 00:00:00 is shorter than ten minutes")]
    [InlineData("02:00:00", "03:00:00", "Relay:MaxAge: 02:00:00 is shorter than the first Relay:Backoff step (03:00:00), so a deferred mail would be given up before its first retry was due")]
    public void Check_MaxAgeShorterThanTenMinutesOrTheFirstRetry_NamesTheKeyAndTheFix(string maxAge, string? firstStep, string problem)
    {
        var o = Valid();
        o.Relay.MaxAge = TimeSpan.Parse(maxAge, CultureInfo.InvariantCulture);
        o.Relay.Backoff = firstStep is null ? [] : [TimeSpan.Parse(firstStep, CultureInfo.InvariantCulture)];

        string error = Assert.Single(GatewayOptionsValidator.Check(o));
        Assert.StartsWith(problem, error, StringComparison.Ordinal);
        Assert.EndsWith("Fix: use e.g. 5.00:00:00 (five days, as RFC 5321 asks), and at least 00:10:00 and the first Relay:Backoff step.", error, StringComparison.Ordinal);

        o.Relay.MaxAge = TimeSpan.FromMinutes(10) > o.Relay.EffectiveBackoff()[0] ? TimeSpan.FromMinutes(10) : o.Relay.EffectiveBackoff()[0];
        Assert.Empty(GatewayOptionsValidator.Check(o));
    }

    [Fact]
    public void Check_SmarthostWithoutHost_IsRefused()
    {
        var o = Valid();
        o.Relay.Mode = "Smarthost";

        Assert.Contains(GatewayOptionsValidator.Check(o), e => e.StartsWith("Relay:Host:", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("00:00:00")] // MailKit's connect timed out at once: every delivery deferred until Relay:MaxAge bounced it
    [InlineData("-00:00:05")] // MailKit threw on it, and so did a stop, waiting twice it for deliveries under way
    [InlineData("30.00:00:00")] // past int.MaxValue milliseconds, and past what that wait takes
    public void Check_RelayTimeoutOutsideASecondToAnHour_NamesTheKeyAndTheFix(string timeout)
    {
        var o = Valid();
        o.Relay.Mode = "Smarthost";
        o.Relay.Host = "smtp.example.com";
        o.Relay.Timeout = TimeSpan.Parse(timeout, CultureInfo.InvariantCulture);

        Assert.StartsWith($"Relay:Timeout: {o.Relay.Timeout} is outside 1 second to 1 hour. Fix: use e.g. 00:00:30",
            Assert.Single(GatewayOptionsValidator.Check(o)), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("00:00:30", "Relay:AttemptTimeout: 00:00:30 is not longer than Relay:Timeout (00:00:30), so an attempt would end before one slow command's own timeout")]
    [InlineData("00:00:05", "Relay:AttemptTimeout: 00:00:05 is not longer than Relay:Timeout (00:00:30)")]
    [InlineData("1.00:00:01", "Relay:AttemptTimeout: 1.00:00:01 is longer than a day")]
    public void Check_AttemptTimeoutNotAboveRelayTimeoutOrAboveADay_NamesTheKeyAndTheFix(string attempt, string problem)
    {
        var o = Valid();
        o.Relay.AttemptTimeout = TimeSpan.Parse(attempt, CultureInfo.InvariantCulture);

        string error = Assert.Single(GatewayOptionsValidator.Check(o));
        Assert.StartsWith(problem, error, StringComparison.Ordinal);
        Assert.Contains("Fix: use e.g. 00:10:00 (or leave it unset)", error, StringComparison.Ordinal);

        o.Relay.AttemptTimeout = TimeSpan.FromSeconds(31);
        Assert.Empty(GatewayOptionsValidator.Check(o));
    }

    [Fact]
    public void EffectiveAttemptTimeout_Unset_IsTenMinutesOrFourTimesALongerRelayTimeout()
    {
        Assert.Equal(TimeSpan.FromMinutes(10), new RelayOptions().EffectiveAttemptTimeout());
        Assert.Equal(TimeSpan.FromMinutes(60), new RelayOptions { Timeout = TimeSpan.FromMinutes(15) }.EffectiveAttemptTimeout());
        Assert.Equal(TimeSpan.FromSeconds(40), new RelayOptions { AttemptTimeout = TimeSpan.FromSeconds(40) }.EffectiveAttemptTimeout());
    }

    // DnsClient refuses to encode such a name ("Label '1' is longer than 63 bytes"): direct MX could never look it up,
    // and a smarthost's MTA cannot either.
    [Theory]
    [InlineData("ops@" + Label64 + ".example.com", "has a domain mail cannot be delivered to: label 1 of " + Label64 + ".example.com is 64 characters long, more than the 63 a DNS label may have")]
    [InlineData("ops@" + Label63 + "." + Label63 + "." + Label63 + "." + Label63 + ".com", "is 259 characters long, more than the 253 a DNS name may have")]
    [InlineData("ops@[192.0.2.300]", "is neither an IPv4 address literal ([192.0.2.1]) nor an IPv6 one ([IPv6:2001:db8::1])")]
    [InlineData("ops@[127.1]", "is neither an IPv4 address literal")]
    [InlineData("ops@[2001:db8::1]", "is neither an IPv4 address literal")] // an IPv6 literal says so: [IPv6:...]
    public void Check_AddressWhoseDomainCannotBeDeliveredTo_IsRefusedSayingWhy_ForUsersRoutesAndTheOperator(string address, string problem)
    {
        var o = Valid();
        o.Users["alice"].Email = address;
        o.Sender.Operator = address;
        o.Routes.Add(new RouteOptions { To = [address] });

        var errors = GatewayOptionsValidator.Check(o);

        Assert.Equal(3, errors.Count);
        Assert.StartsWith($"Users:alice:Email: '{address}' has a domain mail cannot be delivered to: ", errors[0], StringComparison.Ordinal);
        Assert.Contains(errors, e => e.StartsWith($"Routes:1:To:0: '{address}' has a domain", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith($"Sender:Operator: '{address}' has a domain", StringComparison.Ordinal));
        Assert.All(errors, e => Assert.Contains(problem, e, StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("ops@" + Label63 + ".example.com")]
    [InlineData("ops@[192.0.2.1]")]
    [InlineData("ops@[IPv6:2001:db8::1]")]
    [InlineData("ops@[ipv6:::1]")]
    [InlineData("ops@bücher.example")]
    public void Check_AddressWithAnyDnsNameOrAnAddressLiteral_IsAccepted(string address)
    {
        var o = Valid();
        o.Users["alice"].Email = address;
        o.Sender.Operator = address;

        Assert.Empty(GatewayOptionsValidator.Check(o));
    }

    private const string Label63 = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk";
    private const string Label64 = Label63 + "l";

    [Theory]
    [InlineData(0)]
    [InlineData(65536)]
    public void Check_MxPortNotATcpPort_NamesTheKeyAndTheFix(int port)
    {
        var o = Valid();
        o.Relay.Mode = "DirectMx";
        o.Relay.MxPort = port;

        Assert.StartsWith($"Relay:MxPort: {port} is not a TCP port. Fix: use 25", Assert.Single(GatewayOptionsValidator.Check(o)), StringComparison.Ordinal);
    }

    [Fact]
    public void Check_BadBurstSettings_NameTheKeyAndTheFix()
    {
        var o = Valid();
        o.Spool.BurstAbove = -1;
        o.Spool.BurstPriority = TimeSpan.FromMinutes(5);

        var errors = GatewayOptionsValidator.Check(o);

        Assert.Contains(errors, e => e.StartsWith("Spool:BurstAbove:", StringComparison.Ordinal) && e.Contains("or 0 to turn burst priority off", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Spool:BurstPriority:", StringComparison.Ordinal) && e.Contains("00:00:05", StringComparison.Ordinal));
    }

    [Fact]
    public void Check_WalLimitBelowOneMegabyte_NamesTheKeyAndTheFix()
    {
        var o = Valid();
        o.Spool.WalLimitMegabytes = 0;

        var errors = GatewayOptionsValidator.Check(o);

        Assert.Contains(errors, e => e.StartsWith("Spool:WalLimitMegabytes: 0 is less than 1", StringComparison.Ordinal) && e.Contains("use e.g. 64", StringComparison.Ordinal));
    }

    [Fact]
    public void SecretHash_Verify_AcceptsTheSecretOnly()
    {
        string stored = SecretHash.Create("correct horse", 1000);

        Assert.True(SecretHash.Verify(stored, "correct horse"u8));
        Assert.False(SecretHash.Verify(stored, "correct horsf"u8));
        Assert.StartsWith("pbkdf2-sha256$1000$", stored, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_BadConfigFile_FailsNamingTheKey()
    {
        string dir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        string config = TestGateway.WriteConfig(dir, tweak: c => c["Relay"] = new { Mode = "Smarthost", Port = 70000 });
        using var host = GatewayHost.CreateBuilder(["--config", config]).Build();

        var ex = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());

        Assert.Contains(ex.Failures, f => f.StartsWith("Relay:Host:", StringComparison.Ordinal));
        Assert.Contains(ex.Failures, f => f.StartsWith("Relay:Port:", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Start_TlsCertificatesThatCannotServe_FailValidationNamingEachListenersKey()
    {
        string dir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        using var rsa = RSA.Create(2048);
        using var certificate = new CertificateRequest("CN=gw.test", rsa, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1)
            .CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        string missing = Path.Combine(dir, "missing.pfx");
        string withKey = Path.Combine(dir, "gateway.pfx");
        await File.WriteAllBytesAsync(withKey, certificate.Export(X509ContentType.Pfx, "right"));
        string withoutKey = Path.Combine(dir, "public-only.pfx");
        using (var publicOnly = X509CertificateLoader.LoadCertificate(certificate.RawData))
        {
            await File.WriteAllBytesAsync(withoutKey, publicOnly.Export(X509ContentType.Pfx, "right"));
        }

        string config = TestGateway.WriteConfig(dir, tweak: c =>
        {
            c["Mqtt"] = new { Port = 0, TlsEnabled = true, TlsPort = 0, CertificatePath = missing };
            c["Smtp"] = new { Endpoints = new[] { new { Port = 0, Tls = "Implicit" } }, CertificatePath = withKey, CertificatePassword = "wrong" };
            c["Console"] = new { Port = 0, CertificatePath = withoutKey, CertificatePassword = "right" };
        });
        try
        {
            using var host = GatewayHost.CreateBuilder(["--config", config]).Build();

            var problems = await GatewayConfig.ValidateAsync(host.Services, CancellationToken.None);

            Assert.Contains(problems, p => p.StartsWith($"Mqtt:CertificatePath: the TLS certificate '{missing}' does not exist. Fix: give a PKCS#12 file", StringComparison.Ordinal)
                && p.Contains("its password in Mqtt:CertificatePassword", StringComparison.Ordinal));
            Assert.Contains(problems, p => p.StartsWith($"Smtp:CertificatePath: the TLS certificate '{withKey}' is not a PKCS#12 file this password opens", StringComparison.Ordinal)
                && p.Contains("its password in Smtp:CertificatePassword", StringComparison.Ordinal));
            Assert.Contains(problems, p => p.StartsWith($"Console:CertificatePath: the TLS certificate '{withoutKey}' holds no private key. Fix:", StringComparison.Ordinal));
            Assert.Equal(3, problems.Count);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task Start_NoConfig_CreatesADemoSetupInTheDataDirectory()
    {
        string dir = Path.Combine(Path.GetTempPath(), "edgemail-gw-tests", Guid.NewGuid().ToString("N"));
        // OS-chosen ports: another gateway on the machine (or a CI neighbour) may hold the defaults.
        using var host = GatewayHost.CreateBuilder([$"--DataDirectory={dir}", "--Mqtt:Port=0", "--Mqtt:TlsPort=0", "--Console:Port=0"]).Build();
        await host.StartAsync();
        try
        {
            var options = ((IOptions<GatewayOptions>)host.Services.GetService(typeof(IOptions<GatewayOptions>))!).Value;
            Assert.Contains("demo-freezer", options.Devices.Keys);
            Assert.True(File.Exists(Path.Combine(dir, DemoSetup.SecretsFileName)));
        }
        finally
        {
            await host.StopAsync();
        }
    }
}

public sealed class ExampleConfigTests
{
    [Fact]
    public void ExampleFile_Validates()
    {
        var configuration = new Microsoft.Extensions.Configuration.ConfigurationBuilder()
            .AddJsonFile(Path.Combine(AppContext.BaseDirectory, "edgemail.example.json")).Build();
        var options = new GatewayOptions();
        Microsoft.Extensions.Configuration.ConfigurationBinder.Bind(configuration, options);

        Assert.Empty(GatewayOptionsValidator.Check(options));
        Assert.Empty(ConfigurationKeysValidator.Check(((IConfigurationRoot)configuration).Providers));
        Assert.Equal("Smarthost", options.Relay.Mode);
    }
}
