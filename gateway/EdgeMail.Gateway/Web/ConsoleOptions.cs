namespace EdgeMail.Gateway.Web;

/// <summary>The operator's console: web UI, HTTP API, metrics and health (configuration section <c>Console</c>).</summary>
public sealed class ConsoleOptions
{
    /// <summary>The configuration section these options bind to.</summary>
    public const string Section = "Console";

    /// <summary>Serve the console. On by default, on loopback.</summary>
    public bool Enabled { get; set; } = true;

    /// <summary>Address to listen on. Loopback unless configured otherwise; any other address is served over TLS only.</summary>
    public string BindAddress { get; set; } = "127.0.0.1";

    /// <summary>TCP port; 0 lets the operating system choose one (tests).</summary>
    public int Port { get; set; } = 8088;

    /// <summary>PKCS#12 certificate for TLS; empty for the gateway's (<c>Mqtt:CertificatePath</c>, else the generated one).</summary>
    public string CertificatePath { get; set; } = string.Empty;

    /// <summary>Its password.</summary>
    public string CertificatePassword { get; set; } = string.Empty;

    /// <summary>Serve <c>/metrics</c> without authentication (for a Prometheus that scrapes it over a trusted network).</summary>
    public bool MetricsAnonymous { get; set; }

    /// <summary>
    /// Reverse proxies (addresses, or networks as <c>10.0.0.0/8</c>) whose <c>X-Forwarded-For</c> and
    /// <c>X-Forwarded-Proto</c> are believed: the login throttle and the logs then see the browser's address, not the
    /// proxy's (one wrong password would otherwise count for everyone behind it). Empty: the headers are ignored, so
    /// nobody can pick the address the throttle counts by sending them.
    /// </summary>
    public IList<string> TrustedProxies { get; set; } = [];

    /// <summary>How the console is reached from a browser (for the setup link), e.g. <c>https://gw1.example.com:8088</c>; empty: from the bind address.</summary>
    public string PublicUrl { get; set; } = string.Empty;
}
