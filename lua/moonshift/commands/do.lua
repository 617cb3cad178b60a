-- `moonshift do NAME [ARGS...]`: a workflow from migrate.lua.
local errors = require("moonshift.errors")
local json = require("moonshift.json")
local paths = require("moonshift.paths")
local workflow = require("moonshift.workflow")

local fmt = string.format

local run_workflow = { summary = "Run a workflow from migrate.lua: moonshift do NAME [ARGS...].",
  uses = { "connection", "lock", "timeouts", "log" }, passes_arguments = true }

function run_workflow.arguments(cmd)
  cmd:argument("name", "The workflow (a key of workflows in migrate.lua).")
  cmd:argument("args", "Passed to the workflow (-y sets args.yes)."):args("*")
end

function run_workflow.options(args)
  return { name = args.name, args = workflow.args(args.args) }
end

--- Runs a workflow from migrate.lua.
-- @return what the workflow returned | nil, err
function run_workflow.run(cfg, ui, opts)
  local wf = cfg.workflows and cfg.workflows[opts.name]
  if type(wf) ~= "function" then
    local names = {}
    for k in pairs(cfg.workflows or {}) do names[#names + 1] = tostring(k) end
    table.sort(names)
    return nil, errors.new("usage", fmt("no workflow %q in %s%s", opts.name,
      cfg.path and paths.display(cfg.path) or "migrate.lua (none found)",
      #names > 0 and (" (has: " .. table.concat(names, ", ") .. ")") or ""))
  end
  return workflow.run("workflow " .. opts.name, wf, cfg, ui, opts.args)
end

function run_workflow.print(ui, res)
  if type(res) == "table" then ui:result(json.encode(res)) end
  return 0
end

return run_workflow
