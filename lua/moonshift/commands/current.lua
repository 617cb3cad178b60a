-- `moonshift current` (or `version`): the version the database is at, and nothing else.
local status = require("moonshift.commands.status")
local json = require("moonshift.json")

local current = { summary = "Print the current version (what golang-migrate calls version).",
  uses = { "connection" }, aliases = { "version" } }

function current.arguments(cmd)
  cmd:flag("--json", "Print { current, current_id, dirty } as JSON.")
end

function current.options(args)
  return { json = args.json, brief = true }
end

--- The current version, and whether a migration is dirty.
-- @return { current, current_id, dirty } (current nil when nothing is applied)
function current.run(cfg, ui, opts)
  local st, err = status.run(cfg, ui, opts)
  if not st then return nil, err end
  local dirty = st.dirty[1]
  return { current = st.current, current_id = st.current_id, dirty = dirty and dirty.id }
end

function current.print(ui, res, opts)
  if opts.json then
    ui:result(json.encode({ current = res.current or json.null,
      current_id = res.current_id or json.null, dirty = res.dirty or json.null }))
  else
    ui:result((res.current_id or "nothing applied") ..
      (res.dirty and (" (dirty: " .. res.dirty .. ")") or ""))
  end
  return 0
end

return current
