-- What workflows (migrate.lua) and scripts get: the commands as functions returning results,
-- and the runner that turns their failures into the right exit.
local errors = require("moonshift.errors")
local hooks = require("moonshift.hooks")

local fmt = string.format

local workflow = {}

local function command(name) return require("moonshift.commands." .. name) end

--- The API a workflow or script gets: commands as functions returning results. Each
-- returns its result, or nil and an error; nothing is printed but progress.
-- @return table ms
function workflow.api(cfg, ui)
  local ms = {}
  function ms.status() return command("status").run(cfg, ui) end
  function ms.check() return command("check").run(cfg, ui) end
  function ms.up(o) return command("up").run(cfg, ui, o or {}) end
  function ms.down(o) return command("down").run(cfg, ui, o or {}) end
  function ms.goto_version(o) return command("goto").run(cfg, ui, o or {}) end
  function ms.verify(o)
    local res, err = command("verify").run(cfg, ui, o)
    if not res then return nil, err end
    if res.failed > 0 then
      local first
      for _, x in ipairs(res.results) do if not x.ok then first = x break end end
      return nil, errors.new("verify", fmt("%d verification%s failed; first: %s: %s", res.failed,
        res.failed == 1 and "" or "s", first.id, first.message), { results = res })
    end
    return res
  end
  function ms.history(o) return command("history").run(cfg, ui, o or {}) end
  function ms.backup(o) return command("backup").run(cfg, ui, o or {}) end
  ms.log = { info = function(m) ui:info(tostring(m)) end,
    warn = function(m) ui:warn(tostring(m)) end }
  return ms
end

--- Runs a workflow function or script chunk with the API; a failure is an error of the
-- kind the failing command gave, or a hook error (exit 7) with its file and line.
-- @return the function's result (true when it returned nothing) | nil, err
function workflow.run(what, fn, cfg, ui, args)
  local ms = workflow.api(cfg, ui)
  local results = table.pack(xpcall(fn, function(e)
    return { err = e, traceback = debug.traceback(tostring(e), 2) }
  end, ms, args))
  if not results[1] then
    return nil, hooks.failure(what, results[2].err, results[2].traceback)
  end
  local res, err = results[2], results[3]
  if res == false or (res == nil and err ~= nil) then
    if errors.is(err) then return nil, err end
    return nil, errors.new("hook", fmt("%s failed: %s", what, tostring(err or "returned false")))
  end
  return res == nil and true or res
end

--- The arguments after a workflow's or script's name: -y sets args.yes, the rest in order.
function workflow.args(list)
  local out = { yes = false }
  for _, a in ipairs(list or {}) do
    if a == "-y" or a == "--auto-confirm" then out.yes = true else out[#out + 1] = a end
  end
  return out
end

return workflow
