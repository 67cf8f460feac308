using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using EdgeMail.Gateway.Configuration;
using EdgeMail.Gateway.Spool;
using EdgeMail.Gateway.Web;
using EdgeMail.Gateway.Web.Api;
using Microsoft.Extensions.Logging.Abstractions;

namespace EdgeMail.Gateway.Cli;

/// <summary><c>check-config</c>, <c>hash-secret</c> and <c>admin set-password</c>: what an operator does before and beside <c>run</c>.</summary>
public static class ConfigCommands
{
    /// <summary>Adds the commands.</summary>
    /// <param name="root">The root command.</param>
    /// <param name="options">The shared options.</param>
    /// <param name="io">Standard streams.</param>
    public static void Add(Command root, CliOptions options, CliIO io)
    {
        ArgumentNullException.ThrowIfNull(root);
        ArgumentNullException.ThrowIfNull(options);
        var check = new Command("check-config", "Validate the configuration exactly as 'run' would at start, and list what is worth a look")
        {
            TreatUnmatchedTokensAsErrors = false,
        };
        check.Note("Exit codes: 0 valid; 2 invalid (each problem names the key and the fix).");
        check.Options.Add(options.Json);
        CliCommand.SetAction(check, options, io, CheckConfigAsync);
        root.Subcommands.Add(check);

        var stray = new Argument<string[]>("SECRET") { Arity = ArgumentArity.ZeroOrMore, Hidden = true };
        var hash = new Command("hash-secret", "Read a device secret from standard input and print the value for Devices:<id>:Secret");
        hash.Note("The secret is typed twice without echo on a terminal, else it is the first line of standard input; never on the command line, "
            + "where shell history and ps would keep it. Example: printf '%s' \"$SECRET\" | edgemail hash-secret\nExit codes: 0 printed; 1 nothing read; 64 a secret given as an argument.");
        hash.Arguments.Add(stray);
        CliCommand.SetAction(hash, options, io, (c, _) => HashSecretAsync(c, stray));
        root.Subcommands.Add(hash);

        var admin = new Command("admin", "The console's admin account");
        var setPassword = new Command("set-password", "Set the console's admin password, read from standard input; works with the gateway running or stopped")
        {
            TreatUnmatchedTokensAsErrors = false,
        };
        setPassword.Note($"The password (at least {ConsoleAuth.MinPasswordLength} characters) is typed twice without echo on a terminal, else it is the first line of standard input. "
            + "With the gateway running it is set through its API; otherwise it is written to the spool, and a gateway takes it at the next login.\n"
            + "Exit codes: 0 set; 1 not set (too short, entries differ, no spool yet).");
        setPassword.Options.Add(options.Url);
        setPassword.Options.Add(options.ApiKeyFile);
        CliCommand.SetAction(setPassword, options, io, SetPasswordAsync);
        admin.Subcommands.Add(setPassword);
        root.Subcommands.Add(admin);
    }

    private static async Task<int> CheckConfigAsync(CliContext c, CancellationToken ct)
    {
        var config = c.Configuration();
        using var check = await config.CheckAsync(ct).ConfigureAwait(false);
        if (check.Demo)
        {
            throw new CliException(ExitCodes.InvalidConfiguration, CliCommand.DemoMessage);
        }

        var warnings = check.Problems.Count == 0 ? ConfigApi.Effective(check.Host!.Services).Warnings : [];
        if (c.Json)
        {
            await c.Io.Out.WriteLineAsync(JsonSerializer.Serialize(new { file = config.Describe, valid = check.Problems.Count == 0, problems = check.Problems, warnings },
                new JsonSerializerOptions(GatewayClient.Json) { WriteIndented = true })).ConfigureAwait(false);
        }
        else if (check.Problems.Count > 0)
        {
            await c.Io.Out.WriteLineAsync($"{config.Describe}: INVALID, {check.Problems.Count} problem(s); the gateway would not start (exit code 2):").ConfigureAwait(false);
            foreach (string problem in check.Problems)
            {
                await c.Io.Out.WriteLineAsync("  - " + problem).ConfigureAwait(false);
            }
        }
        else
        {
            var o = check.Options;
            string relay = o.Relay.Mode.Equals("Smarthost", StringComparison.OrdinalIgnoreCase) ? $"Smarthost {o.Relay.Host}:{o.Relay.Port}" : o.Relay.Mode;
            await c.Io.Out.WriteLineAsync(string.Create(CultureInfo.InvariantCulture,
                $"{config.Describe}: valid. {o.Devices.Count} device(s), {o.Users.Count} user(s), {o.Groups.Count} group(s), {o.Routes.Count} route(s); relay {relay}; data in {o.DataPath()}")).ConfigureAwait(false);
        }

        if (!c.Json && warnings.Count > 0)
        {
            await c.Io.Out.WriteLineAsync("Worth a look:").ConfigureAwait(false);
            foreach (string warning in warnings)
            {
                await c.Io.Out.WriteLineAsync("  ! " + warning).ConfigureAwait(false);
            }
        }

        return check.Problems.Count == 0 ? ExitCodes.Ok : ExitCodes.InvalidConfiguration;
    }

