using EdgeMail.Gateway.Configuration;
using Microsoft.Extensions.Configuration;
using Xunit;

namespace EdgeMail.Gateway.Tests.Configuration;

/// <summary>Relay:Auth, Relay:OAuth2 and Relay:Limits: bound from configuration and checked at start with the key and the fix.</summary>
public sealed class RelayAuthOptionsTests
{
    private static GatewayOptions Bind(params (string Key, string Value)[] values)
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(values.Select(v => new KeyValuePair<string, string?>(v.Key, v.Value))).Build();
        var options = new GatewayOptions();
        configuration.Bind(options);
        return options;
    }

    private static List<string> RelayErrors(GatewayOptions o) => GatewayOptionsValidator.Check(o).Where(e => e.StartsWith("Relay:", StringComparison.Ordinal)).ToList();

    [Fact]
    public void ExchangeOnlineWithASecret_IsValidAndUsesTheAppOnlyScope()
    {
        var o = Bind(("Relay:Mode", "Smarthost"), ("Relay:Host", "smtp.office365.com"), ("Relay:Auth", "OAuth2ClientCredentials"), ("Relay:User", "alerts@contoso.com"),
            ("Relay:OAuth2:TenantId", "contoso.onmicrosoft.com"), ("Relay:OAuth2:ClientId", "00000000-1111"), ("Relay:OAuth2:ClientSecret", "s"),
            ("Relay:Limits:Preset", "ExchangeOnline"));

        Assert.Empty(RelayErrors(o));
        Assert.Equal("https://outlook.office365.com/.default", o.Relay.OAuth2.EffectiveScope(o.Relay.Auth));
        Assert.Equal(30, o.Relay.Limits.Effective().MessagesPerMinute);
    }

    [Fact]
    public void OAuth2WithoutItsSettings_NamesEveryKeyAndTheFix()
    {
        var o = Bind(("Relay:Mode", "Smarthost"), ("Relay:Host", "smtp.office365.com"), ("Relay:Auth", "OAuth2ClientCredentials"), ("Relay:Security", "None"),
            ("Relay:AuthMechanism", "PLAIN"));

        var errors = RelayErrors(o);

        Assert.Contains(errors, e => e.StartsWith("Relay:User:", StringComparison.Ordinal) && e.Contains("Fix:", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Relay:OAuth2:TenantId:", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Relay:OAuth2:ClientId:", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Relay:OAuth2:CertificatePath:", StringComparison.Ordinal) && e.Contains("certificate (preferred", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Relay:Security:", StringComparison.Ordinal) && e.Contains("clear text", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Relay:AuthMechanism:", StringComparison.Ordinal) && e.Contains("XOAUTH2", StringComparison.Ordinal));
    }

    [Fact]
    public void UnknownModesAndBadValues_AreRefused()
    {
        var o = Bind(("Relay:Auth", "Kerberos"), ("Relay:Limits:Preset", "Yahoo"), ("Relay:Limits:MessagesPerMinute", "-1"), ("Relay:Limits:StormWindowFactor", "0.5"));

        var errors = RelayErrors(o);

        Assert.Contains(errors, e => e.StartsWith("Relay:Auth:", StringComparison.Ordinal) && e.Contains("OAuth2ClientCredentials", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Relay:Limits:Preset:", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Relay:Limits:MessagesPerMinute:", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Relay:Limits:StormWindowFactor:", StringComparison.Ordinal));
    }

    [Fact]
    public void GoogleServiceAccount_NeedsAReadableKeyFileAndAnHttpsEndpoint()
    {
        string notAKey = Path.Combine(Directory.CreateTempSubdirectory("edgemail-sa").FullName, "key.json");
        File.WriteAllText(notAKey, "{\"type\":\"authorized_user\"}");
        var o = Bind(("Relay:Mode", "Smarthost"), ("Relay:Host", "smtp.gmail.com"), ("Relay:Auth", "GoogleServiceAccount"), ("Relay:User", "alerts@example.com"),
            ("Relay:OAuth2:ServiceAccountKeyFile", notAKey), ("Relay:OAuth2:TokenEndpoint", "http://oauth2.example/token"));

        var errors = RelayErrors(o);

        Assert.Contains(errors, e => e.StartsWith("Relay:OAuth2:ServiceAccountKeyFile:", StringComparison.Ordinal) && e.Contains("service_account", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Relay:OAuth2:TokenEndpoint:", StringComparison.Ordinal) && e.Contains("https", StringComparison.Ordinal));
        Assert.Equal("https://mail.google.com/", o.Relay.OAuth2.EffectiveScope(o.Relay.Auth));
    }

    [Fact]
    public void GmailSignIn_NeedsTheDesktopClientSecret()
    {
        var o = Bind(("Relay:Mode", "Smarthost"), ("Relay:Host", "smtp.gmail.com"), ("Relay:Auth", "OAuth2RefreshToken"), ("Relay:User", "alerts@gmail.com"),
            ("Relay:OAuth2:Provider", "Google"), ("Relay:OAuth2:ClientId", "123.apps.googleusercontent.com"));

        Assert.Contains(RelayErrors(o), e => e.StartsWith("Relay:OAuth2:ClientSecret:", StringComparison.Ordinal));
    }
}
