using System;

namespace EdgeMail.Firmware.Uplink.Smtp;

/// <summary>An SMTP exchange failed: the server refused (<see cref="ReplyCode"/> is its code) or the link broke (code 0).</summary>
public class SmtpException : Exception
{
    /// <summary>Creates the exception.</summary>
    public SmtpException()
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What was expected and what happened.</param>
    public SmtpException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and a cause.</summary>
    /// <param name="message">What was expected and what happened.</param>
    /// <param name="innerException">The cause.</param>
    public SmtpException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Creates the exception for a server reply.</summary>
    /// <param name="replyCode">The server's three-digit reply code, or 0 when the link failed.</param>
    /// <param name="message">What was expected and what came.</param>
    public SmtpException(int replyCode, string message)
        : base(message)
    {
        ReplyCode = replyCode;
    }

    /// <summary>The server's reply code (e.g. 451, 535, 550), or 0 when the connection failed or timed out.</summary>
    public int ReplyCode { get; }

    /// <summary>True for a 5xx reply: trying the same again will fail again.</summary>
    public bool IsPermanent => ReplyCode >= 500 && ReplyCode < 600;
}
