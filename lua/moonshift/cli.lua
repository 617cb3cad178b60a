-- The command line: parses arguments and maps errors to exit codes.
local cli = {}
function cli.main(args)
  io.stdout:write("moonshift ", #args, "\n")
  return 0
end
return cli
