using EdgeMail.Gateway.Cli;
using EdgeMail.Gateway.Operations;

// 'edgemail': with no command (as the appliance's systemd unit starts it) the gateway runs; see Cli/EdgemailCli.cs
// and 'edgemail --help'. Exit codes (the unit restarts on any but 2): 0 stopped on request; 1 could not start (a port
// in use, the spool cannot be opened); 2 the configuration is invalid; 70 stopped because it could not go on; the
// other commands' codes are in Cli/ExitCodes.cs. Its threads run under SCHED_BATCH (Operations/ThreadScheduling.cs),
// which has to be set before the runtime's threads start others.
ThreadScheduling.ApplyAtStart(Environment.GetEnvironmentVariable(ThreadScheduling.Variable));
return await EdgemailCli.InvokeAsync(args, CliIO.System).ConfigureAwait(false);
