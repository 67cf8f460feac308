using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using EdgeMail.Firmware.Uplink;

namespace EdgeMail.Simulation.Network;

/// <summary>
/// <see cref="ITransport"/> over TLS (SslStream) for .NET: the emulator, the tests and Linux boards. The MQTT and
/// SMTP clients of the firmware core stay unaware of TLS; on nanoFramework the same role falls to its SslStream.
/// A receive that times out leaves its read pending and picks it up on the next call, because a timed-out
/// SslStream read cannot be resumed.
/// </summary>
public sealed class TlsTransport : ITransport, IDisposable
{
    private readonly RemoteCertificateValidationCallback? _validate;
    private readonly X509Certificate2? _clientCertificate;
    private readonly byte[] _rx = new byte[16 * 1024];
    private TcpClient? _tcp;
    private SslStream? _ssl;
    private Task<int>? _pendingRead;
    private int _rxStart;
    private int _rxEnd;

    /// <summary>Creates a TLS transport.</summary>
    /// <param name="validate">Server certificate check; null applies the platform's chain and name validation.</param>
    /// <param name="clientCertificate">A client certificate, for brokers that authenticate devices by certificate.</param>
    public TlsTransport(RemoteCertificateValidationCallback? validate = null, X509Certificate2? clientCertificate = null)
    {
        _validate = validate;
        _clientCertificate = clientCertificate;
    }

    /// <summary>Why the link last broke, for diagnostics; null while it has not.</summary>
    public string? LastError { get; private set; }

    /// <inheritdoc/>
    public void Open(string host, int port, int timeoutMs)
    {
        ArgumentNullException.ThrowIfNull(host);
        Close();
        LastError = null;
        var tcp = new TcpClient { NoDelay = true };
        try
        {
            using var cts = new CancellationTokenSource(timeoutMs);
            tcp.ConnectAsync(host, port, cts.Token).AsTask().GetAwaiter().GetResult();
            var ssl = new SslStream(tcp.GetStream(), leaveInnerStreamOpen: false);
            var options = new SslClientAuthenticationOptions
            {
                TargetHost = host,
                RemoteCertificateValidationCallback = _validate,
                EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            };
            if (_clientCertificate is not null)
            {
                options.ClientCertificates = [_clientCertificate];
            }

            ssl.AuthenticateAsClientAsync(options, cts.Token).GetAwaiter().GetResult();
            _tcp = tcp;
            _ssl = ssl;
        }
        catch (OperationCanceledException)
        {
            tcp.Dispose();
            throw new TransportException($"TLS connect to {host}:{port} timed out after {timeoutMs} ms.");
        }
        catch (Exception ex) when (ex is SocketException or IOException or AuthenticationException)
        {
            tcp.Dispose();
            throw new TransportException($"TLS connect to {host}:{port} failed: {ex.Message}", ex);
        }
    }

    /// <inheritdoc/>
    public int Send(byte[] buffer, int offset, int count, int timeoutMs)
    {
        SslStream? ssl = _ssl;
        if (ssl is null)
        {
            return -1;
        }

        try
        {
            // A TLS record cannot be half sent: a write that does not finish in time breaks the link.
            return ssl.WriteAsync(buffer.AsMemory(offset, count)).AsTask().Wait(Math.Max(timeoutMs, 1)) ? count : Broken("send timed out");
        }
        catch (AggregateException ex) when (ex.InnerException is IOException or ObjectDisposedException)
        {
            return Broken(ex.InnerException.Message);
        }
        catch (ObjectDisposedException ex)
        {
            return Broken(ex.Message);
        }
    }

    /// <inheritdoc/>
    public int Receive(byte[] buffer, int offset, int count, int timeoutMs)
    {
        SslStream? ssl = _ssl;
        if (ssl is null)
        {
            return -1;
        }

        if (_rxStart == _rxEnd)
        {
            try
            {
                _pendingRead ??= ssl.ReadAsync(_rx, 0, _rx.Length);
                if (!_pendingRead.Wait(Math.Max(timeoutMs, 0)))
                {
                    return 0;
                }

                int n = _pendingRead.Result;
                _pendingRead = null;
                if (n == 0)
                {
                    return Broken("closed by the peer");
                }

                _rxStart = 0;
                _rxEnd = n;
            }
            catch (AggregateException ex) when (ex.InnerException is IOException or ObjectDisposedException)
            {
                return Broken(ex.InnerException.Message);
            }
        }

        int take = Math.Min(count, _rxEnd - _rxStart);
        Buffer.BlockCopy(_rx, _rxStart, buffer, offset, take);
        _rxStart += take;
        return take;
    }

    /// <inheritdoc/>
    public void Close()
    {
        _ssl?.Dispose();
        _tcp?.Dispose();
        _ssl = null;
        _tcp = null;
        _pendingRead = null;
        _rxStart = _rxEnd = 0;
    }

    /// <inheritdoc/>
    public void Dispose() => Close();

    private int Broken(string why)
    {
        LastError = why;
        Close();
        return -1;
    }
}
