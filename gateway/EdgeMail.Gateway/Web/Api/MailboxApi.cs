using EdgeMail.Gateway.Relay;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using MimeKit;

namespace EdgeMail.Gateway.Web.Api;

/// <summary>A message in the local mailbox.</summary>
/// <param name="File">Its file name (the key for the other routes).</param>
/// <param name="Size">Bytes.</param>
/// <param name="Delivered">When it was written.</param>
/// <param name="From">From.</param>
/// <param name="To">To.</param>
/// <param name="Subject">Subject.</param>
public sealed record MailboxEntry(string File, long Size, DateTimeOffset Delivered, string From, string To, string Subject);

/// <summary>One mailbox message's headers and text.</summary>
/// <param name="Entry">The entry.</param>
/// <param name="Headers">Every header, in order.</param>
/// <param name="Text">Its text part.</param>
/// <param name="HasHtml">Whether it has an HTML part (shown at <c>.../html</c>).</param>
public sealed record MailboxMessage(MailboxEntry Entry, IReadOnlyList<KeyValuePair<string, string>> Headers, string Text, bool HasHtml);

/// <summary>The local mailbox (<c>Relay:Mode = Mailbox</c>): list, read, render, download.</summary>
public static class MailboxApi
{
    /// <summary>Maps the routes.</summary>
    /// <param name="api">The <c>/api/v1</c> group.</param>
    public static void Map(RouteGroupBuilder api)
    {
        api.MapGet("/mailbox", (int? limit, IMailTransport transport) =>
            transport is LocalMailbox mailbox
                ? Results.Ok(Files(mailbox).Take(Math.Clamp(limit ?? 200, 1, 2000)).Select(Entry).ToList())
                : NoMailbox())
            .WithSummary("The local mailbox's messages, newest first");
        api.MapGet("/mailbox/{file}", (string file, IMailTransport transport) =>
        {
            if (Find(transport, file) is not { } info)
            {
                return transport is LocalMailbox ? Results.NotFound(new ApiError($"no message '{file}'")) : NoMailbox();
            }

            using var message = MailRendering.Load(File.ReadAllBytes(info.FullName));
            var headers = message?.Headers.Select(h => new KeyValuePair<string, string>(h.Field, h.Value)).ToList() ?? [];
            return Results.Ok(new MailboxMessage(Entry(info), headers, message?.TextBody ?? string.Empty, message?.HtmlBody is not null));
        }).WithSummary("One message: headers and text");
        api.MapGet("/mailbox/{file}/html", (string file, IMailTransport transport) =>
            Find(transport, file) is { } info ? MailRendering.Html(File.ReadAllBytes(info.FullName)) : Results.NotFound(new ApiError($"no message '{file}'")))
            .WithSummary("One message's HTML, sandboxed");
        api.MapGet("/mailbox/{file}/raw", (string file, IMailTransport transport) =>
            Find(transport, file) is { } info ? Results.File(info.FullName, "message/rfc822", info.Name) : Results.NotFound(new ApiError($"no message '{file}'")))
            .WithSummary("One message as a file (.eml)");
    }

    private static IResult NoMailbox() => Results.NotFound(new ApiError("no local mailbox: Relay:Mode is not Mailbox"));

    private static IEnumerable<FileInfo> Files(LocalMailbox mailbox) =>
        new DirectoryInfo(mailbox.NewDirectory).EnumerateFiles("*.eml").OrderByDescending(f => f.LastWriteTimeUtc);

    // Only names the mailbox itself holds: no path, no traversal.
    private static FileInfo? Find(IMailTransport transport, string file)
    {
        if (transport is not LocalMailbox mailbox || file.Contains('/', StringComparison.Ordinal) || file.Contains('\\', StringComparison.Ordinal) || file.StartsWith('.'))
        {
            return null;
        }

        var info = new FileInfo(Path.Combine(mailbox.NewDirectory, file));
        return info.Exists ? info : null;
    }

    private static MailboxEntry Entry(FileInfo file)
    {
        HeaderList headers;
        try
        {
            using var stream = file.OpenRead();
            headers = HeaderList.Load(stream);
        }
        catch (Exception ex) when (ex is FormatException or IOException)
        {
            headers = [];
        }

        return new MailboxEntry(file.Name, file.Length, file.LastWriteTimeUtc, headers[HeaderId.From] ?? string.Empty, headers[HeaderId.To] ?? string.Empty,
            headers[HeaderId.Subject] ?? string.Empty);
    }
}
