using System.Security.Cryptography;
using System.Text;
using MimeKit;
using MimeKit.Cryptography;
using Org.BouncyCastle.Crypto;

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

/// <summary>
/// Signs the gateway's mail with DKIM (RSA-SHA256, relaxed/relaxed): composed mail as the last step of composition,
/// and mail relayed for devices on its final wire bytes (<see cref="SignWire"/>).
/// </summary>
public sealed class DkimSigning
{
    private static readonly HeaderId[] SignedHeaders =
    [
        HeaderId.From, HeaderId.To, HeaderId.Subject, HeaderId.Date, HeaderId.MessageId, HeaderId.InReplyTo, HeaderId.References,
        HeaderId.AutoSubmitted, HeaderId.MimeVersion, HeaderId.ContentType,
    ];

    // Relayed device mail: the gateway's From and the device's Reply-To, the addressing and identity of the message,
    // its MIME structure, and the trace of which device sent it. Received is left out: it grows on the way.
    private static readonly string[] RelayedHeaders =
    [
        "From", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "MIME-Version",
        "Content-Type", "Content-Transfer-Encoding", "X-EdgeMail-Device", "X-EdgeMail-Original-From",
    ];

    private static readonly FormatOptions WireFormat = CreateWireFormat();

    private readonly DkimSigner _signer;

    private DkimSigning(DkimSigner signer) => _signer = signer;

    /// <summary>Creates the signer from the options, or null when signing is off.</summary>
    /// <param name="options">DKIM options (validated at start).</param>
    /// <returns>The signer, or null.</returns>
    public static DkimSigning? Create(DkimOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options.Enabled ? Enabled(options) : null;
    }

    // Apart from Create so that a gateway without DKIM never compiles it: MimeKit's signer types bring in
    // BouncyCastle (about 1 MiB resident) when a method that names them is compiled.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static DkimSigning Enabled(DkimOptions options) =>
        new(new NativeRsaDkimSigner(options.KeyFile, options.Domain, options.Selector)
        {
            HeaderCanonicalizationAlgorithm = DkimCanonicalizationAlgorithm.Relaxed,
            BodyCanonicalizationAlgorithm = DkimCanonicalizationAlgorithm.Relaxed,
            AgentOrUserIdentifier = "@" + options.Domain,
        });

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

    /// <summary>
    /// Signs mail whose bytes are final — mail relayed for a device, whose body must reach the recipient byte for
    /// byte — and puts the DKIM-Signature header on top of the unchanged bytes. The header block is read as it is
    /// (raw values), and the body is handed to the signer as one opaque part holding exactly the bytes after the
    /// blank line: parsed as MIME and written back, a malformed structure (a part whose headers start with white
    /// space, a missing end boundary) would come out different from what was sent and the signature would not match.
    /// </summary>
    /// <param name="wire">The message: a header block, a blank line, the body; CRLF line endings.</param>
    /// <returns>The DKIM-Signature header line(s) followed by <paramref name="wire"/>.</returns>
    public byte[] SignWire(byte[] wire)
    {
        ArgumentNullException.ThrowIfNull(wire);
        using var message = WireMessage.Open(wire);
        _signer.Sign(WireFormat, message, RelayedHeaders);
        var signature = message.Headers[message.Headers.IndexOf(HeaderId.DkimSignature)];
        // The folded value as MimeKit wrote it (its own new lines), on CRLF and ending in exactly one.
        string folded = Encoding.ASCII.GetString(signature.RawValue).TrimEnd('\r', '\n').ReplaceLineEndings("\r\n");
        byte[] header = Encoding.ASCII.GetBytes(signature.Field + ":" + folded + "\r\n");
        return [.. header, .. wire];
    }

    private static FormatOptions CreateWireFormat()
    {
        var options = FormatOptions.Default.Clone();
        options.NewLineFormat = NewLineFormat.Dos;
        options.International = false;
        return options;
    }
}

/// <summary>
/// MimeKit's DKIM signer with the RSA signature made by the platform's cryptography (OpenSSL on Linux) instead of
/// BouncyCastle's managed arithmetic: the same PKCS#1 v1.5 SHA-256 signature, byte for byte, at about a twentieth of
/// the CPU (an RSA-2048 private-key operation in managed code cost ~5 ms per message on the benchmark machine, more
/// than all the rest of an alert's path). MimeKit still canonicalises and hashes the headers and the body.
/// </summary>
internal sealed class NativeRsaDkimSigner : DkimSigner
{
    // Lives as long as the signer, which lives as long as the gateway (its handle is released by its finalizer).
    private readonly RSA _rsa;
    private readonly Lock _lock = new();

    private readonly TimeProvider _clock;

    public NativeRsaDkimSigner(string keyFile, string domain, string selector, TimeProvider? clock = null)
        : base(keyFile, domain, selector, DkimSignatureAlgorithm.RsaSha256)
    {
        _clock = clock ?? TimeProvider.System;
        _rsa = RSA.Create();
        _rsa.ImportFromPem(File.ReadAllText(keyFile));
    }

    // t= from the gateway's clock rather than MimeKit's own reading of the system time.
    protected override long GetTimestamp() => _clock.GetUtcNow().ToUnixTimeSeconds();

    protected override ISigner CreateSigningContext() => new Context(this);

    // One signature: SHA-256 over what MimeKit feeds in, then the private-key operation (serialised: an RSA key object
    // is not documented as safe for concurrent use, and compositions and relayed mail are signed on several threads).
    private sealed class Context(NativeRsaDkimSigner owner) : ISigner
    {
        private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

        public string AlgorithmName => "SHA-256withRSA";

        public void Init(bool forSigning, ICipherParameters parameters)
        {
        }

        public void Update(byte input) => _hash.AppendData([input]);

        public void BlockUpdate(byte[] input, int inOff, int inLen) => _hash.AppendData(input, inOff, inLen);

        public void BlockUpdate(ReadOnlySpan<byte> input) => _hash.AppendData(input);

        public int GetMaxSignatureSize() => owner._rsa.KeySize / 8;

        public byte[] GenerateSignature()
        {
            byte[] digest = _hash.GetHashAndReset();
            lock (owner._lock)
            {
                return owner._rsa.SignHash(digest, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
            }
        }

        public bool VerifySignature(byte[] signature) => throw new NotSupportedException("This context only signs.");

        public void Reset() => _hash.GetHashAndReset();
    }
}
