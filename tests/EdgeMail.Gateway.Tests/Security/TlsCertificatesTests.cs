using System.Globalization;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using EdgeMail.Gateway.Cli;
using EdgeMail.Gateway.Ingest.Smtp;
using EdgeMail.Gateway.Tests.Cli;
using Microsoft.Extensions.DependencyInjection;
using Xunit;

namespace EdgeMail.Gateway.Tests.Security;

/// <summary>A listener's certificate past (or near) its end: the start warns and goes on, and the doctor says the same.</summary>
public sealed class TlsCertificatesTests : TempDirectory
{
    [Theory]
    [InlineData(-3)]
    [InlineData(10)]
    public async Task Start_CertificateExpiredOrAboutToExpire_WarnsNamingFileSubjectAndExpiry_StartsAnyway_AndTheDoctorAgrees(int daysLeft)
    {
        Directory.CreateDirectory(Dir);
        var now = DateTimeOffset.UtcNow;
        using var rsa = RSA.Create(2048);
        using var certificate = new CertificateRequest("CN=gw.test", rsa, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1)
            .CreateSelfSigned(now.AddDays(-60), now.AddDays(daysLeft));
        string file = Path.Combine(Dir, "gateway.pfx");
        await File.WriteAllBytesAsync(file, certificate.Export(X509ContentType.Pfx, "pw"));
        string expiry = certificate.NotAfter.ToUniversalTime().ToString("u", CultureInfo.InvariantCulture);
        string said = daysLeft < 0 ? $"expired on {expiry}" : $"expires in {daysLeft} days, on {expiry}";

        await using var gw = await TestGateway.StartAsync(
            c => c["Smtp"] = new { Endpoints = new[] { new { Port = 0, Tls = "StartTls" } }, CertificatePath = file, CertificatePassword = "pw" },
            null, dataDir: Path.Combine(Dir, "data"));

        string warning = Assert.Single(gw.Logs.Warnings, w => w.Message.Contains(file, StringComparison.Ordinal)).Message;
        Assert.StartsWith($"The TLS certificate {file} (CN=gw.test) for SMTP: {said}. ", warning, StringComparison.Ordinal);
        Assert.NotEmpty(gw.Host.Services.GetRequiredService<SmtpIngest>().Endpoints); // it started all the same

        var doctor = await CliRun.RunAsync(["doctor", .. CliRun.At(gw)]);
        Assert.True(doctor.Code == (daysLeft < 0 ? ExitCodes.Failed : ExitCodes.Ok), doctor.ToString());
        Assert.Contains($"{(daysLeft < 0 ? "FAIL" : "WARN")}  certificate  SMTP: {file}, CN=gw.test, valid until ", doctor.Out, StringComparison.Ordinal);
        Assert.Contains($"…: {said}\n", doctor.Out, StringComparison.Ordinal);
    }
}
