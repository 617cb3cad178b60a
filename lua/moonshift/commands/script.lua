-- `moonshift script FILE.lua [ARGS...]`: a Lua file run with the moonshift API.
local fs = require("moonshift.fs")
local errors = require("moonshift.errors")
local paths = require("moonshift.paths")
local sandbox = require("moonshift.sandbox")
local workflow = require("moonshift.workflow")
local run_workflow = require("moonshift.commands.do")

local script = { summary = "Run a Lua file with the moonshift API (ms, args).",
  uses = run_workflow.uses, passes_arguments = true, print = run_workflow.print }

function script.arguments(cmd)
  cmd:argument("file", "The Lua file to run.")
  cmd:argument("args", "Passed to the script as args."):args("*")
end

function script.options(args)
  return { file = args.file, args = workflow.args(args.args) }
end

--- Runs a Lua file with `ms` and `args` in a sandboxed environment.
-- @return what the script returned | nil, err
function script.run(cfg, ui, opts)
  local env = sandbox.env()
  local src, err = fs.read(opts.file)
  if not src then return nil, errors.new("usage", "cannot read " .. err) end
  local chunk, lerr = load(src, "@" .. opts.file, "t", env)
  if not chunk then return nil, errors.new("usage", lerr) end
  return workflow.run(paths.display(opts.file), function(ms, args)
    env.ms, env.args = ms, args
    return chunk(ms, args)
  end, cfg, ui, opts.args)
end

return script