    private static async Task<int> HashSecretAsync(CliContext c, Argument<string[]> stray)
    {
        if (c.Parse.GetValue(stray) is { Length: > 0 })
        {
            throw new CliException(ExitCodes.Usage, "hash-secret reads the secret from standard input, never from the command line (shell history and ps would keep it): "
                + "printf '%s' \"$SECRET\" | edgemail hash-secret, or run it in a terminal and type it");
        }

        string? secret = c.Io.ReadSecret("Device secret", confirm: true);
        if (secret is null)
        {
            return ExitCodes.Failed;
        }

        if (secret.Length == 0)
        {
            throw new CliException(ExitCodes.Failed, "the secret is empty: a device needs a secret (e.g. openssl rand -hex 16)");
        }

        if (secret.Length < 16)
        {
            await c.Io.Error.WriteLineAsync($"{EdgemailCli.Name}: warning: a secret of {secret.Length} characters is easy to guess; use at least 16 random ones (openssl rand -hex 16)").ConfigureAwait(false);
        }

        await c.Io.Out.WriteLineAsync(SecretHash.Create(secret)).ConfigureAwait(false);
        return ExitCodes.Ok;
    }

    private static async Task<int> SetPasswordAsync(CliContext c, CancellationToken cancellationToken)
    {
        var (gateway, _) = c.Configuration().Read();
        string? password = c.Io.ReadSecret("New admin password", confirm: true);
        if (password is null)
        {
            return ExitCodes.Failed;
        }

        if (ConsoleAuth.PasswordProblem(password) is { } problem)
        {
            throw new CliException(ExitCodes.Failed, problem + "; nothing was changed");
        }

        // A running gateway keeps the hash in memory: through its API the new password works at once. A stopped one
        // reads it from the spool at its next start.
        GatewayClient? client = null;
        try
        {
            client = GatewayClient.Create(c, requireKey: false);
        }
        catch (CliException)
        {
            // No console configured (or it is off): only the spool is left.
        }

        using (client)
        {
            bool running = client is not null && await client.IsRunningAsync(cancellationToken).ConfigureAwait(false);
            if (running)
            {
                try
                {
                    await client!.PostAsync("password", new PasswordRequest(password), cancellationToken).ConfigureAwait(false);
                    await c.Io.Out.WriteLineAsync($"Admin password set by the running gateway; log in at {client.BaseAddress}login").ConfigureAwait(false);
                    return ExitCodes.Ok;
                }
                catch (CliException ex) when (ex.ExitCode == ExitCodes.Unreachable)
                {
                    await c.Io.Error.WriteLineAsync($"{EdgemailCli.Name}: the running gateway did not take it ({ex.Message}); writing it to the spool instead").ConfigureAwait(false);
                }
            }

            if (gateway.Spool.Provider == SpoolProviders.Postgres)
            {
                try
                {
                    await using var shared = PostgresSpool.Open(gateway.Spool.ConnectionString, gateway.Spool.Fsync, gateway.Spool.MaxBatch,
                        gateway.Spool.ClaimLease, gateway.Spool.PollInterval, NullLogger.Instance);
                    await SetAsync(shared, password, cancellationToken).ConfigureAwait(false);
                }
                catch (SpoolException ex)
                {
                    throw new CliException(ExitCodes.Failed, ex.Message + " Check Spool:ConnectionString (--config).");
                }

                await c.Io.Out.WriteLineAsync("Admin password written to the PostgreSQL spool; every gateway on it takes it at the next login").ConfigureAwait(false);
                return ExitCodes.Ok;
            }

            string spoolPath = gateway.SpoolPath();
            if (!File.Exists(spoolPath))
            {
                // Never create one here: as root it would be root's, and the gateway's user could not open it.
                throw new CliException(ExitCodes.Failed, $"no spool at {spoolPath}: the gateway creates it at its first start. Start it once (systemctl start edgemail-gateway) "
                    + "and run this again, or open the setup link it logs; or is DataDirectory right (--config)?");
            }

            try
            {
                await using var spool = SqliteSpool.Open(spoolPath, gateway.Spool.Fsync, gateway.Spool.MaxBatch, NullLogger.Instance);
                await SetAsync(spool, password, cancellationToken).ConfigureAwait(false);
            }
            catch (SpoolException ex)
            {
                throw new CliException(ExitCodes.Failed, ex.Message + " Run as root or as the gateway's user (sudo edgemail admin set-password).");
            }

            await c.Io.Out.WriteLineAsync($"Admin password written to {spoolPath}; the gateway takes it at the next login").ConfigureAwait(false);
            return ExitCodes.Ok;
        }
    }

    private static async Task SetAsync(ISpool spool, string password, CancellationToken cancellationToken)
    {
        var auth = new ConsoleAuth(spool, TimeProvider.System, NullLogger<ConsoleAuth>.Instance);
        if (await auth.SetPasswordAsync(password, cancellationToken).ConfigureAwait(false) is { } refused)
        {
            throw new CliException(ExitCodes.Failed, refused);
        }
    }
}
