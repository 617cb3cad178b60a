-- `moonshift backups`: the backups in the backup directory, oldest first.
local backup = require("moonshift.backup")
local json = require("moonshift.json")
local ui_mod = require("moonshift.ui")

local fmt = string.format

local backups = { summary = "List the backups: source version, size, age.", uses = {} }

function backups.arguments(cmd)
  cmd:flag("--json", "Print the backups as a JSON array.")
end

function backups.options(args)
  return { json = args.json }
end

--- The backups in the backup directory, oldest first.
-- @return { dir, backups = { { name, path, version, size, age_s } } }
function backups.run(cfg)
  local dir = backup.dir_for(cfg)
  return { dir = dir, backups = json.array(backup.list(dir) or {}) }
end

function backups.print(ui, res, opts)
  if opts.json then
    ui:result(json.encode(res.backups))
    return 0
  end
  for _, b in ipairs(res.backups) do
    ui:result(fmt("%-60s v%-8s %10d bytes  %s ago", b.name, b.version, b.size,
      ui_mod.duration(b.age_s * 1000)))
  end
  if #res.backups == 0 then ui:result("no backups in " .. res.dir) end
  return 0
end

return backups
