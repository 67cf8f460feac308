namespace EdgeMail.Emulator.Chaos;

/// <summary>The timeline chart (placeholder until the plotting slice).</summary>
internal static class ChaosChart
{
    public static string Write(ChaosResult result, string path)
    {
        _ = result;
        File.WriteAllText(path, "<svg xmlns=\"http://www.w3.org/2000/svg\"/>");
        return path;
    }
}
