using EdgeMail.Emulator;

return EmulatorCli.Run(args, Console.Out, Console.Error);
