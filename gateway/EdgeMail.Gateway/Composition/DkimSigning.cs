using MimeKit;
using MimeKit.Cryptography;

namespace EdgeMail.Gateway.Composition;

/// <summary>Optional DKIM signing of the mail the gateway writes (configuration section <c>Dkim</c>).</summary>
public sealed class DkimOptions
{
    /// <summary>PEM file with the RSA private key; empty turns signing off.</summary>
    public string KeyFile { get; set; } = string.Empty;

    /// <summary>Signing domain (<c>d=</c>), normally the domain of <c>Sender:Address</c>.</summary>
    public string Domain { get; set; } = string.Empty;

    /// <summary>Selector (<c>s=</c>): the public key is published at <c>SELECTOR._domainkey.DOMAIN</c>.</summary>
    public string Selector { get; set; } = string.Empty;

    /// <summary>True when signing is configured.</summary>
    public bool Enabled => KeyFile.Length > 0;
}

/// <summary>Signs composed mail with DKIM (RSA-SHA256, relaxed/relaxed) as the last step of composition.</summary>
public sealed class DkimSigning
{
    private static readonly HeaderId[] SignedHeaders =
    [
        HeaderId.From, HeaderId.To, HeaderId.Subject, HeaderId.Date, HeaderId.MessageId, HeaderId.InReplyTo, HeaderId.References,
        HeaderId.AutoSubmitted, HeaderId.MimeVersion, HeaderId.ContentType,
    ];

    private readonly DkimSigner _signer;

    private DkimSigning(DkimSigner signer) => _signer = signer;

    /// <summary>Creates the signer from the options, or null when signing is off.</summary>
    /// <param name="options">DKIM options (validated at start).</param>
    /// <returns>The signer, or null.</returns>
    public static DkimSigning? Create(DkimOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!options.Enabled)
        {
            return null;
        }

        var signer = new DkimSigner(options.KeyFile, options.Domain, options.Selector, DkimSignatureAlgorithm.RsaSha256)
        {
            HeaderCanonicalizationAlgorithm = DkimCanonicalizationAlgorithm.Relaxed,
            BodyCanonicalizationAlgorithm = DkimCanonicalizationAlgorithm.Relaxed,
            AgentOrUserIdentifier = "@" + options.Domain,
        };
        return new DkimSigning(signer);
    }

    /// <summary>Checks that the key file holds a private key DKIM can use.</summary>
    /// <param name="keyFile">PEM file.</param>
    /// <param name="problem">What is wrong, when false.</param>
    /// <returns>True when usable.</returns>
    public static bool CanLoad(string keyFile, out string problem)
    {
        try
        {
            _ = new DkimSigner(keyFile, "example.com", "check");
            problem = string.Empty;
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException or ArgumentException or NotSupportedException)
        {
            problem = ex.Message;
            return false;
        }
    }

    /// <summary>Adds the DKIM-Signature header; call after every other header is set.</summary>
    /// <param name="message">The prepared (7-bit) message.</param>
    public void Sign(MimeMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        _signer.Sign(message, SignedHeaders);
    }
}
