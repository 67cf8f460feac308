using System.Text;
using EdgeMail.Gateway.Ingest.Smtp;
using Xunit;

namespace EdgeMail.Gateway.Tests.Smtp;

public sealed class AuthResponsesTests
{
    private static readonly string Plain = Convert.ToBase64String(Encoding.UTF8.GetBytes("\0dev-1\0secret"));

    [Theory]
    [InlineData("AUTH PLAIN {plain}", "None")]
    [InlineData("auth  plain   {plain}  \r", "None")]
    [InlineData("AUTH PLAIN", "None")]                // the response comes after the 334
    [InlineData("AUTH LOGIN dXNlcg==", "None")]
    [InlineData("AUTH CRAM-MD5 YWJj=", "None")]        // not a mechanism SmtpServer decodes: its own refusal
    [InlineData("MAIL FROM:<a@b.test>", "None")]
    [InlineData("{plain}\r", "Plain")]
    [InlineData("dXNlcg==", "Login")]
    [InlineData("", "Login")]                          // an empty user: SmtpServer takes it, the sign-in fails
    public void Taken(string line, string step) =>
        Assert.Null(AuthResponses.Refusal(Encoding.ASCII.GetBytes(line.Replace("{plain}", Plain, StringComparison.Ordinal)), Enum.Parse<AuthStep>(step)));

    [Theory]
    [InlineData("AUTH PLAIN YWJj=", "None", "5.5.2 the AUTH response is not base64")]
    [InlineData("auth login YWJj=", "None", "5.5.2 the AUTH response is not base64")]
    [InlineData("AUTH PLAIN =", "None", "5.5.2 the AUTH response is not base64")]
    [InlineData("AUTH PLAIN bm8gbnVscw==", "None", "5.5.2 AUTH PLAIN wants")]
    [InlineData("AUTH PLAIN *", "None", "5.7.0 authentication cancelled")]
    [InlineData("*", "Plain", "5.7.0 authentication cancelled")]
    [InlineData("*\r", "Login", "5.7.0 authentication cancelled")]
    [InlineData("", "Plain", "5.5.2 AUTH PLAIN wants")]
    [InlineData("YWJ", "Login", "5.5.2 the AUTH response is not base64")]
    public void Refused(string line, string step, string reply) =>
        Assert.StartsWith(reply, AuthResponses.Refusal(Encoding.ASCII.GetBytes(line), Enum.Parse<AuthStep>(step)));
}
