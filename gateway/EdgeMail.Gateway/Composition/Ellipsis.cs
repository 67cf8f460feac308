using System.Text;

namespace EdgeMail.Gateway.Composition;

/// <summary>Cuts text that is too long, marking the cut, for the one-line texts a person reads (headers, replies).</summary>
internal static class Ellipsis
{
    /// <summary>Cuts <paramref name="text"/> to <paramref name="max"/> characters, the last an ellipsis; never between a surrogate pair.</summary>
    /// <param name="text">The text, cut in place when longer than <paramref name="max"/>.</param>
    /// <param name="max">Most characters kept, the ellipsis included.</param>
    public static void Cut(StringBuilder text, int max)
    {
        if (text.Length <= max)
        {
            return;
        }

        int cut = max - 1;
        if (char.IsHighSurrogate(text[cut - 1]))
        {
            cut--;
        }

        text.Length = cut;
        text.Append('…');
    }
}
