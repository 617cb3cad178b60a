-- `moonshift history`: the event log (applies, reverts, stamps, failures), newest last.
local session = require("moonshift.session")
local pg = require("moonshift.pg")
local json = require("moonshift.json")
local ui_mod = require("moonshift.ui")

local fmt = string.format

local history = { summary = "Show the event log (applies, reverts, failures).",
  uses = { "connection" } }

function history.arguments(cmd)
  cmd:flag("--json", "Print the events as a JSON array.")
  cmd:option("--limit", "Newest N events."):convert(math.tointeger):default("100")
end

function history.options(args)
  return { limit = args.limit, json = args.json }
end

--- The event log (newest last).
-- @return { events, target } | nil, err
function history.run(cfg, ui, opts)
  opts = opts or {}
  return session.with(cfg, ui, {}, function(s)
    local rows, err = s.history:list_events(opts.limit)
    if not rows then return nil, err end
    local out = json.array()
    for _, r in ipairs(rows) do
      local e = {}
      for k, v in pairs(r) do if v ~= pg.null then e[k] = v end end
      out[#out + 1] = e
    end
    return { events = out, target = s.label }
  end)
end

function history.print(ui, res, opts)
  if opts.json then
    ui:result(json.encode(res.events))
    return 0
  end
  local visible = ui_mod.visible -- names, roles and hosts with control characters escaped
  for _, e in ipairs(res.events) do
    ui:result(fmt("%s  %-8s %-40s %s@%s", e.at, e.action, visible(e.name or ""),
      visible(tostring(e.applied_by)), visible(e.hostname or "?")))
  end
  return 0
end

return history
